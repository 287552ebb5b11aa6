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
