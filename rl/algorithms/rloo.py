"""REINFORCE Leave-One-Out (Ahmadian et al., 2024).

advantage_i = r_i - mean_{j != i} r_j within a group of n >= 2 samples of one prompt
(no division by a standard deviation: the baseline alone removes the prompt's difficulty);
loss: rl/algorithms/policy.py's clipped surrogate.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from rl.algorithms.policy import PolicyGradient


def rloo_advantages(rewards: torch.Tensor) -> torch.Tensor:
    """rewards [groups, n], n >= 2 -> advantages [groups, n]."""
    n = rewards.shape[1]
    if n < 2:
        raise ValueError("RLOO needs at least 2 samples per prompt")
    baseline = (rewards.sum(dim=1, keepdim=True) - rewards) / (n - 1)
    return rewards - baseline


@dataclass(frozen=True)
class RLOO(PolicyGradient):
    name = "rloo"

    def advantages(self, rewards: torch.Tensor) -> torch.Tensor:
        return rloo_advantages(rewards)
