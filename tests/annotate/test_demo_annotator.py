"""The demo annotator learns: its positives (conf/annotate/experiment/demo.yaml, the `algorithms` package:
small documented functions solving well-known problems, aligned with HumanEval) give enough chunks, the
validation split holds at least 200 files and no file sits in both splits, and a classifier trained on
them the demo's way separates held-out positives from real, intact phase-1 code (stdlib modules and C
headers, as the demo's curated corpus), which the demo's old library positives could not."""

from __future__ import annotations

import json
import sysconfig
from pathlib import Path

import pytest

from arctic_pretrain.annotate.config import AnnotateConfig

STDLIB = Path(sysconfig.get_paths()["stdlib"])
INCLUDE = Path(sysconfig.get_paths()["include"])


def demo_config(curated: Path, *overrides: str) -> AnnotateConfig:
    """What `launch/pipeline.py experiment=demo` runs annotate with: annotate's own composition (default
    experiment=demo) plus the demo pipeline's annotate args, then ``overrides``."""
    from hydra import compose, initialize_config_dir

    from arctic_pretrain.annotate.config import register, to_config
    from arctic_pretrain.common.config import HYDRA_VERSION_BASE, conf_dir
    from tests.pipeline.test_experiments_compose import pipeline_config

    args = [a for a in pipeline_config("demo").stages["annotate"].args if not a.startswith("curated=")]
    register()
    with initialize_config_dir(config_dir=conf_dir("annotate"), version_base=HYDRA_VERSION_BASE):
        cfg = compose(config_name="annotate", overrides=[f"curated={curated}", *args, *overrides])
    return to_config(cfg)


@pytest.fixture(scope="module")
def phase1(tmp_path_factory) -> Path:
    """A curated folder (documents/<language>/*.jsonl, the curation contract) of real, intact code like the
    demo's: 450 standard-library modules and the C headers of this Python."""
    root = tmp_path_factory.mktemp("demo-annotator") / "curated"
    python = sorted(p for p in STDLIB.rglob("*.py") if "test" not in p.parts and "site-packages" not in p.parts
                    and "idlelib" not in p.parts and 400 < p.stat().st_size < 60_000)[::2][:450]
    sources = {"python": [(p, STDLIB) for p in python], "c": [(p, INCLUDE) for p in sorted(INCLUDE.rglob("*.h"))]}
    for language, files in sources.items():
        folder = root / "documents" / language
        folder.mkdir(parents=True)
        with open(folder / "g0000-r00000.jsonl", "w") as fh:
            for path, base in files:
                rel = path.relative_to(base).as_posix()
                fh.write(json.dumps({"text": path.read_text(encoding="utf-8", errors="replace"), "id": rel,
                                     "metadata": {"language": language, "repo": base.name, "path": rel}}) + "\n")
    return root


def test_demo_positives_are_problem_solving_code_decontaminated_and_plenty() -> None:
    from transformers import AutoTokenizer

    from arctic_pretrain.annotate.encoder import Chunker, resolve_encoder
    from arctic_pretrain.annotate.training_data import drop_contaminated, load_positives

    cfg = demo_config(Path("unused"))
    assert [p.source for p in cfg.positives] == ["pkg:algorithms"]
    loaded = load_positives(cfg.positives[0], cfg.data.seed)
    kept, record = drop_contaminated(loaded, cfg.decontamination)
    assert "humaneval" in record["benchmarks"]
    assert len(kept) >= 350, f"{len(kept)} demo positives after decontamination"
    chunker = Chunker(AutoTokenizer.from_pretrained(resolve_encoder(cfg.model.encoder)), cfg.model.max_length)
    chunks = sum(len(chunker.chunks(ids, cfg.model.chunks_per_file)) for ids in chunker.ids([e.text for e in kept]))
    # the paper's top/middle/bottom windows: the 70% of files that train give over 600 positive chunks
    assert cfg.model.chunks_per_file == 3 and chunks * (1 - cfg.data.validation_fraction) >= 600, chunks


def test_demo_validation_holds_200_files_and_no_file_is_in_both_splits(phase1, tmp_path) -> None:
    from arctic_pretrain.annotate.training_data import BuildTrainingData, load_split

    cfg = demo_config(phase1, f"output_dir={tmp_path}")
    manifest = BuildTrainingData(cfg, phase1, tmp_path).run()
    assert manifest["validation_examples"] >= 200, manifest
    splits = {name: load_split(tmp_path / "training_data", name) for name in ("train", "validation")}
    ids = {name: {(s, i) for s, i in zip(split["source"], split["id"], strict=True)} for name, split in splits.items()}
    texts = {name: set(split["text"]) for name, split in splits.items()}
    assert not ids["train"] & ids["validation"] and not texts["train"] & texts["validation"]
    # chunking happens per split after the split, so a file's chunks stay with the file
    assert sum(splits["validation"]["label"]) >= 100 and len(splits["validation"]) - sum(splits["validation"]["label"]) >= 100


def test_the_demo_annotator_separates_held_out_files(phase1, tmp_path) -> None:
    """The demo's positives and chunking on a sample (48 files per class, 64-token windows, a few epochs at a
    higher learning rate: a fraction of the demo's training): validation ROC-AUC well above chance."""
    from arctic_pretrain.annotate.pipeline import Annotate

    cfg = demo_config(phase1, f"output_dir={tmp_path}", "data.max_positives=48", "model.max_length=64",
                      "model.epochs=3", "model.learning_rate=1e-4")
    metrics = Annotate(cfg).fit()
    v = metrics["validation"]
    assert v["examples"] >= 28 and metrics["train"]["chunks"] > metrics["train"]["examples"]
    assert v["roc_auc"] >= 0.75, metrics
