"""Throughput knobs change speed and memory, not the loss: each against the plain path, on the tiny model.

Tolerances: fp32 on CPU agrees to float rounding (1e-5 relative to the largest value); bf16 paths on
GPU to 2e-2 (kernels that sum in another order, in bf16). Token counts must be identical."""

import json

import pytest
import torch
from omegaconf import OmegaConf

from arctic_pretrain.common.config import ConfigError
from arctic_pretrain.model import build_model
from arctic_pretrain.model.build import apply_activation_checkpointing, compile_layers
from arctic_pretrain.model.config import ModelConfig
from arctic_pretrain.model.loss import build_loss, packed_next_token_loss, resolve_loss
from tests.conftest import ROOT, free_port

VOCAB = 256


def tiny(**over) -> ModelConfig:
    base = {"name": "t", "hidden_size": 32, "num_layers": 4, "intermediate_size": 64, "num_heads": 2,
            "num_kv_heads": 2, "max_seq_len": 128, "attention": "sdpa"}
    return OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(ModelConfig), {**base, **over}))


def packed_batch(device="cpu", batch=3, length=48):
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(1, VOCAB, (batch, length), generator=gen)
    pos = torch.stack([torch.cat([torch.arange(n) for n in split]) for split in
                       ([20, 28], [length], [5, 30, 13])[:batch]])
    return ids.to(device), pos.to(device)


def loss_and_grads(model, loss_fn, ids, pos):
    model.zero_grad(set_to_none=True)
    loss_sum, count = loss_fn(model, ids, pos)
    (loss_sum.sum() / count.sum()).backward()
    return loss_sum.detach().float(), count, {n: p.grad.float().clone() for n, p in model.named_parameters()}


def assert_same(a, b, rtol):
    torch.testing.assert_close(a[0], b[0], rtol=rtol, atol=0)
    assert torch.equal(a[1], b[1])  # the same tokens are predicted: packed-document masking unchanged
    for name in a[2]:
        scale = a[2][name].abs().max()
        assert (a[2][name] - b[2][name]).abs().max() <= rtol * scale + 1e-12, name


# ---- loss ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("chunk", [1, 7, 2048])
def test_chunked_loss_equals_logits_loss(chunk):
    """Per-sequence sums (what the per-source loss adds up), counts and every gradient (tied embedding
    included) equal the full-logits path's; chunk sizes below, across and above the sequence."""
    torch.manual_seed(0)
    model = build_model(tiny(), VOCAB)
    ids, pos = packed_batch()
    plain = loss_and_grads(model, build_loss(tiny()), ids, pos)
    chunked = loss_and_grads(model, build_loss(tiny(loss="chunked", loss_chunk_tokens=chunk)), ids, pos)
    assert_same(plain, chunked, rtol=1e-5)
    # and the model still returns logits when no loss is asked for (evaluation, export)
    assert model(input_ids=ids, position_ids=pos).logits.shape == (*ids.shape, VOCAB)


def test_chunked_loss_never_keeps_full_logits():
    """What autograd keeps for backward: the plain path keeps batch x seq x vocab logits; the chunked
    one keeps nothing larger than the hidden states (and recomputes a chunk at a time)."""
    torch.manual_seed(0)
    model = build_model(tiny(hidden_size=16, intermediate_size=32), 2048)
    ids, pos = packed_batch()
    ids = ids % 2048

    def largest_saved(kind):
        sizes = []

        def pack(t):
            sizes.append(t.numel())
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            build_loss(tiny(loss=kind, loss_chunk_tokens=8))(model, ids, pos)
        return max(sizes)

    full_logits = ids.shape[0] * (ids.shape[1] - 1) * 2048  # the predicting positions x vocab
    assert largest_saved("logits") >= full_logits
    assert largest_saved("chunked") <= 2048 * 16  # the tied embedding itself: [vocab, hidden]


def test_loss_kind_resolution():
    assert resolve_loss("chunked", cuda=False) == "chunked"
    assert resolve_loss("logits", cuda=True) == "logits"
    if not torch.cuda.is_available():
        assert resolve_loss("auto") == "logits"  # CPU: fused kernels are Triton (GPU) only
        with pytest.raises(RuntimeError, match="model.loss=(liger|cut_ce)"):
            resolve_loss("liger")
        with pytest.raises(RuntimeError, match="model.loss=(liger|cut_ce)"):
            resolve_loss("cut_ce")
    with pytest.raises(ConfigError, match="model.loss='fused'"):
        tiny(loss="fused")


