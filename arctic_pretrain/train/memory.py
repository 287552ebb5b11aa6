"""The peak memory per GPU a run needs, estimated from its config before anything is allocated (dry_run=true).

It is the figure ``torch.cuda.max_memory_allocated`` reports (metrics.jsonl's ``max_memory_gb``): tensors only,
not the CUDA context, the allocator's cache or kernel workspaces. P parameters, N data-parallel ranks, e bytes
per element of the training dtype (bf16: 2, fp32: 4), x = e when the model is not fp32 (the model-dtype copy of
an fp32 result), else 0; B micro batch, L sequence length, T = B x L tokens, h hidden, I FFN width, V vocabulary.

    peak = model states + reduce bucket + stored activations + max(loss head + final norm, one recomputed layer)

Model states, bytes per parameter (DeepSpeed's estimators: ``estimate_zero2_model_states_mem_needs`` gives
2P + 18P/N for bf16 ZeRO-2, ``estimate_zero3_model_states_mem_needs`` 18P/N + 4 x the largest layer; the
breakdown below sums to both, and fp32 uses the same terms with 4-byte weights and gradients):

    stage  parameters        gradients                       optimizer states (fp32 master + Adam m, v)
    0      e                 e + 4 (fp32: e)                 12 (fp32: 8: no master copy, no fp32 gradient)
    1      e                 e (model dtype) + 4/N (fp32)    12/N
    2      e                 (e + 4)/N                       12/N
    3      e/N + 4 Lmax/P    4/N                             12/N        (Lmax: the largest layer, V x h)

``offload_optimizer`` moves the fp32 gradients and optimizer states to CPU (stage 1/2 keep e P on the GPU, as
DeepSpeed's offload estimate says); ``offload_param`` (stage 3) moves the parameters too. ZeRO-1/2 add one
reduce bucket of e x reduce_bucket_size (train/ds_config.py: min(500M, P) elements).

Activations, bytes per token and decoder layer (transformers' Llama in training, measured by what autograd
saves): each RMSNorm 4h (its fp32 input) + 2e h (normalised, output), q k v + attention output + o_proj's
input e h (3 + 2 kv_heads/heads), SwiGLU 4e I (gate, silu, up, their product):

    A = 8h + e h (4 + 3 + 2 kv/heads) + 4e I             (bf16, no GQA: 26h + 8I)

Checkpointing stores, per checkpointed layer, only its input (e h per token) and recomputes one layer at a time in
backward: none stores n A T, full n e h T (+ one recomputed layer), selective every k-th layer checkpointed.

Loss head, what exists while the loss runs backward (the stored activations are still alive then):
``logits`` 12 T V (fp32 log-probabilities saved by log_softmax, their gradient and the logits' gradient);
``chunked`` (4 + x)(B c V + V h) + 4T (one chunk's fp32 logits, the fp32 weight gradient, the log-sum-exp);
``liger``/``cut_ce`` e T h + 4 V h (the hidden states' gradient and the fp32 weight gradient, an upper bound:
they never hold logits). The final norm adds (4 + 2e) h T.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass

from arctic_pretrain.model.config import ModelConfig

GIB = 2**30


@dataclass(frozen=True)
class MemoryEstimate:
    """Bytes per GPU by component, and the words that say how each was computed."""

    parameters: int
    gradients: int
    optimizer_states: int
    reduce_bucket: int
    activations: int  # stored for backward across the decoder layers
    loss_head: int  # the loss's own buffers plus the final norm's activations
    recompute: int  # one layer's activations recomputed in backward (0 without checkpointing)
    precision: str
    zero_stage: int
    notes: dict[str, str]

    @property
    def model_states(self) -> int:
        return self.parameters + self.gradients + self.optimizer_states

    @property
    def peak(self) -> int:
        return self.model_states + self.reduce_bucket + self.activations + max(self.loss_head, self.recompute)


def model_state_bytes(params: int, largest_layer: int, zero_stage: int, world: int, e: int,
                      offload_optimizer: bool = False, offload_param: bool = False) -> tuple[int, int, int]:
    """(parameters, gradients, optimizer states) bytes per GPU: the table in this module's docstring."""
    mixed = e < 4
    n = world
    if zero_stage == 0:
        return e * params, (e + 4 if mixed else e) * params, (12 if mixed else 8) * params
    if zero_stage == 3:
        weights = 0 if offload_param else e * params // n
        opt_side = 0 if offload_optimizer else 1
        return weights + 4 * largest_layer, opt_side * 4 * params // n, opt_side * 12 * params // n
    if offload_optimizer:
        return e * params, 0, 0
    grads = e * params + 4 * params // n if zero_stage == 1 else (e + 4) * params // n
    return e * params, grads, 12 * params // n


