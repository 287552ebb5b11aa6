"""Next-token loss on packed windows, kept inside documents and split by data source.

Every loss here returns the same thing, per sequence: (loss sum, predicted-token count), so the step
loop's per-source accounting does not care which one runs. ``logits`` materialises batch x seq x vocab
logits (about 2 GB a sequence in fp32 for the paper's 1.3B at seq 8192); the others never do:

- ``chunked``: plain PyTorch, a chunk of sequence positions at a time; backward recomputes each chunk's
  logits from the saved hidden states (one extra lm_head GEMM, ~3% of the 1.3B model's step FLOPs).
- ``liger``: liger-kernel's fused linear + cross-entropy (Triton, GPU), one call per sequence with
  ``reduction="sum"`` so the per-sequence sums stay exact and its gradients are computed in forward
  (``reduction="none"`` would recompute everything in backward).
- ``cut_ce``: Apple's cut cross-entropy (Triton, GPU), per-token losses (``reduction="none"``), gradient
  filtering off (``filter_eps=None``) so the gradient is exact, not approximated.

The fused losses run inside the model's forward (see ``attach_head_loss``): a DeepSpeed engine's
forward registers the backward hooks its ZeRO optimizer needs on what the module returns, and ZeRO-3
gathers ``lm_head``'s weight only inside that module's own call; both see the loss as a normal output.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from types import MethodType

import torch
import torch.nn.functional as F

from arctic_pretrain.model.config import ModelConfig

IGNORE = -100  # the target fused kernels skip (no loss, no gradient)

LossFn = Callable[[torch.nn.Module, torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]
# (lm_head weight [V, H], hidden [B, L, H], input_ids [B, L], position_ids [B, L]) -> (loss sum [B], count [B])
HeadLoss = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


def next_token_targets(input_ids: torch.Tensor, position_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Position t predicts token t+1 unless t+1 starts a new document (position 0): the last token of
    one document never learns the first token of the next. Returns (targets [B, L-1], valid [B, L-1])."""
    return input_ids[:, 1:], position_ids[:, 1:] != 0


def packed_next_token_loss(logits: torch.Tensor, input_ids: torch.Tensor, position_ids: torch.Tensor
                           ) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-sequence (loss sum, predicted-token count) from full logits."""
    targets, valid = next_token_targets(input_ids, position_ids)
    ce = F.cross_entropy(logits[:, :-1].float().flatten(0, 1), targets.flatten(), reduction="none")
    ce = ce.view_as(targets) * valid
    return ce.sum(dim=1), valid.sum(dim=1)


def logits_loss(model: torch.nn.Module, input_ids: torch.Tensor, position_ids: torch.Tensor
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """The plain path: full logits from the model, then ``packed_next_token_loss``."""
    logits = model(input_ids=input_ids, position_ids=position_ids, use_cache=False).logits
    return packed_next_token_loss(logits, input_ids, position_ids)


# ---- chunked (PyTorch) --------------------------------------------------------------------------------
class _ChunkedLinearCrossEntropy(torch.autograd.Function):
    """sum_t valid * CE(hidden_t @ W^T, target_t) per sequence, ``chunk`` positions at a time.

    Forward keeps only the log-sum-exp per position (fp32, [B, T]); backward recomputes each chunk's
    logits, turns them into softmax - onehot in place and projects back, so at most one chunk's
    logits (B x chunk x V) exist at any time. Logits are formed in the model's dtype then upcast, as
    the plain path's ``.float()`` does."""

    @staticmethod
    def forward(ctx, hidden, weight, targets, valid, chunk: int):
        B, T, _ = hidden.shape
        loss = torch.empty(B, T, dtype=torch.float32, device=hidden.device)
        lse = torch.empty_like(loss)
        for s in range(0, T, chunk):
            logits = (hidden[:, s:s + chunk] @ weight.t()).float()
            lse[:, s:s + chunk] = torch.logsumexp(logits, dim=-1)
            picked = logits.gather(-1, targets[:, s:s + chunk, None]).squeeze(-1)
            loss[:, s:s + chunk] = lse[:, s:s + chunk] - picked
            del logits
        ctx.save_for_backward(hidden, weight, targets, valid, lse)
        ctx.chunk = chunk
        return (loss * valid).sum(dim=1)

    @staticmethod
    def backward(ctx, grad_out):
        hidden, weight, targets, valid, lse = ctx.saved_tensors
        chunk = ctx.chunk
        scale = grad_out.float()[:, None] * valid  # [B, T]: upstream gradient, 0 where no target
        grad_hidden = torch.empty_like(hidden) if ctx.needs_input_grad[0] else None
        grad_weight = torch.zeros_like(weight, dtype=torch.float32) if ctx.needs_input_grad[1] else None
        for s in range(0, hidden.shape[1], chunk):
            h = hidden[:, s:s + chunk]
            g = (h @ weight.t()).float()
            g.sub_(lse[:, s:s + chunk, None]).exp_()  # softmax
            g.scatter_add_(-1, targets[:, s:s + chunk, None],
                           torch.full_like(g[..., :1], -1.0))  # - onehot(target)
            g.mul_(scale[:, s:s + chunk, None])
            g = g.to(hidden.dtype)
            if grad_hidden is not None:
                grad_hidden[:, s:s + chunk] = g @ weight
            if grad_weight is not None:
                grad_weight.add_((g.flatten(0, 1).t() @ h.flatten(0, 1)).float())
            del g
        if grad_weight is not None:
            grad_weight = grad_weight.to(weight.dtype)
        return grad_hidden, grad_weight, None, None, None


