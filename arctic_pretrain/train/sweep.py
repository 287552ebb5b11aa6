"""Budget sweeps that train their shared curriculum prefix once (Hydra multirun).

`python launch/train.py -m experiment=snowcoder_1b3 curriculum.phases.high_quality.tokens=25B,50B,100B`
sweeps the phase-2 budget. Phase 1 is the same in every variant, so it is trained once, in
``<sweep dir>/prefix.<phases>.<config hash>/``, and every variant branches from that run's last checkpoint
(``init_from``) into its own ``<sweep dir>/<variant>/``. The sweep dir is ``output_dir``.

* Which phases are shared follows from the swept keys alone (every variant has the same ones): the leading
  phases that no swept ``curriculum.phases.<name>.*`` key touches, nor a swept ``data.sources.<name>.*`` key
  of a source they read (a selection ablation sweeps phase 2's source: phase 1 is shared). Any other swept
  key that changes training (model, seed, ...) shares nothing, and each variant trains from scratch.
  ``SweepPlan`` (a Hydra callback, run once where the sweep is launched) records the swept keys in
  ``<sweep dir>/sweep.json``: a job launched elsewhere (submitit on SLURM) reads them from there.
* The prefix dir's name carries a hash of its resolved config, so a sweep with another base config never
  reuses it. Concurrent variants (submitit) take a POSIX lock (``fcntl.lockf``: released by the kernel when
  its holder dies, honoured over NFS; on Lustre it needs the ``flock`` mount option): one job trains the
  prefix, the others poll until its ``PREFIX_DONE.json`` appears. A holder that died leaves the lock
  free and its checkpoints behind: the next job resumes the prefix where it stopped.
* Each finished variant rewrites ``sweep.md`` and ``sweep.csv`` (budgets, tokens, final loss per phase,
  phase-end evaluation when enabled), and so does the launching process once all jobs are back.
"""

from __future__ import annotations

import copy
import csv
import io
import json
import logging
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import OmegaConf

from arctic_pretrain.common.config import ConfigError, config_hash
from arctic_pretrain.common.io import atomic_write, read_jsonl
from arctic_pretrain.common.locks import try_lock, unlock
from arctic_pretrain.common.units import format_token_count
from arctic_pretrain.train import distributed as dist
from arctic_pretrain.train.checkpoint import tag_for
from arctic_pretrain.train.config import TrainConfig

log = logging.getLogger("arctic_pretrain")

PLAN = "sweep.json"
VARIANT = "variant.json"
DONE = "PREFIX_DONE.json"
NEUTRAL = ("logging.",)  # swept keys that do not change what is trained
Train = Callable[[TrainConfig], dict]


# ---- the plan: which keys are swept ----------------------------------------------------------------
def swept_keys(overrides: list[str]) -> list[str]:
    """Keys of the sweep overrides (``a=1,2``, ``a=range(...)``, ``a=choice(...)``) in a command line."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    return [o.get_key_element() for o in OverridesParser.create().parse_overrides(overrides)
            if o.is_sweep_override()]


class SweepPlan(Callback):
    """Hydra callback (conf/train/train.yaml: hydra.callbacks): records the swept keys for every job."""

    def on_multirun_start(self, config, **kwargs) -> None:
        overrides = list(config.hydra.overrides.task)
        sweep_dir = Path(str(config.hydra.sweep.dir))
        sweep_dir.mkdir(parents=True, exist_ok=True)
        atomic_write(sweep_dir / PLAN, json.dumps({"swept": swept_keys(overrides), "overrides": overrides},
                                                  indent=2))

    def on_multirun_end(self, config, **kwargs) -> None:
        sweep_dir = Path(str(config.hydra.sweep.dir))
        if any(sweep_dir.glob(f"*/{VARIANT}")):
            log.info("sweep summary: %s", write_summary(sweep_dir))


def phase_reads(cfg: TrainConfig) -> dict[str, set[str]]:
    """phase -> the data sources it reads (its mixture and pinned shares)."""
    return {name: set(spec.mixture) | set(spec.pinned) for name, spec in cfg.curriculum.phases.items()}


def swept_sources(swept: list[str]) -> set[str]:
    """The sources a swept ``data.sources.<name>.*`` key changes."""
    return {parts[2] for k in swept if (parts := k.lstrip("+~").split("."))[:2] == ["data", "sources"]
            and len(parts) > 2}


def shared_prefix(phases: list[str], swept: list[str], reads: dict[str, set[str]] | None = None) -> list[str]:
    """The leading phases that no swept key changes (empty when a swept key changes the whole run).
    ``reads`` (phase -> sources, ``phase_reads``) lets a swept source touch only the phases that read it."""
    touched = set()
    for key in swept:
        parts = key.lstrip("+~").split(".")
        if key.lstrip("+~").startswith(NEUTRAL):
            continue
        if parts[:2] == ["curriculum", "phases"] and len(parts) > 2:
            touched.add(parts[2])
        elif parts[:2] == ["data", "sources"] and len(parts) > 2 and reads is not None:
            touched.update(name for name, sources in reads.items() if parts[2] in sources)
        else:
            return []
    prefix = []
    for name in phases:
        if name in touched:
            break
        prefix.append(name)
    return prefix if len(prefix) < len(phases) else []


def sweep_values(overrides: list[str]) -> dict[str, list[str]]:
    """Every value of each sweep override in a command line (``a=1,2`` -> ``{"a": ["1", "2"]}``)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    return {o.get_key_element(): list(o.sweep_string_iterator())
            for o in OverridesParser.create().parse_overrides(overrides) if o.is_sweep_override()}


