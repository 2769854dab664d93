"""Which Ray cluster an experiment runs on, and how its actors are named."""

from __future__ import annotations

import logging
import os

from runtime.core.config import ClusterConfig


def actor_name(experiment: str, role: str, index: int | str) -> str:
    """`<experiment>/<role>/<index>`: what the Ray dashboard lists."""
    return f"{experiment}/{role}/{index}"


def verbose() -> bool:
    """`factory -v` (FACTORY_VERBOSE=1): actors' output and Ray's notices on the console."""
    return os.environ.get("FACTORY_VERBOSE") == "1"


def connect(cfg: ClusterConfig) -> str:
    """Join `cluster.address` or RAY_ADDRESS; otherwise start an embedded local cluster.

    Returns the dashboard URL. An already-initialised Ray (a test session, a Ray
    job's driver) is used as it is.
    """
    import ray

    if not ray.is_initialized():
        address = cfg.address or os.environ.get("RAY_ADDRESS")
        # Actors' output stays in Ray's log files (the dashboard shows them) unless FACTORY_VERBOSE.
        quiet = {"log_to_driver": verbose(), "logging_level": logging.INFO if verbose() else logging.ERROR}
        if address:
            ray.init(address=dashboard_to_gcs(address), namespace=cfg.namespace, **quiet)
        else:
            ray.init(
                address="local",
                namespace=cfg.namespace,
                **quiet,
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


def dashboard_to_gcs(address: str) -> str:
    """The address ray.init joins, for `address` in either form users export as RAY_ADDRESS: the
    cluster's own (`host:6379`, `auto`, `ray://...`) as it is, or its dashboard URL (`http://host:8265`,
    what `ray job submit` takes), which names a cluster on this machine: `auto` finds it."""
    from urllib.parse import urlparse

    from runtime.core.errors import ConfigError

    if not address.startswith(("http://", "https://")):
        return address
    host = urlparse(address).hostname or ""
    if host not in ("127.0.0.1", "localhost", "0.0.0.0", os.uname().nodename):
        raise ConfigError(f"RAY_ADDRESS={address} is a dashboard on another host: `factory submit` sends the job "
                          "there; `factory run` joins a cluster by its address (RAY_ADDRESS=<head>:6379), or run "
                          "it on the head node")
    os.environ.pop("RAY_ADDRESS", None)  # ray.init reads it again for `auto`
    return "auto"


def quiet_ray() -> None:
    """Ray's own notices (token auth is on, a local instance started) stay off this process's
    console unless FACTORY_VERBOSE: they are not what the user asked for."""
    if not verbose():
        import ray  # noqa: F401  (its import sets up the logger this quiets)

        logging.getLogger("ray").setLevel(logging.ERROR)
