"""Packed windows behave as if every document were run alone."""

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from arctic_pretrain.data.sampler import MixtureSampler
from arctic_pretrain.data.shards import TokenSource
from arctic_pretrain.model import build_model, flops_per_token, padded_vocab_size, resolve_attention
from arctic_pretrain.model.loss import packed_next_token_loss
from arctic_pretrain.train.config import ModelConfig
from tests.conftest import make_source


def tiny(**over) -> ModelConfig:
    base = {"name": "t", "hidden_size": 64, "num_layers": 2, "intermediate_size": 128, "num_heads": 4,
            "num_kv_heads": 4, "max_seq_len": 128, "attention": "sdpa"}
    return OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(ModelConfig), {**base, **over}))


@pytest.mark.parametrize("attention", ["sdpa", "eager"])
def test_packed_logits_equal_separate_documents(attention):
    torch.manual_seed(0)
    model = build_model(tiny(attention=attention), vocab_size=256).eval()
    docs = [torch.randint(1, 256, (n,)) for n in (11, 5, 16)]
    packed = torch.cat(docs)[None]
    positions = torch.cat([torch.arange(len(d)) for d in docs])[None]
    with torch.no_grad():
        packed_logits = model(input_ids=packed, position_ids=positions, use_cache=False).logits[0]
        start = 0
        for doc in docs:
            alone = model(input_ids=doc[None], use_cache=False).logits[0]
            torch.testing.assert_close(packed_logits[start:start + len(doc)], alone, atol=2e-5, rtol=1e-4)
            start += len(doc)


def test_no_label_crosses_a_document_boundary():
    ids = torch.tensor([[5, 6, 7, 0, 9, 10, 0, 12]])
    pos = torch.tensor([[0, 1, 2, 3, 0, 1, 2, 0]])
    vocab = 16
    logits = torch.zeros(1, 8, vocab, requires_grad=True)
    loss_sum, count = packed_next_token_loss(logits, ids, pos)
    assert count.item() == 5  # 7 predictions minus the 2 that would predict a next document's first token
    loss_sum.sum().backward()
    predicting = logits.grad[0].abs().sum(-1) > 0
    assert predicting.tolist() == [True, True, True, False, True, True, False, False]


def test_real_batch_labels_stay_inside_documents(tmp_path):
    rng = np.random.default_rng(0)
    docs = [rng.integers(1, 100, rng.integers(3, 30)).tolist() for _ in range(50)]
    src = TokenSource(make_source(tmp_path / "s", docs, vocab=100))
    batch = MixtureSampler({"s": src}, 32, seed=0).read(MixtureSampler({"s": src}, 32, seed=0).draw(8, {"s": 1}))
    ids, pos = torch.from_numpy(batch.input_ids), torch.from_numpy(batch.position_ids)
    _, count = packed_next_token_loss(torch.zeros(8, 32, 100), ids, pos)
    # the tokens never predicted are exactly those after an EOS (id 0)
    assert count.sum().item() == (ids[:, :-1] != 0).sum().item()


def test_vocab_rounds_up_to_multiple():
    assert padded_vocab_size(tiny(), 4103) == 4160
    assert padded_vocab_size(tiny(vocab_size=5000), 4103) == 5000


def test_auto_attention_without_flash_attn():
    import importlib.util

    if importlib.util.find_spec("flash_attn") is not None:
        pytest.skip("flash-attn is installed: auto picks flash_attention_2 on GPUs")
    assert resolve_attention("auto", cuda=False) == "sdpa"  # CPU: no compile step for nothing
    assert resolve_attention("auto", cuda=True) == "flex_attention"  # GPU without flash-attn
    assert resolve_attention("sdpa", cuda=True) == "sdpa"  # a forced choice stays
    with pytest.raises(RuntimeError, match="flash-attn"):
        resolve_attention("flash_attention_2", cuda=True)


def test_flops_per_token_for_the_paper_model():
    cfg = tiny(hidden_size=2048, num_layers=24, intermediate_size=5632, num_heads=16, num_kv_heads=16,
               max_seq_len=8192)
    flops = flops_per_token(cfg, 64000, 8192)
    params = 24 * (4 * 2048**2 + 3 * 2048 * 5632) + 64000 * 2048
    assert flops == 6 * params + 12 * 24 * 2048 * 8192
    assert 1.3e9 < params < 1.4e9  # "1.3B"


def test_activation_checkpointing_switch():
    def enabled(m):
        return getattr(m, "is_activation_checkpointing", None) or m.is_gradient_checkpointing

    assert enabled(build_model(tiny(activation_checkpointing="full"), vocab_size=256))
    assert not enabled(build_model(tiny(), vocab_size=256))


@pytest.mark.gpu
def test_flash_attention_packing_matches_sdpa():
    pytest.importorskip("flash_attn", reason="flash-attn is only installed on GPU images")
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    torch.manual_seed(0)
    flash = build_model(tiny(attention="flash_attention_2"), 256).cuda().bfloat16().eval()
    sdpa = build_model(tiny(attention="sdpa"), 256).cuda().bfloat16().eval()
    sdpa.load_state_dict(flash.state_dict())
    ids = torch.randint(1, 256, (1, 40), device="cuda")
    pos = torch.cat([torch.arange(25), torch.arange(15)])[None].cuda()
    with torch.no_grad():
        a = flash(input_ids=ids, position_ids=pos, use_cache=False).logits
        b = sdpa(input_ids=ids, position_ids=pos, use_cache=False).logits
    torch.testing.assert_close(a.float(), b.float(), atol=5e-2, rtol=5e-2)


@pytest.mark.gpu
def test_flex_attention_packing_matches_separate_documents_on_gpu():
    """flex_attention builds a block-diagonal document mask from the restarting position_ids (compiled
    Triton kernels; on CPU it works too but compiles for ~40 s, so it is checked on GPUs only)."""
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    torch.manual_seed(0)
    flex = build_model(tiny(attention="flex_attention"), 256).cuda().bfloat16().eval()
    docs = [torch.randint(1, 256, (n,), device="cuda") for n in (25, 15, 24)]
    positions = torch.cat([torch.arange(len(d), device="cuda") for d in docs])[None]
    with torch.no_grad():
        packed = flex(input_ids=torch.cat(docs)[None], position_ids=positions, use_cache=False).logits[0]
        start = 0
        for doc in docs:
            alone = flex(input_ids=doc[None], use_cache=False).logits[0]
            torch.testing.assert_close(packed[start:start + len(doc)].float(), alone.float(), atol=5e-2, rtol=5e-2)
            start += len(doc)
