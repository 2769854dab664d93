"""Code tasks from JSONL files (optionally gzipped) in HumanEval or MBPP format.

HumanEval lines: task_id, prompt, canonical_solution, test, entry_point.
MBPP lines: text, code, test_list (and task_id, test_setup_code if present).
Answer lines (`parse_line` only, for the RL task stream): prompt, answer (and task_id or id).
A malformed line is a TaskFileError naming the file and the line.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from runtime.core.errors import FactoryError
from runtime.core.jsonl import objects, parse_object

HUMANEVAL_KEYS = {"task_id", "prompt", "canonical_solution", "test", "entry_point"}
MBPP_KEYS = {"text", "code", "test_list"}
ANSWER_KEYS = {"prompt", "answer"}


class TaskFileError(FactoryError):
    """A task file line is not valid JSON or not a known task format."""


@dataclass
class CodeTask:
    """A program to complete and the test cases that judge it."""

    id: str
    prompt: str
    """What the model is shown."""
    prefix: str
    """Code placed before the completion (HumanEval: the prompt; MBPP: nothing)."""
    solution: str
    """The canonical completion."""
    setup: str = ""
    """Test-module code run after the completion and before the cases."""
    cases: list[tuple[str, bool]] = field(default_factory=list)
    """(statement, counted): counted statements are test cases; the others prepare them."""
    candidate: str | None = None
    """Name the cases call the solution by (HumanEval's `candidate`), bound to `entry_point`."""
    entry_point: str | None = None


@dataclass
class AnswerTask:
    """A question whose completion is judged by its final answer (rl/rewards/exact_answer.py)."""

    id: str
    prompt: str
    answer: str


def load_tasks(path: str | Path) -> list[CodeTask]:
    return list(iter_tasks(path))


def iter_tasks(path: str | Path) -> Iterator[CodeTask]:
    for where, row in objects(path, TaskFileError):
        task = task_of(row, where)
        if not isinstance(task, CodeTask):
            raise TaskFileError(f"{where}: an answer task; a code task file needs HumanEval or MBPP lines")
        yield task


def parse_line(line: str, where: str) -> CodeTask | AnswerTask:
    return task_of(parse_object(line, where, TaskFileError), where)


def task_of(row: dict, where: str) -> CodeTask | AnswerTask:
    try:
        if HUMANEVAL_KEYS <= row.keys():
            return humaneval_task(row)
        if MBPP_KEYS <= row.keys():
            return mbpp_task(row, where)
    except (SyntaxError, TypeError, ValueError) as exc:
        raise TaskFileError(f"{where}: {exc}") from None
    if ANSWER_KEYS <= row.keys():
        return AnswerTask(str(row.get("task_id", row.get("id", where))), str(row["prompt"]), str(row["answer"]))
    raise TaskFileError(f"{where}: neither HumanEval ({', '.join(sorted(HUMANEVAL_KEYS))}), "
                        f"MBPP ({', '.join(sorted(MBPP_KEYS))}) nor an answer task ({', '.join(sorted(ANSWER_KEYS))}); "
                        f"keys: {', '.join(sorted(row))}")


def humaneval_task(row: dict) -> CodeTask:
    module = ast.parse(row["test"])
    check = next((n for n in module.body if isinstance(n, ast.FunctionDef) and n.name == "check"), None)
    if check is None or not check.args.args:
        raise ValueError("test defines no check(candidate) function")
    setup = [ast.unparse(n) for n in module.body if n is not check]
    cases = [(ast.unparse(s), any(isinstance(n, ast.Assert) for n in ast.walk(s))) for s in check.body]
    return CodeTask(id=str(row["task_id"]), prompt=row["prompt"], prefix=row["prompt"],
                    solution=row["canonical_solution"], setup="\n".join(setup), cases=cases,
                    candidate=check.args.args[0].arg, entry_point=row["entry_point"])


def mbpp_task(row: dict, where: str) -> CodeTask:
    tests = row["test_list"]
    if not isinstance(tests, list) or not all(isinstance(t, str) for t in tests):
        raise ValueError("test_list must be a list of strings")
    for test in tests:
        ast.parse(test)
    prompt = f'"""\n{row["text"]}\n{tests[0] if tests else ""}\n"""\n'
    return CodeTask(id=str(row.get("task_id", where)), prompt=prompt, prefix="", solution=row["code"],
                    setup=row.get("test_setup_code", "") or "", cases=[(t, True) for t in tests])
