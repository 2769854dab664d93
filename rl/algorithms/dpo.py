"""Direct Preference Optimization (Rafailov et al., 2023).

loss = -log sigmoid(beta * ((pi_c - ref_c) - (pi_r - ref_r))), where pi_* and ref_*
are summed log-probabilities of the chosen (c) and rejected (r) completions
under the policy and the frozen reference.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def dpo_loss(policy_chosen: torch.Tensor, policy_rejected: torch.Tensor, ref_chosen: torch.Tensor,
             ref_rejected: torch.Tensor, beta: float = 0.1) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(mean loss, chosen reward, rejected reward); rewards are beta * (policy - reference)."""
    chosen_reward = beta * (policy_chosen - ref_chosen)
    rejected_reward = beta * (policy_rejected - ref_rejected)
    loss = -F.logsigmoid(chosen_reward - rejected_reward)
    return loss.mean(), chosen_reward.detach(), rejected_reward.detach()


def sequence_logprobs(logits: torch.Tensor, input_ids: torch.Tensor, completion_mask: torch.Tensor) -> torch.Tensor:
    """Summed log-probability of the masked tokens of each row (token t scored by logits at t-1)."""
    logp = torch.log_softmax(logits[:, :-1].float(), -1).gather(2, input_ids[:, 1:, None].long())[..., 0]
    return (logp * completion_mask[:, 1:].float()).sum(1)
