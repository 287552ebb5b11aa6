"""Phase-3 synthetic data: ``python launch/synthesize.py seeds=<annotate output_dir> backend=openai
backend.base_url=http://node:8000/v1 backend.model=<name>`` (or backend=vllm / backend=transformers)."""

from __future__ import annotations

import sys

from arctic_pretrain.common.config import ConfigError, entry_point
from arctic_pretrain.synthesize.config import SynthesizeConfig, register, validate

register()


@entry_point("synthesize", "synthesize", SynthesizeConfig, __doc__, version_base=None,
             missing_hint="usage: python launch/synthesize.py seeds=<annotate output_dir> backend=openai|vllm|transformers ...")
def main(config: SynthesizeConfig) -> None:
    from arctic_pretrain.generation.openai import ServerUnavailable
    from arctic_pretrain.synthesize import run
    from arctic_pretrain.synthesize.generations import GenerationFileError

    try:
        validate(config)
        out = run(config)
    except ConfigError as err:
        print(f"config error: {err}", file=sys.stderr)
        sys.exit(2)
    except (ServerUnavailable, GenerationFileError) as err:  # no server, a wrong model, the server went away
        print(f"synthesis stopped: {err}", file=sys.stderr)
        sys.exit(1)
    except RuntimeError as err:  # requests that gave up: finished seeds are kept, a rerun retries the rest
        print(f"synthesis incomplete: {err}", file=sys.stderr)
        sys.exit(1)
    if config.workers.worker is not None or not config.workers.finalize:
        print(f"worker {config.workers.worker} done: {out}/generations; rerun without workers.worker to finalize")
        return
    print(f"synthesized: {out}/synthesis.json, token source {out}/manifest.json")


if __name__ == "__main__":
    main()
