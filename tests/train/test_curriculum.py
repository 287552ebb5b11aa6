import math

import pytest
from omegaconf import OmegaConf

from arctic_pretrain.train.config import CurriculumConfig
from arctic_pretrain.train.curriculum import Curriculum, phase_weights


def curriculum_cfg(**budgets) -> CurriculumConfig:
    raw = {"name": "t", "phases": {
        "general": {"tokens": budgets.get("general", "1000"), "mixture": {"python": 1, "c": 1},
                    "lr": {"peak_lr": 1.0, "end_lr": 0.1, "warmup_steps": 4, "decay": "cosine"}},
        "high_quality": {"tokens": budgets.get("high_quality", "500"), "mixture": {"hq": 1},
                         "lr": {"peak_lr": 0.5, "end_lr": 0.0, "warmup_steps": 2, "decay": "linear"}},
        "synthetic": {"tokens": budgets.get("synthetic", "200"), "mixture": {"syn": 1, "hq": 1},
                      "pinned": {"syn": 0.25}, "lr": {"peak_lr": 0.2, "decay": "constant"}},
    }}
    return OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(CurriculumConfig), raw))


def test_phases_switch_at_token_boundaries():
    cur = Curriculum(curriculum_cfg(), tokens_per_step=100)
    assert [(p.name, p.start, p.end) for p in cur.phases] == [
        ("general", 0, 1000), ("high_quality", 1000, 1500), ("synthetic", 1500, 1700)]
    assert cur.phase_at(900).name == "general"
    assert cur.phase_at(1000).name == "high_quality"
    assert cur.phase_at(1499).name == "high_quality"
    assert cur.phase_at(1500).name == "synthetic"
    assert cur.finished_phase(1000).name == "general" and cur.finished_phase(1100) is None
    assert cur.is_done(1700) and not cur.is_done(1600)


def test_budgets_round_up_to_whole_steps_cumulatively():
    cur = Curriculum(curriculum_cfg(general="950", high_quality="120"), tokens_per_step=100)
    assert [p.end for p in cur.phases] == [1000, 1100, 1300]  # 950 -> 1000; 950+120=1070 -> 1100


def test_budget_override_moves_the_boundary():
    base = Curriculum(curriculum_cfg(), tokens_per_step=100)
    longer = Curriculum(curriculum_cfg(general="2K"), tokens_per_step=100)
    assert base.phase_at(1500).name == "synthetic"
    assert longer.phase_at(1500).name == "general"
    assert longer.phases[1].start == 2000


def test_lr_warmup_decay_and_rewarmup():
    cur = Curriculum(curriculum_cfg(), tokens_per_step=100)
    lrs = [cur.lr_at(step * 100) for step in range(17)]
    assert lrs[:4] == pytest.approx([0.25, 0.5, 0.75, 1.0])  # linear warmup reaches peak at its last step
    assert lrs[9] == pytest.approx(0.1)  # cosine reaches end_lr at the phase's last step
    assert lrs[6] == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 2 / 5)))
    assert lrs[10:12] == pytest.approx([0.25, 0.5])  # re-warmup from 0 at the phase start
    assert lrs[12:15] == pytest.approx([0.5, 0.25, 0.0])  # linear decay to 0
    assert lrs[15:17] == pytest.approx([0.2, 0.2])  # constant


def test_lr_is_a_pure_function_of_tokens():
    a, b = Curriculum(curriculum_cfg(), 100), Curriculum(curriculum_cfg(), 100)
    assert [a.lr_at(t) for t in range(0, 1700, 100)] == [b.lr_at(t) for t in reversed(range(0, 1700, 100))][::-1]


def test_pinned_and_natural_weights():
    cfg = curriculum_cfg()
    syn = phase_weights(cfg.phases["synthetic"])
    assert syn == pytest.approx({"syn": 0.25, "hq": 0.75})
    general = cfg.phases["general"]
    general.weighting = "natural"
    assert phase_weights(general, {"python": 300, "c": 100}) == pytest.approx({"python": 0.75, "c": 0.25})


def write_source(folder, parts: dict[str, int], metadata: dict | None = None):
    """A token source whose shards are named ``<prefix>-...``, ``tokens`` tokens each (EOS included)."""
    from arctic_pretrain.data.shards import ShardWriter, TokenizerInfo, finalize_source

    for prefix, tokens in parts.items():
        with ShardWriter(folder, TokenizerInfo("t", 100, eos_id=0), prefix=prefix) as w:
            w.add_document([1] * (tokens - 1))
            w.close(finalize=False)
    finalize_source(folder, metadata=metadata)
    return folder