def short_path(value: str, values: list[str]) -> str:
    """A path among the sweep's ``values`` named by the components that tell it apart from the others
    (``runs/x/arms/top/all`` among ``.../random/all`` -> ``top``); anything else unchanged."""
    split = [v.rstrip("/").split("/") for v in values]
    if "/" not in value or len(values) < 2 or not all(len(p) > 1 for p in split):
        return value
    head = 0
    while all(len(p) > head + 1 and p[head] == split[0][head] for p in split):
        head += 1
    tail = 0
    while all(len(p) > head + tail + 1 and p[-1 - tail] == split[0][-1 - tail] for p in split):
        tail += 1
    parts = value.rstrip("/").split("/")
    return "_".join(parts[head:len(parts) - tail]) or value


def variant_name(values: dict[str, str], choices: dict[str, list[str]] | None = None) -> str:
    """``curriculum.phases.high_quality.tokens=25B`` -> ``high_quality.tokens=25B`` (a folder name);
    ``data.sources.high_quality.path=runs/x/arms/top/all`` -> ``high_quality.path=top`` when ``choices``
    (the sweep's values per key) tell it apart from ``.../arms/random/all``."""
    choices = choices or {}
    parts = [f"{k.lstrip('+~').removeprefix('curriculum.phases.').removeprefix('data.sources.')}="
             f"{short_path(v, choices.get(k, []))}" for k, v in values.items()]
    return ",".join(parts).replace("/", "_") or "variant"


# ---- the prefix: trained once, under a lock ----------------------------------------------------------
def config_digest(cfg: TrainConfig) -> str:
    """Hash of what the run trains (output_dir, logging and the dry-run keys excluded)."""
    data = OmegaConf.to_container(OmegaConf.structured(cfg), resolve=True)
    for key in ("output_dir", "logging", "dry_run", "nodes", "gpus_per_node"):
        data.pop(key, None)
    return config_hash(data, 10)


def prefix_config(cfg: TrainConfig, phases: list[str], sweep_dir: Path, swept: list[str] = ()) -> TrainConfig:
    """The shared prefix's run: the leading ``phases`` only, without the swept sources (they differ between
    variants, and the prefix does not read them), so every variant names the same prefix dir."""
    pcfg = copy.deepcopy(cfg)
    pcfg.curriculum.phases = {name: cfg.curriculum.phases[name] for name in phases}
    for name in swept_sources(list(swept)):
        pcfg.data.sources.pop(name, None)
    pcfg.output_dir = str(sweep_dir / f"prefix.{'+'.join(phases)}.{config_digest(pcfg)}")
    return pcfg


