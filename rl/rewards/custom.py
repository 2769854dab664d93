"""A reward function of the user's own for answer tasks, named by an importable path.

`rl.reward: mypackage.rewards:close_enough` is called as `close_enough(prompt, completion, answer)`
and returns a float in [0, 1]. It runs in the process that scores (the driver, the Evaluator),
on the completion's text: it never runs the model's output as code, so it needs no sandbox.
Code tasks are always judged by their tests in the sandbox, outside the program under test.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable

from runtime.core.errors import FactoryError

AnswerReward = Callable[[str, str, str], float]


class RewardError(FactoryError):
    """rl.reward cannot be imported or called, or returned something that is not a reward."""


def load_reward(path: str) -> AnswerReward:
    """The function at `module:function`; RewardError naming rl.reward when there is none."""
    module, _, name = path.partition(":")
    if not module or not name:
        raise RewardError(f"rl.reward: {path!r} is not of the form module:function")
    try:
        function = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError) as exc:
        raise RewardError(f"rl.reward: cannot import {path}: {exc} (is its package installed, or on PYTHONPATH "
                          "for every node?)") from None
    if not callable(function):
        raise RewardError(f"rl.reward: {path} is not callable")
    return checked(function, path)


def checked(function: AnswerReward, path: str) -> AnswerReward:
    """`function`, with its value checked: a number in [0, 1], else one RewardError naming it."""
    def reward(prompt: str, completion: str, answer: str) -> float:
        value = function(prompt, completion, answer)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value <= 1.0:
            raise RewardError(f"rl.reward: {path} returned {value!r} for a completion; a reward is a number in [0, 1]")
        return float(value)

    return reward
