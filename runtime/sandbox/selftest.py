"""Adversarial probes of the sandbox: each one tries to break one guarantee, as hostile code would.

`factory sandbox selftest` runs them on the current machine and says which guarantees hold
there; tests/unit/test_sandbox.py runs the same probes in CI. A probe is a program (and,
for guarantees between executions, a second one run after it in the same slot) and a
predicate over the results that is true when the guarantee held.
"""

from __future__ import annotations

import textwrap
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from runtime.sandbox.base import Execution, ExecutionResult, SandboxBackend, Status


@dataclass
class Probe:
    name: str
    guarantee: str
    code: str
    holds: Callable[[list[ExecutionResult]], bool]
    then: str | None = None
    """A second program run in the same slot after the first (guarantees between executions)."""
    timeout_s: float | None = None

    def run(self, backend: SandboxBackend, slot: int = 0) -> tuple[bool, list[ExecutionResult]]:
        programs = [self.code] + ([self.then] if self.then else [])
        results = [backend.run(Execution(textwrap.dedent(p), timeout_s=self.timeout_s), slot) for p in programs]
        return self.holds(results), results


def _lines(result: ExecutionResult) -> list[str]:
    return result.stdout.split("\n")


CORE_PATTERN = Path("/proc/sys/kernel/core_pattern")
_host_core_pattern = CORE_PATTERN.read_text() if CORE_PATTERN.exists() else ""

SYSCALLS = """
    import ctypes
    libc = ctypes.CDLL(None, use_errno=True)
    calls = {"unshare(CLONE_NEWUSER)": (272, 0x10000000), "ptrace(TRACEME)": (101, 0), "keyctl": (250, 0, 0),
             "add_key": (248, 0, 0, 0, 0, 0), "bpf": (321, 0, 0, 0), "perf_event_open": (298, 0, 0, -1, -1, 0),
             "process_vm_readv": (310, 1, 0, 0, 0, 0, 0), "mount": (165, 0, 0, 0, 0, 0),
             "setns": (308, 0, 0), "clone(CLONE_NEWUSER)": (56, 0x10000000 | 17, 0, 0, 0, 0)}
    for name, (number, *args) in calls.items():
        ctypes.set_errno(0)
        result = libc.syscall(number, *args)
        if result == 0:
            import os
            os._exit(0)  # a child of a clone that succeeded
        print(name, result, ctypes.get_errno())
"""
"""x86-64 numbers; every call must fail with EPERM (1)."""

