"""Loss curves a person would rather look at than read: by phase, and by data source."""

from __future__ import annotations

from pathlib import Path

from arctic_pretrain.train.metrics import read_metrics


def plot_losses(run_dir: str | Path, out: str | Path | None = None) -> Path:
    """Write run_dir/loss.png: total loss coloured by phase (left), loss per source (right)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    run_dir = Path(run_dir)
    rows = read_metrics(run_dir)
    out = Path(out) if out else run_dir / "loss.png"
    fig, (ax_phase, ax_source) = plt.subplots(1, 2, figsize=(13, 4.5), sharey=True)
    phases = list(dict.fromkeys(r["phase"] for r in rows))
    for phase in phases:
        part = [r for r in rows if r["phase"] == phase and r.get("loss") is not None]
        ax_phase.plot([r["consumed_tokens"] for r in part], [r["loss"] for r in part], label=phase)
    sources = sorted({k for r in rows for k in r if k.startswith("loss/")})
    for key in sources:
        part = [r for r in rows if r.get(key) is not None]
        ax_source.plot([r["consumed_tokens"] for r in part], [r[key] for r in part], ".", ms=3,
                       label=key.split("/", 1)[1])
    for phase in phases[1:]:
        start = next(r["consumed_tokens"] for r in rows if r["phase"] == phase)
        for ax in (ax_phase, ax_source):
            ax.axvline(start, color="grey", lw=0.8, ls="--")
    ax_phase.set(title="loss by curriculum phase", xlabel="consumed tokens", ylabel="next-token loss")
    ax_source.set(title="loss by data source", xlabel="consumed tokens")
    ax_phase.legend()
    ax_source.legend()
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out
