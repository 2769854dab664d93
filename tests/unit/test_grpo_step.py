"""A GRPO step of a real TrainerShard (a one-process gloo group, no Ray) moves probability the right way."""

import socket

import pytest
import torch
from transformers import AutoTokenizer

from actors.trainer_shard import TrainerShard
from rl.procedural import answer, prompt
from runtime.config import load_config


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_rewarded_completion_gains_and_penalised_one_loses(tiny_model, precision):
    cfg = load_config("default", ["placement.trainer.replicas=1", "rl.prompts_per_step=2", "rl.group_size=2",
                                  "rl.lr=1e-3", "rl.updates_per_step=1", f"train.precision={precision}"])
    shard = TrainerShard(cfg, str(tiny_model), 0, 1, "test/trainer/0")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    shard.setup(f"tcp://127.0.0.1:{port}")
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
            shard.rl_step([
                {"prompt_ids": p, "completion_ids": good, "logprobs": token_logps(good), "advantage": 1.0},
                {"prompt_ids": p, "completion_ids": bad, "logprobs": token_logps(bad), "advantage": -1.0},
            ])
        assert logp(good) > good_before + 1.0 and logp(bad) < bad_before - 1.0
    finally:
        shard.shutdown()
