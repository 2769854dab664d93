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

import itertools
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from rl.tasks import CodeTask
from runtime.sandbox import Execution, ExecutionResult, Status

HEADER = """\
import sys as _factory_sys
_factory_report = (lambda nonce: lambda rows: print(nonce + "".join("1" if r else "0" for r in rows), flush=True))(
    _factory_sys.stdin.readline().strip())
"""

CASES = """
def _factory_cases(namespace, cases):
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
    return rows
"""

RUNNER = CASES + """
def _factory_run(cases, candidate, entry_point):
    namespace = dict(globals())
    if candidate:
        namespace[candidate] = namespace[entry_point]
    _factory_report(_factory_cases(namespace, cases))
_factory_run({cases!r}, {candidate!r}, {entry_point!r})
"""


GROUP_RUNNER = CASES + """\
import _ctypes, os as _os, sys as _sys, time as _t
_ctypes.call_function(_ctypes.dlsym(_ctypes.dlopen(None, 2), "prctl"), (4, 0, 0, 0, 0))  # PR_SET_DUMPABLE 0


def _factory_line():
    out = b""
    while not out.endswith(b"\\n"):
        byte = _os.read(0, 1)
        if not byte:
            break
        out += byte
    return out.decode().strip()


def _factory_child(source, nonce, cases, candidate, entry_point):
    _os.close(0)
    _os.setpgid(0, 0)
    namespace = {{"__name__": "__main__"}}
    try:
        exec(compile(source, "<completion>", "exec"), namespace)
        if candidate:
            namespace[candidate] = namespace[entry_point]
        rows = _factory_cases(namespace, cases)
    except BaseException:
        rows = None
    report = "!" if rows is None else "".join("1" if r else "0" for r in rows)
    _sys.stdout.write("\\n" + nonce + report + "\\n")
    _sys.stdout.flush()
    _os._exit(0)


def _factory_group(sources, cases, candidate, entry_point, limit):
    for source in sources:
        nonce = _factory_line()
        _sys.stdout.flush()
        pid = _os.fork()
        if pid == 0:
            _factory_child(source, nonce, cases, candidate, entry_point)
        del nonce
        deadline = _t.monotonic() + limit
        while not _os.waitpid(pid, _os.WNOHANG)[0] and _t.monotonic() < deadline:
            _t.sleep(0.0005)
        try:
            _os.killpg(pid, 9)
        except OSError:
            pass
        try:
            _os.waitpid(pid, 0)
        except ChildProcessError:
            pass


_factory_group({sources!r}, {cases!r}, {candidate!r}, {entry_point!r}, {limit!r})
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


def report_rows(stdout: str, nonce: str) -> list[bool] | str | None:
    """The last report keyed by `nonce`: one 1/0 per counted case, "!" (did not run), or None (none)."""
    reports = [line[len(nonce):].strip() for line in stdout.splitlines() if line.startswith(nonce)]
    if not reports or (reports[-1] != "!" and set(reports[-1]) - {"0", "1"}):
        return None
    return reports[-1] if reports[-1] == "!" else [c == "1" for c in reports[-1]]


def score(result: ExecutionResult, nonce: str) -> CodeReward:
    rows = report_rows(result.stdout, nonce) if result.status == Status.OK else None
    rows = rows if isinstance(rows, list) else None
    if not rows:
        return CodeReward(False, 0.0, result.status.value, len(rows or []))
    return CodeReward(all(rows), sum(rows) / len(rows), result.status.value, len(rows))


def code_test_rewards(runner: Runner, tasks: Sequence[CodeTask], completions: Sequence[str],
                      timeout_s: float | None = None, grouped: bool = False) -> list[CodeReward]:
    """Score each completion against its task, all in one batch through the sandbox runner.

    grouped: consecutive completions of the same task share one sandbox execution, each run
    in its own forked process (see `group_execution`); a completion without a report from its
    group (a crash, a timeout, a sibling that killed the group) is run again on its own."""
    if not grouped:
        pairs = [execution(t, c, timeout_s) for t, c in zip(tasks, completions, strict=True)]
        results = runner.run([e for e, _ in pairs])
        return [score(r, nonce) for r, (_, nonce) in zip(results, pairs)]
    groups = [list(g) for _, g in itertools.groupby(zip(tasks, completions, strict=True), key=lambda p: id(p[0]))]
    runs = [group_execution(g[0][0], [c for _, c in g], timeout_s) for g in groups]
    results = runner.run([e for e, _ in runs])
    rewards = [group_score(r, nonces) for r, (_, nonces) in zip(results, runs)]
    flat = [reward for group in rewards for reward in group]
    missing = [i for i, reward in enumerate(flat) if reward is None]
    if missing:
        again = code_test_rewards(runner, [tasks[i] for i in missing], [completions[i] for i in missing], timeout_s)
        for i, reward in zip(missing, again):
            flat[i] = reward
    return flat


def group_execution(task: CodeTask, completions: list[str], timeout_s: float | None = None) -> tuple[Execution, list[str]]:
    """One program that runs every completion of `task` in a forked child, one after another.

    The parent reads each child's nonce from stdin unbuffered, just before forking it, so a
    child holds only its own; the child closes stdin, runs in its own process group (killed
    when it ends) and reports with its nonce; the parent is not dumpable, so no child reads
    its memory through /proc."""
    nonces = [f"@@factory-{secrets.token_hex(16)}@@" for _ in completions]
    sources = [f"{task.prefix}{c}\n\n{task.setup}\n" for c in completions]
    limit = (timeout_s or 10.0) / max(1, len(completions))
    code = GROUP_RUNNER.format(sources=sources, cases=task.cases, candidate=task.candidate,
                               entry_point=task.entry_point, limit=limit)
    return Execution(code, stdin="".join(n + "\n" for n in nonces), timeout_s=timeout_s), nonces


def group_score(result: ExecutionResult, nonces: list[str]) -> list[CodeReward | None]:
    """Each child's reward from its report line; None where a child left none."""
    rewards: list[CodeReward | None] = []
    for nonce in nonces:
        rows = report_rows(result.stdout, nonce)
        if rows is None:
            rewards.append(None)
        elif rows == "!" or not rows:  # the completion did not compile or run
            rewards.append(CodeReward(False, 0.0, Status.FAILED.value, 0))
        else:
            rewards.append(CodeReward(all(rows), sum(rows) / len(rows), Status.OK.value, len(rows)))
    return rewards
