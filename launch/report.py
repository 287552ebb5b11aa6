"""Render a training run as one self-contained HTML page (figures embedded), with the data behind it.

Usage:
    python launch/report.py run=<run_dir> [out=<file.html>] [eval=<results.json or folder>]

Reads run_dir (config.yaml, metrics.jsonl, curriculum.json) and, under the run's data root, the curation
report, the annotator's selection and the synthesis summary; missing parts are listed on the page.
"""

from __future__ import annotations

import argparse
import sys

USAGE = "python launch/report.py run=<run_dir> [out=<file.html>] [eval=<results.json or folder>]"
KEYS = ("run", "out", "eval")


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(usage=USAGE, description=__doc__.split("\n\n")[0])
    parser.add_argument("overrides", nargs="*", metavar="key=value")
    args = parser.parse_args(argv)
    values: dict[str, str | None] = dict.fromkeys(KEYS)
    for item in args.overrides:
        key, sep, value = item.partition("=")
        if not sep or key not in KEYS:
            parser.error(f"{item!r}: expected key=value with key one of {', '.join(KEYS)}")
        values[key] = value
    if not values["run"]:
        parser.error("run=<run_dir> is required")
    from arctic_pretrain.report import render_report

    try:
        out = render_report(values["run"], values["out"], values["eval"])
    except FileNotFoundError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"report: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
