"""Policy-gradient and DPO steps of a real TrainerShard (a one-process gloo group, no Ray) move
probability the right way."""

import socket

import pytest
import torch
from transformers import AutoTokenizer

from actors.trainer_shard import TrainerShard
from rl.algorithms import POLICY_GRADIENT, policy_gradient
from rl.procedural import answer, prompt
from runtime.core.config import load_config


@pytest.mark.parametrize("precision, name", [("fp32", "grpo"), ("bf16", "grpo"), ("fp32", "rloo"),
                                             ("fp32", "reinforce_pp")])
def test_rewarded_completion_gains_and_penalised_one_loses(tiny_model, precision, name):
    cfg = load_config("default", ["placement.trainer.replicas=1", "rl.prompts_per_step=2", "rl.group_size=2",
                                  "rl.lr=1e-3", "rl.updates_per_step=1", f"train.precision={precision}"])
    algorithm = policy_gradient(name, cfg.rl.clip_low, cfg.rl.clip_high, cfg.rl.kl_coef)
    advantages = algorithm.advantages(torch.tensor([[1.0, 0.0]]))[0].tolist()
    assert advantages[0] > 0 > advantages[1] and set(POLICY_GRADIENT) == {"grpo", "rloo", "reinforce_pp"}
    shard = started_shard(cfg, tiny_model)
    try:
        tok = AutoTokenizer.from_pretrained(tiny_model)
        p, good, bad = tok(prompt(2, 5))["input_ids"], tok(answer(2, 5))["input_ids"], tok(" x + 7")["input_ids"]

        def token_logps(c):
            """What vLLM reports for an on-policy sample: the current model's logprob of each token."""
            with torch.no_grad():
                logits = shard.model(torch.tensor([p + c])).logits[0, len(p) - 1 : -1]
            return torch.log_softmax(logits, -1).gather(1, torch.tensor(c)[:, None])[:, 0].tolist()

        def logp(c):
            return sum(token_logps(c))

        good_before, bad_before = logp(good), logp(bad)
        for _ in range(5):
            shard.rl_step([[
                {"prompt_ids": p, "completion_ids": good, "logprobs": token_logps(good), "advantage": advantages[0]},
                {"prompt_ids": p, "completion_ids": bad, "logprobs": token_logps(bad), "advantage": advantages[1]},
            ]], algorithm, cfg.rl)
        assert logp(good) > good_before + 1.0 and logp(bad) < bad_before - 1.0
    finally:
        shard.shutdown()


def started_shard(cfg, model) -> TrainerShard:
    shard = TrainerShard(cfg.train, str(model), 0, 1, "test/trainer/0")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    shard.setup(f"tcp://127.0.0.1:{port}")
    return shard


def test_dpo_steps_widen_the_margin_of_the_chosen_completion(tiny_model):
    cfg = load_config("default", ["placement.trainer.replicas=1", "dpo.lr=1e-3", "dpo.beta=0.5"])
    shard = started_shard(cfg, tiny_model)
    pairs = [{"prompt": prompt(a, b), "chosen": answer(a, b), "rejected": answer(a + 1, b)} for a, b in [(2, 5), (3, 1)]]
    try:
        history = [shard.dpo_step([pairs], cfg.dpo) for _ in range(6)]
    finally:
        shard.shutdown()
    assert history[0]["margin"] == pytest.approx(0.0, abs=1e-4), "the first step starts at the reference"
    assert history[-1]["margin"] > 0.1 and history[-1]["accuracy"] == 1.0
    assert history[-1]["loss"] < history[0]["loss"]
