"""The one client of an experiment's inference service (serve/inference_service.py).

Every caller uses it: the RL loop, the Evaluator, the SyntheticGenerator, the playground,
`factory generate --live` and a Python client outside the job. It finds the service by its actor
name, so a replacement under the same name is used as soon as it is set up; a call whose service
was lost (or is still starting) is sent again until the call's timeout, then ends in
InferenceUnavailable. `on_lost` lets the run's driver have its supervisor replace the service at
once (others wait for the supervisor's watch to notice).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

from runtime.core.calls import wait
from runtime.core.cluster import actor_name, dashboard_to_gcs, quiet_ray
from runtime.core.errors import CallTimeout, FactoryError, InferenceUnavailable, PeerLost, SetupNotRun
from runtime.core.generation import GenerationRequest, GenerationResult

SERVICE = "service"
"""The role name of the inference service: its actor is `<experiment>/service/0`."""


def service_name(experiment: str) -> str:
    return actor_name(experiment, SERVICE, 0)


class InferenceClient:
    def __init__(self, experiment: str, timeout_s: float = 300.0, on_lost: Callable[[], Any] | None = None,
                 namespace: str | None = None):
        """`timeout_s`: a call's default timeout (a generate waits its turn behind higher classes within it);
        `namespace`: the run's Ray namespace (cluster.namespace) when this process is not the run's."""
        self.name = service_name(experiment)
        self.namespace = namespace
        self.timeout_s = timeout_s
        self.on_lost = on_lost
        self._handle: Any = None

    @classmethod
    def connect(cls, experiment: str, timeout_s: float = 300.0, namespace: str = "factory") -> InferenceClient:
        """A client from outside the run: joins the cluster at RAY_ADDRESS (host:port) or the one on this
        machine, in the run's namespace (cluster.namespace), unless this process is already connected."""
        import os

        import ray
        from ray._private.authentication.authentication_token_setup import (
            maybe_enable_token_auth_if_token_available,
        )

        if not ray.is_initialized():
            quiet_ray()
            maybe_enable_token_auth_if_token_available(warn_if_disabled=False)  # a cluster with token auth: send it
            address = os.environ.get("RAY_ADDRESS", "")
            ray.init(address=dashboard_to_gcs(address) if address else "auto", namespace=namespace,
                     log_to_driver=False)
        return cls(experiment, timeout_s, namespace=namespace)

    def generate(self, requests: Sequence[GenerationRequest], timeout: float | None = None,
                 version: int | None = None, pin: bool = False, model: str | None = None) -> list[GenerationResult]:
        """One result per request, in order. `version` pins the call to that weight version; `pin`
        to the newest one now (the whole call is answered by one version); by default each chunk
        takes the newest. The requests' workload class (the first's) sets priority and quota.
        `model`: another HF model directory the service serves beside the run's (an eval judge)."""
        timeout = timeout or self.timeout_s
        return self._call("generate", list(requests), timeout, version, pin, model, timeout_s=timeout + 30)

    def newest(self) -> int:
        """The newest weight version published through the service."""
        return self._call("newest", timeout_s=self.timeout_s)

    def versions(self) -> dict[str, int]:
        """Each server's weight version."""
        return self._call("versions", timeout_s=self.timeout_s)

    def stats(self) -> dict[str, Any]:
        """Per workload class: requests, tokens, seconds waited, capacity held, what waits now."""
        return self._call("stats", timeout_s=self.timeout_s)

    def settle(self, timeout_s: float) -> list[str]:
        """Wait up to `timeout_s` for server replacements under way (a run ends with its servers
        whole); the servers still replacing. A lost service is not replaced for this: []."""
        try:
            return wait(self._service().settle.remote(timeout_s), timeout_s + 10, f"{self.name}: settle")
        except FactoryError:
            return []

    def shutdown(self) -> None:
        """Nothing to stop: the service belongs to the run (its supervisor stops it)."""

    def _call(self, method: str, *args: Any, timeout_s: float) -> Any:
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                call = getattr(self._service(), method).remote(*args)
                return wait(call, max(0.1, deadline - time.monotonic()), f"{self.name}: {method}")
            except (PeerLost, SetupNotRun) as exc:  # lost, not yet named again, or not yet set up
                self._handle = None
                if self.on_lost is not None and isinstance(exc, PeerLost):
                    self.on_lost()
                if time.monotonic() > deadline:
                    raise InferenceUnavailable(f"{self.name}: no service answered {method} within "
                                               f"{timeout_s:g}s ({exc})") from exc
                time.sleep(0.5)
            except CallTimeout as exc:
                raise InferenceUnavailable(str(exc)) from exc

    def _service(self) -> Any:
        import ray

        if self._handle is None:
            try:
                self._handle = ray.get_actor(self.name, namespace=self.namespace)
            except ValueError:
                raise PeerLost(f"{self.name}: no such actor (is the experiment running?)") from None
        return self._handle
