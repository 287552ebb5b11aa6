"""Where a stage's datatrove pipelines run (local, SLURM or Ray): one schema, one check, one builder.

Stages subclass ``ExecutorConfig`` to set their own defaults (a dataclass field redefined in a subclass keeps
its place and takes the new default), so the YAML/CLI keys stay ``executor.<key>`` in every stage.
"""

from __future__ import annotations

import shlex
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from arctic_pretrain.common.config import ConfigError, require

EXECUTORS = ("local", "slurm", "ray")
START_METHODS = ("fork", "forkserver", "spawn")


def slurm_defaults(**overrides: Any) -> dict[str, Any]:
    """SlurmPipelineExecutor arguments, listed so that `executor.slurm.<key>=...` needs no `+`. partition has
    no default (executor=slurm requires it); qos None leaves the cluster's default QOS (datatrove would force
    "normal"); env_command None runs the submitting environment's datatrove; other keys, e.g.
    `+executor.slurm.sbatch_args.account=<name>`, take a `+`."""
    return {"partition": None, "time": "24:00:00", "cpus_per_task": 1, "mem_per_cpu_gb": 2, "qos": None,
            "env_command": None, "sbatch_args": {}, **overrides}


@dataclass
class ExecutorConfig:
    """Where datatrove runs a stage's pipelines: local (default), slurm, or ray (where installed)."""

    kind: str = "local"  # local | slurm | ray
    tasks: int = 4  # input shards per parallel step; datatrove splits work by task
    workers: int = 2  # concurrent tasks (local processes, slurm array %limit, ray); -1: one per task
    start_method: str = "forkserver"  # local: datatrove's default
    # slurm: any SlurmPipelineExecutor argument (partition, time, cpus_per_task, mem_per_cpu_gb, qos,
    # sbatch_args, env_command, ...)
    slurm: dict[str, Any] = field(default_factory=slurm_defaults)
    ray: dict[str, Any] = field(default_factory=dict)  # passed to RayPipelineExecutor (cpus_per_task, ...)
    # slurm: false returns once the jobs are queued (the stage's outputs appear when the last job ends); true
    # polls squeue until the jobs leave the queue, then checks every step completed (common/slurm.py).
    # local/ray always wait.
    wait: bool = False


def executor_group(schema: type[ExecutorConfig], slurm_tasks: int, ray_tasks: int) -> dict[str, dict]:
    """The Hydra group ``executor=local|slurm|ray`` (for ``common.config.register``): on a cluster every
    task gets its own worker."""
    return {"executor": {"local": schema(kind="local"),
                         "slurm": schema(kind="slurm", tasks=slurm_tasks, workers=-1),
                         "ray": schema(kind="ray", tasks=ray_tasks, workers=-1)}}


def check_executor(e: ExecutorConfig, key: str = "executor") -> None:
    """The executor block's checks, before any work starts; errors name ``<key>.<field>`` and the value."""
    require(e.kind in EXECUTORS, f"{key}.kind", e.kind, f"must be one of {EXECUTORS}")
    require(e.tasks >= 1, f"{key}.tasks", e.tasks, "must be >= 1")
    require(e.workers == -1 or e.workers >= 1, f"{key}.workers", e.workers, "must be >= 1 or -1")
    require(e.start_method in START_METHODS, f"{key}.start_method", e.start_method,
            "must be fork, forkserver or spawn")
    if e.kind == "slurm":
        require(bool(e.slurm.get("partition")), f"{key}.slurm.partition", e.slurm.get("partition"),
                f"executor=slurm needs a partition ({key}.slurm.partition=<name>)")


def local_workers(e: ExecutorConfig, tasks: int) -> int:
    """Local processes for ``tasks`` tasks: never more than the tasks (-1: one per task)."""
    return tasks if e.workers == -1 else min(e.workers, tasks)


def local_executor(e: ExecutorConfig, pipeline: list, tasks: int, logging_dir: str):
    from datatrove.executor import LocalPipelineExecutor

    return LocalPipelineExecutor(pipeline=pipeline, tasks=tasks, logging_dir=logging_dir,
                                 workers=local_workers(e, tasks), start_method=e.start_method)


def slurm_arguments(e: ExecutorConfig) -> dict[str, Any]:
    """executor.slurm plus our defaults. None values reach datatrove as None (qos None: no --qos, the
    cluster's default QOS; datatrove's own default would force "normal"); the array %limit is
    executor.workers; a failed job cancels the jobs after it (--kill-on-invalid-dep=yes) instead of leaving
    them pending forever; and the jobs run the submitting environment's datatrove launcher (its bin folder
    first on PATH), so a stage started with a venv's python that was never activated still works."""
    args = dict(e.slurm)
    args.setdefault("workers", e.workers)
    args["sbatch_args"] = {"kill-on-invalid-dep": "yes", **dict(args.get("sbatch_args") or {})}
    if not any(args.get(k) for k in ("env_command", "condaenv", "venv_path")):
        launcher = shutil.which("launch_pickled_pipeline") or shutil.which(
            "launch_pickled_pipeline", path=str(Path(sys.executable).parent))
        if launcher is None:
            raise ConfigError("executor=slurm: datatrove's launch_pickled_pipeline is not on PATH; activate "
                              "the environment or set executor.slurm.env_command")
        args["env_command"] = f"export PATH={shlex.quote(str(Path(launcher).parent))}:$PATH"
    return args


def datatrove_executor(e: ExecutorConfig, pipeline: list, tasks: int, logging_dir: str, job_name: str,
                       depends=None):
    """The datatrove executor ``e.kind`` names. SLURM jobs run after ``depends`` (afterok) with
    ``slurm_arguments(e)``; Ray's run() blocks, so steps run in turn."""
    if e.kind == "local":
        return local_executor(e, pipeline, tasks, logging_dir)
    common = {"pipeline": pipeline, "tasks": tasks, "logging_dir": logging_dir}
    if e.kind == "slurm":
        from datatrove.executor import SlurmPipelineExecutor

        return SlurmPipelineExecutor(**common, job_name=job_name, depends=depends, **slurm_arguments(e))
    try:
        import ray  # noqa: F401
        from datatrove.executor.ray import RayPipelineExecutor
    except ImportError as err:
        raise ConfigError(f"executor.kind='ray': ray is not installed ({err})") from None
    return RayPipelineExecutor(**common, workers=e.workers, **dict(e.ray))
