"""Next-token loss on packed windows, kept inside documents and split by data source."""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from arctic_pretrain.model.config import ModelConfig


def packed_next_token_loss(logits: torch.Tensor, input_ids: torch.Tensor, position_ids: torch.Tensor
                           ) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-sequence (loss sum, predicted-token count).

    Position t predicts token t+1 unless t+1 starts a new document (position 0): the last token of
    one document never learns the first token of the next.
    """
    targets = input_ids[:, 1:]
    valid = position_ids[:, 1:] != 0
    ce = F.cross_entropy(logits[:, :-1].float().flatten(0, 1), targets.flatten(), reduction="none")
    ce = ce.view_as(targets) * valid
    return ce.sum(dim=1), valid.sum(dim=1)


LossFn = Callable[[torch.nn.Module, torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


def logits_loss(model: torch.nn.Module, input_ids: torch.Tensor, position_ids: torch.Tensor
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """The plain path: full logits from the model, then ``packed_next_token_loss``."""
    logits = model(input_ids=input_ids, position_ids=position_ids, use_cache=False).logits
    return packed_next_token_loss(logits, input_ids, position_ids)


def build_loss(cfg: ModelConfig) -> LossFn:
    """The training loss as ``fn(model, input_ids, position_ids) -> (loss sum, token count)`` per sequence;
    the step loop calls only this, so a fused or chunked loss swaps in here."""
    return logits_loss
