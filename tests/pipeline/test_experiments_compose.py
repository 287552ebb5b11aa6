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
from arctic_pretrain.pipeline.runner import PROJECT, PipelineConfig

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


def compose_step(experiment: str, name: str, step) -> str | None:
    """None if the step's args compose against its stage, else what went wrong."""
    stage = step.stage or name
    # the stage's own entry point (an sbatch/srun launcher runs launch/<stage>.py with the same args)
    cmd = [sys.executable, str(PROJECT / "launch" / f"{stage}.py"), *step.args, "--cfg", "job"]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=PROJECT, timeout=120)
    if proc.returncode != 0:
        return f"{experiment}.{name} ({stage}): exit {proc.returncode}: {proc.stderr.strip()[-800:]}"
    module, class_name = SCHEMAS[stage]
    schema = getattr(importlib.import_module(f"arctic_pretrain.{module}"), class_name)
    try:
        cfg = to_object(OmegaConf.merge(OmegaConf.structured(schema), OmegaConf.create(proc.stdout)), schema)
        if isinstance(getattr(cfg, "executor", None), ExecutorConfig):  # e.g. executor=slurm needs a partition
            check_executor(cfg.executor)
    except Exception as err:  # noqa: BLE001 - every failure is reported with its step
        return f"{experiment}.{name} ({stage}): {type(err).__name__}: {err}"
    return None


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
