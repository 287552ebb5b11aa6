"""The skip-step optimizer and the guard's decisions, without a training run."""

import math

import torch
from omegaconf import OmegaConf

from arctic_pretrain.train.config import GuardsConfig
from arctic_pretrain.train.guards import GuardedAdamW, StepGuard


def test_nonfinite_gradient_or_request_changes_nothing():
    p = torch.nn.Parameter(torch.ones(3))
    opt = GuardedAdamW([p], lr=0.1)
    p.grad = torch.tensor([1.0, float("nan"), 1.0])
    opt.step()
    assert opt.skipped_last and torch.equal(p.data, torch.ones(3)) and not opt.state[p]  # no moments either
    p.grad = torch.ones(3)
    opt.step()
    assert not opt.skipped_last and not torch.equal(p.data, torch.ones(3))
    before, step_count = p.data.clone(), int(opt.state[p]["step"])
    opt.skip_requested = True
    opt.step()
    assert opt.skipped_last and torch.equal(p.data, before) and int(opt.state[p]["step"]) == step_count
    assert not opt.skip_requested  # a request covers one step


def guard(**over) -> StepGuard:
    return StepGuard(OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(GuardsConfig), over)))


def test_spike_needs_a_full_window_and_a_high_z():
    g = guard(spike_zscore=3.0, spike_window=8, spike_min_window=4)
    for loss in (2.0, 2.1, 1.9):
        assert g.check(loss) is None
        g.record(loss, None)
    assert g.check(50.0) is None  # window not yet full enough
    g.record(2.0, None)
    assert g.check(50.0) == "spike" and g.check(2.05) is None


def test_consecutive_nonfinite_exhausts_and_state_round_trips():
    g = guard(max_consecutive_bad=2)
    assert g.check(math.nan) == "nonfinite"
    g.record(math.nan, "nonfinite")
    assert not g.exhausted()
    g.record(math.inf, "nonfinite")
    assert g.exhausted()
    restored = guard(max_consecutive_bad=2)
    restored.load_state_dict(g.state_dict())
    assert restored.exhausted() and restored.counts == {"nonfinite": 2, "spike": 0}
    g.record(1.0, None)
    assert not g.exhausted()
