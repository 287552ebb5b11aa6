"""Render a run's facts as one self-contained HTML page: figures are PNGs embedded as data URIs."""

from __future__ import annotations

import base64
import html
import io
from pathlib import Path
from typing import Any

from arctic_pretrain.report.collect import RunFacts, collect, provenance

# the paper's reported greedy pass@1 (docs/recipe.md), shown beside this run's rows
PAPER_ROWS = [
    ("after phase 1 (500B)", 14.0, 27.8, 7.4, 10.3),
    ("after phase 2 (+50B)", 21.3, 34.7, 12.8, 12.3),
    ("Arctic-SnowCoder-1.3B (+5B)", 28.0, 42.9, 18.0, 19.4),
]
TASK_COLUMNS = ("humaneval_plus", "mbpp_plus", "evoeval", "bigcodebench")


def _png(fig) -> str:
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def _img(uri: str, alt: str) -> str:
    return f'<img alt="{html.escape(alt)}" src="{uri}">'


def _table(rows: list[dict[str, Any]], columns: list[str] | None = None) -> str:
    if not rows:
        return "<p class=note>(none)</p>"
    columns = columns or list(dict.fromkeys(k for r in rows for k in r))
    head = "".join(f"<th>{html.escape(c)}</th>" for c in columns)

    def cell(v: Any) -> str:
        if isinstance(v, float):
            v = f"{v:.4g}"
        elif isinstance(v, str) and len(v) == 64 and all(c in "0123456789abcdef" for c in v):
            v = v[:12]  # a SHA-256: its prefix identifies it on the page
        return f"<td>{html.escape('' if v is None else str(v))}</td>"

    body = "".join("<tr>" + "".join(cell(r.get(c)) for c in columns) + "</tr>" for r in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _training_figures(facts: RunFacts) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in facts.metrics if r.get("event") is None]
    if not rows:
        return ["<p class=note>no metrics.jsonl lines yet</p>"]
    x = [r["consumed_tokens"] for r in rows]
    figs = []
    fig, (a, b) = plt.subplots(1, 2, figsize=(12, 4), sharey=True)
    for phase in dict.fromkeys(r["phase"] for r in rows):
        part = [r for r in rows if r["phase"] == phase and r.get("loss") is not None]
        a.plot([r["consumed_tokens"] for r in part], [r["loss"] for r in part], label=phase)
    for key in sorted({k for r in rows for k in r if k.startswith("loss/")}):
        part = [r for r in rows if r.get(key) is not None]
        b.plot([r["consumed_tokens"] for r in part], [r[key] for r in part], ".", ms=3, label=key[5:])
    a.set(title="loss by phase", xlabel="consumed tokens", ylabel="loss")
    b.set(title="loss by source", xlabel="consumed tokens")
    a.legend()
    b.legend()
    figs.append(_img(_png(fig), "loss by phase and by source"))
    fig, (a, b, c) = plt.subplots(1, 3, figsize=(15, 3.6))
    a.plot(x, [r.get("lr") for r in rows])
    a.set(title="learning rate", xlabel="consumed tokens")
    b.plot(x, [r.get("tokens_per_s") for r in rows])
    b.set(title="throughput (tokens/s)", xlabel="consumed tokens")
    mfu = [r.get("mfu") for r in rows]
    if any(m is not None for m in mfu):
        c.plot(x, [100 * m if m is not None else None for m in mfu])
        c.set(title="MFU (%)", xlabel="consumed tokens")
    else:
        c.text(0.5, 0.5, "MFU not logged (no known peak FLOP/s:\nset peak_tflops= on other devices)", ha="center")
        c.set_axis_off()
    figs.append(_img(_png(fig), "learning rate, throughput and MFU"))
    if facts.curriculum:
        fig, ax = plt.subplots(figsize=(12, 3))
        names = sorted({s for p in facts.curriculum for s in p["weights"]})
        for i, p in enumerate(facts.curriculum):
            left = 0.0
            for name in names:
                w = p["weights"].get(name, 0.0)
                ax.barh(p["phase"], w, left=left, label=name if i == 0 else None,
                        color=f"C{names.index(name)}")
                left += w
        ax.set(title="curriculum: mixture weights per phase", xlabel="share of samples")
        ax.legend(ncol=min(len(names), 6), fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.3))
        figs.append(_img(_png(fig), "curriculum mixtures"))
    return figs


def _funnel(counts: list[tuple[str, float]], title: str) -> str:
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 0.4 * len(counts) + 1))
    ax.barh([c[0] for c in counts][::-1], [c[1] for c in counts][::-1], color="C0")
    ax.set(title=title)
    return _img(_png(fig), title)


