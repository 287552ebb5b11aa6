"""The step loop and each of its callbacks, in-process: a real DeepSpeed engine (1 rank, gloo), real
token sources, the real curriculum; no launcher. The multi-rank behaviour is in test_deepspeed_run/test_resume."""

from __future__ import annotations

import json
import logging

import pytest
import torch

from arctic_pretrain.data.sampler import MixtureSampler
from arctic_pretrain.data.shards import TokenSource
from arctic_pretrain.model import EXPORT_META, build_model
from arctic_pretrain.model.config import ModelConfig
from arctic_pretrain.model.loss import build_loss
from arctic_pretrain.train.callbacks import EVENTS, Callback
from arctic_pretrain.train.callbacks.export import PhaseExport
from arctic_pretrain.train.callbacks.faults import ENV, FaultInjection, Faults
from arctic_pretrain.train.callbacks.profile import StepProfiler
from arctic_pretrain.train.callbacks.progress import ProgressBar
from arctic_pretrain.train.callbacks.speed import MetricsRecorder
from arctic_pretrain.train.checkpoint import CheckpointManager
from arctic_pretrain.train.config import (
    CurriculumConfig,
    GuardsConfig,
    LoggingConfig,
    LRScheduleConfig,
    PhaseConfig,
)
from arctic_pretrain.train.curriculum import Curriculum
from arctic_pretrain.train.guards import StepGuard, make_optimizer
from arctic_pretrain.train.metrics import MetricsSink, read_metrics
from arctic_pretrain.train.trainer import LoopSettings, StepResult, Trainer
from tests.conftest import make_source

TINY = ModelConfig(name="tiny-loop", hidden_size=32, num_layers=2, intermediate_size=64, num_heads=4,
                   num_kv_heads=4, max_seq_len=32, vocab_size=128, attention="sdpa")
SEQ, BATCH = 16, 4


class Recorder(Callback):
    """Records the events it sees, in order (what a user-written callback would observe)."""

    name = "recorder"

    def __init__(self) -> None:
        self.events: list[tuple] = []
        for event in EVENTS:
            setattr(self, event, self._recorder(event))

    def _recorder(self, event):
        def record(trainer, *args):
            self.events.append((event, trainer.step, *(getattr(a, "name", a) for a in args[:1])))
        return record


def curriculum_cfg(seq: int = SEQ, **last_phase) -> CurriculumConfig:
    """general (3 steps), then high_quality (2 steps; ``last_phase``: its own seq_len, rope_theta)."""
    lr = LRScheduleConfig(peak_lr=1e-2, end_lr=0.0, warmup_steps=1, decay="linear")
    return CurriculumConfig(name="unit", phases={
        "general": PhaseConfig(tokens=str(3 * seq * BATCH), mixture={"a": 1.0}, lr=lr),
        "high_quality": PhaseConfig(tokens=str(2 * seq * BATCH), mixture={"b": 1.0}, lr=lr, **last_phase)})


