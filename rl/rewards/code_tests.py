"""Code-test reward: does a completion pass its task's tests, and what fraction of them?

Verdicts are decided outside the untrusted process. A test case of the form
`assert CALL == LITERAL` (or `LITERAL == CALL`), where CALL calls the solution, is
an input/output check: only CALL enters the sandbox; the program evaluates it and
writes the value to its result channel (fd 3) in a restricted format (exact
built-in types: int, float, str, bool, None, and lists, tuples, dicts, sets of
them); the trusted side compares it with LITERAL, which never entered the sandbox,
by type-exact equality (int and float compare by value; bool never equals int).
A completion that prints, patches `exec`, returns an object whose `__eq__` is
always true, forges channel records or kills its harness gains nothing: to
produce a passing value it has to compute it.

Other counted cases (`assert abs(f(x) - y) < 1e-6`, loops of asserts) must run
inside, next to the completion, and report pass/fail themselves: a completion
written to do so can forge those. A reward that relied on any such case is
labelled `strength="weak"`; `strong` means every case was judged on data outside.
The checker holds its own references before the completion is loaded, and the
completion runs in a namespace of its own, but that limits accidents, not intent.

Each distinct program is its own execution (a fresh process, killed with all its
descendants before the next), so no completion can reach another's result; identical
programs in one batch share one execution and its verdict.
"""

from __future__ import annotations

import ast
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from rl.tasks import CodeTask
from runtime.sandbox import Execution, ExecutionResult, Status

HARNESS = """
def _factory_check(source, steps, candidate, entry_point):
    import os
    write, compile_, exec_, eval_, type_, repr_, enumerate_ = os.write, compile, exec, eval, type, repr, enumerate
    list_, tuple_, dict_, set_, frozenset_ = list, tuple, dict, set, frozenset  # exact types: no override
    scalars = (int, float, str, bool, type(None))

    def plain(value, depth):
        kind = type_(value)
        if kind in scalars:
            return value
        if depth > 32:
            raise ValueError("too deep")
        if kind is list_ or kind is tuple_ or kind is set_ or kind is frozenset_:
            return kind([plain(item, depth + 1) for item in value])
        if kind is dict_:
            return {plain(k, depth + 1): plain(v, depth + 1) for k, v in value.items()}
        raise TypeError(kind.__name__)

    namespace = {"__name__": "__main__"}
    try:
        exec_(compile_(source, "<completion>", "exec"), namespace)
        if candidate:
            namespace[candidate] = namespace[entry_point]
    except BaseException:
        import traceback
        traceback.print_exc()
        raise SystemExit(1)
    for index, (kind, code) in enumerate_(steps):
        try:
            if kind == "call":
                record = "v " + repr_(plain(eval_(compile_(code, "<check>", "eval"), namespace), 0))
            else:
                exec_(compile_(code, "<check>", "exec"), namespace)
                record = "p"
        except BaseException:
            if kind == "exec":
                return
            record = "e"
        if kind != "exec":
            write(3, ("%d %s\\n" % (index, record)).encode())
"""


class Runner(Protocol):
    def run(self, executions: list[Execution]) -> list[ExecutionResult]: ...


@dataclass
class Check:
    kind: str
    """`call` (judged outside on its value), `case` (an assert judged inside) or `exec` (uncounted setup)."""
    code: str
    """What enters the sandbox: the call expression, or the statement."""
    expected: Any = None
    """For `call`: the value it must equal; it never enters the sandbox."""
    truthy: bool | None = None
    """For `call` judged by truth instead: whether the value must be true or false."""


@dataclass
class CodeReward:
    passed: bool
    fraction: float
    """Fraction of test cases passed (0 when the program did not finish)."""
    status: str
    """The sandbox status of the run."""
    cases: int
    strength: str = "strong"
    """`strong`: every case judged on data outside; `weak`: some asserts ran inside (forgeable)."""


def checks(task: CodeTask) -> list[Check]:
    """The task's cases as checks, input/output ones split so their expected values stay outside."""
    names = solution_names(task)
    found = []
    for source, counted in task.cases:
        io = io_case(source, names) if counted else None
        found.append(Check("call", *io) if io else Check("case" if counted else "exec", source))
    return found


def solution_names(task: CodeTask) -> set[str]:
    """Names the tests call the solution by: the candidate, the entry point, the reference's functions."""
    names = {task.candidate, task.entry_point} - {None}
    try:
        names |= {n.name for n in ast.parse(task.prefix + task.solution).body if isinstance(n, ast.FunctionDef)}
    except SyntaxError:
        pass
    return names


