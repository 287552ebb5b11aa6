"""The tokenizer of a data stage: loaded by path or hub name, or trained on a sample of curated files.

It is saved once into ``output_dir/tokenizer`` (an HF tokenizer folder AutoTokenizer loads), so every
grouping worker reads the same local ``tokenizer.json`` and the shards' manifests carry its hash.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass
from pathlib import Path

from arctic_pretrain.data.shards import TokenizerInfo


@dataclass
class TokenizeConfig:
    """Load a tokenizer (HF folder or hub name) or train a byte-level BPE on a sample of curated files."""

    tokenizer: str | None = None  # path or hub name; None trains one (below)
    train_vocab_size: int = 32_000  # ours for small runs; the paper's vocabulary is 64,000
    train_sample_mb: float = 64.0  # curated text sampled for tokenizer training
    shard_tokens: int = 256 * 2**20  # tokens per shard file
    batch_size: int = 256  # files per encode_batch call (whole repositories, so possibly more)

log = logging.getLogger(__name__)
INFO = "tokenizer_info.json"
SPECIAL_TOKENS = ["<|endoftext|>", "<repo_name>", "<file_sep>", "<fim_prefix>", "<fim_middle>",
                  "<fim_suffix>", "<fim_pad>"]


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
        texts = sample_texts(documents_dir, cfg.train_sample_mb)
        if not texts:
            raise ValueError(f"{documents_dir}: no curated files to train a tokenizer on")
        log.info(f"training a {cfg.train_vocab_size}-token BPE on {len(texts)} curated files")
        train_tokenizer(texts, cfg.train_vocab_size, out_dir)
        name = str(out_dir)
    info = TokenizerInfo.from_file(out_dir / "tokenizer.json", name=name)
    tmp = info_path.with_suffix(".tmp")
    tmp.write_text(json.dumps(asdict(info), indent=2))
    tmp.replace(info_path)
    return info


def train_tokenizer(texts: list[str], vocab_size: int, out_dir: Path) -> TokenizerInfo:
    """Byte-level BPE (the StarCoder family's kind) with the StarCoder2 special tokens."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(texts, trainer=trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>", bos_token="<|endoftext|>",
                                   unk_token="<|endoftext|>", pad_token="<|endoftext|>",
                                   additional_special_tokens=SPECIAL_TOKENS[1:])
    fast.save_pretrained(out_dir)
    return TokenizerInfo.from_file(out_dir / "tokenizer.json", name=str(out_dir))