def trainer_factory(tmp_path, model_cfg: ModelConfig = TINY, seq: int = SEQ, zero: dict | None = None,
                    max_doc: int = 40, **last_phase):
    """A factory for a fresh Trainer over the same sources and run dir (a second call = a restart):
    ``model_cfg`` at ``seq`` tokens, micro batch 2, gradient accumulation 2, ZeRO ``zero`` (default stage 1);
    ``last_phase``: the second phase's own seq_len / rope_theta."""
    import deepspeed

    vocab = model_cfg.vocab_size
    rng = torch.Generator().manual_seed(0)
    docs = [torch.randint(1, vocab - 8, (int(n),), generator=rng).tolist()
            for n in torch.randint(5, max_doc, (60,), generator=rng)]
    sources = {"a": TokenSource(make_source(tmp_path / "a", docs[:30], vocab=vocab)),
               "b": TokenSource(make_source(tmp_path / "b", docs[30:], vocab=vocab))}
    run_dir = tmp_path / "run"

    def make(callbacks=(), max_steps=None, interval=2, fim=None):
        torch.manual_seed(0)
        model = build_model(model_cfg, vocab, eos_id=0)
        optimizer = make_optimizer([{"params": list(model.parameters()), "weight_decay": 0.0}], (0.9, 0.95),
                                   1e-8, 0.0, False)
        ds = {"train_batch_size": BATCH, "train_micro_batch_size_per_gpu": 2, "gradient_accumulation_steps": 2,
              "steps_per_print": 10**9, "zero_optimization": zero or {"stage": 1},
              "zero_allow_untested_optimizer": True}
        engine, *_ = deepspeed.initialize(model=model, optimizer=optimizer, config=ds)
        curriculum = Curriculum(curriculum_cfg(seq, **last_phase), seq * BATCH,
                                {n: s.num_tokens for n, s in sources.items()})
        trainer = Trainer(engine, optimizer, MixtureSampler(sources, seq, seed=1), curriculum,
                          CheckpointManager(run_dir / "checkpoints", keep_last=2, hf_config=model.config),
                          StepGuard(GuardsConfig()), LoopSettings(BATCH, 2, interval, max_steps),
                          callbacks=list(callbacks), loss_fn=build_loss(model_cfg), fim=fim)
        return trainer

    make.run_dir = run_dir
    return make


@pytest.fixture
def build(tmp_path, process_group):
    return trainer_factory(tmp_path)


@pytest.fixture
def light_build(tmp_path, process_group):
    """``build`` with a gradient bucket the model's size, not DeepSpeed's 500M elements (2 GB a step on CPU)."""
    return trainer_factory(tmp_path, zero={"stage": 1, "reduce_bucket_size": 50_000})


def test_fit_walks_the_curriculum_and_fires_events_in_order(build):
    rec = Recorder()
    trainer = build([rec])
    result = trainer.fit()
    assert result == {"step": 5, "consumed_tokens": 5 * SEQ * BATCH, "status": "done"}
    names = [e[0] for e in rec.events]
    assert names[0] == "pre_train" and names[-1] == "post_train"
    assert names.count("post_step") == 5
    assert [e[2] for e in rec.events if e[0] == "phase_end"] == ["general", "high_quality"]
    # a phase end: post_step, then the phase-end checkpoint (written, published), then phase_end
    i = names.index("phase_end")
    assert names[i - 3:i + 1] == ["post_step", "checkpoint_written", "post_checkpoint", "phase_end"]
    assert [e[1] for e in rec.events if e[0] == "post_checkpoint"] == [2, 3, 4, 5]  # interval 2 + phase ends 3, 5
    assert trainer.checkpoints.latest_tag() == "step_00000005"


def test_callback_state_is_checkpointed_and_restored(build):
    metrics = MetricsRecorder(interval=100, flops_per_token=1.0, peak_flops=None)  # accumulates across steps
    trainer = build([metrics], max_steps=2)
    trainer.fit()
    state = json.loads((build.run_dir / "checkpoints" / "step_00000002" / "trainer_state.json").read_text())
    assert state["callbacks"]["metrics"]["counts"]["loss"] == 2  # two steps since the last line
    fresh = MetricsRecorder(interval=100, flops_per_token=1.0, peak_flops=None)
    restarted = build([fresh])
    restarted.load_state_dict(state)
    assert fresh.average.state_dict() == metrics.average.state_dict()
    branched = MetricsRecorder(interval=100, flops_per_token=1.0, peak_flops=None)
    other = build([branched])
    other.load_state_dict(state, metrics=False)  # a branch keeps its own accumulators
    assert branched.average.state_dict() == {"sums": {}, "counts": {}}


