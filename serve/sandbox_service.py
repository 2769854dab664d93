"""SandboxService over gRPC: servicer, server, client, and the `grpc` sandbox backend.

Binding follows serve/grpc_auth.py: off 127.0.0.1 a token is required
(`sandbox.grpc.token_file` or FACTORY_SANDBOX_TOKEN) and calls without it are
refused before any code runs.

The servicer runs over anything with `execute(Execution) -> ExecutionResult`
and `health() -> dict`: a SandboxWorker on a host outside Ray
(`factory sandbox serve`), or the SandboxPool inside the cluster. What it
guarantees to callers:
- every request is admitted by runtime.sandbox.requests.validate before anything
  runs (finite, bounded timeout; code and stdin within `sandbox.max_code_bytes`
  and `max_stdin_bytes`); a refused one ends its call with INVALID_ARGUMENT;
- an ExecuteBatch call holds at most `sandbox.concurrency` executions that are
  running, queued or finished but unread; when the call ends for any reason
  (done, cancelled, deadline, client gone) the executions it has not started
  never start, and its reader thread and server thread are released.
"""

from __future__ import annotations

import collections
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, Callable, Iterator, Protocol

import grpc

from runtime.core import credentials
from runtime.core.config import SandboxConfig
from runtime.sandbox import Execution, ExecutionResult
from runtime.sandbox.remote import SECRET, execution_from, to_proto
from runtime.sandbox.requests import InvalidExecution, validate
from serve import grpc_auth
from runtime.protos import sandbox_pb2 as pb
from runtime.protos import sandbox_pb2_grpc as pb_grpc

POLL_S = 1.0
"""How often a waiting ExecuteBatch handler also asks gRPC whether its call is still active."""
MESSAGE_MARGIN_BYTES = 64 << 10
"""Room beyond code and stdin in one request message (id, framing)."""


class Executor(Protocol):
    def execute(self, execution: Execution) -> ExecutionResult: ...

    def health(self) -> dict[str, Any]: ...


class _Batch:
    """One ExecuteBatch call: at most `limit` executions submitted and not yet handed back.

    The reader thread submits with `submit()`, the call's handler takes finished ones
    with `take()`; `stop()` (the call ended, or a request was refused) cancels every
    execution not yet started and wakes both."""

    def __init__(self, limit: int):
        self.limit = limit
        self.cond = threading.Condition()
        self.pending: set[Future] = set()
        self.finished: collections.deque[Future] = collections.deque()
        self.reading = True
        self.stopped = False
        self.error: BaseException | None = None

    def submit(self, pool: ThreadPoolExecutor, fn: Callable[[], ExecutionResult]) -> bool:
        """Submit `fn` once fewer than `limit` are pending; False, with nothing submitted, once stopped."""
        with self.cond:
            self.cond.wait_for(lambda: self.stopped or len(self.pending) < self.limit)
            if self.stopped:
                return False
            future = pool.submit(fn)
            self.pending.add(future)
        future.add_done_callback(self._finished)
        return True

    def take(self, context: grpc.ServicerContext) -> Future | None:
        """The next finished execution; None once stopped, or when every request read has been handed back."""
        with self.cond:
            while not self.stopped and not self.finished:
                if not self.reading and not self.pending:
                    return None
                if not self.cond.wait(POLL_S) and not context.is_active():
                    self.stop()
            if self.stopped:
                return None
            future = self.finished.popleft()
            self.pending.discard(future)
            self.cond.notify_all()
            return future

    def close(self) -> None:
        """The reader is done: no more submissions."""
        with self.cond:
            self.reading = False
            self.cond.notify_all()

    def stop(self, error: BaseException | None = None) -> None:
        """End the batch (idempotent): executions not yet started are cancelled; `error` is kept if first."""
        with self.cond:
            self.error = self.error or error
            self.stopped = True
            for future in list(self.pending):
                future.cancel()
            self.cond.notify_all()

    def _finished(self, future: Future) -> None:
        with self.cond:
            if not future.cancelled():
                self.finished.append(future)
            self.cond.notify_all()


class SandboxServicer(pb_grpc.SandboxServiceServicer):
    def __init__(self, executor: Executor, cfg: SandboxConfig):
        self.executor = executor
        self.cfg = cfg
        self.pool = ThreadPoolExecutor(max_workers=cfg.concurrency, thread_name_prefix="sandbox-batch")

    def Execute(self, request, context):
        return to_proto(self.executor.execute(self._admit(request, context)))

    def ExecuteBatch(self, request_iterator, context):
        """Results stream back as they finish; a reader thread admits requests meanwhile, `_Batch` bounds them."""
        batch = _Batch(self.cfg.concurrency)
        if not context.add_callback(batch.stop):
            return
        threading.Thread(target=self._read, args=(request_iterator, batch), name="sandbox-batch-reader",
                         daemon=True).start()
        try:
            while (future := batch.take(context)) is not None:
                yield to_proto(future.result())
        finally:
            batch.stop()
        if isinstance(batch.error, InvalidExecution):
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(batch.error))
        if batch.error is not None:
            raise batch.error

    def Health(self, request, context):
        h = self.executor.health()
        return pb.HealthReply(ready=bool(h.get("ready")), backend=str(h.get("backend", "")),
                              isolated=bool(h.get("isolated")), running=int(h.get("running", 0)),
                              completed=int(h.get("completed", 0)))

    def _admit(self, request: pb.ExecuteRequest, context: grpc.ServicerContext) -> Execution:
        try:
            return validate(execution_from(request), self.cfg)
        except InvalidExecution as exc:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))

    def _read(self, requests: Iterator[pb.ExecuteRequest], batch: _Batch) -> None:
        """Admit the call's requests into `batch` until they end, one is refused, or the batch stops."""
        try:
            for request in requests:
                execution = validate(execution_from(request), self.cfg)
                if not batch.submit(self.pool, lambda e=execution: self.executor.execute(e)):
                    return
        except grpc.RpcError:
            batch.stop()  # the call was cancelled or its client went away: nothing more to read or run
        except Exception as exc:  # handed to the call's handler, which answers with it
            batch.stop(exc)
        finally:
            batch.close()


def resolve_token(cfg: SandboxConfig) -> str | None:
    """The token `cfg.grpc` requires (ConfigError off loopback without one, or with an unsafe file)."""
    return credentials.required_secret(cfg.grpc.host, SECRET, cfg.grpc.token_file)


def serve(executor: Executor, cfg: SandboxConfig) -> tuple[grpc.Server, int]:
    """Start a SandboxService on `cfg.grpc`'s address; returns the server and the port it bound.

    Requests are admitted under `cfg` (timeouts, sizes); each batch runs at most `cfg.concurrency` at once."""
    servicer = SandboxServicer(executor, cfg)
    options = [("grpc.max_receive_message_length", cfg.max_code_bytes + cfg.max_stdin_bytes + MESSAGE_MARGIN_BYTES)]
    return grpc_auth.start_server(lambda server: pb_grpc.add_SandboxServiceServicer_to_server(servicer, server),
                                  cfg.grpc.host, cfg.grpc.port, resolve_token(cfg), SECRET, cfg.concurrency + 4,
                                  options)
