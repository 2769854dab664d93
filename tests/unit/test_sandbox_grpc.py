"""The SandboxService end to end on loopback: a real gRPC server over a real executor.

The first tests run the real bubblewrap SandboxWorker. The request-bounds tests run a
small real executor of their own (a plain subprocess per execution), so they do not
depend on the sandbox backends; a gated fake executor appears only where the test
counts what the service itself started.
"""

import subprocess
import sys
import threading
import time

import grpc
import pytest

from actors.sandbox_worker import SandboxWorker
from runtime.core.config import SandboxConfig, SandboxGrpcConfig
from runtime.core.errors import ConfigError
from runtime.sandbox import Execution, ExecutionResult, Status, make_backend
from runtime.protos import sandbox_pb2 as pb
from runtime.protos import sandbox_pb2_grpc as pb_grpc
from runtime.sandbox.remote import SandboxClient
from serve.sandbox_service import serve

TOKEN_ENV = "FACTORY_SANDBOX_TOKEN"


@pytest.fixture(scope="module")
def worker():
    worker = SandboxWorker(SandboxConfig(concurrency=4, timeout_s=5), "grpc-test/sandbox/0")
    worker.setup()
    yield worker
    worker.shutdown()


@pytest.fixture(autouse=True)
def no_token_in_env(monkeypatch):
    monkeypatch.delenv(TOKEN_ENV, raising=False)


def owner_only(tmp_path, value: str, mode: int = 0o600):
    path = tmp_path / "token"
    path.write_text(value + "\n")
    path.chmod(mode)
    return str(path)


def test_execute_batch_and_health_on_loopback(worker):
    server, port = serve(worker, SandboxConfig(concurrency=4, timeout_s=5))
    client = SandboxClient(f"127.0.0.1:{port}")
    try:
        one = client.execute(Execution("print('hi')", id="one"))
        assert (one.id, one.status, one.stdout, one.exit_code) == ("one", Status.OK, "hi\n", 0)
        executions = [Execution(f"print({i} + 1)") for i in range(10)] + [Execution("while True: pass", timeout_s=1)]
        results = {r.id: r for r in client.execute_batch(executions)}
        assert len(results) == 11
        assert [results[e.id].stdout for e in executions[:10]] == [f"{i + 1}\n" for i in range(10)]
        assert results[executions[-1].id].status == Status.TIMEOUT
        health = client.health()
        assert health["ready"] and health["isolated"] and health["backend"] == "bubblewrap"
    finally:
        client.close()
        server.stop(grace=None)


def test_off_loopback_needs_a_token_and_refuses_calls_without_it(worker, tmp_path):
    with pytest.raises(ConfigError, match="binding 127.0.0.2 needs a token"):
        serve(worker, SandboxConfig(grpc=SandboxGrpcConfig(host="127.0.0.2")))
    server, port = serve(worker, SandboxConfig(grpc=SandboxGrpcConfig(host="127.0.0.2",
                                                                      token_file=owner_only(tmp_path, "s3cret"))))
    try:
        for token in (None, "wrong"):
            client = SandboxClient(f"127.0.0.2:{port}", token=token)
            with pytest.raises(grpc.RpcError) as denied:
                client.execute(Execution("print('should not run')"))
            assert denied.value.code() == grpc.StatusCode.UNAUTHENTICATED
            with pytest.raises(grpc.RpcError) as denied_stream:
                list(client.execute_batch([Execution("print(1)")]))
            assert denied_stream.value.code() == grpc.StatusCode.UNAUTHENTICATED
            client.close()
        client = SandboxClient(f"127.0.0.2:{port}", token="s3cret")
        assert client.execute(Execution("print(2 ** 10)")).stdout == "1024\n"
        client.close()
    finally:
        server.stop(grace=None)


def test_a_token_file_others_can_read_is_refused(worker, tmp_path):
    shared = owner_only(tmp_path, "s3cret", mode=0o644)
    with pytest.raises(ConfigError, match=rf"sandbox.grpc.token_file: {shared} .*chmod 600 {shared}") as refused:
        serve(worker, SandboxConfig(grpc=SandboxGrpcConfig(host="127.0.0.2", token_file=shared)))
    assert "s3cret" not in str(refused.value)