def test_metrics_recorder_and_sink_write_interval_averages(build):
    sink = MetricsSink(build.run_dir, LoggingConfig(wandb_mode="disabled"), {}, enabled=True)
    trainer = build([MetricsRecorder(interval=2, flops_per_token=6.0, peak_flops=1e12), sink])
    trainer.fit()
    rows = read_metrics(build.run_dir)
    assert [r["step"] for r in rows] == [2, 3, 4, 5]  # every 2 steps, and at both phase ends (3, 5)
    assert [r["phase"] for r in rows] == ["general", "general", "high_quality", "high_quality"]
    assert all(r["mfu"] > 0 and r["loss/a" if r["phase"] == "general" else "loss/b"] > 0 for r in rows)
    sink.truncate_after(3)  # what a resume from step 3 does first
    assert [r["step"] for r in read_metrics(build.run_dir)] == [2, 3]


def test_metrics_recorder_averages_over_the_interval():
    class Loop:  # the attributes MetricsRecorder reads from the trainer
        step, consumed_tokens, world = 0, 0, 1
        guard = StepGuard(GuardsConfig())
        curriculum = Curriculum(curriculum_cfg(), SEQ * BATCH)
        logged: list[dict] = []

        def log(self, record):
            self.logged.append(record)

    loop, rec = Loop(), MetricsRecorder(interval=2, flops_per_token=1.0, peak_flops=None)
    phase = loop.curriculum.phase_at(0)
    for step, loss in [(1, 4.0), (2, 2.0)]:
        loop.step, loop.consumed_tokens = step, step * SEQ * BATCH
        rec.post_step(loop, phase, 1e-3, StepResult(loss, 1.0, {"a": loss}, 0.5, None, False))
    assert len(loop.logged) == 1 and loop.logged[0]["loss"] == 3.0 and loop.logged[0]["loss/a"] == 3.0
    assert loop.logged[0]["tokens_per_s"] == SEQ * BATCH / 0.5 and loop.logged[0]["mfu"] is None


def test_progress_bar_counts_steps(build):
    bar = ProgressBar(enabled=True)
    seen = {}

    class Peek(Callback):
        def post_step(self, trainer, phase, lr, result):
            seen[trainer.step] = (bar.bar.n, bar.bar.total)

    build([bar, Peek()]).fit()
    assert seen[5] == (5, 5)
    assert bar.bar is None  # closed at post_train


def test_phase_export_writes_and_recovers_exports(build):
    trainer = build([PhaseExport(build.run_dir, tokenizer=None, seq_len=SEQ)])
    trainer.fit()
    for phase in ("general", "high_quality"):
        assert (build.run_dir / "export" / phase / EXPORT_META).is_file()
    meta = json.loads((build.run_dir / "export" / "general" / EXPORT_META).read_text())
    assert meta["phase"] == "general" and meta["step"] == 3
    assert meta["seq_len"] == SEQ  # evaluation scores documents at the trained length
    (build.run_dir / "export" / "general" / EXPORT_META).unlink()  # as if killed before the export
    again = build([PhaseExport(build.run_dir, tokenizer=None)])
    again.callbacks[0].pre_train(again, resumed=True)
    assert (build.run_dir / "export" / "general" / EXPORT_META).is_file()


def test_fault_injection_poisons_the_loss_and_parses_its_spec(build, monkeypatch):
    assert Faults.parse("kill_at_step=12,kill_point=during_save") == Faults(kill_at_step=12, kill_point="during_save")
    with pytest.raises(ValueError, match="unknown fault 'kill_at'"):
        Faults.parse("kill_at=3")
    with pytest.raises(ValueError, match="kill_point='later'"):
        Faults.parse("kill_at_step=3,kill_point=later")
    monkeypatch.delenv(ENV, raising=False)
    assert FaultInjection.from_env() is None  # never attached unless a test asks for it
    monkeypatch.setenv(ENV, "nan_loss_at_step=2")
    trainer = build([FaultInjection.from_env()], max_steps=3)
    trainer.fit()
    assert trainer.guard.counts["nonfinite"] == 1  # step 2 was poisoned and skipped, the others trained