def _curation_section(cur: dict | None) -> str:
    if not cur:
        return "<p class=note>no curation report</p>"
    rows = cur.get("funnel") or []
    parts = []
    if rows:
        parts.append(_funnel([(r["stage"], float(r["docs_out"])) for r in rows],
                             "curation funnel: files left after each step (repositories after grouping)"))
        parts.append(_table(rows))
    removals = [{"reason": k, "files": v} for k, v in (cur.get("removals") or {}).items()]
    langs = [{"language": k, **v} for k, v in (cur.get("languages") or {}).items()]
    parts.append("<h3>removed, by reason</h3>" + _table(removals))
    parts.append("<h3>phase-1 sources, by language</h3>" + _table(langs))
    return "".join(parts)


def _selection_section(sel: dict | None, pngs: list[Path]) -> str:
    if not sel:
        return "<p class=note>no annotator selection</p>"
    rows = [{"language": lang, **{k: v for k, v in info.items() if not isinstance(v, dict | list)}}
            for lang, info in (sel.get("languages") or {}).items()]
    meta = {k: sel.get(k) for k in ("encoder", "positives", "metrics") if k in sel}
    imgs = "".join(_img("data:image/png;base64," + base64.b64encode(p.read_bytes()).decode(), p.stem) for p in pngs)
    return _table(rows) + f"<pre>{html.escape(_short(meta))}</pre>" + imgs


def _synthesis_section(syn: dict | None) -> str:
    if not syn:
        return "<p class=note>no synthesis summary</p>"
    counts = [(k, float(syn[k])) for k in ("requested", "generated", "kept") if isinstance(syn.get(k), int | float)]
    rejected = syn.get("rejected") or {}
    counts += [(f"rejected: {k}", float(v)) for k, v in rejected.items() if isinstance(v, int | float)]
    figure = _funnel(counts, "synthesis funnel") if counts else ""
    flat = {k: v for k, v in syn.items() if not isinstance(v, dict | list)}
    return figure + _table([flat])


def _evaluation_section(ev: dict | None) -> str:
    rows = []
    for model in (ev or {}).get("models") or []:  # one entry per phase export (or baseline), in order
        row = {"model": model.get("name"), "step": model.get("step"), "tokens": model.get("consumed_tokens")}
        for task, res in (model.get("tasks") or {}).items():
            if isinstance(res, dict) and "pass@1" in res:
                row[task] = round(100 * float(res["pass@1"]), 1)
            elif isinstance(res, dict) and res.get("skipped"):
                row[task] = "skipped"
        for task, res in (model.get("aligned") or {}).items():
            if isinstance(res, dict) and "loss" in res:
                row[f"aligned loss: {task}"] = round(float(res["loss"]), 3)
        rows.append(row)
    paper = [{"model": f"paper: {name}", **dict(zip(TASK_COLUMNS, vals, strict=True))} for name, *vals in PAPER_ROWS]
    if not rows:
        return "<p class=note>no evaluation results for this run</p>" + _table(paper)
    cols = ["model", *dict.fromkeys(k for r in rows + paper for k in r if k != "model")]
    return _table(rows + paper, cols)