def io_case(source: str, names: set[str]) -> tuple[str, Any, bool | None] | None:
    """(expression, expected, truthy) when `source` can be judged on a value outside, else None:
    `assert EXPR == LITERAL` (either order; `is` with True, False or None) compares EXPR's value with
    the literal, which never enters the sandbox, so whatever EXPR is, only computing the value passes;
    `assert CALL` / `assert not CALL`, CALL a call of the solution, judges the truth of its plain value."""
    try:
        [statement] = ast.parse(source).body
    except (SyntaxError, ValueError):
        return None
    if not isinstance(statement, ast.Assert):
        return None
    test, truthy = statement.test, True
    if isinstance(test, ast.UnaryOp) and isinstance(test.op, ast.Not):
        test, truthy = test.operand, False
    if isinstance(test, ast.Call) and isinstance(test.func, ast.Name) and test.func.id in names:
        return ast.unparse(test), None, truthy
    if not truthy or not (isinstance(test, ast.Compare) and len(test.ops) == 1
                          and isinstance(test.ops[0], (ast.Eq, ast.Is))):
        return None
    for expr, other in ((test.left, test.comparators[0]), (test.comparators[0], test.left)):
        value = _literal(other)
        if value is not None and (isinstance(test.ops[0], ast.Eq) or value[0] in (True, False, None)):
            return ast.unparse(expr), value[0], None
    return None


def _literal(node: ast.AST) -> tuple[Any] | None:
    """(value,) when `node` is a literal, else None."""
    try:
        return (ast.literal_eval(node),)
    except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
        return None


def program(task: CodeTask, completion: str, task_checks: list[Check]) -> str:
    source = f"{task.prefix}{completion}\n\n{task.setup}\n"
    steps = [(c.kind, c.code) for c in task_checks]
    return f"{HARNESS}\n_factory_check({source!r}, {steps!r}, {task.candidate!r}, {task.entry_point!r})\n"


def execution(task: CodeTask, completion: str, timeout_s: float | None = None) -> tuple[Execution, list[Check]]:
    task_checks = checks(task)
    return Execution(program(task, completion, task_checks), timeout_s=timeout_s), task_checks


def score(result: ExecutionResult, task_checks: list[Check]) -> CodeReward:
    """Judge the channel's records against the checks; nothing the program printed counts."""
    counted = [i for i, c in enumerate(task_checks) if c.kind != "exec"]
    strength = "weak" if any(c.kind == "case" for c in task_checks) else "strong"
    if result.status != Status.OK or not counted:
        return CodeReward(False, 0.0, result.status.value, len(counted), strength)
    records = channel_records(result.channel)
    rows = [judge(task_checks[i], records.get(i)) for i in counted]
    return CodeReward(all(rows), sum(rows) / len(rows), result.status.value, len(rows), strength)


def channel_records(channel: bytes) -> dict[int, str]:
    """The first record per step index (later ones, e.g. from a leftover process, are ignored)."""
    records: dict[int, str] = {}
    for line in channel.decode("utf-8", "replace").splitlines():
        index, _, record = line.partition(" ")
        if index.isdigit():
            records.setdefault(int(index), record)
    return records


def judge(check: Check, record: str | None) -> bool:
    if record is None:
        return False
    if check.kind == "case":
        return record == "p"
    if not record.startswith("v "):
        return False
    try:
        value = ast.literal_eval(record[2:])
    except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
        return False
    return bool(value) == check.truthy if check.truthy is not None else same(check.expected, value)


def same(expected: Any, got: Any) -> bool:
    """Type-exact equality, recursively; int and float compare by value, bool only with bool."""
    numbers = (int, float)
    if type(expected) is not type(got):
        return (type(expected) in numbers and type(got) in numbers) and expected == got
    if isinstance(expected, (list, tuple)):
        return len(expected) == len(got) and all(same(e, g) for e, g in zip(expected, got))
    if isinstance(expected, dict):
        return expected.keys() == got.keys() and all(same(v, got[k]) for k, v in expected.items())
    if isinstance(expected, float) and math.isnan(expected):
        return math.isnan(got)
    return expected == got


def code_test_rewards(runner: Runner, tasks: Sequence[CodeTask], completions: Sequence[str],
                      timeout_s: float | None = None) -> list[CodeReward]:
    """Score each completion against its task, all in one batch through the runner. Identical programs
    (the same completion of the same task: a group's repeated samples) run once and share the verdict,
    so a program whose result depends on chance gets one draw per batch."""
    pairs = [execution(t, c, timeout_s) for t, c in zip(tasks, completions, strict=True)]
    first: dict[tuple[str, float | None], int] = {}
    for i, (e, _) in enumerate(pairs):
        first.setdefault((e.code, e.timeout_s), i)
    distinct = list(first.values())
    results = dict(zip(distinct, runner.run([pairs[i][0] for i in distinct])))
    return [score(results[first[(e.code, e.timeout_s)]], task_checks) for e, task_checks in pairs]