def chunked_head_loss(chunk_tokens: int) -> HeadLoss:
    def head(weight, hidden, input_ids, position_ids):
        targets, valid = next_token_targets(input_ids, position_ids)
        loss = _ChunkedLinearCrossEntropy.apply(hidden[:, :-1], weight, targets, valid, chunk_tokens)
        return loss, valid.sum(dim=1)

    return head


# ---- fused GPU kernels --------------------------------------------------------------------------------
def _masked_targets(input_ids, position_ids):
    targets, valid = next_token_targets(input_ids, position_ids)
    return targets.masked_fill(~valid, IGNORE), valid


def liger_head_loss() -> HeadLoss:
    from liger_kernel.transformers import LigerFusedLinearCrossEntropyLoss

    # fp32 weight-gradient accumulation over liger's chunks, as one bf16 GEMM (fp32 accumulate) does on the plain path
    fused = LigerFusedLinearCrossEntropyLoss(ignore_index=IGNORE, reduction="sum", accum_dtype=torch.float32)

    def head(weight, hidden, input_ids, position_ids):
        targets, valid = _masked_targets(input_ids, position_ids)
        # one call per sequence: reduction="sum" keeps liger's forward-computed gradients (no recompute)
        # and gives exactly the per-sequence sums the per-source loss needs
        loss = torch.stack([fused(weight, hidden[b, :-1], targets[b]) for b in range(hidden.shape[0])])
        return loss.float(), valid.sum(dim=1)

    return head


def cut_ce_head_loss() -> HeadLoss:
    from cut_cross_entropy import linear_cross_entropy

    def head(weight, hidden, input_ids, position_ids):
        targets, valid = _masked_targets(input_ids, position_ids)
        per_token = linear_cross_entropy(hidden[:, :-1], weight, targets, ignore_index=IGNORE,
                                         reduction="none", filter_eps=None)
        return (per_token.float() * valid).sum(dim=1), valid.sum(dim=1)

    return head


# ---- running a head loss inside the model's forward ---------------------------------------------------
def _forward_with_head_loss(self, input_ids=None, position_ids=None, head_loss: HeadLoss | None = None, **kwargs):
    """The model's own forward, or, given ``head_loss``: the decoder's final hidden states, then the loss
    computed inside ``lm_head``'s call (ZeRO-3 has its weight gathered there and hooks its backward)."""
    if head_loss is None:
        return self._arctic_plain_forward(input_ids=input_ids, position_ids=position_ids, **kwargs)
    kwargs.pop("use_cache", None)
    hidden = self.model(input_ids=input_ids, position_ids=position_ids, use_cache=False, **kwargs).last_hidden_state
    head = self.lm_head
    head.forward = lambda h: head_loss(head.weight, h, input_ids, position_ids)  # this call only
    try:
        return head(hidden)
    finally:
        del head.forward  # back to the class's Linear.forward


def attach_head_loss(module: torch.nn.Module) -> torch.nn.Module:
    """Let ``module(input_ids=, position_ids=, head_loss=fn)`` return ``fn``'s (loss sum, count) instead of
    logits; without ``head_loss`` the model behaves exactly as before (evaluation, export). Idempotent."""
    if not hasattr(module, "_arctic_plain_forward"):
        module._arctic_plain_forward = module.forward
        module.forward = MethodType(_forward_with_head_loss, module)
    return module


def _bare(model: torch.nn.Module) -> torch.nn.Module:
    """The HF model under a DeepSpeed engine (``engine.module``), or the model itself."""
    inner = getattr(model, "module", None)
    return inner if isinstance(inner, torch.nn.Module) else model


def head_loss_fn(head: HeadLoss) -> LossFn:
    def loss(model, input_ids, position_ids):
        attach_head_loss(_bare(model))
        # through the engine's own forward when given one: DeepSpeed hooks its backward on the outputs
        return model(input_ids=input_ids, position_ids=position_ids, head_loss=head)

    return loss


# ---- the one entry the step loop calls ----------------------------------------------------------------
def _installed(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


def resolve_loss(requested: str, cuda: bool | None = None) -> str:
    """``auto``: liger, else cut_ce, when installed on a CUDA machine; else the plain logits path.
    A forced fused kernel without its package or without CUDA fails saying which."""
    cuda = torch.cuda.is_available() if cuda is None else cuda
    packages = {"liger": "liger_kernel", "cut_ce": "cut_cross_entropy"}
    if requested == "auto":
        for kind, package in packages.items():
            if cuda and _installed(package):
                return kind
        return "logits"
    if requested in packages:
        if not _installed(packages[requested]):
            raise RuntimeError(f"model.loss={requested} needs the {packages[requested]} package "
                               "(pip install 'arctic-pretrain[gpu]'); model.loss=chunked is the PyTorch version")
        if not cuda:
            raise RuntimeError(f"model.loss={requested} runs Triton kernels on a CUDA GPU; "
                               "use model.loss=chunked (or logits) on CPU")
    return requested


def build_loss(cfg: ModelConfig) -> LossFn:
    """The training loss as ``fn(model, input_ids, position_ids) -> (loss sum, token count)`` per sequence,
    ``model`` being a DeepSpeed engine or the bare HF model; chosen by ``model.loss``."""
    kind = resolve_loss(cfg.loss)
    if kind == "logits":
        return logits_loss
    if kind == "chunked":
        return head_loss_fn(chunked_head_loss(cfg.loss_chunk_tokens))
    return head_loss_fn(liger_head_loss() if kind == "liger" else cut_ce_head_loss())