PROBES = [
    Probe("not_root", "runs as an unprivileged uid with no capabilities", """
        import os
        status = dict(line.split(":", 1) for line in open("/proc/self/status").read().splitlines())
        print(os.getuid(), os.geteuid(), status["CapEff"].strip(), status["CapPrm"].strip(), status["NoNewPrivs"].strip())
    """, lambda r: _lines(r[0])[0].split()[:2] != ["0", "0"] and _lines(r[0])[0].split()[2:] == [
        "0000000000000000", "0000000000000000", "1"]),
    Probe("sysctl_write", "host sysctls (core_pattern, fs/lease-break-time) cannot be written", """
        for path in ["/proc/sys/kernel/core_pattern", "/proc/sys/fs/lease-break-time"]:
            try:
                with open(path, "w") as f:
                    f.write("|/work/x.sh")
                print("wrote", path)
            except OSError as exc:
                print("refused", path)
    """, lambda r: "wrote" not in r[0].stdout and r[0].stdout.count("refused") == 2
        and (not CORE_PATTERN.exists() or CORE_PATTERN.read_text() == _host_core_pattern)),
    Probe("oom_score", "the OOM score stays at 1000 (cannot be lowered)", """
        try:
            with open("/proc/self/oom_score_adj", "w") as f:
                f.write("-1000")
            print("lowered")
        except OSError:
            print("refused")
        print(open("/proc/self/oom_score_adj").read().strip())
    """, lambda r: _lines(r[0])[:2] == ["refused", "1000"]),
    Probe("devices_read_only", "/dev and /dev/shm are read-only (no unbounded tmpfs)", """
        for path in ["/dev/shm/fill", "/dev/fill"]:
            try:
                with open(path, "wb") as f:
                    f.write(b"x" * (56 << 20))
                print("wrote", path)
            except OSError:
                print("refused", path)
    """, lambda r: r[0].stdout.count("refused") == 2),
    Probe("scratch_size", "the writable file system is capped at sandbox.tmpfs_mb", """
        written = 0
        try:
            for i in range(100):
                with open(f"/tmp/fill{i}", "wb") as f:
                    f.write(b"x" * (8 << 20))
                written += 8
        except OSError as exc:
            print("stopped", exc.errno)
        print(written)
    """, lambda r: "stopped 28" in r[0].stdout and int(_lines(r[0])[-2]) < 100),
    Probe("scratch_files", "the writable file system holds at most sandbox.max_files files", """
        made = 0
        try:
            for i in range(150_000):
                open(f"/work/f{i}", "w").close()
                made += 1
        except OSError as exc:
            print("stopped", exc.errno)
        print(made)
    """, lambda r: r[0].status == Status.OK and int(_lines(r[0])[-2]) < 150_000),
    Probe("memfd_memory", "memory held in memfds counts against the memory cgroup", """
        import os
        held = []
        for i in range(100):
            fd = os.memfd_create("x")
            os.write(fd, b"x" * (15 << 20))
            held.append(fd)
            print(len(held) * 15, flush=True)
    """, lambda r: r[0].status == Status.OUT_OF_MEMORY and int(_lines(r[0])[-2] or 0) < 1500),
    Probe("denied_syscalls", "seccomp denies namespaces, mounts, ptrace, keyctl, bpf, perf events, process_vm_*",
          SYSCALLS, lambda r: r[0].status == Status.OK and len(_lines(r[0])) > 10
          and all(line.split()[-2:] == ["-1", "1"] for line in _lines(r[0]) if line)),
    Probe("host_information", "host information under /proc is masked", """
        import os
        for path in ["/proc/cmdline", "/proc/kallsyms", "/proc/version", "/proc/modules"]:
            try:
                print(path, len(open(path).read()))
            except OSError:
                print(path, "unreadable")
        print("sys", len(os.listdir("/proc/sys")))
    """, lambda r: r[0].stdout.count("unreadable") == 4 and "sys 0" in r[0].stdout),
    Probe("runner_unreachable", "the runner's memory and descriptors (pid 1) are unreadable", """
        import os
        for path in ["/proc/1/fd", "/proc/1/mem", "/proc/1/environ"]:
            try:
                print(path, os.listdir(path) if path.endswith("fd") else open(path, "rb").read(8))
            except OSError:
                print(path, "refused")
        import signal
        try:
            os.kill(1, signal.SIGKILL)
        except OSError:
            pass
    """, lambda r: r[0].stdout.count("refused") == 3 and r[1].stdout == "alive\n", then="print('alive')"),
    Probe("leftover_processes", "processes left behind (setsid) are killed before the next execution", """
        import os, signal, time
        if os.fork() == 0:
            os.setsid()
            if os.fork() == 0:
                end = time.time() + 5
                while time.time() < end:
                    for pid in range(2, 200):
                        try:
                            os.kill(pid, signal.SIGINT)
                        except OSError:
                            pass
                    time.sleep(0.001)
            os._exit(0)
        time.sleep(0.1)
        print("left a signaller")
    """, lambda r: r[1].status == Status.OK and r[1].stdout == "still here\n",
          then="import time\ntime.sleep(0.3)\nprint('still here')"),
    Probe("scratch_wiped", "nothing written survives into the next execution", """
        open("/work/left", "w").write("x")
        open("/tmp/left", "w").write("x")
        print("wrote")
    """, lambda r: r[1].stdout.strip() == "['main.py', 'tmp'] []",
          then="import os\nprint(sorted(os.listdir('/work')), os.listdir('/tmp'))"),
]


def run_all(backend: SandboxBackend) -> list[tuple[Probe, bool, list[ExecutionResult]]]:
    return [(probe, *probe.run(backend)) for probe in PROBES]
