"""The run report: one self-contained HTML page about a training run and the data behind it.

It reads only files (the run dir and the data root's manifests), never a stage's code, so any run,
from here or from a cluster, renders the same way.
"""

from arctic_pretrain.report.html import render_report

__all__ = ["render_report"]
