"""The warm runner: pid 1 of one sandbox slot, forking a fresh child per execution.

Run by the bubblewrap backend as `python -I -S zygote.py CONTROL_FD` inside the
slot's sandbox (its own user, pid, mount, net, ipc and uts namespaces, as the
unprivileged sandbox uid, under the seccomp filter and the slot's cgroups). It
imports only the standard library and never runs untrusted code itself.

Protocol on CONTROL_FD (a SOCK_SEQPACKET socket to the trusted worker):
- request: one JSON message {"timeout_s", "limits": [[name, value], ...]} with
  five descriptors: the program (a memfd), stdin (read end), stdout, stderr and
  the result channel (write ends);
- any message during an execution asks to stop it (output limit reached); one that arrives
  after the execution ended anyway is skipped, not taken for the next request;
- answer: one JSON message {"exit_code", "timeout", "clean"}.

Per execution: fork a child that takes the descriptors as fds 0-3, its own
session, rlimits, an OOM score of 1000 and a dumpable flag of its own, then
runs the program in a fresh namespace. When it ends (or at the timeout), every
other process of the sandbox is killed and reaped (pid 1 outlives them all;
SIGKILL from inside the namespace cannot reach it) and the scratch directory
is emptied, so nothing of one execution reaches the next. `clean: false` means
the scratch could not be emptied: the worker then replaces the whole slot.
"""

import atexit
import builtins
import fcntl
import json
import os
import resource
import select
import shutil
import signal
import socket
import sys
import time
import traceback  # these here, once, not in every forked child (traceback alone cost a child ms)

SCRATCH = "/work"
PR_SET_PDEATHSIG, PR_SET_DUMPABLE = 1, 4
PREPARE_FAILED = 125
"""Exit code of a child that could not be set up (reported as sandbox_error, not as the program's failure)."""


def _prctl():
    import _ctypes

    fn = _ctypes.dlsym(_ctypes.dlopen(None, 2), "prctl")
    return lambda *args: _ctypes.call_function(fn, tuple(args) + (0,) * (5 - len(args)))


PRCTL = _prctl()


def main(control_fd: int) -> None:
    PRCTL(PR_SET_DUMPABLE, 0)  # no process of the slot reads this one's memory or descriptors
    warm_parser()
    control = socket.socket(fileno=control_fd)
    os.makedirs(SCRATCH + "/tmp", exist_ok=True)
    control.send(b'{"ready": true}')
    while True:
        try:
            message, fds, _, _ = socket.recv_fds(control, 65536, 8)
        except OSError:
            return
        if not message:
            return
        if not fds:  # a stop that crossed the execution's end
            continue
        control.send(json.dumps(execute(json.loads(message), fds, control)).encode())


def warm_parser() -> None:
    """Compile one invalid line here, once: the parser sets up its error path on first use (~1.6 ms),
    and every forked child inherits it set up (RL's early completions are mostly syntax errors)."""
    try:
        compile("1 2", "<warm>", "exec")
    except SyntaxError:
        pass


def execute(request: dict, fds: list, control: socket.socket) -> dict:
    pid = os.fork()
    if pid == 0:
        child(request, fds)
    for fd in fds:
        os.close(fd)
    ended = wait(pid, request["timeout_s"], control)
    status = os.waitpid(pid, 0)[1]
    reap_all()
    return {"exit_code": os.waitstatus_to_exitcode(status), "timeout": ended == "timeout", "clean": wipe()}


def wait(pid: int, timeout_s: float, control: socket.socket) -> str:
    """How the child ended: `exited`, `timeout` or `stopped` (by the worker); the last two kill every
    process of the sandbox but this one."""
    pidfd = os.pidfd_open(pid)
    deadline = time.monotonic() + timeout_s
    try:
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                kill_all()
                return "timeout"
            ready, _, _ = select.select([pidfd, control], [], [], remaining)
            if control in ready:
                control.recv(64)
                kill_all()
                return "stopped"
            if pidfd in ready:
                return "exited"
    finally:
        os.close(pidfd)


def kill_all() -> None:
    try:
        os.kill(-1, signal.SIGKILL)  # from pid 1: every other process of the sandbox
    except ProcessLookupError:
        pass


def reap_all() -> None:
    """Kill and reap until no process but this one is left (orphans are reparented here)."""
    while True:
        kill_all()
        try:
            os.waitpid(-1, 0)
        except ChildProcessError:
            return


def wipe() -> bool:
    try:
        for entry in os.scandir(SCRATCH):
            if entry.is_dir(follow_symlinks=False):
                shutil.rmtree(entry.path)
            else:
                os.unlink(entry.path)
        os.mkdir(SCRATCH + "/tmp")
        return True
    except OSError:
        return False


def child(request: dict, fds: list) -> None:
    code = PREPARE_FAILED
    try:
        source = prepare(request, fds)
        code = run(source)
    except BaseException:
        traceback.print_exc()
    finally:
        os._exit(code)


def prepare(request: dict, fds: list) -> str:
    """Become the execution: fds 0-3, own session, limits; returns the program's source."""
    os.setsid()
    PRCTL(PR_SET_PDEATHSIG, signal.SIGKILL)
    PRCTL(PR_SET_DUMPABLE, 1)
    with open("/proc/self/oom_score_adj", "w") as f:
        f.write("1000")
    program, *ends = [fcntl.fcntl(fd, fcntl.F_DUPFD, 16) for fd in fds]  # above 0-3, so no dup2 clobbers one
    for target, fd in enumerate(ends):
        os.dup2(fd, target)
    os.lseek(program, 0, os.SEEK_SET)
    with os.fdopen(program, "rb") as f:
        source = f.read().decode("utf-8", "replace")
    os.closerange(4, 1 << 16)
    for name, value in request["limits"]:
        resource.setrlimit(getattr(resource, name), (value, value))
    os.chdir(SCRATCH)
    with open(SCRATCH + "/main.py", "w") as f:
        f.write(source)
    return source


def run(source: str) -> int:
    """Run the program as `python main.py` would; returns its exit code."""
    sys.argv = [SCRATCH + "/main.py"]
    namespace = {"__name__": "__main__", "__file__": SCRATCH + "/main.py", "__builtins__": builtins}
    try:
        exec(compile(source, SCRATCH + "/main.py", "exec"), namespace)
        code = 0
    except SystemExit as exc:
        code = exit_code(exc.code)
    except BaseException:
        traceback.print_exc()
        code = 1
    return finish(code)


def exit_code(value) -> int:
    if value is None:
        return 0
    if isinstance(value, int):
        return value & 0xFF
    print(value, file=sys.stderr)
    return 1


def finish(code: int) -> int:
    """What the interpreter does at exit: wait for threads, run atexit hooks, flush."""
    try:
        if "threading" in sys.modules:
            sys.modules["threading"]._shutdown()
        atexit._run_exitfuncs()
    finally:
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except BaseException:
                code = code or 120
    return code


if __name__ == "__main__":
    main(int(sys.argv[1]))
