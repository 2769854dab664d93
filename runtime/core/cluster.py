"""Which Ray cluster an experiment runs on, and how its actors are named."""

from __future__ import annotations

import os

from runtime.core.config import ClusterConfig


def actor_name(experiment: str, role: str, index: int | str) -> str:
    """`<experiment>/<role>/<index>`: what the Ray dashboard lists."""
    return f"{experiment}/{role}/{index}"


def connect(cfg: ClusterConfig) -> str:
    """Join `cluster.address` or RAY_ADDRESS; otherwise start an embedded local cluster.

    Returns the dashboard URL. An already-initialised Ray (a test session, a Ray
    job's driver) is used as it is.
    """
    import ray

    if not ray.is_initialized():
        address = cfg.address or os.environ.get("RAY_ADDRESS")
        if address:
            ray.init(address=address, log_to_driver=True, namespace=cfg.namespace)
        else:
            ray.init(
                address="local",
                namespace=cfg.namespace,
                num_cpus=cfg.num_cpus,
                include_dashboard=True,
                dashboard_host=cfg.dashboard_host,
                dashboard_port=cfg.dashboard_port,
            )
    url = ray._private.worker.get_dashboard_url() or ""
    return url if not url or url.startswith("http") else f"http://{url}"


HEALTH_GROUP = "health"
"""The concurrency group every role's health() runs in: a thread of its own that long work never blocks."""


def remote_class(cls):
    """`cls` as a Ray actor class whose health() answers while its other methods run."""
    import ray

    return ray.remote(concurrency_groups={HEALTH_GROUP: 1})(cls)
