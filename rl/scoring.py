"""Scoring sampled completions of tasks: code tests in a sandbox runner, exact answers in process."""

from __future__ import annotations

import torch

from rl.rewards.code_tests import Runner, code_test_rewards
from rl.rewards.custom import AnswerReward, load_reward
from rl.rewards.exact_answer import exact_answer_reward
from rl.tasks import AnswerTask, CodeTask
from runtime.core.generation import GenerationResult


def score(sandbox: Runner, tasks: list[CodeTask | AnswerTask], results: list[GenerationResult],
          answer_reward: AnswerReward | None = None) -> tuple[torch.Tensor, list[list[str]]]:
    """[tasks, n] rewards and each completion's status. A completion is scored by its first line.
    Code tasks: 1.0 when it passes every test, in the sandbox pool (one execution per completion,
    judged outside). Answer tasks: the exact-answer reward (status `exact`), or `answer_reward`
    (rl.reward, status `custom`)."""
    pairs = [(t, c.text.split("\n", 1)[0]) for t, r in zip(tasks, results) for c in r.completions]
    scored: list[tuple[float, str]] = [(0.0, "")] * len(pairs)
    code = [i for i, (t, _) in enumerate(pairs) if isinstance(t, CodeTask)]
    tested = code_test_rewards(sandbox, [pairs[i][0] for i in code], [pairs[i][1] for i in code])
    for i, reward in zip(code, tested):
        scored[i] = (float(reward.passed), reward.status)
    for i, (task, completion) in enumerate(pairs):
        if isinstance(task, AnswerTask):
            scored[i] = ((answer_reward(task.prompt, completion, task.answer), "custom") if answer_reward
                         else (exact_answer_reward(completion, task.answer), "exact"))
    n = len(pairs) // max(1, len(tasks))
    statuses = [[st for _, st in scored[i * n : (i + 1) * n]] for i in range(len(tasks))]
    return torch.tensor([r for r, _ in scored]).view(len(tasks), -1), statuses


def answer_reward_of(path: str | None) -> AnswerReward | None:
    """rl.reward's function, or None for the exact answer."""
    return load_reward(path) if path else None
