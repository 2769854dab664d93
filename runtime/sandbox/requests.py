"""Admission of sandbox requests: what a caller may ask of a sandbox, checked before anything runs.

Both faces use it: the gRPC SandboxService (serve/sandbox_service.py) on every
request it receives, and the Ray pool on what it is handed. A refused request
raises InvalidExecution naming the field and the bound; nothing of it has run.
"""

from __future__ import annotations

import math

from runtime.core.config import SandboxConfig
from runtime.core.errors import FactoryError
from runtime.sandbox.base import Execution


class InvalidExecution(FactoryError):
    """A sandbox request is malformed or over a bound; the message names the field. Nothing was run."""


def validate(execution: Execution, cfg: SandboxConfig) -> Execution:
    """Return `execution` unchanged if it is admissible under `cfg`, else raise InvalidExecution.

    - `timeout_s`: empty or 0 (the default, `sandbox.timeout_s`), else a finite number of
      seconds in (0, `sandbox.timeout_s`]; NaN, negatives and infinities are refused;
    - `code`: a string of at most `sandbox.max_code_bytes` bytes in UTF-8;
    - `stdin`: a string of at most `sandbox.max_stdin_bytes` bytes in UTF-8.
    """
    _check_timeout(execution.timeout_s, cfg.timeout_s)
    _check_size("code", execution.code, cfg.max_code_bytes, "sandbox.max_code_bytes")
    _check_size("stdin", execution.stdin, cfg.max_stdin_bytes, "sandbox.max_stdin_bytes")
    return execution


def _check_timeout(timeout_s: object, limit_s: float) -> None:
    if timeout_s is None:
        return
    valid = isinstance(timeout_s, (int, float)) and not isinstance(timeout_s, bool) and math.isfinite(timeout_s)
    if not valid or not 0 <= timeout_s <= limit_s:
        raise InvalidExecution(f"timeout_s: must be a finite number of seconds from 0 (the default) to "
                               f"sandbox.timeout_s ({limit_s:g}), got {timeout_s!r}")


def _check_size(name: str, value: object, limit: int, bound: str) -> None:
    if not isinstance(value, str):
        raise InvalidExecution(f"{name}: must be a string, got {type(value).__name__}")
    size = len(value.encode("utf-8", "surrogatepass"))
    if size > limit:
        raise InvalidExecution(f"{name}: {size} bytes is over {bound} ({limit} bytes)")