def test_faults_are_not_a_config_key():
    """Fault injection is test-only (ARCTIC_PRETRAIN_FAULTS); a `faults.*` key is an unknown key, exit 2."""
    from tests.conftest import run_cli

    proc = run_cli(["launch/train.py", "experiment=tiny", "faults.kill_at_step=3"], timeout=120)
    assert proc.returncode == 2
    assert "faults" in proc.stderr and "Traceback" not in proc.stderr


def test_profiler_writes_a_chrome_trace_of_its_steps_and_logs_the_top_op(light_build, caplog):
    build = light_build
    caplog.set_level(logging.INFO, logger="arctic_pretrain.train.callbacks.profile")
    root = build.run_dir / "profile"
    build([StepProfiler(root, [2, 3])], max_steps=4).fit()
    out = root / "steps_2-3"
    assert sorted(p.name for p in out.iterdir()) == ["rank0.top_ops.txt", "rank0.trace.json"]  # no CUDA here
    events = json.loads((out / "rank0.trace.json").read_text())["traceEvents"]
    names = {e.get("name") for e in events}
    assert {n for n in names if str(n).startswith("ProfilerStep#")} == {"ProfilerStep#2", "ProfilerStep#3"}
    assert {"aten::mm", "aten::scaled_dot_product_attention", "autograd::engine::evaluate_function: MmBackward0",
            "Optimizer.step#SkippableAdamW.step"} & names >= {"aten::mm", "aten::scaled_dot_product_attention"}
    assert any(str(n).startswith("autograd::engine::evaluate_function") for n in names)  # backward is in it
    assert any(e.get("name") == "[memory]" for e in events)  # allocations recorded
    table = (out / "rank0.top_ops.txt").read_text().splitlines()
    first = table[3].split()[0]  # the table's first row: the op with the most self CPU time
    # (under load the step spans' own overhead can top it: key_averages names them ProfilerStep*)
    assert first in names or (first == "ProfilerStep*" and "ProfilerStep#2" in names)
    [message] = [r.getMessage() for r in caplog.records if "profile of steps 2-3" in r.getMessage()]
    assert f"top op by self cpu time total: {first};" in message and "\n".join(table[:4]) in message


def test_profiling_is_off_unless_configured_and_writes_under_the_run_dir(light_build):
    build = light_build
    from arctic_pretrain.train.runner import build_callbacks
    from tests.train.test_configs import load

    def callbacks(*overrides):
        return build_callbacks(load("experiment=tiny", "logging.wandb_mode=disabled", "checkpoint.export_phases=false",
                                    *overrides), build.run_dir, None, 1.0, {}, ())

    assert not any(isinstance(cb, StepProfiler) for cb in callbacks())
    build(callbacks(), max_steps=2).fit()
    assert (build.run_dir / "metrics.jsonl").is_file() and not (build.run_dir / "profile").exists()
    on = callbacks("profile.steps=[3,3]")
    assert isinstance(on[0], StepProfiler) and on[0].root == build.run_dir / "profile"
    build(on, max_steps=3).fit()  # a fresh trainer in the same run dir: profiles step 3
    assert (build.run_dir / "profile" / "steps_3-3" / "rank0.trace.json").is_file()


