"""Export a checkpoint as an HF model folder (AutoModelForCausalLM + AutoTokenizer).

Examples:
    python launch/export.py checkpoint=runs/demo output=exports/demo      # the run's latest complete checkpoint
    python launch/export.py checkpoint=runs/demo/checkpoints/step_00000300 output=exports/s300 dtype=float32
    python launch/export.py checkpoint=runs/demo output=exports/demo tokenizer=bigcode/starcoder2-3b

Works for ZeRO 1, 2 and 3 checkpoints written by any number of ranks (the fp32 master weights are
consolidated with DeepSpeed's zero_to_fp32). No GPU and no process group are needed.
"""

from __future__ import annotations

import argparse
import logging
import sys

USAGE = ("python launch/export.py checkpoint=<run_dir>[/checkpoints/<tag>] output=<dir> "
         "[dtype=bfloat16|float32] [tokenizer=<path or hub name>]")
KEYS = {"checkpoint": None, "output": None, "dtype": "bfloat16", "tokenizer": None}
DTYPES = ("bfloat16", "float32", "float16")


def parse(argv: list[str]) -> dict[str, str | None]:
    parser = argparse.ArgumentParser(usage=USAGE, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("overrides", nargs="*", metavar="key=value")
    args = parser.parse_args(argv)
    values = dict(KEYS)
    for item in args.overrides:
        key, sep, value = item.partition("=")
        if not sep or key not in KEYS:
            parser.error(f"{item!r}: expected key=value with key one of {', '.join(KEYS)}")
        values[key] = value
    for key in ("checkpoint", "output"):
        if not values[key]:
            parser.error(f"{key}=... is required")
    if values["dtype"] not in DTYPES:
        parser.error(f"dtype={values['dtype']!r}: expected one of {', '.join(DTYPES)}")
    return values


def main(argv: list[str] | None = None) -> int:
    values = parse(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from arctic_pretrain.train.checkpoint import resolve_checkpoint

    try:
        root, tag = resolve_checkpoint(values["checkpoint"])
    except FileNotFoundError as err:
        print(f"error: checkpoint={err}", file=sys.stderr)
        return 2
    tag_dir = root / tag
    from arctic_pretrain.train.checkpoint import verify_checksums

    problems = verify_checksums(tag_dir, collective=False)
    if problems:
        print(f"error: checkpoint={tag_dir} is corrupt: " + "; ".join(problems), file=sys.stderr)
        return 2
    import torch

    from arctic_pretrain.train.export import export_checkpoint

    out = export_checkpoint(tag_dir, values["output"], tokenizer=values["tokenizer"],
                            dtype=getattr(torch, values["dtype"]))
    print(f"exported {tag_dir} -> {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
