"""Phase-2 data: ``python launch/annotate.py curated=<curation output_dir> [output_dir=...] [select.tokens=N]``.

Trains the quality classifier, scores every curated file, selects the top per language and tokenizes
the selection into ``<output_dir>/all`` and ``<output_dir>/python`` (default output_dir:
``<curated>/high_quality``, where conf/train/data/snowcoder.yaml looks). ``step=train|score|select|report``
runs one step; finished steps are skipped. ``experiment=demo|paper`` picks the preset (conf/annotate/experiment/).
Deprecated until the next release: ``stage=`` (now ``step=``) and ``recipe=`` (now ``experiment=``).
"""

from __future__ import annotations

import os

from arctic_pretrain.annotate import run, summary
from arctic_pretrain.annotate.config import RENAMED, AnnotateConfig, register
from arctic_pretrain.common.config import entry_point

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")  # datatrove forks workers after tokenizers ran
register()


@entry_point("annotate", "annotate", AnnotateConfig, __doc__,
             missing_hint="usage: python launch/annotate.py curated=<curated output_dir> [select.tokens=N]",
             renamed=RENAMED)
def main(cfg: AnnotateConfig) -> str:
    return summary(cfg, run(cfg))


if __name__ == "__main__":
    main()
