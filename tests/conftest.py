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
    from runtime.core.config import BuildConfig
    from runtime.model.build import ensure_built

    return ensure_built(BuildConfig(preset="tiny"), seed=0, cache_dir=tmp_path_factory.mktemp("models"))


class LocalRunner:
    """Runs executions one by one in a local sandbox backend (the pool does the same across workers)."""

    def __init__(self, backend):
        self.backend = backend

    def run(self, executions):
        return [self.backend.run(e, slot=0) for e in executions]


@pytest.fixture(scope="session")
def sandbox_runner():
    """A real bubblewrap sandbox without Ray, for reward code."""
    from runtime.core.config import SandboxConfig
    from runtime.sandbox import make_backend

    backend = make_backend(SandboxConfig(timeout_s=5), tag="tests")
    backend.check()
    yield LocalRunner(backend)
    backend.close()
