"""Secrets (bearer tokens, API keys) come from the environment or an owner-only file, never the config.

The config holds at most the path of a secret's file (`sandbox.grpc.token_file`,
`weights.grpc.token_file`, `playground.api_key_file`); a literal secret in a recipe or
an override is refused at load (runtime/core/config.py, SECRETS). So the value never lands
in RUN_DIR/config.yaml, `factory config`, a log line, a process list or a submitted
job's environment. It is read where it is used, on the node that uses it: a file or
variable named there must exist on that node.
"""

from __future__ import annotations

import hmac
import os
import stat

from runtime.core.config import SECRETS
from runtime.core.errors import ConfigError

LOOPBACK = "127.0.0.1"

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


def secret(name: str, path: str | None) -> str | None:
    """The secret `name` (a key of config.SECRETS) from file `path`, else its variable; None if unset."""
    env, file_field = SECRETS[name]
    return read_secret(env, path, file_field)


def required_secret(host: str, name: str, path: str | None, given: str | None = None,
                    what: str = "a token") -> str | None:
    """The secret a service binding `host` requires: `given` (Python callers), else `secret(name, path)`.

    The one rule of every service: 127.0.0.1 needs none; any other address raises ConfigError
    without one (or with an unsafe file)."""
    value = given or secret(name, path)
    if host != LOOPBACK and not value:
        env, file_field = SECRETS[name]
        raise ConfigError(f"{name}: binding {host} needs {what} ({env} or {file_field}, an owner-only file)")
    return value


def bearer(token: str | None) -> list[tuple[str, str]]:
    """gRPC metadata carrying `token` (none when there is no token)."""
    return [("authorization", f"Bearer {token}")] if token else []


def same_secret(given: str, expected: str) -> bool:
    """Constant-time comparison of a presented secret with the expected one."""
    return hmac.compare_digest(given.encode(), expected.encode())
