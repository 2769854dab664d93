"""Code-test reward: does a completion pass its task's tests, and what fraction of them?

The program is: a reporting header, the task's prefix and the completion, the
test module's setup, then each test case run on its own, counted. The header
reads a one-time nonce from stdin before any task code runs and keeps it in a
closure; the report is the line that starts with it. A crash, a timeout, or a
missing report scores zero.

Limit: the completion runs in the same interpreter as its tests, so a completion
written to do so could find the nonce and forge a report. The sandbox contains
what it can do to the host, not what it can claim about itself.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from rl.tasks import CodeTask
from runtime.sandbox import Execution, ExecutionResult, Status

HEADER = """\
import json as _factory_json, sys as _factory_sys
_factory_report = (lambda nonce: lambda rows: print(nonce + _factory_json.dumps(rows), flush=True))(
    _factory_sys.stdin.readline().strip())
"""

RUNNER = """
def _factory_run(cases, candidate, entry_point):
    namespace = dict(globals())
    if candidate:
        namespace[candidate] = namespace[entry_point]
    rows, broken = [], False
    for source, counted in cases:
        ok = False
        if not broken:
            try:
                exec(source, namespace)
                ok = True
            except BaseException:
                broken = not counted
        if counted:
            rows.append(ok)
    _factory_report(rows)
_factory_run({cases!r}, {candidate!r}, {entry_point!r})
"""


class Runner(Protocol):
    def run(self, executions: list[Execution]) -> list[ExecutionResult]: ...


@dataclass
class CodeReward:
    passed: bool
    fraction: float
    """Fraction of test cases passed (0 when the program did not finish)."""
    status: str
    """The sandbox status of the run."""
    cases: int


def program(task: CodeTask, completion: str) -> str:
    runner = RUNNER.format(cases=task.cases, candidate=task.candidate, entry_point=task.entry_point)
    return f"{HEADER}\n{task.prefix}{completion}\n\n{task.setup}\n{runner}"


def execution(task: CodeTask, completion: str, timeout_s: float | None = None) -> tuple[Execution, str]:
    nonce = f"@@factory-{secrets.token_hex(16)}@@"
    return Execution(program(task, completion), stdin=nonce + "\n", timeout_s=timeout_s), nonce


def score(result: ExecutionResult, nonce: str) -> CodeReward:
    rows = None
    if result.status == Status.OK:
        reports = [line[len(nonce):] for line in result.stdout.splitlines() if line.startswith(nonce)]
        rows = json.loads(reports[-1]) if reports else None
    if not rows:
        return CodeReward(False, 0.0, result.status.value, len(rows or []))
    return CodeReward(all(rows), sum(rows) / len(rows), result.status.value, len(rows))


def code_test_rewards(runner: Runner, tasks: Sequence[CodeTask], completions: Sequence[str],
                      timeout_s: float | None = None) -> list[CodeReward]:
    """Score each completion against its task, all in one batch through the sandbox runner."""
    pairs = [execution(t, c, timeout_s) for t, c in zip(tasks, completions, strict=True)]
    results = runner.run([e for e, _ in pairs])
    return [score(r, nonce) for r, (_, nonce) in zip(results, pairs)]
