"""The RL maths, each checked against values worked out by hand (the arithmetic is in the comments)."""

import math

import pytest
import torch

from rl.algorithms.dpo import dpo_loss, sequence_logprobs
from rl.algorithms.grpo import group_advantages, grpo_loss
from rl.algorithms.off_policy import truncated_importance_weights
from rl.algorithms.reinforce_pp import reinforce_pp_advantages
from rl.algorithms.rloo import rloo_advantages
from rl.sft import label_mask, segment_attention_mask, segment_positions, sft_loss


def test_sft_trains_only_inside_a_piece():
    # pieces [1, 1] [2] and one padding token: only position 0 -> 1 is trained
    segments = torch.tensor([[1, 1, 2, 0]])
    assert label_mask(segments).tolist() == [[True, False, False]]
    ids = torch.tensor([[0, 2, 1, 1]])
    logits = torch.zeros(1, 4, 3)
    logits[0, 0, 2] = math.log(2)  # p(token 2) = 2 / (1 + 1 + 2) = 0.5
    logits[0, 1, 0] = 50.0         # would be a large loss at 1 -> 2, but that crosses pieces
    loss, per_row = sft_loss(logits, ids, segments)
    assert loss.item() == pytest.approx(math.log(2))  # -log 0.5
    assert per_row.tolist() == pytest.approx([math.log(2)])


def test_sft_loss_mask_excludes_the_prompt():
    segments = torch.ones(1, 4, dtype=torch.long)
    mask = torch.tensor([[1, 0, 1, 1]])  # token 1 is prompt: position 0 -> 1 not trained
    assert label_mask(segments, mask).tolist() == [[False, True, True]]
    loss, _ = sft_loss(torch.zeros(1, 4, 5), torch.tensor([[0, 1, 2, 3]]), segments, mask)
    assert loss.item() == pytest.approx(math.log(5))  # uniform over 5 tokens


def test_packed_attention_and_positions():
    segments = torch.tensor([[1, 1, 2, 2, 2, 0, 0]])
    assert segment_positions(segments).tolist() == [[0, 1, 0, 1, 2, 0, 1]]
    allowed = segment_attention_mask(torch.tensor([[1, 1, 2]]))[0, 0].tolist()
    assert allowed == [[True, False, False], [True, True, False], [False, False, True]]


def test_dpo_loss():
    # rewards: chosen 0.1 * (-1 - -1.5) = 0.05, rejected 0.1 * (-2 - -1) = -0.1; margin 0.15
    loss, chosen, rejected = dpo_loss(torch.tensor([-1.0]), torch.tensor([-2.0]), torch.tensor([-1.5]),
                                      torch.tensor([-1.0]), beta=0.1)
    assert chosen.item() == pytest.approx(0.05) and rejected.item() == pytest.approx(-0.1)
    assert loss.item() == pytest.approx(math.log1p(math.exp(-0.15)))  # -log sigmoid(0.15) = 0.62096


def test_sequence_logprobs_sum_the_completion_only():
    logits = torch.zeros(1, 3, 4)  # uniform: every token has log-probability log(1/4)
    total = sequence_logprobs(logits, torch.tensor([[0, 1, 2]]), torch.tensor([[0, 0, 1]]))
    assert total.item() == pytest.approx(math.log(0.25))


def test_group_advantages():
    # mean 0.5, population std 0.5: (1 - 0.5) / 0.5 = 1
    assert group_advantages(torch.tensor([[1.0, 0.0, 0.0, 1.0]])).tolist()[0] == pytest.approx([1, -1, -1, 1], abs=1e-5)
    assert group_advantages(torch.tensor([[3.0, 1.0]]), scale_by_std=False).tolist() == [[1.0, -1.0]]
    assert group_advantages(torch.tensor([[2.0, 2.0]])).tolist() == [[0.0, 0.0]], "equal rewards teach nothing"


def test_grpo_clipped_loss():
    # ratio exp(log 1.5) = 1.5. A = +1: min(1.5, clip 1.2) -> 1.2, loss -1.2. A = -1: min(-1.5, -1.2) -> -1.5, loss 1.5
    logp = torch.full((2, 1), math.log(1.5))
    loss = grpo_loss(logp, torch.zeros(2, 1), torch.tensor([1.0, -1.0]), torch.ones(2, 1))
    assert loss.item() == pytest.approx((-1.2 + 1.5) / 2)


def test_grpo_kl_term_and_mask():
    # ratio 1, A = 0: only the KL term. d = log 2: exp(d) - d - 1 = 1 - log 2; times 0.5
    logp, ref = torch.zeros(1, 2), torch.full((1, 2), math.log(2))
    loss = grpo_loss(logp, torch.zeros(1, 2), torch.tensor([0.0]), torch.tensor([[1, 0]]), kl_coef=0.5, logp_ref=ref)
    assert loss.item() == pytest.approx(0.5 * (1 - math.log(2)))


def test_rloo_and_reinforce_pp():
    # leave-one-out baselines: (0 + 0) / 2 = 0, (1 + 0) / 2 = 0.5, 0.5
    assert rloo_advantages(torch.tensor([[1.0, 0.0, 0.0]])).tolist() == [[1.0, -0.5, -0.5]]
    with pytest.raises(ValueError):
        rloo_advantages(torch.tensor([[1.0]]))
    assert reinforce_pp_advantages(torch.tensor([1.0, 0.0, 0.0, 1.0])).tolist() == pytest.approx([1, -1, -1, 1], abs=1e-5)


def test_truncated_importance_weights():
    # 0.5 / 0.25 = 2, capped at 1.5; 0.2 / 0.4 = 0.5; the third is masked
    trainer = torch.log(torch.tensor([0.5, 0.2, 0.3], requires_grad=True))
    sampler = torch.log(torch.tensor([0.25, 0.4, 0.3]))
    w = truncated_importance_weights(trainer, sampler, cap=1.5, mask=torch.tensor([1, 1, 0]))
    assert w.tolist() == pytest.approx([1.5, 0.5, 0.0])
    assert not w.requires_grad, "weights scale the gradient, they do not carry one"
