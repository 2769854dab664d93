"""`factory sandbox check` and `factory sandbox serve`."""

from __future__ import annotations

import collections
from pathlib import Path
from typing import Any

from rl.tasks import TaskFileError, load_tasks
from runtime.core.config import FactoryConfig
from runtime.core.jsonl import objects
from runtime.core.signals import wait_for_stop


def load_solutions(path: str | Path) -> dict[str, str]:
    """`{task_id, completion}` per line; a malformed line names the file and line."""
    solutions = {}
    for where, row in objects(path, TaskFileError):
        if "task_id" not in row or not isinstance(row.get("completion"), str):
            raise TaskFileError(f"{where}: expected {{task_id, completion}}, the completion a string")
        solutions[str(row["task_id"])] = row["completion"]
    return solutions


def check(cfg: FactoryConfig, tasks_path: str, solutions_path: str | None = None) -> dict[str, Any]:
    """Run each task's canonical solution (or the given ones) through the sandbox pool."""
    from rl.rewards.code_tests import code_test_rewards
    from runtime.core.cluster import connect
    from runtime.pools.sandbox_pool import SandboxPool

    if not Path(tasks_path).is_file():
        raise TaskFileError(f"{tasks_path}: no such task file")
    tasks = load_tasks(tasks_path)
    if not tasks:
        raise TaskFileError(f"{tasks_path}: no tasks (an empty file, or every line blank)")
    given = load_solutions(solutions_path) if solutions_path else None
    unknown = sorted(set(given or {}) - {t.id for t in tasks})
    if unknown:
        raise TaskFileError(f"{solutions_path}: task ids not in {tasks_path}: {', '.join(unknown[:5])}")
    chosen = [t for t in tasks if given is None or t.id in given]
    connect(cfg.cluster)
    pool = SandboxPool(cfg).start()
    try:
        rewards = code_test_rewards(pool, chosen, [given[t.id] if given else t.solution for t in chosen])
    finally:
        pool.shutdown()
    statuses = collections.Counter(r.status for r in rewards)
    passed = sum(r.passed for r in rewards)
    return {"tasks": len(chosen), "passed": passed, "pass_rate": round(passed / max(1, len(chosen)), 4),
            "mean_fraction": round(sum(r.fraction for r in rewards) / max(1, len(rewards)), 4),
            "status": dict(statuses), "failed_ids": [t.id for t, r in zip(chosen, rewards) if not r.passed][:20],
            "failed": [{"task_id": t.id, "reason": reason(r)} for t, r in zip(chosen, rewards) if not r.passed][:20]}


def reason(reward) -> str:
    """Why a solution failed, in words: its sandbox status, or the share of cases it got right."""
    if reward.status == "ok":
        return f"wrong answer: {right_of(reward)}"
    return {"failed": f"exited with an error (an exception, a failed assert or a syntax error; {right_of(reward)})",
            "timeout": "timed out (sandbox.timeout_s)", "out_of_memory": "ran out of memory (sandbox limits)",
            "output_limit": "printed more than sandbox.max_output_bytes",
            "sandbox_error": "the sandbox could not run it (counted failed, never passed)",
            }.get(reward.status, reward.status.replace("_", " "))


def right_of(reward) -> str:
    return f"{round(reward.fraction * reward.cases)} of {reward.cases} test cases passed"


def serve_forever(cfg: FactoryConfig) -> None:
    """A SandboxService on this host, outside Ray, until SIGINT or SIGTERM."""
    from actors.sandbox_worker import SandboxWorker
    from serve.sandbox_service import serve

    worker = SandboxWorker(cfg.sandbox, f"{cfg.experiment.name}/sandbox-host/0")
    info = worker.setup()
    server, port = serve(worker, cfg.sandbox)
    print(f"SandboxService ({info['backend']}, isolated={info['isolated']}) on {cfg.sandbox.grpc.host}:{port}",
          flush=True)
    try:
        wait_for_stop()
    finally:
        server.stop(grace=5).wait()
        worker.shutdown()
