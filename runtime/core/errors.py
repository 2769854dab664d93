"""Typed errors of the factory. All are picklable, so they cross Ray calls intact.

`FactoryError` and its subclasses are the errors a user can act on; the CLI prints
them as one line and exits non-zero. Anything else is a bug and keeps its traceback.
"""

from __future__ import annotations


class FactoryError(Exception):
    """An error the user can act on; its message says what to do."""


class ConfigError(FactoryError):
    """A recipe or override is invalid; the message names the field path."""

    def __init__(self, message: str, source: str | None = None):
        super().__init__(f"{source}: {message}" if source else message)
        self.source = source

    def __reduce__(self):
        return (ConfigError, (str(self),))


class ModelPathError(FactoryError):
    """`model.path` does not name a usable HF model directory."""


class StaleVersionError(FactoryError):
    """A server was asked to load weights older than the version it serves."""


class InferenceUnavailable(FactoryError):
    """No inference server could finish a request within its attempts."""


class InferenceTimeout(FactoryError):
    """A pool call did not finish within its timeout though its servers answer health probes."""


class SetupTimeout(FactoryError):
    """An actor did not finish `setup()` in time."""


class CallTimeout(FactoryError):
    """A call to another process did not answer within its timeout: that process is hung or too slow."""


class PeerLost(FactoryError):
    """The actor a call went to is gone (its process or its node died)."""


class RunFailed(FactoryError):
    """The supervisor gave up on a role (it kept failing, or could not be replaced); the message says why."""


class SetupNotRun(FactoryError):
    """An actor was called before its setup() finished (a replacement still starting)."""


class Interrupted(FactoryError):
    """The driver was told to stop (Ctrl-C, SIGTERM); a checkpoint was written first."""
