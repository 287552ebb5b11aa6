"""Run the recipe's stages in order as commands, skip the complete ones, stop naming the one that fails."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from omegaconf import MISSING

from arctic_pretrain.common.config import require
from arctic_pretrain.common.io import atomic_write

STAGES = ("curate", "annotate", "synthesize", "train", "evaluate")
PROJECT = Path(__file__).resolve().parents[2]  # launch/ lives beside the package (source checkout)


@dataclass
class StageConfig:
    """One step of the recipe: ``launcher launch/<stage>.py args...``; complete (and skipped) once ``done``
    exists. Steps run in the order written; a stage may appear twice (the demo trains phases 1-2, synthesizes
    with its own phase-2 export, then resumes the same run for phase 3)."""

    stage: str | None = None  # curate | annotate | synthesize | train | evaluate; default: the step's name
    enabled: bool = True
    launcher: list[str] = field(default_factory=list)  # e.g. [deepspeed, --num_gpus, "8"] or [sbatch, --wait, ...]; [] = python
    script: str | None = None  # default launch/<stage>.py; e.g. launch/slurm_train.sbatch for sbatch
    args: list[str] = field(default_factory=list)  # key=value overrides, as on the stage's own command line
    # more key=value overrides, applied over args: one with an arg's key replaces it in place (a rehearsal or a
    # site file changes sizes and endpoints without restating the recipe's list)
    overrides: list[str] = field(default_factory=list)
    done: str = MISSING  # the file the stage writes last (its manifest or report)


@dataclass
class PipelineConfig:
    """``python launch/pipeline.py experiment=<name>``; every path below may use ${workdir}."""

    name: str = MISSING
    workdir: str = MISSING  # everything of this recipe run lives here: data/, train/, eval/, logs/, report.html
    demo_inputs_mb: float | None = None  # demo: first copy this much of this machine's Python and C code to workdir/inputs
    stages: dict[str, StageConfig] = field(default_factory=dict)  # step name -> step, run in this order
    report: bool = True  # launch/report.py on the training run at the end
    train_dir: str = "${workdir}/train"  # the training run's output_dir (for the report)
    eval_dir: str = "${workdir}/eval"
    only: list[str] | None = None  # run just these steps (e.g. [train,evaluate]); the others are not checked


RENAMED = {"run_dir": "train_dir"}  # deprecated spellings on the command line, until the next release


def validate(cfg: PipelineConfig) -> None:
    for name, step in cfg.stages.items():
        kind = step.stage or name
        require(kind in STAGES, f"stages.{name}.stage", kind, f"unknown stage; the recipe's stages are {list(STAGES)}")
        require(bool(step.done), f"stages.{name}.done", step.done, "needs the file that marks the step complete")
    for name in cfg.only or []:
        require(name in cfg.stages, "only", list(cfg.only), f"{name!r} is not a step of this pipeline: {list(cfg.stages)}")


def _key(arg: str) -> str:
    return arg.split("=", 1)[0].lstrip("+~")


def merge_args(args: list[str], overrides: list[str]) -> list[str]:
    """args with each override put in place of the arg of the same key, or appended when no arg has it."""
    merged = list(args)
    for override in overrides:
        at = [i for i, arg in enumerate(merged) if _key(arg) == _key(override)]
        if at:
            merged[at[0]] = override
        else:
            merged.append(override)
    return merged


def command(name: str, stage: StageConfig) -> list[str]:
    script = str(PROJECT / (stage.script or f"launch/{stage.stage or name}.py"))
    launcher = list(stage.launcher) or [sys.executable]
    return [*launcher, script, *merge_args(list(stage.args), list(stage.overrides))]


def run_pipeline(cfg: PipelineConfig) -> dict:
    """Run every enabled stage in recipe order; returns the summary written to ``workdir/pipeline.json``."""
    from rich.console import Console

    validate(cfg)
    console = Console(highlight=False)
    work = Path(cfg.workdir)
    logs = work / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    summary: dict = {"name": cfg.name, "workdir": str(work), "stages": {}}
    if cfg.demo_inputs_mb:
        from arctic_pretrain.data.demo import write_demo_inputs

        with console.status(f"demo inputs: copying {cfg.demo_inputs_mb:g} MB each of this machine's Python and C code"):
            write_demo_inputs(work / "inputs", cfg.demo_inputs_mb)
    order = [s for s in cfg.stages if cfg.only is None or s in cfg.only]
    for name in order:
        stage = cfg.stages[name]
        record = {"command": command(name, stage), "done": stage.done, "log": str(logs / f"{name}.log")}
        summary["stages"][name] = record
        if not stage.enabled:
            record["status"] = "disabled"
            console.print(f"[dim]- {name}: disabled[/dim]")
            continue
        if Path(stage.done).exists():
            record["status"] = "skipped (complete)"
            console.print(f"[green]✓[/green] {name}: complete, skipped ({stage.done})")
            continue
        start = time.time()
        with console.status(f"{name}: running (log: {record['log']})"), open(record["log"], "w") as log:
            log.write("$ " + " ".join(record["command"]) + "\n")
            log.flush()
            proc = subprocess.run(record["command"], stdout=log, stderr=subprocess.STDOUT,
                                  env={**os.environ, "PYTHONUNBUFFERED": "1"})
        record["seconds"] = round(time.time() - start, 1)
        if proc.returncode != 0 or not Path(stage.done).exists():
            record["status"] = f"failed (exit {proc.returncode})"
            _write(work, summary)
            tail = Path(record["log"]).read_text(errors="replace").splitlines()[-25:]
            raise StageFailed(name, proc.returncode, record["log"], tail, stage.done)
        record["status"] = "done"
        console.print(f"[green]✓[/green] {name}: done in {record['seconds']:.0f} s")
        _write(work, summary)
    if cfg.report and (Path(cfg.train_dir) / "config.yaml").is_file():
        out = subprocess.run([sys.executable, str(PROJECT / "launch/report.py"), f"run={cfg.train_dir}",
                              f"out={work / 'report.html'}", f"eval={cfg.eval_dir}"], capture_output=True, text=True)
        summary["report"] = str(work / "report.html") if out.returncode == 0 else f"failed: {out.stderr[-500:]}"
    _write(work, summary)
    return summary


class StageFailed(RuntimeError):
    exit_code = 1  # the failing stage's name and log are in the message

    def __init__(self, stage: str, code: int, log: str, tail: list[str], done: str) -> None:
        why = f"exit code {code}" if code else f"it exited 0 but did not write {done}"
        super().__init__(f"stage {stage!r} failed ({why}); log: {log}\n" + "\n".join("    " + t for t in tail))
        self.stage = stage


def _write(work: Path, summary: dict) -> None:
    atomic_write(work / "pipeline.json", json.dumps(summary, indent=2))
