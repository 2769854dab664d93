"""The sandbox pool on real bubblewrap workers in real Ray actors."""

import os
import signal
import time

import pytest
import ray

from runtime.core.config import load_config
from runtime.sandbox import Execution, Status
from runtime.pools.sandbox_pool import PoolStopped, SandboxPool

pytestmark = pytest.mark.cluster


@pytest.fixture
def pool(ray_cluster):
    cfg = load_config("default", ["experiment.name=test-sandbox", "placement.sandbox.replicas=2",
                                  "sandbox.concurrency=4", "sandbox.health_interval_s=0.5"])
    pool = SandboxPool(cfg).start()
    yield pool
    pool.shutdown()


def test_runs_a_batch_across_workers(pool):
    results = pool.run([Execution(f"print({i} * {i})") for i in range(40)])
    assert [r.stdout for r in results] == [f"{i * i}\n" for i in range(40)]
    assert {r.worker for r in results} == {"test-sandbox/sandbox/0", "test-sandbox/sandbox/1"}
    assert pool.counts["ok"] == 40


def test_waiting_on_a_stopped_pool_raises_instead_of_hanging(pool):
    pids = [ray.get(w.handle.__ray_call__.remote(lambda self: os.getpid()), timeout=30) for w in pool.workers]
    pool.shutdown()
    from runtime.sandbox.cgroups import PREFIX, controller_roots
    from runtime.sandbox.scratch import ROOT

    roots = [*controller_roots()[0].values(), ROOT]
    left = [p for root in roots for pid in pids for p in root.glob(f"{PREFIX if root != ROOT else ''}{pid}-*")]
    assert not left, f"a stopped pool left its workers' cgroups or mounts: {left}"
    with pytest.raises(PoolStopped, match="dispatcher is not running"):
        pool.run([Execution("print(1)")])


def test_killing_a_worker_mid_batch_yields_one_result_per_execution(pool):
    executions = [Execution(f"import time; time.sleep(0.5); print({i})") for i in range(24)]
    futures = [pool.submit(e) for e in executions]
    victim = pool.workers[0]
    deadline = time.monotonic() + 30
    while not victim.inflight and time.monotonic() < deadline:
        time.sleep(0.01)
    ray.kill(victim.handle)
    results = [f.result(timeout=120) for f in futures]
    assert [r.id for r in results] == [e.id for e in executions]
    assert [r.stdout for r in results] == [f"{i}\n" for i in range(24)]
    assert all(r.status == Status.OK for r in results)
    assert pool.counts["retried"] > 0 and pool.counts["replaced"] >= 1
    assert pool.counts["ok"] == 24, "no execution answered twice"
    wait_until(lambda: pool.stats()["workers"]["test-sandbox/sandbox/0"] == "ready")


def test_a_hung_worker_is_replaced(pool):
    victim = pool.workers[1]
    pid = ray.get(victim.handle.__ray_call__.remote(lambda self: os.getpid()), timeout=10)
    os.kill(pid, signal.SIGSTOP)
    try:
        results = pool.run([Execution(f"print({i})") for i in range(12)])
        assert [r.stdout for r in results] == [f"{i}\n" for i in range(12)]
        wait_until(lambda: pool.counts["replaced"] >= 1)
    finally:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def test_resize_grows_and_shrinks(pool):
    pool.resize(3)
    wait_until(lambda: list(pool.stats()["workers"].values()).count("ready") == 3)
    results = pool.run([Execution("print('x')") for _ in range(12)])
    assert len(results) == 12
    pool.resize(1)
    wait_until(lambda: list(pool.stats()["workers"].values()).count("ready") == 1)
    assert len(pool.run([Execution("print('y')") for _ in range(4)])) == 4


def test_backpressure_blocks_then_refuses(ray_cluster):
    cfg = load_config("default", ["experiment.name=test-sandbox-bp", "placement.sandbox.replicas=1",
                                  "sandbox.concurrency=1", "sandbox.queue_limit=2"])
    pool = SandboxPool(cfg).start()
    try:
        futures = [pool.submit(Execution("import time; time.sleep(1)")) for _ in range(3)]
        from runtime.pools.sandbox_pool import SandboxBusy

        with pytest.raises(SandboxBusy):
            for _ in range(5):
                futures.append(pool.submit(Execution("print(1)"), block_s=0.05))
        assert all(f.result(timeout=60).status == Status.OK for f in futures)
    finally:
        pool.shutdown()


def test_a_batch_answered_with_a_wrong_count_answers_every_execution(ray_cluster):
    # the collecting logic alone (no worker): a worker that returned one answer for two executions
    from runtime.pools.sandbox_pool import Job, Worker

    pool = SandboxPool(load_config("default", ["experiment.name=test-sandbox-count"]))
    jobs = [Job(Execution("print(1)", id="a")), Job(Execution("print(2)", id="b"))]
    pool._finish(Worker(0, "test-sandbox-count/sandbox/0"), ray.put(["worker error: only one"]), jobs)
    results = [job.future.result(timeout=5) for job in jobs]
    assert [(r.id, r.status) for r in results] == [("a", Status.SANDBOX_ERROR), ("b", Status.SANDBOX_ERROR)]
    assert all("1 answers to 2 executions" in r.stderr for r in results)
    assert pool.counts["sandbox_error"] == 2


def wait_until(predicate, timeout: float = 60.0):
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.05)
