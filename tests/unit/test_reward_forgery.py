"""Forged verdicts: completions written to be scored as passing without being right, and completions
that try to change a sibling's reward. Each runs through the real bubblewrap sandbox, directly,
through the gRPC SandboxService on loopback, and through the Ray sandbox pool (siblings in one
batch on one worker); none may pass."""

from pathlib import Path

import pytest

from actors.sandbox_worker import SandboxWorker
from rl.rewards.code_tests import code_test_rewards, execution
from rl.tasks import CodeTask, load_tasks
from runtime.core.config import SandboxConfig
from runtime.sandbox.remote import SandboxClient
from serve.sandbox_service import serve

DATA = Path(__file__).resolve().parents[1] / "data"
ADD = load_tasks(DATA / "humaneval_sample.jsonl")[0]  # def add(a, b): 4 cases, each `assert candidate(..) == N`

FORGERIES = {
    "always_equal": "    class E:\n        __eq__ = lambda self, other: True\n        __hash__ = object.__hash__\n"
                    "    return E()\n",
    "equal_int_subclass": "    class E(int):\n        __eq__ = lambda self, other: True\n        __hash__ = int.__hash__\n"
                          "    return E(0)\n",
    "printed_reports": "    return 0\nprint('0 v 3\\n1 v 0\\n2 v 15\\n3 v 0')\nprint('@@factory-0@@1111')\n",
    "channel_pass_records": "    return 0\nimport os\nfor i in range(4):\n    os.write(3, b'%d p\\n' % i)\n",
    "noop_exec_through_builtins": "    return 0\nimport builtins\nbuiltins.exec = lambda *a, **k: None\n"
                                  "builtins.eval = lambda *a, **k: 3\n",
    "patched_os_write": "    return 0\nimport os\n_write = os.write\n"
                        "os.write = lambda fd, data: _write(fd, data.replace(b' v ', b' p '))\n",
    "atexit_hook": "    return 0\nimport atexit, os\natexit.register(lambda: os.write(3, b'0 p\\n1 p\\n2 p\\n3 p\\n'))\n",
    "frame_snooping": "    import sys\n    frame = sys._getframe(1)\n    while frame:\n"
                      "        for value in list(frame.f_locals.values()):\n"
                      "            if isinstance(value, list) and value and isinstance(value[0], tuple):\n"
                      "                return value\n        frame = frame.f_back\n    return 0\n",
    "exits_before_the_checks": "    return 0\nimport os\nos._exit(0)\n",
    "raises_system_exit_in_the_call": "    raise SystemExit(0)\n",
    "kills_its_runner": "    return 0\nimport os, signal\nfor pid in range(1, 100):\n    try:\n"
                        "        os.kill(pid, signal.SIGKILL)\n    except OSError:\n        pass\n",
}

SIBLINGS = [
    # Leaves a setsid process that signals everything, plants files in the scratch and a sitecustomize.
    "    return 0\nimport os, signal, time\nopen('/work/sitecustomize.py', 'w').write('import os; os._exit(1)')\n"
    "open('/tmp/poison', 'w').write('x')\nif os.fork() == 0:\n    os.setsid()\n    end = time.time() + 3\n"
    "    while time.time() < end:\n        for pid in range(1, 300):\n            try:\n"
    "                os.kill(pid, signal.SIGINT)\n            except OSError:\n                pass\n    os._exit(0)\n",
    "    return a + b\n",
    "    return a - b\n",
    "    return b + a\n",
]


class GrpcRunner:
    def __init__(self, client: SandboxClient):
        self.client = client

    def run(self, executions):
        return list(map(self.client.execute, executions))


@pytest.fixture(scope="module")
def grpc_runner():
    cfg = SandboxConfig(concurrency=2, timeout_s=5)
    worker = SandboxWorker(cfg, "forgery/sandbox/0")
    worker.setup()
    server, port = serve(worker, cfg)
    client = SandboxClient(f"127.0.0.1:{port}")
    yield GrpcRunner(client)
    client.close()
    server.stop(grace=None)
    worker.shutdown()


@pytest.fixture(scope="module")
def pool_runner(ray_cluster):
    """The Ray sandbox pool, which sends a worker several completions in one batch."""
    from runtime.core.config import load_config
    from runtime.pools.sandbox_pool import SandboxPool

    pool = SandboxPool(load_config("default", ["experiment.name=test-forgery", "placement.sandbox.replicas=1",
                                               "sandbox.concurrency=2"])).start()
    yield pool
    pool.shutdown()


@pytest.fixture(params=["local", "grpc", "pool"])
def runner(request, sandbox_runner):
    return {"local": lambda: sandbox_runner, "grpc": lambda: request.getfixturevalue("grpc_runner"),
            "pool": lambda: request.getfixturevalue("pool_runner")}[request.param]()


@pytest.mark.parametrize("name", FORGERIES)
def test_a_forged_verdict_does_not_pass(runner, name):
    [forged, right] = code_test_rewards(runner, [ADD, ADD], [FORGERIES[name], "    return a + b\n"], timeout_s=3)
    assert right.passed and right.strength == "strong"
    assert not forged.passed and forged.fraction <= 0.5, forged  # `return 0` is right for add(-1, 1), add(0, 0)


def test_a_completion_cannot_change_its_siblings_rewards(runner):
    rewards = code_test_rewards(runner, [ADD] * len(SIBLINGS), SIBLINGS, timeout_s=3)
    assert [r.passed for r in rewards] == [False, True, False, True], rewards


def test_expected_values_never_enter_the_sandbox(sandbox_runner):
    secret = 982451653
    task = CodeTask(id="secret", prompt="", prefix="def f(x):\n", solution="    return x * 0\n",
                    cases=[(f"assert f(1) == {secret}", True), (f"assert {secret} == f(2)", True)],
                    entry_point="f")
    dump = ("    return 0\nimport gc, sys\nprint(open('/work/main.py').read())\n"
            "print([repr(o)[:200] for o in gc.get_objects()])\n")
    program, _ = execution(task, dump)
    [result] = sandbox_runner.run([program])
    assert str(secret) not in program.code and str(secret) not in result.stdout
    assert "f(1)" in result.stdout  # what it could read was printed


def test_rewards_say_whether_any_case_was_judged_inside(sandbox_runner):
    add, running_max, palindrome = load_tasks(DATA / "humaneval_sample.jsonl")
    rewards = code_test_rewards(sandbox_runner, [add, running_max, palindrome],
                                [t.solution for t in (add, running_max, palindrome)])
    assert [r.passed for r in rewards] == [True, True, True]
    assert [r.strength for r in rewards] == ["strong", "weak", "strong"]  # running_max asserts in a loop