def test_each_stage_records_the_language_mix_the_curriculum_reads(tmp_path):
    from arctic_pretrain.data.shards import TokenSource

    curated = write_source(tmp_path / "tokens/java", {"g0000": 300}, {"language": "java"})
    selected = write_source(tmp_path / "high_quality/all", {"python-g0000": 200, "java-g0000": 500, "java-g0001": 100},
                            {"languages": "all"})  # the annotator's merged selection: shards named by language
    synthetic = write_source(tmp_path / "synthetic", {"synthetic": 90}, {"language_tokens": {"python": 60, "go": 30}})
    anonymous = write_source(tmp_path / "other", {"shard": 50})
    assert TokenSource(curated).language_tokens == {"java": 300}
    assert TokenSource(selected).language_tokens == {"python": 200, "java": 600}
    assert TokenSource(synthetic).language_tokens == {"python": 60, "go": 30}
    assert TokenSource(anonymous).language_tokens is None


def phase3(**mix):
    """The paper config's phase 3, its sources' sizes and measured language mixes (tokens)."""
    from arctic_pretrain.train.curriculum import phase_languages
    from tests.train.test_configs import load

    phase = load("experiment=snowcoder_1b3").curriculum.phases["synthetic"]
    mixes = {"synthetic": {"python": 1000, "java": 500, "cpp": 500},  # seeds 50% Python (synthesize.seeding)
             "high_quality": {"python": 2500, "java": 6000, "cpp": 4000},  # the selection: phase 1's mix
             "high_quality_python": {"python": 2500}, **mix}
    sizes = {name: sum((m or {"?": 2000}).values()) for name, m in mixes.items()}
    return phase, sizes, mixes, lambda weights: phase_languages(weights, mixes)[0]


def test_phase3_python_share_is_computed_from_the_sources_language_mix():
    phase, sizes, mixes, languages = phase3()
    assert dict(phase.language_shares) == {"python": 0.5} and dict(phase.pinned) == {"synthetic": 0.4}
    weights = phase_weights(phase, sizes, mixes)
    assert weights["synthetic"] == pytest.approx(0.4)  # 2B of 5B
    assert languages(weights)["python"] == pytest.approx(0.5)  # the paper's ~50%
    assert weights["high_quality_python"] == pytest.approx((0.5 - 0.4 * 0.5 - 0.6 * 0.2) / (1 - 0.2))
    hq = {lang: weights["high_quality"] * t / sizes["high_quality"] for lang, t in mixes["high_quality"].items()}
    assert hq["java"] / hq["cpp"] == pytest.approx(6000 / 4000)  # the selection keeps its own ratios
    # the pins this replaces treated synthetic as all Python: 0.4 x 50% + 0.1 + 0.5 x 20% = 40%
    phase.pinned, phase.language_shares = {"synthetic": 0.4, "high_quality_python": 0.1}, {}
    assert languages(phase_weights(phase, sizes, mixes))["python"] == pytest.approx(0.4)


def test_a_language_share_the_data_cannot_reach_is_clamped_and_an_unknown_mix_is_named():
    phase, sizes, mixes, languages = phase3(high_quality={"python": 9000, "java": 1000})  # already 90% Python
    weights = phase_weights(phase, sizes, mixes)
    assert "high_quality_python" not in weights and languages(weights)["python"] > 0.5
    phase, sizes, mixes, _ = phase3(synthetic=None)
    with pytest.raises(ValueError, match=r"sources \['synthetic'\] record no language mix"):
        phase_weights(phase, sizes, mixes)
    with pytest.raises(ValueError, match="needs the sources' measured language mix"):
        phase_weights(phase, sizes)


def test_dry_run_prints_each_phases_language_shares(tmp_path):
    from arctic_pretrain.data.languages import PAPER_LANGUAGES
    from arctic_pretrain.train.dry_run import plan, render
    from tests.train.test_configs import load

    for lang in PAPER_LANGUAGES:  # phase 1: Python is 20% of the curated tokens
        write_source(tmp_path / "tokens" / lang, {"g0000": 2000 if lang == "python" else 470}, {"language": lang})
    write_source(tmp_path / "high_quality/all", {"python-g0000": 500, "java-g0000": 1500, "c-g0000": 500})
    write_source(tmp_path / "high_quality/python", {"python-g0000": 500})
    write_source(tmp_path / "synthetic", {"synthetic": 800}, {"language_tokens": {"python": 400, "java": 400}})
    p = plan(load("experiment=snowcoder_1b3", f"data.root={tmp_path}"))
    shares, unknown = p.languages["synthetic"]
    assert shares["python"] == pytest.approx(0.5) and unknown == []
    assert p.languages["general"][0]["python"] == pytest.approx(2000 / (2000 + 17 * 470))
    assert p.languages["high_quality"][0] == pytest.approx({"python": 0.2, "java": 0.6, "c": 0.2})
    text = render(p)
    assert "languages per phase" in text
    assert any(line.split()[:3] == ["synthetic", "python", "50.0%,"] for line in text.splitlines()), text
