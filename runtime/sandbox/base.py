"""The sandbox interface: what an execution is, what comes back, and the backend every runner implements."""

from __future__ import annotations

import enum
import signal
import uuid
from dataclasses import dataclass, field

from runtime.core.config import SandboxConfig
from runtime.core.errors import FactoryError

RESULT_TAIL = 4096
PROBE = "import sys; print(sum(range(5)), sys.flags.isolated)"


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
    channel: bytes = b""
    """What the program wrote to its result channel (fd 3), capped at `max_output_bytes`: the data a
    trusted caller judges (rl/rewards/code_tests.py), separate from stdout, which the program owns."""


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
        result = self.run(Execution(PROBE), slot=0)
        if result.status != Status.OK or result.stdout.split() != ["10", "1"]:
            raise SandboxUnavailable(f"{self.name} sandbox self-check failed ({result.status.value}): "
                                     f"{(result.stderr or result.stdout).strip()[-500:]}")

    def run(self, execution: Execution, slot: int) -> ExecutionResult:
        raise NotImplementedError

    def close(self) -> None:
        pass

    def timeout(self, execution: Execution) -> float:
        return min(execution.timeout_s or self.cfg.timeout_s, self.cfg.timeout_s)


def classify(reason: str | None, code: int | None, stderr: bytes) -> Status:
    """A status from how the run ended: `timeout`/`output_limit`/`out_of_memory` reasons, else the exit."""
    if reason in ("timeout", "output_limit", "out_of_memory"):
        return Status(reason)
    if reason == "sandbox_error":
        return Status.SANDBOX_ERROR
    tail = stderr[-RESULT_TAIL:]
    if b"MemoryError" in tail or b"Cannot allocate memory" in tail:
        return Status.OUT_OF_MEMORY
    signum = -code if code is not None and code < 0 else (code - 128 if code is not None and code > 128 else 0)
    if signum == signal.SIGXCPU:
        return Status.TIMEOUT
    if signum:
        return Status.KILLED
    return Status.OK if code == 0 else Status.FAILED
