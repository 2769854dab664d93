"""GRPO (Shao et al., 2024): group-normalised advantages and a clipped policy-gradient loss.

advantage_i = (r_i - mean(group)) / (std(group) + eps), std optional (Dr. GRPO drops it).
Per token: -min(ratio * A, clip(ratio, 1 - eps_low, 1 + eps_high) * A), ratio = exp(logp - logp_old),
plus kl_coef * KL(policy || reference) by the k3 estimator exp(ref - logp) - (ref - logp) - 1,
averaged over the completion tokens of the batch.
"""

from __future__ import annotations

import torch


def group_advantages(rewards: torch.Tensor, scale_by_std: bool = True, eps: float = 1e-6) -> torch.Tensor:
    """rewards [groups, n] -> advantages [groups, n]."""
    centred = rewards - rewards.mean(dim=1, keepdim=True)
    return centred / (rewards.std(dim=1, keepdim=True, unbiased=False) + eps) if scale_by_std else centred


def grpo_loss(logp: torch.Tensor, logp_old: torch.Tensor, advantages: torch.Tensor, mask: torch.Tensor,
              clip_low: float = 0.2, clip_high: float = 0.2, kl_coef: float = 0.0,
              logp_ref: torch.Tensor | None = None, weights: torch.Tensor | None = None) -> torch.Tensor:
    """logp*, mask [B, T] per completion token; advantages [B]; optional per-token `weights` (off-policy correction)."""
    ratio = torch.exp(logp - logp_old)
    a = advantages[:, None]
    per_token = -torch.minimum(ratio * a, ratio.clamp(1 - clip_low, 1 + clip_high) * a)
    if weights is not None:
        per_token = per_token * weights
    if kl_coef and logp_ref is not None:
        d = logp_ref - logp
        per_token = per_token + kl_coef * (torch.exp(d) - d - 1)
    mask = mask.float()
    return (per_token * mask).sum() / mask.sum().clamp(min=1)
