"""The executor block every datatrove stage shares: a stage's subclass keeps its defaults, checks name the key,
the builder returns datatrove's own executors."""

from __future__ import annotations

from dataclasses import dataclass, fields

import pytest
from omegaconf import OmegaConf

from arctic_pretrain.common.config import ConfigError
from arctic_pretrain.common.executor import (
    ExecutorConfig,
    check_executor,
    datatrove_executor,
    executor_group,
    slurm_arguments,
    slurm_defaults,
)


@dataclass
class StageExecutor(ExecutorConfig):
    tasks: int = 1


def test_a_subclass_sets_defaults_and_keeps_the_key_order():
    assert [f.name for f in fields(StageExecutor)] == ["kind", "tasks", "workers", "start_method", "slurm", "ray",
                                                      "wait"]
    e = OmegaConf.to_object(OmegaConf.structured(StageExecutor))
    assert e.tasks == 1 and e.workers == 2 and e.slurm["time"] == "24:00:00" and e.slurm["partition"] is None
    assert e.wait is False  # every stage's executor.wait (SLURM: block until the jobs end)
    assert slurm_defaults(cpus_per_task=8)["cpus_per_task"] == 8
    group = executor_group(StageExecutor, slurm_tasks=64, ray_tasks=16)["executor"]
    assert (group["slurm"].kind, group["slurm"].tasks, group["slurm"].workers) == ("slurm", 64, -1)
    assert (group["ray"].tasks, group["local"].tasks) == (16, 1)


@pytest.mark.parametrize(("change", "named"), [
    ({"kind": "pbs"}, "score.kind='pbs'"), ({"tasks": 0}, "score.tasks=0"), ({"workers": 0}, "score.workers=0"),
    ({"start_method": "thread"}, "score.start_method='thread'"), ({"kind": "slurm"}, "score.slurm.partition=None"),
])
def test_check_names_the_key_and_value(change, named):
    with pytest.raises(ConfigError) as err:
        check_executor(StageExecutor(**change), key="score")
    assert str(err.value).startswith(named)


def test_builder_returns_datatrove_executors(tmp_path):
    local = datatrove_executor(StageExecutor(tasks=3, workers=8), [], 3, str(tmp_path / "a"), "x")
    assert type(local).__name__ == "LocalPipelineExecutor" and local.workers == 3  # never more than the tasks
    assert datatrove_executor(StageExecutor(tasks=3, workers=-1), [], 3, str(tmp_path / "b"), "x").workers == 3
    e = StageExecutor(kind="slurm", workers=5, slurm=slurm_defaults(partition="cpu"))
    first = datatrove_executor(e, [], 4, str(tmp_path / "c"), "stage-1")
    second = datatrove_executor(e, [], 2, str(tmp_path / "d"), "stage-2", depends=first)
    assert type(second).__name__ == "SlurmPipelineExecutor" and second.depends is first
    assert (second.world_size, second.workers, second.partition, second.job_name) == (2, 5, "cpu", "stage-2")


def test_qos_none_leaves_the_cluster_default(tmp_path):
    """qos None reaches datatrove as None (its own default would be "normal"): no --qos in the sbatch script."""
    e = StageExecutor(kind="slurm", slurm=slurm_defaults(partition="cpu"))
    assert "qos" in slurm_arguments(e) and slurm_arguments(e)["qos"] is None
    ex = datatrove_executor(e, [], 2, str(tmp_path / "q"), "stage")
    assert ex.qos is None and "qos" not in ex.get_sbatch_args(2)
    e.slurm["qos"] = "high"
    assert datatrove_executor(e, [], 2, str(tmp_path / "h"), "stage").get_sbatch_args(2)["qos"] == "high"