def _aligned_section(facts: RunFacts) -> str:
    """The benchmark-aligned loss per phase export (results.json) and along training (metrics.jsonl lines
    of the in-loop callback), with the held-out corpus loss beside it where the run held windows out."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    parts = []
    models = [m for m in (facts.evaluation or {}).get("models") or [] if m.get("aligned")]
    tasks = list(dict.fromkeys(t for m in models for t, r in m["aligned"].items() if "loss" in r))
    if tasks:
        fig, ax = plt.subplots(figsize=(max(5.0, 1.4 * len(models) + 2), 3.8))
        for i, task in enumerate(tasks):
            ax.plot(range(len(models)), [m["aligned"].get(task, {}).get("loss") for m in models], marker="o",
                    color=f"C{i}", label=task)
        ax.set_xticks(range(len(models)), [m.get("name") for m in models], rotation=20)
        ax.set(title="benchmark-aligned loss by phase export", ylabel="nats per solution token")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        parts.append(_img(_png(fig), "benchmark-aligned loss by phase"))
    rows = [r for r in facts.metrics if r.get("event") == "aligned_eval"]
    keys = sorted({k for r in rows for k in r if k.startswith(("aligned_loss/", "heldout_loss/"))})
    if rows and keys:
        fig, ax = plt.subplots(figsize=(12, 4))
        for i, key in enumerate(keys):
            part = [r for r in rows if r.get(key) is not None]
            ax.plot([r["consumed_tokens"] for r in part], [r[key] for r in part], marker=".", color=f"C{i}",
                    ls="-" if key.startswith("aligned") else "--", label=key)
        for a, b in zip(rows, rows[1:], strict=False):
            if a["phase"] != b["phase"]:
                ax.axvline(a["consumed_tokens"], color="grey", lw=0.8, ls=":")
        heldout = " and held-out corpus loss (dashed)" if any(k.startswith("heldout") for k in keys) else ""
        ax.set(title=f"along training: benchmark-aligned loss (solid){heldout}; phase ends dotted",
               xlabel="consumed tokens", ylabel="nats per token")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        parts.append(_img(_png(fig), "benchmark-aligned loss along training"))
    if not parts:
        return ("<p class=note>no benchmark-aligned loss: set evaluation.interval for the in-loop curve; "
                "launch/evaluate.py writes it per phase export</p>")
    return "".join(parts)


def _ablation_section(facts: RunFacts) -> str:
    """The selection ablation's table (each arm against the baseline, paired bootstrap intervals) and its
    chart, as the evaluation wrote them (ablation.json, ablation.png)."""
    table = facts.ablation or {}
    rows = []
    for m in table.get("metrics") or []:
        for arm in table.get("arms") or []:
            c = (m.get("vs_baseline") or {}).get(arm)
            rows.append({"metric": m["metric"], "problems": m.get("problems"), "arm": arm,
                         "value": m["values"].get(arm),
                         f"difference vs {table['baseline']}": c["diff"] if c else "(baseline)",
                         "interval": f"[{c['lo']:+.4f}, {c['hi']:+.4f}]" if c else "",
                         "verdict": c.get("verdict", "") if c else ""})
    head = (f"<p>Each arm against <b>{html.escape(str(table.get('baseline')))}</b>, paired per problem; "
            f"{100 * float(table.get('confidence', 0.95)):g}% percentile intervals from {table.get('resamples')} "
            "bootstrap resamples of the problems.</p>")
    img = (_img("data:image/png;base64," + base64.b64encode(facts.ablation_png.read_bytes()).decode(),
                "selection ablation") if facts.ablation_png else "")
    return head + _table(rows) + img


def _short(value: Any, limit: int = 3000) -> str:
    import json

    text = json.dumps(value, indent=2, default=str)
    return text if len(text) <= limit else text[:limit] + "\n..."


STYLE = """body{font-family:system-ui,sans-serif;margin:2em;max-width:1250px;color:#222}
h1{margin-bottom:0}h2{border-bottom:1px solid #ccc;padding-bottom:.2em;margin-top:1.6em}
table{border-collapse:collapse;margin:.6em 0;font-size:13px}td,th{border:1px solid #ccc;padding:3px 8px;text-align:left}
th{background:#f3f3f3}img{max-width:100%;display:block;margin:.6em 0}.note{color:#a60}pre{background:#f7f7f7;padding:.6em;font-size:12px;overflow:auto}"""


def render_report(run_dir: str | Path, out: str | Path | None = None, evaluation: str | Path | None = None,
                  code_root: str | Path | None = None) -> Path:
    """Write ``run_dir/report.html`` (or ``out``) and return its path."""
    facts = collect(run_dir, evaluation)
    out = Path(out) if out else facts.run_dir / "report.html"
    code_root = Path(code_root) if code_root else Path(__file__).resolve().parents[2]
    last = next((r for r in reversed(facts.metrics) if r.get("event") is None), {})
    summary = {"run_dir": str(facts.run_dir), "model": (facts.config.get("model") or {}).get("name"),
               "steps": last.get("step"), "consumed_tokens": last.get("consumed_tokens"),
               "final loss": last.get("loss"), "phase": last.get("phase"), "data root": str(facts.data_root)}
    sections = [
        ("Summary", _table([summary])),
        ("Training", "".join(_training_figures(facts))),
        ("Curation", _curation_section(facts.curation)),
        ("Annotator selection (phase-2 data)", _selection_section(facts.selection, facts.selection_pngs)),
        ("Synthesis (phase-3 data)", _synthesis_section(facts.synthesis)),
        ("Evaluation (greedy pass@1, %; paper rows for reference)", _evaluation_section(facts.evaluation)),
        ("Benchmark-aligned loss (reference solutions given their prompts; lower is better)",
         _aligned_section(facts)),
        ("Provenance", _table(provenance(facts, code_root))),
    ]
    if facts.ablation:
        sections.insert(-1, ("Selection ablation (phase-2 arms from one phase-1 checkpoint)", _ablation_section(facts)))
    notes = "".join(f"<li>{html.escape(n)}</li>" for n in facts.notes)
    body = "".join(f"<h2>{html.escape(t)}</h2>{content}" for t, content in sections)
    page = (f"<!doctype html><html><head><meta charset=utf-8><title>arctic-pretrain run report: "
            f"{html.escape(facts.run_dir.name)}</title><style>{STYLE}</style></head><body>"
            f"<h1>Run report: {html.escape(facts.run_dir.name)}</h1>"
            + (f"<ul class=note>{notes}</ul>" if notes else "") + body + "</body></html>")
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_text(page)
    tmp.replace(out)
    return out
