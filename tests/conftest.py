"""Shared fixtures: one local Ray cluster per test session, one tiny model per session."""

import pytest


@pytest.fixture(scope="session")
def ray_cluster():
    import ray

    ray.init(address="local", num_cpus=8, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory):
    from runtime.config import BuildConfig
    from runtime.modelbuild import ensure_built

    return ensure_built(BuildConfig(preset="tiny"), seed=0, cache_dir=tmp_path_factory.mktemp("models"))
