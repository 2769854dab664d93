"""The SandboxService end to end on loopback: a real gRPC server over a real bubblewrap worker."""

import grpc
import pytest

from actors.sandbox_worker import SandboxWorker
from runtime.config import SandboxConfig, SandboxGrpcConfig
from runtime.errors import ConfigError
from runtime.sandbox import Execution, Status, make_backend
from serve.sandbox_service import SandboxClient, serve


@pytest.fixture(scope="module")
def worker():
    worker = SandboxWorker(SandboxConfig(concurrency=4, timeout_s=5), "grpc-test/sandbox/0")
    worker.setup()
    yield worker
    worker.shutdown()


def test_execute_batch_and_health_on_loopback(worker):
    server, port = serve(worker, SandboxGrpcConfig(), concurrency=4)
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


def test_off_loopback_needs_a_token_and_refuses_calls_without_it(worker):
    with pytest.raises(ConfigError, match="binding 127.0.0.2 needs a token"):
        serve(worker, SandboxGrpcConfig(host="127.0.0.2"))
    server, port = serve(worker, SandboxGrpcConfig(host="127.0.0.2", token="s3cret"))
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


def test_grpc_backend_forwards_to_a_remote_sandbox(worker):
    server, port = serve(worker, SandboxGrpcConfig(host="127.0.0.2", token="tok"))
    try:
        backend = make_backend(SandboxConfig(backend="grpc", endpoint=f"127.0.0.2:{port}",
                                             grpc=SandboxGrpcConfig(token="tok")))
        backend.check()
        assert backend.isolated, "isolation is reported by the remote bubblewrap worker"
        result = backend.run(Execution("import os; print(os.getcwd())"), slot=0)
        assert result.stdout == "/work\n" and result.worker == "grpc-test/sandbox/0"
        backend.close()
    finally:
        server.stop(grace=None)