class PrefixLock:
    """An exclusive, non-blocking POSIX lock on ``path`` (the kernel drops it when the holder dies)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.fd: int | None = None

    def acquire(self) -> bool:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            locked = try_lock(fd, posix=True)  # honoured over NFS, where the variants of a sweep may run
        except OSError:
            locked = False
        if not locked:
            os.close(fd)
            return False
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.uname().nodename} pid {os.getpid()} job {os.environ.get('SLURM_JOB_ID', '-')}\n".encode())
        self.fd = fd
        return True

    def release(self) -> None:
        if self.fd is not None:
            unlock(self.fd, posix=True)
            os.close(self.fd)
            self.fd = None


def _read_done(run_dir: Path) -> dict | None:
    path = run_dir / DONE
    return json.loads(path.read_text()) if path.is_file() else None


def ensure_prefix(pcfg: TrainConfig, train: Train, poll_s: float = 30.0) -> dict | None:
    """Train the prefix unless it is done or another job holds its lock (then wait for it).
    Returns its PREFIX_DONE record, or None when this job was asked to stop (pre-empted) meanwhile.
    Collective: the ranks of one job decide together (rank 0 locks, the decision is broadcast)."""
    run_dir = Path(pcfg.output_dir)
    dist.init_distributed()
    lock = PrefixLock(run_dir.with_name(run_dir.name + ".lock"))
    waited = False
    while True:
        done = dist.broadcast_object(_read_done(run_dir) if dist.rank() == 0 else None)
        if done is not None:
            return done
        mine = dist.broadcast_object(lock.acquire() if dist.rank() == 0 else None)
        if mine:
            try:
                done = dist.broadcast_object(_read_done(run_dir) if dist.rank() == 0 else None)
                if done is not None:  # finished between our first look and the lock
                    return done
                log.info("training the sweep's shared prefix in %s", run_dir)
                result = train(pcfg)
                if result["status"] == "preempted":
                    return None
                done = {"checkpoint": str(run_dir / "checkpoints" / tag_for(result["step"])),
                        "step": result["step"], "consumed_tokens": result["consumed_tokens"],
                        "status": result["status"], "phases": list(pcfg.curriculum.phases)}
                if dist.rank() == 0:
                    run_dir.mkdir(parents=True, exist_ok=True)
                    atomic_write(run_dir / DONE, json.dumps(done, indent=2))
                dist.barrier()
                return done
            finally:
                if dist.rank() == 0:
                    lock.release()
        if not waited:
            log.info("another job is training the shared prefix %s: waiting for %s", run_dir, run_dir / DONE)
            waited = True
        time.sleep(poll_s)


# ---- one variant -------------------------------------------------------------------------------
def read_plan(sweep_dir: Path) -> dict:
    path = sweep_dir / PLAN
    if not path.is_file():
        raise ConfigError(f"{path}: missing. A sweep's output_dir is its sweep dir, the same for every variant "
                          "(each variant gets <output_dir>/<variant>/): do not interpolate swept values into "
                          "output_dir")
    return json.loads(path.read_text())


def job_values(task_overrides: list[str], swept: list[str]) -> dict[str, str]:
    """This job's values of the swept keys, from its own overrides."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    values = {}
    for o in OverridesParser.create().parse_overrides(task_overrides):
        if o.get_key_element() in swept:
            values[o.get_key_element()] = o.get_value_element_as_str()
    return values


def run_variant(cfg: TrainConfig, train: Train, sweep_dir: Path, task_overrides: list[str],
                poll_s: float = 30.0) -> dict:
    """Train one sweep variant in ``<sweep_dir>/<variant>``, from the shared prefix when there is one."""
    from arctic_pretrain.train.runner import setup_logging

    setup_logging(sweep_dir, dist.env_rank())  # the sweep's own lines also go to <sweep_dir>/train.log
    plan = read_plan(sweep_dir)
    swept = plan["swept"]
    if any(k.lstrip("+~") == "output_dir" for k in swept):
        raise ConfigError("output_dir: cannot be swept; it is the sweep dir (each variant gets "
                          "<output_dir>/<variant>/)")
    values = job_values(task_overrides, swept)
    name = variant_name(values, sweep_values(plan.get("overrides", [])))
    cfg.output_dir = str(sweep_dir / name)
    prefix = shared_prefix(list(cfg.curriculum.phases), swept, phase_reads(cfg))
    own_checkpoint = (Path(cfg.output_dir) / "checkpoints" / "latest").is_file()
    record: dict[str, Any] = {"variant": name, "values": values, "prefix": None, "branch": None}
    if prefix:
        pcfg = prefix_config(cfg, prefix, sweep_dir, swept)
        record["prefix"] = pcfg.output_dir
        if not own_checkpoint:
            done = ensure_prefix(pcfg, train, poll_s)
            if done is None:
                log.warning("stop signal while training the shared prefix: variant %s not started", name)
                return {"status": "preempted"}
            cfg.init_from = done["checkpoint"]
            record["branch"] = done
    if own_checkpoint and (Path(cfg.output_dir) / VARIANT).is_file():  # a resumed variant keeps its record
        record = json.loads((Path(cfg.output_dir) / VARIANT).read_text())
    if dist.env_rank() == 0:
        Path(cfg.output_dir).mkdir(parents=True, exist_ok=True)
        atomic_write(Path(cfg.output_dir) / VARIANT, json.dumps(record, indent=2))
    log.info("sweep variant %s -> %s%s", name, cfg.output_dir, f" (from {cfg.init_from})" if cfg.init_from else "")
    result = train(cfg)
    if dist.rank() == 0:
        log.info("sweep summary: %s", write_summary(sweep_dir))
    return result


