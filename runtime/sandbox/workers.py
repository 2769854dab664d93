"""A sandbox Runner over a run's SandboxWorker actors, found by their names.

For actors that share the run's sandbox workers but not the driver's SandboxPool (the Evaluator).
Executions go round-robin over the workers that answer; one whose worker is lost goes to the next
(each worker once); one that no worker ran comes back as a SANDBOX_ERROR result, which scores as
failed, never as passed. Verdicts are still decided outside the sandboxed process (the worker's
backend), so this client adds no trust.
"""

from __future__ import annotations

import itertools
from typing import Any

from runtime.core.cluster import actor_name
from runtime.core.config import FactoryConfig
from runtime.core.errors import CallTimeout, PeerLost
from runtime.sandbox.base import Execution, ExecutionResult, Status


class WorkerRunner:
    def __init__(self, names: list[str], timeout_s: float):
        """`timeout_s`: the most one execution may take, its wait for a free slot included."""
        self.names, self.timeout_s = names, timeout_s
        self._turn = itertools.count()

    @classmethod
    def of_run(cls, cfg: FactoryConfig) -> WorkerRunner:
        """Over the run's `placement.sandbox.replicas` workers; an execution may wait for a slot up to
        four times its own timeout."""
        names = [actor_name(cfg.experiment.name, "sandbox", i) for i in range(cfg.placement.sandbox.replicas)]
        return cls(names, cfg.sandbox.timeout_s * 4)

    def run(self, executions: list[Execution]) -> list[ExecutionResult]:
        pending = {i: (e, self._send(e, set())) for i, e in enumerate(executions)}
        results: dict[int, ExecutionResult] = {}
        while pending:
            for i, (execution, (ref, tried)) in list(pending.items()):
                result = self._collect(execution, ref, tried)
                if result is not None:
                    results[i] = result
                    del pending[i]
                else:
                    pending[i] = (execution, self._send(execution, tried))
        return [results[i] for i in range(len(executions))]

    def _send(self, execution: Execution, tried: set[str]) -> tuple[Any, set[str]]:
        import ray

        for _ in range(len(self.names)):
            name = self.names[next(self._turn) % len(self.names)]
            if name in tried:
                continue
            tried.add(name)
            try:
                return ray.get_actor(name).execute.remote(execution), tried
            except ValueError:  # not (yet) there: a replacement is starting
                continue
        return None, tried

    def _collect(self, execution: Execution, ref: Any, tried: set[str]) -> ExecutionResult | None:
        """The result; None to try another worker; an error result when none is left."""
        from runtime.core.calls import wait

        if ref is None:
            return ExecutionResult(execution.id, Status.SANDBOX_ERROR, None, "", "no sandbox worker ran it", 0.0)
        try:
            return wait(ref, self.timeout_s, f"sandbox execution {execution.id}")
        except (PeerLost, CallTimeout) as exc:
            if len(tried) >= len(self.names):
                return ExecutionResult(execution.id, Status.SANDBOX_ERROR, None, "", str(exc), 0.0)
            return None
