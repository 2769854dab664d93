"""Exact-answer reward for math-style tasks, with numbers normalised.

The answer is taken from the completion as the text after `####`, else the
last `\\boxed{...}`, else the last number. Numbers compare as exact fractions
(`1,000` = `1000.0`, `0.5` = `1/2`, `50%` = `0.5`, `$3` = `3`); anything else
compares case-insensitively with whitespace collapsed.
"""

from __future__ import annotations

import re
from fractions import Fraction

NUMBER = re.compile(r"[-+]?\$?\d[\d,]*(?:\.\d+)?(?:/\d+)?%?|[-+]?\.\d+")
BOXED = re.compile(r"\\boxed\{([^{}]*)\}")


def extract_answer(completion: str) -> str:
    if "####" in completion:
        tail = completion.rsplit("####", 1)[1].strip()
        return tail.splitlines()[0].strip() if tail else ""
    boxed = BOXED.findall(completion)
    if boxed:
        return boxed[-1].strip()
    numbers = NUMBER.findall(completion)
    return numbers[-1] if numbers else completion.strip()


def normalise(text: str) -> Fraction | str:
    s = text.strip().rstrip(".").replace(",", "").replace("$", "").replace(" ", "")
    percent = s.endswith("%")
    s = s.rstrip("%")
    try:
        value = Fraction(s)
    except (ValueError, ZeroDivisionError):
        return " ".join(text.split()).casefold()
    return value / 100 if percent else value


def exact_answer_reward(completion: str, answer: str) -> float:
    """1.0 when the extracted answer equals `answer` after normalisation, else 0.0."""
    return 1.0 if normalise(extract_answer(completion)) == normalise(answer) else 0.0
