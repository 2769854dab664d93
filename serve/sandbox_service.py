"""SandboxService over gRPC: servicer, server, client, and the `grpc` sandbox backend.

Binding follows serve/grpc_auth.py: off 127.0.0.1 a token is required (config
or FACTORY_SANDBOX_TOKEN) and calls without it are refused before any code runs.

The servicer runs over anything with `execute(Execution) -> ExecutionResult`
and `health() -> dict`: a SandboxWorker on a host outside Ray
(`factory sandbox serve`), or the SandboxPool inside the cluster.
"""

from __future__ import annotations

import os
import queue
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Iterator, Protocol

import grpc

from runtime.config import SandboxConfig, SandboxGrpcConfig
from serve import grpc_auth
from runtime.sandbox import Execution, ExecutionResult, SandboxBackend, SandboxUnavailable, Status
from serve.protos import sandbox_pb2 as pb
from serve.protos import sandbox_pb2_grpc as pb_grpc

TOKEN_ENV = "FACTORY_SANDBOX_TOKEN"
CALL_MARGIN_S = 30.0


class Executor(Protocol):
    def execute(self, execution: Execution) -> ExecutionResult: ...

    def health(self) -> dict[str, Any]: ...


def to_proto(result: ExecutionResult) -> pb.ExecuteResult:
    return pb.ExecuteResult(
        id=result.id, status=result.status.value, exit_code=result.exit_code or 0,
        has_exit_code=result.exit_code is not None, stdout=result.stdout, stderr=result.stderr,
        duration_s=result.duration_s, truncated=result.truncated, worker=result.worker,
    )


def from_proto(msg: pb.ExecuteResult) -> ExecutionResult:
    return ExecutionResult(msg.id, Status(msg.status), msg.exit_code if msg.has_exit_code else None, msg.stdout,
                           msg.stderr, msg.duration_s, msg.truncated, msg.worker)


def execution_from(request: pb.ExecuteRequest) -> Execution:
    return Execution(code=request.code, stdin=request.stdin, timeout_s=request.timeout_s or None,
                     **({"id": request.id} if request.id else {}))


class SandboxServicer(pb_grpc.SandboxServiceServicer):
    def __init__(self, executor: Executor, concurrency: int):
        self.executor = executor
        self.pool = ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="sandbox-batch")

    def Execute(self, request, context):
        return to_proto(self.executor.execute(execution_from(request)))

    def ExecuteBatch(self, request_iterator, context):
        """Results stream back as they finish; a reader thread keeps submitting meanwhile."""
        done: queue.Queue = queue.Queue()
        submitted = {"n": 0, "closed": False}

        def read() -> None:
            for request in request_iterator:
                submitted["n"] += 1
                self.pool.submit(lambda r=request: to_proto(self.executor.execute(execution_from(r)))) \
                    .add_done_callback(done.put)
            submitted["closed"] = True
            done.put(None)

        threading.Thread(target=read, daemon=True).start()
        sent = 0
        while not (submitted["closed"] and sent == submitted["n"]):
            item = done.get()
            if item is not None:
                sent += 1
                yield item.result()

    def Health(self, request, context):
        h = self.executor.health()
        return pb.HealthReply(ready=bool(h.get("ready")), backend=str(h.get("backend", "")),
                              isolated=bool(h.get("isolated")), running=int(h.get("running", 0)),
                              completed=int(h.get("completed", 0)))


def resolve_token(cfg: SandboxGrpcConfig) -> str | None:
    return grpc_auth.resolve_token(cfg.host, cfg.token, TOKEN_ENV, "sandbox.grpc.token")


def serve(executor: Executor, cfg: SandboxGrpcConfig, concurrency: int = 16) -> tuple[grpc.Server, int]:
    """Start a SandboxService; returns the server and the port it bound."""
    servicer = SandboxServicer(executor, concurrency)
    return grpc_auth.start_server(lambda server: pb_grpc.add_SandboxServiceServicer_to_server(servicer, server),
                                  cfg.host, cfg.port, resolve_token(cfg), "sandbox.grpc.token", concurrency + 4)


class SandboxClient:
    def __init__(self, endpoint: str, token: str | None = None, timeout_s: float = 60.0):
        self.channel = grpc.insecure_channel(endpoint)
        self.stub = pb_grpc.SandboxServiceStub(self.channel)
        self.metadata = grpc_auth.bearer(token)
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
        self.client = SandboxClient(cfg.endpoint, cfg.grpc.token or os.environ.get(TOKEN_ENV), cfg.timeout_s)
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
