"""Admission of sandbox requests, the check both the gRPC service and the Ray pool apply."""

import pickle

import pytest

from runtime.core.config import SandboxConfig
from runtime.sandbox import Execution
from runtime.sandbox.requests import InvalidExecution, validate

CFG = SandboxConfig(timeout_s=10, max_code_bytes=1024, max_stdin_bytes=16)


@pytest.mark.parametrize("timeout_s", [float("nan"), -1, -1e-9, float("inf"), float("-inf"), 1e300, 10.5, "5", True])
def test_a_timeout_that_is_not_a_finite_bounded_number_is_refused(timeout_s):
    with pytest.raises(InvalidExecution, match=r"^timeout_s: must be a finite number of seconds from 0 .*\(10\)"):
        validate(Execution("pass", timeout_s=timeout_s), CFG)


@pytest.mark.parametrize("timeout_s", [None, 0, 0.0, 0.001, 3, 10.0])
def test_timeouts_up_to_the_limit_pass_unchanged(timeout_s):
    execution = Execution("pass", timeout_s=timeout_s)
    assert validate(execution, CFG) is execution and execution.timeout_s == timeout_s


def test_code_and_stdin_are_bounded_in_utf8_bytes():
    validate(Execution("#" * 1024, stdin="x" * 16), CFG)
    with pytest.raises(InvalidExecution, match=r"^code: 1025 bytes is over sandbox.max_code_bytes \(1024 bytes\)$"):
        validate(Execution("#" * 1025), CFG)
    with pytest.raises(InvalidExecution, match=r"^stdin: 18 bytes is over sandbox.max_stdin_bytes \(16 bytes\)$"):
        validate(Execution("pass", stdin="é" * 9), CFG)
    with pytest.raises(InvalidExecution, match="^code: must be a string, got bytes$"):
        validate(Execution(b"pass"), CFG)


def test_the_error_crosses_processes_intact():
    with pytest.raises(InvalidExecution) as refused:
        validate(Execution("pass", timeout_s=-1), CFG)
    copy = pickle.loads(pickle.dumps(refused.value))
    assert type(copy) is InvalidExecution and str(copy) == str(refused.value)


def test_a_worker_refuses_an_invalid_request_before_taking_a_slot():
    from actors.sandbox_worker import SandboxWorker
    from runtime.core.config import SandboxConfig
    from runtime.sandbox import Execution

    worker = SandboxWorker(SandboxConfig(timeout_s=5), "requests/sandbox/0")
    worker.setup()
    try:
        with pytest.raises(InvalidExecution, match="timeout_s"):
            worker.execute(Execution("print(1)", timeout_s=float("nan")))
        assert worker.health()["running"] == 0 and worker.execute(Execution("print(1)")).stdout == "1\n"
    finally:
        worker.shutdown()


def test_a_batch_answers_each_execution_in_order_and_an_invalid_one_alone():
    from actors.sandbox_worker import SandboxWorker

    worker = SandboxWorker(SandboxConfig(timeout_s=5, concurrency=2), "requests/sandbox/1")
    worker.setup()
    try:
        batch = [Execution(f"import time; time.sleep({0.3 if i == 0 else 0}); print({i})", id=str(i)) for i in range(5)]
        batch[3] = Execution("print(3)", id="3", timeout_s=float("nan"))
        answers = worker.execute_batch(batch)
        assert [a.stdout for i, a in enumerate(answers) if i != 3] == ["0\n", "1\n", "2\n", "4\n"]
        assert [a.id for i, a in enumerate(answers) if i != 3] == ["0", "1", "2", "4"]
        assert isinstance(answers[3], str) and answers[3].startswith("worker error: InvalidExecution") and "timeout_s" in answers[3]
        assert worker.health()["running"] == 0 and worker.health()["completed"] == 4
    finally:
        worker.shutdown()
