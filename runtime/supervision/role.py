"""A role's actor as the supervisor sees it: how to spawn it under its name and how to bring a
fresh one to where the lost one was (setup, restore, load the current weights)."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from runtime.core.cluster import remote_class
from runtime.core.errors import SetupTimeout


@dataclass
class Role:
    kind: str
    """The role: trainer, inference, sandbox, blender, tasks, broadcaster (config.ROLES)."""
    index: int
    name: str
    """The actor's name, `<experiment>/<role>/<index>`; a replacement takes the same name."""
    cls: type
    args: tuple
    options: dict[str, Any] = field(default_factory=dict)
    """Ray actor options (resources, max_concurrency); the name is added."""
    restart: Callable[[Any], None] | None = None
    """Brings a replacement up (setup, restore, catch up) and returns when it may take calls."""
    needs: tuple[str, ...] = ()
    """Names of the roles its `restart` calls (the service loads the broadcaster's newest version):
    lost together, as on one node, those are brought back first."""

    def spawn(self, wait_s: float) -> Any:
        """Create the actor under its name, waiting up to `wait_s` for a dead predecessor to release
        the name (SetupTimeout when it has not)."""
        actor = remote_class(self.cls).options(name=self.name, **self.options)
        deadline = time.monotonic() + wait_s
        while True:
            try:
                return actor.remote(*self.args)
            except ValueError as exc:
                if time.monotonic() > deadline:
                    raise SetupTimeout(f"{self.name}: the lost actor still held the name after {wait_s:.0f} s "
                                       "(supervision.release_timeout_s)") from exc
                time.sleep(0.1)