def run_job(cfg: TrainConfig, train: Train) -> dict:
    """A Hydra job: a plain run, or (``-m``) one variant of a sweep."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    hydra_cfg = HydraConfig.get() if HydraConfig.initialized() else None
    if hydra_cfg is None or hydra_cfg.mode != RunMode.MULTIRUN:
        return train(cfg)
    return run_variant(cfg, train, Path(hydra_cfg.runtime.output_dir), list(hydra_cfg.overrides.task))


# ---- the summary ---------------------------------------------------------------------------------
def _metrics(run_dir: Path) -> list[dict]:
    return read_jsonl(run_dir / "metrics.jsonl", missing_ok=True)


def variant_row(run_dir: Path) -> dict[str, Any]:
    """One variant: swept values, phase budgets, tokens, final loss per phase, last phase-end evaluation."""
    record = json.loads((run_dir / VARIANT).read_text())
    row: dict[str, Any] = {"variant": record["variant"], **record["values"]}
    config = OmegaConf.load(run_dir / "config.yaml") if (run_dir / "config.yaml").is_file() else None
    if config is not None:
        for phase, spec in config.curriculum.phases.items():
            row[f"budget/{phase}"] = str(spec.tokens)
    rows = _metrics(Path(record["prefix"])) if record["prefix"] else []
    own = _metrics(run_dir)
    train_rows = [r for r in rows + own if "loss" in r and r.get("event") is None]
    row["steps"] = train_rows[-1]["step"] if train_rows else 0
    row["tokens"] = train_rows[-1]["consumed_tokens"] if train_rows else 0
    row["tokens_here"] = row["tokens"] - (record["branch"] or {}).get("consumed_tokens", 0) if own else 0
    state = run_dir / "checkpoints" / "latest"
    row["status"] = "done" if (config is not None and state.is_file() and _finished(run_dir, config)) else "partial"
    first_own = next((r for r in own if "loss" in r and r.get("event") is None), None)
    row["first_step_here"] = first_own["step"] if first_own else None
    for r in train_rows:
        row[f"loss/{r['phase']}"] = round(float(r["loss"]), 4)
    evals = [r for r in rows + own if r.get("event") == "phase_eval"]
    if evals:
        row["eval_phase"] = evals[-1]["phase"]
        row.update({k: v for k, v in evals[-1].items() if k.startswith(("eval/", "heldout/"))})
    return row


def _finished(run_dir: Path, config) -> bool:
    tag = (run_dir / "checkpoints" / "latest").read_text().strip()
    state = json.loads((run_dir / "checkpoints" / tag / "trainer_state.json").read_text())
    return state.get("phase_end") == list(config.curriculum.phases)[-1]


def write_summary(sweep_dir: Path) -> Path:
    """``sweep.md`` (a table) and ``sweep.csv`` in the sweep dir, one row per variant."""
    rows = [variant_row(p.parent) for p in sorted(sweep_dir.glob(f"*/{VARIANT}"))]
    columns: list[str] = []
    for row in rows:
        columns += [k for k in row if k not in columns]
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns)
    writer.writeheader()
    writer.writerows(rows)
    atomic_write(sweep_dir / "sweep.csv", buf.getvalue())

    def cell(v: Any) -> str:
        if isinstance(v, int) and not isinstance(v, bool) and v >= 10_000:
            return format_token_count(v)
        return "" if v is None else f"{v:.4g}" if isinstance(v, float) else str(v)

    lines = [f"# Sweep {sweep_dir}", "", "| " + " | ".join(columns) + " |",
             "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(cell(r.get(c)) for c in columns) + " |" for r in rows]
    atomic_write(sweep_dir / "sweep.md", "\n".join(lines) + "\n")
    return sweep_dir / "sweep.md"
