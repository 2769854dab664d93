"""The `grpc` sandbox backend: a client of a SandboxService on another host (`sandbox.endpoint`).

Its isolation is the remote host's (Health says whether it isolates); a call that
fails is answered with a `sandbox_error` result naming the endpoint. The token, off
loopback, comes from `sandbox.grpc.token_file` or FACTORY_SANDBOX_TOKEN.
"""

from __future__ import annotations

from typing import Any, Iterator

import grpc

from runtime.core import credentials
from runtime.core.config import SandboxConfig
from runtime.protos import sandbox_pb2 as pb
from runtime.protos import sandbox_pb2_grpc as pb_grpc
from runtime.sandbox.base import Execution, ExecutionResult, SandboxBackend, SandboxUnavailable, Status

SECRET = "sandbox.grpc.token"
CALL_MARGIN_S = 30.0
"""Seconds a call may take beyond its execution's timeout (queueing, transfer) before it is abandoned."""


def to_proto(result: ExecutionResult) -> pb.ExecuteResult:
    return pb.ExecuteResult(
        id=result.id, status=result.status.value, exit_code=result.exit_code or 0,
        has_exit_code=result.exit_code is not None, stdout=result.stdout, stderr=result.stderr,
        duration_s=result.duration_s, truncated=result.truncated, worker=result.worker, channel=result.channel,
    )


def from_proto(msg: pb.ExecuteResult) -> ExecutionResult:
    return ExecutionResult(msg.id, Status(msg.status), msg.exit_code if msg.has_exit_code else None, msg.stdout,
                           msg.stderr, msg.duration_s, truncated=msg.truncated, worker=msg.worker,
                           channel=msg.channel)


def execution_from(request: pb.ExecuteRequest) -> Execution:
    return Execution(code=request.code, stdin=request.stdin, timeout_s=request.timeout_s or None,
                     **({"id": request.id} if request.id else {}))


class SandboxClient:
    def __init__(self, endpoint: str, token: str | None = None, timeout_s: float = 60.0):
        self.channel = grpc.insecure_channel(endpoint)
        self.stub = pb_grpc.SandboxServiceStub(self.channel)
        self.metadata = credentials.bearer(token)
        self.timeout_s = timeout_s

    def execute(self, execution: Execution) -> ExecutionResult:
        return from_proto(self.stub.Execute(_request(execution), timeout=self._timeout(execution),
                                            metadata=self.metadata))

    def execute_batch(self, executions: list[Execution]) -> Iterator[ExecutionResult]:
        timeout = sum(self._timeout(e) for e in executions)
        for msg in self.stub.ExecuteBatch(iter(map(_request, executions)), timeout=timeout, metadata=self.metadata):
            yield from_proto(msg)

    def health(self, timeout_s: float = 5.0) -> dict[str, Any]:
        reply = self.stub.Health(pb.HealthRequest(), timeout=timeout_s, metadata=self.metadata)
        return {"ready": reply.ready, "backend": reply.backend, "isolated": reply.isolated,
                "running": reply.running, "completed": reply.completed}

    def close(self) -> None:
        self.channel.close()

    def _timeout(self, execution: Execution) -> float:
        return (execution.timeout_s or self.timeout_s) + CALL_MARGIN_S


def _request(execution: Execution) -> pb.ExecuteRequest:
    return pb.ExecuteRequest(id=execution.id, code=execution.code, stdin=execution.stdin,
                             timeout_s=execution.timeout_s or 0.0)


class GrpcBackend(SandboxBackend):
    """Forwards executions to a SandboxService (`sandbox.endpoint`); isolation is the remote's."""

    name = "grpc"

    def __init__(self, cfg: SandboxConfig, slots: int = 1, tag: str = "sandbox"):
        super().__init__(cfg, slots, tag)
        if not cfg.endpoint:
            raise SandboxUnavailable("sandbox.endpoint: required for backend grpc")
        self.client = SandboxClient(cfg.endpoint, credentials.secret(SECRET, cfg.grpc.token_file), cfg.timeout_s)
        self.isolated = False

    def check(self) -> None:
        try:
            health = self.client.health()
        except grpc.RpcError as exc:
            raise SandboxUnavailable(f"sandbox.endpoint {self.cfg.endpoint}: {exc.code().name}: {exc.details()}") from None
        self.isolated = health["isolated"]
        super().check()

    def run(self, execution: Execution, slot: int) -> ExecutionResult:
        try:
            return self.client.execute(execution)
        except grpc.RpcError as exc:
            return ExecutionResult(execution.id, Status.SANDBOX_ERROR, None, "",
                                   f"{self.cfg.endpoint}: {exc.code().name}: {exc.details()}", 0.0)

    def close(self) -> None:
        self.client.close()
