"""Secrets (bearer tokens, API keys) come from the environment or an owner-only file, never the config.

The config holds at most the path of a secret's file (`sandbox.grpc.token_file`,
`weights.grpc.token_file`, `playground.api_key_file`); a literal secret in a recipe or
an override is refused at load (runtime/config.py, SECRETS). So the value never lands
in RUN_DIR/config.yaml, `factory config`, a log line, a process list or a submitted
job's environment. It is read where it is used, on the node that uses it: a file or
variable named there must exist on that node.
"""

from __future__ import annotations

import os
import stat

from runtime.errors import ConfigError

MAX_SECRET_BYTES = 4096


def read_secret(env: str, path: str | None, field: str) -> str | None:
    """The secret in file `path` (set by config `field`), else in variable `env`; None when neither is set.

    Raises ConfigError naming `field` and the file when the file is not a regular file, cannot
    be read, is empty, or grants any permission to group or others (fix: `chmod 600 FILE`)."""
    if path:
        return _read_owner_only(os.path.expanduser(path), field)
    return os.environ.get(env) or None


def _read_owner_only(path: str, field: str) -> str:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)  # a FIFO must not block the caller
    except OSError as exc:
        raise ConfigError(f"{field}: cannot read {path}: {exc.strerror}") from None
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            raise ConfigError(f"{field}: {path} is not a regular file")
        if mode & 0o077:
            raise ConfigError(f"{field}: {path} is accessible to group or others (mode {stat.S_IMODE(mode):04o}); "
                              f"a secret file must be owner-only: chmod 600 {path}")
        raw = os.read(fd, MAX_SECRET_BYTES + 1)
    finally:
        os.close(fd)
    try:
        value = raw.decode("utf-8").strip()
    except UnicodeDecodeError:
        raise ConfigError(f"{field}: {path} is not UTF-8 text") from None
    if not value or len(raw) > MAX_SECRET_BYTES:
        raise ConfigError(f"{field}: {path} must hold one secret of 1 to {MAX_SECRET_BYTES} bytes")
    return value
