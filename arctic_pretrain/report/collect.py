"""What the report shows, gathered from the files each stage leaves behind (missing parts are noted, not fatal)."""

from __future__ import annotations

import hashlib
import json
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from arctic_pretrain.common.io import read_jsonl


def _json(path: Path) -> Any | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _jsonl(path: Path) -> list[dict]:
    return read_jsonl(path, missing_ok=True)


def file_sha256(path: Path) -> str | None:
    if not path.is_file():
        return None
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def git_commit(repo: Path) -> str | None:
    try:
        out = subprocess.run(["git", "-C", str(repo), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() or None


@dataclass
class RunFacts:
    run_dir: Path
    config: dict = field(default_factory=dict)
    metrics: list[dict] = field(default_factory=list)
    curriculum: list[dict] = field(default_factory=list)
    sources: dict[str, dict] = field(default_factory=dict)  # name -> {path, manifest}
    data_root: Path | None = None
    curation: dict | None = None
    selection: dict | None = None
    selection_pngs: list[Path] = field(default_factory=list)
    synthesis: dict | None = None
    evaluation: dict | None = None
    ablation: dict | None = None  # a selection ablation's table (ablation.json beside the evaluation's results)
    ablation_png: Path | None = None
    history: list[dict] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # what could not be found, said on the page


def _data_root(config: dict, sources: dict[str, dict]) -> Path | None:
    root = (config.get("data") or {}).get("root")
    if root and Path(root).is_dir():
        return Path(root)
    for src in sources.values():  # <root>/tokens/<language> -> <root>
        path = Path(src["path"])
        if path.parent.name == "tokens":
            return path.parent.parent
    return None


def collect(run_dir: str | Path, evaluation: str | Path | None = None) -> RunFacts:
    run_dir = Path(run_dir)
    if not (run_dir / "config.yaml").is_file():
        raise FileNotFoundError(f"run={run_dir}: not a training run directory (no config.yaml)")
    facts = RunFacts(run_dir=run_dir, config=OmegaConf.to_container(OmegaConf.load(run_dir / "config.yaml")) or {})
    facts.metrics = _jsonl(run_dir / "metrics.jsonl")
    facts.curriculum = _json(run_dir / "curriculum.json") or []
    facts.history = _jsonl(run_dir / "history.jsonl")
    for name, src in ((facts.config.get("data") or {}).get("sources") or {}).items():
        path = Path(src.get("path", ""))
        facts.sources[name] = {"path": str(path), "manifest": _json(path / "manifest.json")}
    facts.data_root = _data_root(facts.config, facts.sources)
    root = facts.data_root
    if root is not None:
        facts.curation = _json(root / "report.json")
        facts.selection = _json(root / "high_quality" / "selection.json")
        facts.selection_pngs = sorted((root / "high_quality" / "report").glob("*.png"))
        facts.synthesis = _json(root / "synthetic" / "synthesis.json")
    for label, value in (("curation report (report.json)", facts.curation),
                         ("annotator selection (high_quality/selection.json)", facts.selection),
                         ("synthesis summary (synthetic/synthesis.json)", facts.synthesis)):
        if value is None:
            facts.notes.append(f"no {label} under data root {root}")
    candidates = [Path(evaluation)] if evaluation else [run_dir / "eval", run_dir / "evaluation"]
    for cand in candidates:
        found = _json(cand / "results.json" if cand.is_dir() else cand)
        if found is not None:
            facts.evaluation = found
            folder = cand if cand.is_dir() else cand.parent
            facts.ablation = _json(folder / "ablation.json")
            facts.ablation_png = folder / "ablation.png" if (folder / "ablation.png").is_file() else None
            break
    else:
        facts.notes.append("no evaluation results (python launch/evaluate.py model=<run_dir> output_dir=<run_dir>/eval)")
    return facts


def provenance(facts: RunFacts, code_root: Path) -> list[dict[str, Any]]:
    """One row per source: its manifest's identity, back to the stage configs and models that made it."""
    rows = []
    for name, src in facts.sources.items():
        man = src["manifest"] or {}
        meta = man.get("metadata", {})
        tok = man.get("tokenizer", {})
        rows.append({"source": name, "path": src["path"], "tokens": man.get("tokens"),
                     "manifest_sha256": file_sha256(Path(src["path"]) / "manifest.json"),
                     "tokenizer": tok.get("name"), "tokenizer_sha256": tok.get("sha256"),
                     "made_by": meta.get("stage") or meta.get("producer") or "-",
                     "config_hash": meta.get("config_hash") or meta.get("config_sha256") or "-",
                     "model": meta.get("encoder") or meta.get("generator") or meta.get("model") or "-"})
    commit = next((h.get("git_commit") for h in reversed(facts.history) if h.get("git_commit")), None)
    rows.append({"source": "(code)", "path": str(code_root),
                 "git_commit": commit or git_commit(code_root),
                 "made_by": "recorded at training start" if commit else "at report time (the run recorded none)"})
    return rows