def layer_activation_bytes(m: ModelConfig, e: int) -> int:
    """A: bytes one decoder layer stores for backward per token (see the module docstring)."""
    h, kv = m.hidden_size, m.num_kv_heads / m.num_heads
    return int(8 * h + e * h * (7 + 2 * kv) + 4 * e * m.intermediate_size)


def fused_loss_kind(requested: str) -> str:
    """The loss a GPU run would use: ``auto`` picks liger, else cut_ce, when installed (model/loss.resolve_loss)."""
    if requested != "auto":
        return requested
    for kind, package in (("liger", "liger_kernel"), ("cut_ce", "cut_cross_entropy")):
        if importlib.util.find_spec(package) is not None:
            return kind
    return "logits"


def estimate_memory(m: ModelConfig, vocab: int, params: int, *, micro_batch: int, seq_len: int, zero_stage: int,
                    world: int, bf16: bool, offload_optimizer: bool = False, offload_param: bool = False,
                    reduce_bucket: int | None = None) -> MemoryEstimate:
    """The peak per GPU for ``m`` (``params`` parameters, padded ``vocab``) trained as given;
    ``reduce_bucket``: ZeRO-1/2's bucket in elements (None: ``min(500M, params)``, as train/ds_config.py sets)."""
    from arctic_pretrain.train.ds_config import DEEPSPEED_BUCKET

    e = 2 if bf16 else 4
    x = e if bf16 else 0
    h, tokens = m.hidden_size, micro_batch * seq_len
    largest = vocab * h  # the embedding (tied to lm_head): ZeRO-3 gathers it whole
    p, g, o = model_state_bytes(params, largest, zero_stage, world, e, offload_optimizer, offload_param)
    bucket = e * (reduce_bucket or min(DEEPSPEED_BUCKET, params)) if zero_stage in (1, 2) else 0

    a = layer_activation_bytes(m, e)
    n = m.num_layers
    mode = m.activation_checkpointing
    checkpointed = {"none": 0, "full": n, "selective": -(-n // m.activation_checkpointing_every)}[mode]
    stored = (n - checkpointed) * a * tokens + checkpointed * e * h * tokens
    recompute = a * tokens if checkpointed else 0

    kind = fused_loss_kind(m.loss)
    final_norm = (4 + 2 * e) * h * tokens
    if kind == "logits":
        head, head_note = 12 * tokens * vocab, f"logits: 12 B x {tokens:,} tokens x {vocab:,} vocabulary"
    elif kind == "chunked":
        chunk = min(m.loss_chunk_tokens, seq_len)
        head = (4 + x) * (micro_batch * chunk * vocab + vocab * h) + 4 * tokens
        head_note = f"chunked: {4 + x} B x ({micro_batch} x {chunk} chunk + {h} hidden) x {vocab:,} vocabulary"
    else:
        head = e * tokens * h + 4 * vocab * h
        head_note = f"{kind}: no logits; {e} B x {tokens:,} tokens x {h} hidden + fp32 weight gradient"
    precision = "bf16" if bf16 else "fp32"
    notes = {
        "states": f"{precision}, ZeRO-{zero_stage}, {world} rank{'s' if world > 1 else ''}"
                  + (", optimizer offloaded" if offload_optimizer else "") + (", parameters offloaded"
                                                                             if offload_param else ""),
        "activations": f"{n} layers x {a / 1024:.1f} KiB/token x {tokens:,} tokens (micro batch {micro_batch} x "
                       f"{seq_len}), checkpointing {mode}"
                       + (f": {checkpointed} layers store only their input" if checkpointed else ""),
        "loss": head_note,
    }
    return MemoryEstimate(p, g, o, bucket, stored, head + final_norm, recompute, precision, zero_stage, notes)


def render_estimate(est: MemoryEstimate) -> list[str]:
    """The dry run's lines: the total, each component with what it counts, and the formula."""
    def gib(n: int) -> str:
        return f"{n / GIB:6.1f} GiB"

    return [
        f"peak memory per GPU ~{est.peak / GIB:.1f} GiB estimated (tensors, as torch.cuda.max_memory_allocated; "
        f"{est.notes['states']})",
        f"  parameters        {gib(est.parameters)}",
        f"  gradients         {gib(est.gradients)}",
        f"  optimizer states  {gib(est.optimizer_states)}  (fp32 master weights + Adam moments)",
        f"  reduce bucket     {gib(est.reduce_bucket)}",
        f"  activations       {gib(est.activations)}  ({est.notes['activations']})",
        f"  loss head         {gib(est.loss_head)}  ({est.notes['loss']}; + final norm)",
        f"  recompute         {gib(est.recompute)}  (one checkpointed layer in backward)",
        "  formula           states + bucket + activations + max(loss head, recompute); "
        "terms: arctic_pretrain/train/memory.py, README \"Memory estimate\"",
    ]
