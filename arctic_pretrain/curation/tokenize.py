"""The tokenizer of a curation run: loaded by path or hub name, or trained on a sample of curated files.

It is saved once into ``output_dir/tokenizer`` (an HF tokenizer folder AutoTokenizer loads), so every
grouping worker reads the same local ``tokenizer.json`` and the shards' manifests carry its hash.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

from datatrove.data import DocumentsPipeline
from datatrove.pipeline.base import PipelineStep
from loguru import logger

from arctic_pretrain.curation.config import TokenizeConfig
from arctic_pretrain.data.shards import TokenizerInfo

INFO = "tokenizer_info.json"


def sample_texts(documents_dir: Path, megabytes: float) -> list[str]:
    """Curated files for tokenizer training: an equal share of ``megabytes`` from every documents file,
    so every language and bucket contributes."""
    files = sorted(documents_dir.glob("*/*.jsonl"))
    if not files:
        return []
    share = int(megabytes * 2**20) // len(files) + 1
    texts = []
    for f in files:
        taken = 0
        with open(f, encoding="utf-8") as fh:
            for line in fh:
                if taken >= share:
                    break
                text = json.loads(line)["text"]
                texts.append(text)
                taken += len(text)
    return texts


def prepare_tokenizer(cfg: TokenizeConfig, documents_dir: Path, out_dir: Path) -> TokenizerInfo:
    """Load or train the tokenizer into ``out_dir``; returns its identity (reused if already there)."""
    info_path = out_dir / INFO
    if info_path.is_file():
        return TokenizerInfo(**json.loads(info_path.read_text()))
    if cfg.tokenizer:
        from transformers import AutoTokenizer

        tok = AutoTokenizer.from_pretrained(cfg.tokenizer)
        tok.save_pretrained(out_dir)
        name = cfg.tokenizer
        if not (out_dir / "tokenizer.json").is_file():
            raise ValueError(f"tokenize.tokenizer={cfg.tokenizer!r}: not a fast tokenizer (no tokenizer.json)")
    else:
        from arctic_pretrain.data.demo import train_tokenizer

        texts = sample_texts(documents_dir, cfg.train_sample_mb)
        if not texts:
            raise ValueError(f"{documents_dir}: no curated files to train a tokenizer on")
        logger.info(f"training a {cfg.train_vocab_size}-token BPE on {len(texts)} curated files")
        train_tokenizer(texts, cfg.train_vocab_size, out_dir)
        name = str(out_dir)
    info = TokenizerInfo.from_file(out_dir / "tokenizer.json", name=name)
    tmp = info_path.with_suffix(".tmp")
    tmp.write_text(json.dumps(asdict(info), indent=2))
    tmp.replace(info_path)
    return info


class PrepareTokenizer(PipelineStep):
    """One task: make ``output_dir/tokenizer`` before the grouping tasks encode."""

    type = "🔢 - TOKENIZER"
    name = "tokenizer"

    def __init__(self, cfg: TokenizeConfig, documents_dir: str, out_dir: str) -> None:
        super().__init__()
        self.cfg, self.documents_dir, self.out_dir = cfg, documents_dir, out_dir

    def run(self, data: DocumentsPipeline = None, rank: int = 0, world_size: int = 1) -> DocumentsPipeline:
        with self.track_time("run"):
            info = prepare_tokenizer(self.cfg, Path(self.documents_dir), Path(self.out_dir))
        self.stat_update("vocab_size", value=info.vocab_size)
        yield from ()
