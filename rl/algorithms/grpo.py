"""GRPO (Shao et al., 2024): group-normalised advantages and the clipped policy loss.

advantage_i = (r_i - mean(group)) / (std(group) + eps), std optional (Dr. GRPO drops it);
loss: rl/algorithms/policy.py's clipped surrogate with the k3 KL to a reference.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from rl.algorithms.policy import PolicyGradient, clipped_policy_loss


def group_advantages(rewards: torch.Tensor, scale_by_std: bool = True, eps: float = 1e-6) -> torch.Tensor:
    """rewards [groups, n] -> advantages [groups, n]."""
    centred = rewards - rewards.mean(dim=1, keepdim=True)
    return centred / (rewards.std(dim=1, keepdim=True, unbiased=False) + eps) if scale_by_std else centred


grpo_loss = clipped_policy_loss


@dataclass(frozen=True)
class GRPO(PolicyGradient):
    name = "grpo"

    def advantages(self, rewards: torch.Tensor) -> torch.Tensor:
        return group_advantages(rewards)
