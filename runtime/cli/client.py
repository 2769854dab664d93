"""Python client: load a recipe, then run it here or submit it to a cluster as a Ray job.

The CLI is a thin layer over this class; both go through the same code.

    from runtime.cli.client import FactoryClient
    client = FactoryClient()
    cfg = client.load("default", ["placement.inference.replicas=1"])
    job_id = client.submit(cfg)          # or: client.run(cfg)
    client.wait(job_id)
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence

from runtime.core.config import FactoryConfig, load_config, validate_tree
from runtime.core.errors import ConfigError, FactoryError

CONFIG_ENV = "FACTORY_CONFIG"
TERMINAL = {"SUCCEEDED", "FAILED", "STOPPED"}


class FactoryClient:
    def __init__(self, address: str | None = None):
        """`address`: the cluster's dashboard (http://host:8265); empty uses RAY_ADDRESS or the local cluster."""
        self.address = address

    @staticmethod
    def load(recipe: str | None = None, overrides: Sequence[str] | str = ()) -> FactoryConfig:
        """The recipe with `overrides`: a list (`["rl.steps=5", "rl.mode=async"]`) or one string as
        a shell would split it (`"rl.steps=5 rl.mode=async"`)."""
        return load_config(recipe, split_overrides(overrides))

    @staticmethod
    def run(cfg: FactoryConfig):
        """Run here; `cfg` is checked again first (fields set on it directly skip the tree's rules)."""
        from runtime.jobs import driver

        return driver.run(checked(cfg))

    @staticmethod
    def evaluate(target: str, suites: list[str] | None = None, overrides: list[str] = (),
                 version: int | None = None) -> list[dict]:
        """`factory eval`: eval suites on a run's saved version (the newest by default) or an HF model directory."""
        from runtime.jobs.evaluation import evaluate

        return evaluate(str(target), suites, list(overrides), version)

    @staticmethod
    def inference(experiment: str, timeout_s: float = 300.0, namespace: str = "factory"):
        """The inference service of a running experiment on this cluster (RAY_ADDRESS as host:port, else
        the one on this machine), as an InferenceClient: `.generate(requests)` under any workload class,
        `.stats()` per class, `.versions()`."""
        from runtime.core.inference_client import InferenceClient

        return InferenceClient.connect(experiment, timeout_s, namespace)

    @staticmethod
    def resume_config(run_dir: str | os.PathLike, overrides: list[str] = ()) -> FactoryConfig:
        """The config a run was started with (RUN_DIR/config.yaml), with `overrides` on top."""
        from pathlib import Path

        import yaml

        from runtime.core.config import apply_override

        path = Path(run_dir) / "config.yaml"
        if not path.is_file():
            raise FactoryError(f"{run_dir}: not a run directory (no config.yaml)")
        tree = yaml.safe_load(path.read_text())
        for override in overrides:
            apply_override(tree, override)
        tree.setdefault("experiment", {})["run_dir"] = str(Path(run_dir).resolve())
        return validate_tree(tree, source=str(path))

    @classmethod
    def resume(cls, run_dir: str | os.PathLike, overrides: list[str] = ()):
        """Continue the run in `run_dir` from its newest checkpoint (`factory run --resume RUN_DIR`)."""
        from runtime.jobs import driver

        return driver.run(cls.resume_config(run_dir, overrides), resume=True)

    @staticmethod
    def run_status(run_dir: str | os.PathLike) -> str:
        """One line on a run directory: running, finished, failed, interrupted or lost, and how it resumes."""
        from runtime.jobs.checkpoint import describe

        return describe(run_dir)

    def submit(self, cfg: FactoryConfig, entrypoint: str = "factory run --config-env " + CONFIG_ENV,
               working_dir: str | os.PathLike | None = None, runtime_env: dict | None = None) -> str:
        """Submit the resolved config as a Ray job; returns the job id. `working_dir` (a local
        directory) is uploaded and the job runs in it, so local code (a reward function, a task
        generator, changes to the project itself) reaches the cluster; `runtime_env` is any Ray
        runtime environment (pip, env_vars, py_modules) the job's processes get."""
        cfg = checked(cfg)  # before the cluster is touched, not 3 s into the job
        stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime())
        env = dict(runtime_env or {})
        env["env_vars"] = {**env.get("env_vars", {}), CONFIG_ENV: cfg.model_dump_json()}
        if working_dir:  # run from it with -m, so its modules (and a project checkout) come first
            env["working_dir"] = str(working_dir)
            entrypoint = entrypoint.replace("factory run ", "python -m runtime.cli.main run ", 1)
        return self._jobs().submit_job(
            entrypoint=entrypoint,
            submission_id=f"{cfg.experiment.name}-{stamp}-{os.urandom(2).hex()}",
            runtime_env=env,
            metadata={"experiment": cfg.experiment.name},
        )

    def status(self, job_id: str) -> str:
        return str(self._job(job_id, "get_job_status").value)

    def logs(self, job_id: str) -> str:
        return self._job(job_id, "get_job_logs")

    def follow(self, job_id: str, write: Callable[[str], object] = print) -> str:
        """Stream the job's logs to `write` until it ends; returns its final status."""
        import asyncio

        async def tail() -> None:
            async for chunk in self._jobs().tail_job_logs(job_id):
                write(chunk)

        asyncio.run(tail())
        return self.status(job_id)

    def stop(self, job_id: str) -> bool:
        return self._job(job_id, "stop_job")

    def _job(self, job_id: str, method: str):
        """One JobSubmissionClient call about `job_id`; an unknown job is one FactoryError line."""
        jobs = self._jobs()
        try:
            return getattr(jobs, method)(job_id)
        except RuntimeError as exc:
            if "does not exist" not in str(exc) and "404" not in str(exc):
                raise
            known = [j.submission_id for j in jobs.list_jobs() if j.submission_id][-3:]
            raise FactoryError(f"no job {job_id} on {self.address or 'this cluster'} (newest: "
                               f"{', '.join(known) or 'none'}; a run directory works too: factory status RUN_DIR)") from None

    def wait(self, job_id: str, timeout: float = 1800.0, poll: float = 1.0) -> str:
        deadline = time.monotonic() + timeout
        while (status := self.status(job_id)) not in TERMINAL:
            if time.monotonic() > deadline:
                raise FactoryError(f"job {job_id} still {status} after {timeout}s")
            time.sleep(poll)
        return status

    def _jobs(self):
        from ray._private.authentication.authentication_token_setup import (
            maybe_enable_token_auth_if_token_available,
        )
        from ray.job_submission import JobSubmissionClient

        from runtime.core.cluster import quiet_ray

        quiet_ray()
        # As ray.init does: send the token (RAY_AUTH_TOKEN, RAY_AUTH_TOKEN_PATH or ~/.ray/auth_token) if there is one.
        maybe_enable_token_auth_if_token_available(warn_if_disabled=False)
        try:
            return JobSubmissionClient(self.address)
        except ConnectionError as exc:
            raise FactoryError(f"cannot reach a Ray cluster at {self.address or 'RAY_ADDRESS/local'}: {exc}") from None


def split_overrides(overrides: Sequence[str] | str) -> list[str]:
    import shlex

    return shlex.split(overrides) if isinstance(overrides, str) else list(overrides)


def checked(cfg: FactoryConfig) -> FactoryConfig:
    """`cfg` validated again as a whole tree: one ConfigError line for what was set on it directly."""
    return validate_tree(cfg.model_dump(mode="json"), source="the config given to FactoryClient")


def config_from_env(name: str = CONFIG_ENV) -> FactoryConfig:
    """The resolved config a submitted job carries in its environment."""
    import json

    raw = os.environ.get(name)
    if not raw:
        raise ConfigError(f"environment variable {name} is not set")
    return validate_tree(json.loads(raw), source=f"${name}")
