"""Off-policy correction for rollouts sampled by vLLM (truncated importance sampling).

vLLM samples with its own kernels (and, in async mode, older weights), so its
sampled-token logprobs differ from the trainer's. Each token's policy-gradient
term is weighted by min(exp(logp_trainer_old - logp_sampler), cap): the ratio
between the policy the loss assumes and the one that sampled, truncated to bound
the variance (Yao et al., 2025, "Your efficient RL framework secretly brings you
off-policy RL training").
"""

from __future__ import annotations

import torch


def truncated_importance_weights(logp_trainer: torch.Tensor, logp_sampler: torch.Tensor, cap: float = 2.0,
                                 mask: torch.Tensor | None = None) -> torch.Tensor:
    """Per-token weights, no gradient; masked positions get weight 0."""
    weights = torch.exp(logp_trainer.detach() - logp_sampler.detach()).clamp(max=cap)
    return weights * mask.float() if mask is not None else weights
