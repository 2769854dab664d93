"""Procedural text: small Python functions and arithmetic, deterministic for a seed.

It trains the default tokenizer, and is the default pre-training source.
"""

from __future__ import annotations

import operator
import random
from collections.abc import Iterator

_NAMES = ["f", "g", "h", "add", "mul", "sub", "scale", "shift", "square", "double", "triple", "inc"]
_OPS = ["+", "-", "*"]
_APPLY = {"+": operator.add, "-": operator.sub, "*": operator.mul}


def python_function(rng: random.Random) -> str:
    name = rng.choice(_NAMES)
    a, b = rng.randint(1, 99), rng.randint(0, 99)
    body = rng.choice([f"{a} * x + {b}", f"x * x + {b}", f"x - {b}", f"{a} * (x + {b})", f"x + {a}", f"(x - {b}) * {a}"])
    return f"def {name}(x):\n    return {body}\n"


def arithmetic(rng: random.Random) -> str:
    a, b, op = rng.randint(0, 999), rng.randint(0, 999), rng.choice(_OPS)
    return f"{a} {op} {b} = {_APPLY[op](a, b)}\n"


def arithmetic_task(rng: random.Random) -> dict[str, str]:
    """An RL task with an exact answer: the arithmetic line without its result."""
    line = arithmetic(rng)
    question, answer = line.rsplit(" = ", 1)
    return {"task_id": f"arithmetic/{question}", "prompt": f"{question} =", "answer": answer.strip()}


def corpus(seed: int, n_docs: int) -> Iterator[str]:
    """`n_docs` documents, alternating kinds at random; the same seed gives the same text."""
    rng = random.Random(seed)
    for _ in range(n_docs):
        yield mixed(rng)


def mixed(rng: random.Random) -> str:
    """Half small Python functions, half arithmetic (the `corpus` generator)."""
    return python_function(rng) if rng.random() < 0.5 else arithmetic(rng)
