"""Every step of every pipeline experiment composes against its stage's own config, without running anything:
a key a stage does not have (e.g. `executor.wait` where its executor lacks it) fails here, not hours into
a cluster run. Each step's args go through the pipeline's own resolution (${workdir}), then through the
stage's entry point with `--cfg job` (Hydra composes and prints; no work, no torch), then the printed config
is checked against the stage's schema as the entry point would (unknown `+` keys, types, missing values),
and a datatrove executor block against its checks (executor=slurm needs a partition)."""

from __future__ import annotations

import importlib
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from arctic_pretrain.common.config import HYDRA_VERSION_BASE, conf_dir, register, to_object
from arctic_pretrain.common.executor import ExecutorConfig, check_executor
from arctic_pretrain.pipeline.runner import PROJECT, PipelineConfig, merge_args

EXPERIMENTS = sorted(p.stem for p in (PROJECT / "conf" / "pipeline" / "experiment").glob("*.yaml"))
SCHEMAS = {"curate": ("curate.config", "CurateConfig"), "annotate": ("annotate.config", "AnnotateConfig"),
           "synthesize": ("synthesize.config", "SynthesizeConfig"), "train": ("train.config", "TrainConfig"),
           "evaluate": ("evaluate.config", "EvalConfig")}


def pipeline_config(experiment: str) -> PipelineConfig:
    """What launch/pipeline.py composes for ``experiment=<name>``, interpolations resolved."""
    from hydra import compose, initialize_config_dir

    register("pipeline", PipelineConfig)
    with initialize_config_dir(config_dir=conf_dir("pipeline"), version_base=HYDRA_VERSION_BASE):
        return to_object(compose(config_name="pipeline", overrides=[f"experiment={experiment}"]), PipelineConfig)


def test_every_experiment_is_listed() -> None:
    assert {"demo", "tiny", "snowcoder_1b3"} <= set(EXPERIMENTS)


def first_variant(args: list[str]) -> list[str]:
    """A sweep step's (``-m``) args as its first variant's: Hydra refuses ``--cfg`` with ``-m``."""
    if "-m" not in args and "--multirun" not in args:
        return list(args)
    from arctic_pretrain.train.sweep import sweep_values

    out = []
    for arg in args:
        values = sweep_values([arg]) if "=" in arg else {}
        if arg not in ("-m", "--multirun"):
            out.append(f"{arg.split('=', 1)[0]}={next(iter(values.values()))[0]}" if values else arg)
    return out


def composed(experiment: str, name: str, step):
    """(the stage's config object, None) when the step's args compose against its stage, else (None, what
    went wrong)."""
    stage = step.stage or name
    # the stage's own entry point (an sbatch/srun launcher runs launch/<stage>.py with the same args)
    args = first_variant(merge_args(step.args, step.overrides))  # what the pipeline runs
    cmd = [sys.executable, str(PROJECT / "launch" / f"{stage}.py"), *args, "--cfg", "job"]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=PROJECT, timeout=120)
    if proc.returncode != 0:
        return None, f"{experiment}.{name} ({stage}): exit {proc.returncode}: {proc.stderr.strip()[-800:]}"
    module, class_name = SCHEMAS[stage]
    schema = getattr(importlib.import_module(f"arctic_pretrain.{module}"), class_name)
    try:
        cfg = to_object(OmegaConf.merge(OmegaConf.structured(schema), OmegaConf.create(proc.stdout)), schema)
        if isinstance(getattr(cfg, "executor", None), ExecutorConfig):  # e.g. executor=slurm needs a partition
            check_executor(cfg.executor)
    except Exception as err:  # noqa: BLE001 - every failure is reported with its step
        return None, f"{experiment}.{name} ({stage}): {type(err).__name__}: {err}"
    return cfg, None


def compose_step(experiment: str, name: str, step) -> str | None:
    """None if the step's args compose against its stage, else what went wrong."""
    return composed(experiment, name, step)[1]


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_every_step_composes_against_its_stage(experiment: str) -> None:
    cfg = pipeline_config(experiment)
    assert cfg.stages, experiment
    with ThreadPoolExecutor(max_workers=3) as pool:  # the steps' entry points start in parallel
        failures = [f for f in pool.map(lambda item: compose_step(experiment, *item), cfg.stages.items()) if f]
    assert not failures, "\n".join(failures)


def test_a_key_the_stage_lacks_fails_naming_it() -> None:
    """The check itself: an arg the annotate executor does not have is refused, naming the key."""
    cmd = [sys.executable, str(Path(PROJECT) / "launch" / "annotate.py"), "curated=/x", "executor.no_such_key=1",
           "--cfg", "job"]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=PROJECT, timeout=120)
    assert proc.returncode != 0 and "no_such_key" in proc.stderr


def test_snowcoder_1b3_composes_to_the_papers_settings() -> None:
    """experiment=snowcoder_1b3, every step composed as its stage would: the paper's values (recipe.md)."""
    pipeline = pipeline_config("snowcoder_1b3")
    with ThreadPoolExecutor(max_workers=3) as pool:
        results = dict(zip(pipeline.stages, pool.map(lambda item: composed("snowcoder_1b3", *item),
                                                     pipeline.stages.items()), strict=True))
    assert not [err for _, err in results.values() if err], [err for _, err in results.values() if err]
    cfg = {name: c for name, (c, _) in results.items()}
    annotate = cfg["annotate"]  # the paper's annotator, never the demo's MiniLM
    assert annotate.model.encoder == "Snowflake/snowflake-arctic-embed-m" and annotate.model.max_length == 512
    positives = {p.name: (p.source, list(p.fields)) for p in annotate.positives}
    assert positives["magicoder_oss_instruct"] == ("hf:ise-uiuc/Magicoder-OSS-Instruct-75K", ["problem", "solution"])
    assert positives["starcoder2_instruct"] == ("hf:bigcode/self-oss-instruct-sc2-exec-filter-50k",
                                                ["instruction", "response"])
    assert positives["hqcode"] == (f"{pipeline.workdir}/hqcode", ["content"])  # the user's hqcode set
    assert annotate.select.tokens == "12.5B" and annotate.select.phase_tokens == "50B"
    assert annotate.executor.kind == "slurm"  # the classifier trains as a SLURM GPU job
    assert {b.name for b in annotate.decontamination.benchmarks} >= {"humaneval", "mbpp_plus"}
    phases = cfg["train"].curriculum.phases
    assert [(k, phases[k].tokens) for k in phases] == [("general", "500B"), ("high_quality", "50B"),
                                                       ("synthetic", "5B")]
    lr = {k: (phases[k].lr.peak_lr, phases[k].lr.end_lr, phases[k].lr.warmup_steps, phases[k].lr.decay)
          for k in phases}
    assert lr["general"] == (5.3e-4, 5.3e-5, 600, "cosine") and lr["high_quality"] == (5.3e-4, 0.0, 1000, "linear")
    assert phases["synthetic"].lr.peak_lr == 5.3e-4 and phases["synthetic"].lr.end_lr == 0.0
    model = cfg["train"].model
    assert (model.hidden_size, model.num_layers, model.intermediate_size, model.num_heads, model.num_kv_heads,
            model.max_seq_len, model.tie_embeddings) == (2048, 24, 5632, 16, 16, 8192, True)
    assert cfg["synthesize"].backend.model == "meta-llama/Llama-3.1-70B-Instruct"
    assert list(cfg["evaluate"].tasks) == ["humaneval_plus", "mbpp_plus", "evoeval", "bigcodebench"]
    assert cfg["curate"].tokenize.train_vocab_size == 64000
