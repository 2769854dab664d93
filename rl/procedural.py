"""Procedural coding tasks: "write f such that f(1) = 4, f(2) = 7", judged by code tests.

f(x) = a * x + b with small a and b; the prompt shows f on two inputs and opens
the function, the completion is the returned expression. The same family, with
answers, is a pre-training source (`function_examples`), so a pre-trained model
has a non-zero pass@k for RL to sharpen.
"""

from __future__ import annotations

import random

from rl.tasks import CodeTask

A_RANGE, B_RANGE = (1, 4), (0, 9)
SHOWN = (1, 2)
TESTED = (0, 1, 2, 3, 5, 10)


def draw(rng: random.Random) -> tuple[int, int]:
    return rng.randint(*A_RANGE), rng.randint(*B_RANGE)


def prompt(a: int, b: int) -> str:
    shown = "".join(f"# f({x}) = {a * x + b}\n" for x in SHOWN)
    return f"{shown}def f(x):\n    return"


def answer(a: int, b: int) -> str:
    return f" {a} * x + {b}" if a != 1 else f" x + {b}"


def function_example(rng: random.Random) -> str:
    """A pre-training document: the task with its answer."""
    a, b = draw(rng)
    return f"{prompt(a, b)}{answer(a, b)}\n"


def task_record(rng: random.Random, task_id: str = "") -> dict[str, str]:
    """A task in HumanEval's format (what a task file line holds), for the blender's task stream."""
    a, b = draw(rng)
    checks = "".join(f"    assert candidate({x}) == {a * x + b}\n" for x in TESTED)
    return {"task_id": task_id or f"linear/{a}x+{b}", "prompt": prompt(a, b), "canonical_solution": answer(a, b),
            "test": f"def check(candidate):\n{checks}", "entry_point": "f"}


def task(a: int, b: int, task_id: str) -> CodeTask:
    return CodeTask(id=task_id, prompt=prompt(a, b), prefix=prompt(a, b), solution=answer(a, b),
                    cases=[(f"assert f({x}) == {a * x + b}", True) for x in TESTED])


def tasks(seed: int, n: int, prefix: str = "linear") -> list[CodeTask]:
    rng = random.Random(f"{seed}:{prefix}")
    return [task(*draw(rng), f"{prefix}/{i}") for i in range(n)]