@pytest.mark.slow
@pytest.mark.parametrize("stage", [3])  # ZeRO-3 has ZeRO-2's gradient hooks plus the gather; ZeRO-2 alone added ~40 s
def test_chunked_loss_through_a_deepspeed_engine(stage):
    """The loss fn given the engine itself (as the step loop calls it): ZeRO-3 (parameters gathered inside
    lm_head's call, gradients partitioned by hooks), 3 optimizer steps with gradient accumulation, equal losses."""
    from tests.conftest import run_cli

    proc = run_cli(["-m", "tests.model.ds_loss_steps", str(stage), str(free_port()), "logits", "chunked"],
                   env={"PYTHONPATH": str(ROOT)}, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    losses = json.loads(proc.stdout.strip().splitlines()[-1])
    assert losses["logits"][0] != losses["logits"][-1]  # the steps did something
    torch.testing.assert_close(torch.tensor(losses["chunked"]), torch.tensor(losses["logits"]), rtol=1e-5, atol=0)


# ---- activation checkpointing ----------------------------------------------------------------------------
def test_activation_checkpointing_modes_and_the_old_bool_refused():
    def flags(cfg):
        return [layer.gradient_checkpointing for layer in build_model(cfg, VOCAB).model.layers]

    assert flags(tiny()) == [False] * 4
    assert flags(tiny(activation_checkpointing="full")) == [True] * 4
    assert flags(tiny(activation_checkpointing="selective", activation_checkpointing_every=2)) == [True, False] * 2
    assert flags(tiny(activation_checkpointing="selective", activation_checkpointing_every=3)) == [
        True, False, False, True]
    with pytest.raises(ConfigError, match="model.activation_checkpointing='True': must be one of"):  # once a bool
        tiny(activation_checkpointing=True)
    with pytest.raises(ConfigError, match="model.activation_checkpointing='some'"):
        tiny(activation_checkpointing="some")
    with pytest.raises(ConfigError, match="model.activation_checkpointing_every=0"):
        tiny(activation_checkpointing_every=0)


def saved_activation_elements(model, ids, pos) -> int:
    """Elements autograd keeps for backward in one forward (a checkpointed layer keeps only its inputs)."""
    count = [0]

    def pack(t):
        count[0] += t.numel()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        build_loss(tiny())(model, ids, pos)
    return count[0]


def test_activation_checkpointing_keeps_fewer_activations():
    """Recomputation happens: full keeps less than selective (every 2nd layer), which keeps less than none."""
    ids, pos = packed_batch()
    saved = {}
    for mode in ("none", "selective", "full"):
        model = build_model(tiny(), VOCAB)
        apply_activation_checkpointing(model, mode, 2)
        saved[mode] = saved_activation_elements(model, ids, pos)
    assert saved["full"] < saved["selective"] < saved["none"], saved


@pytest.mark.parametrize("mode", ["full", "selective"])
def test_activation_checkpointing_keeps_losses_and_grads(mode):
    torch.manual_seed(0)
    model = build_model(tiny(), VOCAB)
    ids, pos = packed_batch()
    plain = loss_and_grads(model, build_loss(tiny()), ids, pos)
    assert apply_activation_checkpointing(model, mode, 2) == ([0, 1, 2, 3] if mode == "full" else [0, 2])
    recomputed = loss_and_grads(model, build_loss(tiny()), ids, pos)
    assert_same(plain, recomputed, rtol=1e-6)


# ---- torch.compile ---------------------------------------------------------------------------------------
def test_compile_flag_compiles_every_layer_in_place():
    model = build_model(tiny(compile=True), VOCAB)
    assert all(layer._compiled_call_impl is not None for layer in model.model.layers)
    assert "model.layers.0.mlp.up_proj.weight" in model.state_dict()  # names unchanged: checkpoints, exports


def test_compiled_layers_keep_losses_and_grads():
    """Dynamo + AOTAutograd tracing of the layers (with selective checkpointing inside) via the
    aot_eager backend: the part that can break the loss. inductor's codegen is checked on GPU."""
    torch.manual_seed(0)
    model = build_model(tiny(activation_checkpointing="selective"), VOCAB)
    ids, pos = packed_batch()
    plain = loss_and_grads(model, build_loss(tiny()), ids, pos)
    from torch._dynamo.backends.registry import lookup_backend

    graphs = []

    def recording(gm, example_inputs):  # aot_eager, noting each graph dynamo hands it
        graphs.append(gm)
        return lookup_backend("aot_eager")(gm, example_inputs)

    torch._dynamo.reset()
    compile_layers(model, backend=recording)
    assert_same(plain, loss_and_grads(model, build_loss(tiny(loss="chunked")), ids, pos), rtol=1e-5)
    # compilation happened: dynamo traced the decoder layers into graphs that compute
    # (the layers' ops may sit in subgraphs: checkpointed regions, or DeepSpeed's ZeRO-3 linear, an autograd
    # Function that replaces F.linear for the rest of the process once a ZeRO-3 engine ran in it)
    def computes(g) -> bool:
        return any(n.op.startswith("call") and not str(n.target).startswith("_set_grad")
                   for m in g.modules() if hasattr(m, "graph") for n in m.graph.nodes)

    assert len(graphs) >= 1 and all(computes(g) for g in graphs), graphs


def test_liger_kernels_need_a_gpu_and_the_package():
    if torch.cuda.is_available():
        pytest.skip("CUDA present: the GPU test covers liger")
    with pytest.raises(RuntimeError, match="model.liger_kernels"):
        build_model(tiny(liger_kernels=True), VOCAB)


# ---- GPU -------------------------------------------------------------------------------------------------
def _cuda_or_skip():
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")


def _bf16_pair(cfg_a, cfg_b):
    torch.manual_seed(0)
    a = build_model(cfg_a, VOCAB).cuda().bfloat16()
    b = build_model(cfg_b, VOCAB).cuda().bfloat16()
    b.load_state_dict(a.state_dict())
    return a, b


@pytest.mark.gpu
@pytest.mark.parametrize("kind,package", [("chunked", None), ("liger", "liger_kernel"), ("cut_ce", "cut_cross_entropy")])
def test_fused_losses_equal_logits_loss_on_gpu(kind, package):
    _cuda_or_skip()
    if package:
        pytest.importorskip(package, reason=f"{package} is installed with the gpu extra")
    torch.manual_seed(0)
    model = build_model(tiny(), VOCAB).cuda().bfloat16()
    ids, pos = packed_batch("cuda")
    plain = loss_and_grads(model, build_loss(tiny()), ids, pos)
    fused = loss_and_grads(model, build_loss(tiny(loss=kind)), ids, pos)
    assert_same(plain, fused, rtol=2e-2)


@pytest.mark.gpu
def test_chunked_loss_lowers_peak_memory_on_gpu():
    _cuda_or_skip()
    torch.manual_seed(0)
    model = build_model(tiny(hidden_size=64, num_layers=1), 32000).cuda().bfloat16()
    ids = torch.randint(1, 32000, (4, 2048), device="cuda")
    pos = torch.arange(2048, device="cuda").repeat(4, 1)
    peaks = {}
    for kind in ("logits", "chunked"):
        torch.cuda.reset_peak_memory_stats()
        loss_and_grads(model, build_loss(tiny(loss=kind, loss_chunk_tokens=256)), ids, pos)
        peaks[kind] = torch.cuda.max_memory_allocated()
    assert peaks["chunked"] < 0.5 * peaks["logits"], peaks


@pytest.mark.gpu
def test_liger_kernels_keep_losses_on_gpu():
    _cuda_or_skip()
    pytest.importorskip("liger_kernel", reason="liger-kernel is installed with the gpu extra")
    plain, liger = _bf16_pair(tiny(), tiny(liger_kernels=True))
    ids, pos = packed_batch("cuda")
    assert_same(loss_and_grads(plain, build_loss(tiny()), ids, pos),
                loss_and_grads(liger, build_loss(tiny()), ids, pos), rtol=2e-2)


@pytest.mark.gpu
@pytest.mark.parametrize("attention", ["sdpa", "flex_attention"])
def test_compiled_model_keeps_losses_on_gpu(attention):
    """inductor-compiled layers, packed documents; with flex_attention the BlockMask comes from the
    eager model forward (once per batch) into every compiled layer."""
    _cuda_or_skip()
    plain, compiled = _bf16_pair(tiny(attention=attention), tiny(attention=attention, compile=True))
    ids, pos = packed_batch("cuda")
    assert_same(loss_and_grads(plain, build_loss(tiny()), ids, pos),
                loss_and_grads(compiled, build_loss(tiny()), ids, pos), rtol=2e-2)


def test_plain_loss_is_the_packed_loss():
    """build_loss's default is exactly packed_next_token_loss over the model's logits."""
    torch.manual_seed(0)
    model = build_model(tiny(), VOCAB)
    ids, pos = packed_batch()
    with torch.no_grad():
        got = build_loss(tiny())(model, ids, pos)
        want = packed_next_token_loss(model(input_ids=ids, position_ids=pos).logits, ids, pos)
    assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])
