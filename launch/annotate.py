"""Phase-2 data: ``python launch/annotate.py curated=<curation output_dir> [output_dir=...] [select.tokens=N]``.

Trains the quality classifier, scores every curated file, selects the top per language and tokenizes
the selection into ``<output_dir>/all`` and ``<output_dir>/python`` (default output_dir:
``<curated>/high_quality``, where conf/train/data/snowcoder.yaml looks). ``stage=train|score|select|report``
runs one stage; finished stages are skipped.
"""

from __future__ import annotations

import os
import sys

from arctic_pretrain.annotate.config import AnnotateConfig, register
from arctic_pretrain.common.config import ConfigError, entry_point

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")  # datatrove forks workers after tokenizers ran
register()


@entry_point("annotate", "annotate", AnnotateConfig, __doc__, version_base=None,
             missing_hint="usage: python launch/annotate.py curated=<curation output_dir> [select.tokens=N]")
def main(cfg: AnnotateConfig) -> None:
    from arctic_pretrain.annotate import run

    try:
        out = run(cfg)
    except ConfigError as err:
        print(f"config error: {err}", file=sys.stderr)
        sys.exit(2)
    except RuntimeError as err:
        print(f"annotate failed: {err}", file=sys.stderr)
        sys.exit(1)
    if cfg.executor.kind == "slurm" and not cfg.executor.wait:
        print(f"submitted the classifier's training, scoring and select+report as SLURM jobs (those still to do): "
              f"{out}/manifest.json is written last, by the finish job; logs: {out}/logs/<train|score|finish>/"
              "slurm_logs (executor.wait=true blocks until it exists)")
        return
    if not (out / "manifest.json").is_file():  # a stage= run: the other stages are still to run
        print(f"stage={cfg.stage} complete in {out}; stage=all runs the rest (train, score, select, report)")
        return
    print(f"annotated: {out}/selection.json; phase-2 sources {out}/all and {out}/python; report {out}/report/report.md")


if __name__ == "__main__":
    main()
