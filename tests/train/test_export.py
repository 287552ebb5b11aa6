"""HF exports of DeepSpeed checkpoints: exact weights for ZeRO 1 and 3, the CLI, and its errors."""

from __future__ import annotations

import json

import pytest
import torch
from transformers import AutoModelForCausalLM

from arctic_pretrain.model import build_model
from arctic_pretrain.train.checkpoint import COMPLETE, CheckpointManager
from arctic_pretrain.train.config import ModelConfig
from arctic_pretrain.train.export import EXPORT_META, export_checkpoint
from tests.conftest import run_cli
from tests.train.conftest import assert_generates_with_the_runs_tokenizer, safetensors_dtypes

TINY = ModelConfig(name="tiny-export", hidden_size=32, num_layers=2, intermediate_size=64, num_heads=4,
                   num_kv_heads=4, max_seq_len=64, vocab_size=96, attention="sdpa")



def ds_config(stage: int) -> dict:
    params = {"lr": 1e-2, "betas": [0.9, 0.95], "eps": 1e-8, "weight_decay": 0.1}
    if not torch.cuda.is_available():
        params["torch_adam"] = True
    zero = {"stage": stage}
    if stage == 3:
        zero["stage3_gather_16bit_weights_on_model_save"] = False
    return {"train_batch_size": 2, "train_micro_batch_size_per_gpu": 2, "gradient_accumulation_steps": 1,
            "gradient_clipping": 1.0, "zero_optimization": zero, "bf16": {"enabled": False},
            "optimizer": {"type": "AdamW", "params": params}, "steps_per_print": 10**9,
            "zero_allow_untested_optimizer": True}


@pytest.mark.parametrize("stage", [1, 3])
def test_export_matches_engine_logits(tmp_path, process_group, stage):
    import deepspeed

    torch.manual_seed(0)
    model = build_model(TINY, TINY.vocab_size, eos_id=0)
    engine, *_ = deepspeed.initialize(model=model, model_parameters=model.parameters(), config=ds_config(stage))
    gen = torch.Generator().manual_seed(1)
    for _ in range(2):
        ids = torch.randint(1, TINY.vocab_size, (2, 16), generator=gen)
        loss = engine(input_ids=ids, labels=ids, use_cache=False).loss
        engine.backward(loss)
        engine.step()
    state = {"step": 2, "consumed_tokens": 64, "phase": "general", "phase_index": 0, "phase_end": None,
             "world_size": 1, "global_batch_size": 2}
    manager = CheckpointManager(tmp_path / "checkpoints", keep_last=2, hf_config=model.config)
    tag = manager.save(engine, 2, state)

    out = export_checkpoint(manager.root / tag, tmp_path / "export", meta={"note": "test"}, dtype=torch.float32)
    exported = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    assert exported.dtype == torch.float32
    meta = json.loads((out / EXPORT_META).read_text())
    assert meta["step"] == 2 and meta["note"] == "test"

    probe = torch.randint(1, TINY.vocab_size, (2, 24), generator=gen)
    engine.eval()
    with torch.no_grad():
        expected = engine(input_ids=probe, use_cache=False).logits.float()
        got = exported(input_ids=probe, use_cache=False).logits
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    # the default, what phase exports write: bf16 on disk, the fp32 master weights rounded
    bf16 = export_checkpoint(manager.root / tag, tmp_path / "export-bf16")
    assert safetensors_dtypes(bf16) == {"BF16"}
    rounded = AutoModelForCausalLM.from_pretrained(bf16, dtype=torch.bfloat16).state_dict()
    for name, value in exported.state_dict().items():
        assert torch.equal(rounded[name], value.to(torch.bfloat16)), name
    engine.destroy()


def write_incomplete(tag_dir):
    tag_dir.mkdir(parents=True)
    (tag_dir / "trainer_state.json").write_text("{}")
    (tag_dir / "mp_rank_00_model_states.pt").write_bytes(b"")


def test_cli_errors_name_the_path(tmp_path):
    missing = tmp_path / "nowhere"
    proc = run_cli(["launch/export.py", f"checkpoint={missing}", f"output={tmp_path / 'out'}"])
    assert proc.returncode == 2 and str(missing) in proc.stderr and "no such" in proc.stderr

    tag = tmp_path / "run" / "checkpoints" / "step_00000005"
    write_incomplete(tag)
    proc = run_cli(["launch/export.py", f"checkpoint={tag}", f"output={tmp_path / 'out'}"])
    assert proc.returncode == 2 and str(tag) in proc.stderr and "incomplete" in proc.stderr

    (tag.parent / "latest").write_text(tag.name)  # a pointer to an incomplete tag: named, refused
    proc = run_cli(["launch/export.py", f"checkpoint={tmp_path / 'run'}", f"output={tmp_path / 'out'}"])
    assert proc.returncode == 2 and str(tag) in proc.stderr and COMPLETE in proc.stderr

    empty = tmp_path / "empty"
    empty.mkdir()
    proc = run_cli(["launch/export.py", f"checkpoint={empty}", f"output={tmp_path / 'out'}"])
    assert proc.returncode == 2 and str(empty) in proc.stderr and "not a checkpoint" in proc.stderr
    assert not (tmp_path / "out").exists()

    proc = run_cli(["launch/export.py", f"checkpoint={empty}"])
    assert proc.returncode == 2 and "output=" in proc.stderr


@pytest.mark.slow
def test_cli_exports_a_two_rank_zero3_run(tmp_path, zero3_two_rank_run):
    run_dir = zero3_two_rank_run  # tests/train/conftest.py: 8 steps, 2 ranks, ZeRO-3
    assert (run_dir / "checkpoints" / "latest").read_text().strip() == "step_00000008"

    out = tmp_path / "hf"
    proc = run_cli(["launch/export.py", f"checkpoint={run_dir}", f"output={out}", "dtype=float32"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    meta = json.loads((out / EXPORT_META).read_text())
    assert meta["step"] == 8 and meta["checkpoint"].endswith("step_00000008")
    model = AutoModelForCausalLM.from_pretrained(out)
    assert model.dtype == torch.float32 and safetensors_dtypes(out) == {"F32"}  # dtype=float32 as asked
    assert_generates_with_the_runs_tokenizer(out, model, run_dir / "checkpoints" / "step_00000008")