def test_grpc_backend_forwards_to_a_remote_sandbox(worker, monkeypatch):
    monkeypatch.setenv(TOKEN_ENV, "tok")
    server, port = serve(worker, SandboxConfig(grpc=SandboxGrpcConfig(host="127.0.0.2")))
    try:
        backend = make_backend(SandboxConfig(backend="grpc", endpoint=f"127.0.0.2:{port}"))
        backend.check()
        assert backend.isolated, "isolation is reported by the remote bubblewrap worker"
        result = backend.run(Execution("import os; print(os.getcwd())"), slot=0)
        assert result.stdout == "/work\n" and result.worker == "grpc-test/sandbox/0"
        backend.close()
    finally:
        server.stop(grace=None)


# ---- request bounds, over executors that do not depend on the sandbox backends ----

class SubprocessExecutor:
    """A real, unisolated executor: `python -I -c CODE` per execution, fed its stdin, killed at its timeout."""

    def __init__(self, cfg: SandboxConfig):
        self.cfg = cfg
        self.lock = threading.Lock()
        self.running = self.completed = 0

    def execute(self, execution: Execution) -> ExecutionResult:
        with self.lock:
            self.running += 1
        started = time.monotonic()
        try:
            out = subprocess.run([sys.executable, "-I", "-c", execution.code], input=execution.stdin, text=True,
                                 capture_output=True, timeout=execution.timeout_s or self.cfg.timeout_s)
            status, code, stdout = (Status.OK if out.returncode == 0 else Status.FAILED), out.returncode, out.stdout
        except subprocess.TimeoutExpired:
            status, code, stdout = Status.TIMEOUT, None, ""
        finally:
            with self.lock:
                self.running -= 1
                self.completed += 1
        return ExecutionResult(execution.id, status, code, stdout, "", time.monotonic() - started, worker="subprocess")

    def health(self) -> dict:
        with self.lock:
            return {"ready": True, "backend": "subprocess", "isolated": False, "running": self.running,
                    "completed": self.completed}


class GatedExecutor:
    """Counts the executions the service starts; each waits for `gate` (for tests of the service's own logic)."""

    def __init__(self):
        self.gate = threading.Event()
        self.lock = threading.Lock()
        self.started = 0

    def execute(self, execution: Execution) -> ExecutionResult:
        with self.lock:
            self.started += 1
        self.gate.wait(30)
        return ExecutionResult(execution.id, Status.OK, 0, "", "", 0.0, channel=b"\x00verdict\xff")

    def health(self) -> dict:
        return {"ready": True, "backend": "gated", "isolated": False, "running": 0, "completed": 0}


BOUNDED = SandboxConfig(concurrency=2, timeout_s=5, max_code_bytes=2048, max_stdin_bytes=1024)


@pytest.fixture
def served():
    """(stub client, executor, config) of a SandboxService over a SubprocessExecutor; stopped after the test."""
    executor = SubprocessExecutor(BOUNDED)
    server, port = serve(executor, BOUNDED)
    client = SandboxClient(f"127.0.0.1:{port}", timeout_s=BOUNDED.timeout_s)
    yield client, executor
    client.close()
    server.stop(grace=None)


def refused(call) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as error:
        call()
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT, error.value
    return error.value


@pytest.mark.parametrize("timeout_s", [float("nan"), -1.0, -0.001, float("inf"), float("-inf"), 1e300, 5.001])
def test_timeouts_that_are_not_finite_and_bounded_are_refused(served, timeout_s):
    client, executor = served
    request = pb.ExecuteRequest(code="print('ran')", timeout_s=timeout_s)
    error = refused(lambda: client.stub.Execute(request, timeout=10))
    assert error.details().startswith("timeout_s: must be a finite number of seconds from 0") and "(5)" in error.details()
    error = refused(lambda: list(client.stub.ExecuteBatch(iter([pb.ExecuteRequest(code="1"), request]), timeout=10)))
    assert error.details().startswith("timeout_s:")
    assert executor.health()["completed"] <= 1, "only the valid first request of the batch may have run"


@pytest.mark.parametrize("timeout_s", [0.0, 0.5, 5.0])
def test_timeouts_from_zero_to_the_limit_are_accepted(served, timeout_s):
    client, _ = served
    reply = client.stub.Execute(pb.ExecuteRequest(code="print('ran')", timeout_s=timeout_s), timeout=30)
    assert (reply.status, reply.stdout) == ("ok", "ran\n")


