"""What the policy-gradient algorithms share: the clipped surrogate loss, and the contract an
algorithm meets so the RL loop and the trainer shards can take any of them.

Per completion token: -min(ratio * A, clip(ratio, 1 - eps_low, 1 + eps_high) * A), with
ratio = exp(logp - logp_old), optionally weighted per token (off-policy correction), plus
kl_coef * KL(policy || reference) by the k3 estimator exp(ref - logp) - (ref - logp) - 1,
averaged over the completion tokens of the batch.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


def clipped_policy_loss(logp: torch.Tensor, logp_old: torch.Tensor, advantages: torch.Tensor, mask: torch.Tensor,
                        clip_low: float = 0.2, clip_high: float = 0.2, kl_coef: float = 0.0,
                        logp_ref: torch.Tensor | None = None, weights: torch.Tensor | None = None) -> torch.Tensor:
    """logp*, mask [B, T] per completion token; advantages [B]; optional per-token `weights`."""
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


@dataclass(frozen=True)
class PolicyGradient:
    """An RL algorithm as the loop and the shards use it: rewards [groups, n] -> advantages, and
    the loss of a minibatch. Frozen and small: the loop hands it to the shards with each step."""

    clip_low: float = 0.2
    clip_high: float = 0.2
    kl_coef: float = 0.0
    name = "base"

    def advantages(self, rewards: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def loss(self, logp: torch.Tensor, logp_old: torch.Tensor, advantages: torch.Tensor, mask: torch.Tensor,
             logp_ref: torch.Tensor | None = None, weights: torch.Tensor | None = None) -> torch.Tensor:
        return clipped_policy_loss(logp, logp_old, advantages, mask, self.clip_low, self.clip_high, self.kl_coef,
                                   logp_ref, weights)
