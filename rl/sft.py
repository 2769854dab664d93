"""Causal-LM (pre-training / SFT) loss on packed sequences.

A packed row holds several pieces, marked by `segment_ids` (1, 2, ... per piece,
0 for padding). Token t predicts token t+1 only inside one piece: the last token
of a piece, padding, and positions outside `loss_mask` (an SFT prompt) carry no
loss. Attention must not cross pieces either: `segment_attention_mask` gives the
block-diagonal causal mask and `segment_positions` restarts positions per piece.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def label_mask(segment_ids: torch.Tensor, loss_mask: torch.Tensor | None = None) -> torch.Tensor:
    """[B, L-1] bool: position t is trained to predict t+1 (same piece, not padding, in loss_mask)."""
    same = (segment_ids[:, 1:] == segment_ids[:, :-1]) & (segment_ids[:, 1:] > 0)
    if loss_mask is not None:
        same &= loss_mask[:, 1:].bool()
    return same


def sft_loss(logits: torch.Tensor, input_ids: torch.Tensor, segment_ids: torch.Tensor,
             loss_mask: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(mean loss over trained tokens, per-row mean loss) for logits [B, L, V] of input_ids [B, L]."""
    mask = label_mask(segment_ids, loss_mask).float()
    nll = F.cross_entropy(logits[:, :-1].transpose(1, 2).float(), input_ids[:, 1:].long(), reduction="none")
    per_row = (nll * mask).sum(1) / mask.sum(1).clamp(min=1)
    return (nll * mask).sum() / mask.sum().clamp(min=1), per_row


def segment_attention_mask(segment_ids: torch.Tensor) -> torch.Tensor:
    """[B, 1, L, L] bool: query i may attend key j iff j <= i, both in the same piece, not padding."""
    same = segment_ids[:, :, None] == segment_ids[:, None, :]
    causal = torch.ones(segment_ids.shape[1], segment_ids.shape[1], dtype=torch.bool, device=segment_ids.device).tril()
    return (same & causal & (segment_ids[:, :, None] > 0))[:, None]


def segment_positions(segment_ids: torch.Tensor) -> torch.Tensor:
    """[B, L] positions that restart at 0 at the start of every piece."""
    index = torch.arange(segment_ids.shape[1], device=segment_ids.device).expand_as(segment_ids)
    starts = torch.ones_like(segment_ids, dtype=torch.bool)
    starts[:, 1:] = segment_ids[:, 1:] != segment_ids[:, :-1]
    start_index = torch.where(starts, index, torch.zeros_like(index)).cummax(dim=1).values
    return index - start_index