def test_oversize_code_and_stdin_are_refused_before_anything_runs(served):
    client, executor = served
    error = refused(lambda: client.stub.Execute(pb.ExecuteRequest(code="#" * 2049), timeout=10))
    assert error.details() == "code: 2049 bytes is over sandbox.max_code_bytes (2048 bytes)"
    error = refused(lambda: client.stub.Execute(pb.ExecuteRequest(code="pass", stdin="é" * 513), timeout=10))
    assert error.details() == "stdin: 1026 bytes is over sandbox.max_stdin_bytes (1024 bytes)"
    refused(lambda: list(client.execute_batch([Execution("#" * 4000)])))
    assert executor.health()["completed"] == 0
    at_limit = client.execute(Execution("import sys; print(len(sys.stdin.read()))" + " " * 1900, stdin="x" * 1024))
    assert at_limit.stdout == "1024\n"


def reader_threads() -> int:
    return sum(t.name == "sandbox-batch-reader" for t in threading.enumerate())


def settles(condition, within_s: float = 20.0) -> bool:
    deadline = time.monotonic() + within_s
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def abandon(endpoint: str, how: str) -> None:
    """Start a long batch, read one result, then leave the way `how` says (the request stream stays open
    for `open`, so the server's reader is waiting on the client when the call is cancelled)."""
    channel = grpc.insecure_channel(endpoint)
    stub = pb_grpc.SandboxServiceStub(channel)
    done = threading.Event()

    def requests():
        yield from [pb.ExecuteRequest(code="import time; time.sleep(0.2)") for _ in range(2 if how == "open" else 50)]
        if how == "open":
            done.wait(30)

    call = stub.ExecuteBatch(requests(), timeout=1.0 if how == "deadline" else 20.0)
    next(call)
    if how in ("cancel", "open"):
        call.cancel()
    elif how == "deadline":
        with pytest.raises(grpc.RpcError):
            list(call)
    channel.close()
    done.set()


KINDS = ["cancel", "close", "deadline", "open"]


def test_abandoned_batches_free_their_threads_and_health_answers(served):
    client, executor = served
    endpoint = client.channel._channel.target().decode()
    list(client.execute_batch([Execution("pass") for _ in range(4)]))
    before = threading.active_count()
    idle_pools = (BOUNDED.concurrency + 4) + BOUNDED.concurrency  # server and batch pools: made lazily, kept idle
    for i in range(20):
        abandon(endpoint, KINDS[i % len(KINDS)])
    assert client.health(timeout_s=10)["ready"], "Health answers after many abandoned batches"
    assert settles(lambda: reader_threads() == 0), "every batch's reader thread ended"
    assert settles(lambda: executor.health()["running"] == 0), "no execution is left running"
    assert settles(lambda: threading.active_count() <= before + idle_pools), \
        f"threads: {before} before 20 abandoned batches, {threading.active_count()} after"
    results = list(client.execute_batch([Execution(f"print({i})") for i in range(8)]))
    assert sorted(r.stdout for r in results) == [f"{i}\n" for i in range(8)], "the service still runs whole batches"


def test_a_cancelled_batch_starts_nothing_more():
    executor = GatedExecutor()
    server, port = serve(executor, BOUNDED)
    client = SandboxClient(f"127.0.0.1:{port}")
    try:
        call = client.stub.ExecuteBatch(iter([pb.ExecuteRequest(code="pass") for _ in range(100)]), timeout=60)
        assert settles(lambda: executor.started == BOUNDED.concurrency, 10)
        time.sleep(0.3)
        assert executor.started == BOUNDED.concurrency, "a batch holds at most sandbox.concurrency executions"
        call.cancel()
        assert settles(lambda: reader_threads() == 0, 10), "the server stops reading the cancelled call"
        executor.gate.set()
        time.sleep(1.0)
        assert executor.started == BOUNDED.concurrency, "nothing starts after the call is cancelled"
    finally:
        executor.gate.set()
        client.close()
        server.stop(grace=None)


def test_the_result_channel_crosses_the_service_as_bytes():
    executor = GatedExecutor()
    executor.gate.set()
    server, port = serve(executor, BOUNDED)
    client = SandboxClient(f"127.0.0.1:{port}")
    try:
        assert client.execute(Execution("pass")).channel == b"\x00verdict\xff"
        assert [r.channel for r in client.execute_batch([Execution("pass")] * 3)] == [b"\x00verdict\xff"] * 3
    finally:
        client.close()
        server.stop(grace=None)
