"""REINFORCE Leave-One-Out (Ahmadian et al., 2024) and REINFORCE++ (Hu, 2025) advantages.

RLOO: A_i = r_i - mean_{j != i} r_j within a group of n samples of one prompt.
REINFORCE++: A = (r - mean(batch)) / (std(batch) + eps), one normalisation over the
whole batch rather than per group.
"""

from __future__ import annotations

import torch


def rloo_advantages(rewards: torch.Tensor) -> torch.Tensor:
    """rewards [groups, n], n >= 2 -> advantages [groups, n]."""
    n = rewards.shape[1]
    if n < 2:
        raise ValueError("RLOO needs at least 2 samples per prompt")
    baseline = (rewards.sum(dim=1, keepdim=True) - rewards) / (n - 1)
    return rewards - baseline


def reinforce_pp_advantages(rewards: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """Any shape; normalised over all elements."""
    return (rewards - rewards.mean()) / (rewards.std(unbiased=False) + eps)
