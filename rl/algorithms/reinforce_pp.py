"""REINFORCE++ (Hu, 2025): one normalisation over the whole batch instead of per group.

advantage = (r - mean(batch)) / (std(batch) + eps); loss: rl/algorithms/policy.py's clipped
surrogate (the KL to the reference, where used, is the loss's k3 term).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from rl.algorithms.policy import PolicyGradient


def reinforce_pp_advantages(rewards: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """Any shape; normalised over all elements."""
    return (rewards - rewards.mean()) / (rewards.std(unbiased=False) + eps)


@dataclass(frozen=True)
class ReinforcePP(PolicyGradient):
    name = "reinforce_pp"

    def advantages(self, rewards: torch.Tensor) -> torch.Tensor:
        return reinforce_pp_advantages(rewards)