def test_a_phase_at_its_own_seq_len_and_rope_theta_resumes_exactly(tmp_path, process_group):
    """high_quality at 2 x SEQ with RoPE theta 50k: half the sequences per micro-batch and step (same tokens,
    same accumulation), the rotary frequencies of theta 50k from its first step, checkpoints and exports that
    record both, and a restart in the middle of the phase that continues to the last bit."""
    from arctic_pretrain.train.checkpoint import load_engine

    make = trainer_factory(tmp_path, zero={"stage": 1, "reduce_bucket_size": 50_000}, seq_len=2 * SEQ,
                           rope_theta=50_000.0)
    seen = []

    def watch(trainer):
        loss_fn, rotary = trainer.loss_fn, trainer.engine.module.model.rotary_emb

        def recording(engine, input_ids, position_ids):
            seen.append((trainer.step + 1, tuple(input_ids.shape), rotary.inv_freq[1].item()))
            return loss_fn(engine, input_ids, position_ids)
        trainer.loss_fn = recording
        return trainer

    class Losses(Callback):
        def __init__(self):
            self.losses = {}

        def post_step(self, trainer, phase, lr, result):
            self.losses[trainer.step] = result.loss

    straight = Losses()
    trainer = watch(make([straight, PhaseExport(make.run_dir, tokenizer=None, seq_len=SEQ,
                                                phase_seq_lens={"high_quality": 2 * SEQ})]))
    trainer.fit()
    half = TINY.hidden_size // TINY.num_heads // 2  # inv_freq[1] = theta^(-2/head_dim)
    assert [(step, shape) for step, shape, _ in seen] == [(1, (2, SEQ))] * 2 + [(2, (2, SEQ))] * 2 + [
        (3, (2, SEQ))] * 2 + [(4, (1, 2 * SEQ))] * 2 + [(5, (1, 2 * SEQ))] * 2
    assert {round(f, 6) for step, _, f in seen if step <= 3} == {round(10_000.0 ** (-1 / half), 6)}
    assert {round(f, 6) for step, _, f in seen if step > 3} == {round(50_000.0 ** (-1 / half), 6)}
    ckpt = make.run_dir / "checkpoints"
    theta = {tag: json.loads((ckpt / tag / "hf_config" / "config.json").read_text())["rope_parameters"]["rope_theta"]
             for tag in ("step_00000003", "step_00000005")}
    assert theta == {"step_00000003": 10_000.0, "step_00000005": 50_000.0}
    export = make.run_dir / "export" / "high_quality"
    assert json.loads((export / EXPORT_META).read_text())["seq_len"] == 2 * SEQ
    assert json.loads((export / "config.json").read_text())["rope_parameters"]["rope_theta"] == 50_000.0

    # restart from step 4, the middle of the long phase: a fresh model (theta 10k) and sampler
    resumed_losses = Losses()
    again = watch(make([resumed_losses]))
    load_engine(again.engine, ckpt, "step_00000004", rng_root=ckpt)
    again.load_state_dict(again.checkpoints.read_state("step_00000004"))
    seen.clear()
    again.fit(resumed=True)
    assert seen == [(5, (1, 2 * SEQ), seen[0][2])] * 2 and seen[0][2] == pytest.approx(50_000.0 ** (-1 / half))
    assert resumed_losses.losses == {5: straight.losses[5]}  # to the last bit

def test_fim_reaches_the_batches_of_its_phases_only(build):
    """The phase's FIM settings ride on its samples to the prefetcher's reads: general's windows are
    transformed (rate 1), high_quality's (FIM off there) are read as they are stored."""
    from arctic_pretrain.data.fim import FimSettings, FimTokens, FimTransform

    fim = FimTokens(prefix=125, middle=126, suffix=127, pad=124, eos=0)  # ids the sources never hold
    trainer = build(fim={"general": FimSettings(rate=1.0), "high_quality": FimSettings(rate=0.0)})
    trainer.sampler.fim = FimTransform(fim)
    read, seen = trainer.sampler.read, []

    def recording(samples):
        batch = read(samples)
        seen.append((trainer.curriculum.phase_at(trainer.consumed_tokens).name, batch.input_ids))
        return batch

    trainer.sampler.read = recording
    trainer.fit()
    prefixes = {phase: sum(int((ids == fim.prefix).sum()) for p, ids in seen if p == phase)
                for phase in ("general", "high_quality")}
    assert prefixes["general"] >= 3 * BATCH and prefixes["high_quality"] == 0
