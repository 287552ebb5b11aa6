"""The pipeline runner's command lines: a step's overrides replace its args by key, in place."""

from __future__ import annotations

from arctic_pretrain.pipeline.runner import StageConfig, command, merge_args


def test_an_override_replaces_the_arg_of_its_key_in_place_and_new_keys_are_appended():
    args = ["inputs=[/raw]", "executor=slurm", "+executor.slurm.sbatch_args.gres=gpu:1", "select.tokens=12.5B"]
    merged = merge_args(args, ["select.tokens=2M", "executor.slurm.partition=debug",
                               "+executor.slurm.sbatch_args.gres=gpu:0"])
    assert merged == ["inputs=[/raw]", "executor=slurm", "+executor.slurm.sbatch_args.gres=gpu:0", "select.tokens=2M",
                      "executor.slurm.partition=debug"]
    assert merge_args(args, []) == args


def test_the_command_carries_the_merged_args():
    step = StageConfig(args=["a=1", "b=2"], overrides=["b=3"], done="x")
    assert command("curate", step)[-2:] == ["a=1", "b=3"]
