"""`factory eval RUN_DIR|MODEL`: the Evaluator's suites on demand, on a saved version or any HF model.

A run directory evaluates its newest saved version (or `--version N`) with its own config and
suites, and appends the rows to RUN_DIR/evals.jsonl beside the ones written during training
(a score more than eval.regression below the run's best so far is reported as a regression); a
model directory is evaluated with the default config. Either way it starts what the Evaluator
needs for the length of the call: an inference service (one server) and the sandbox workers.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from runtime.core.config import FactoryConfig
from runtime.core.errors import FactoryError


def target_model(target: str, overrides: list[str], version: int | None) -> tuple[FactoryConfig, Path | None, Path, str]:
    """(config, run directory or None, model directory, its label: `vN` or the model's name)."""
    from runtime.jobs.serving import playground_config
    from runtime.model.versions import list_models

    cfg, run_dir = playground_config(target, overrides)
    if not (Path(target).expanduser() / "config.yaml").is_file():
        return cfg, None, Path(cfg.model.path), Path(cfg.model.path).name
    saved = {k: v for k, v in list_models(run_dir).items() if k.startswith("v")}
    label = f"v{version}" if version is not None else (list(saved)[-1] if saved else None)
    if label not in saved:
        raise FactoryError(f"{target}: no saved version {label or ''} (saved: {', '.join(saved) or 'none'}); "
                           "pass --version N of one under versions/")
    return cfg, run_dir, saved[label], label


def evaluate(target: str, suites: list[str] | None = None, overrides: list[str] = (),
             version: int | None = None) -> list[dict[str, Any]]:
    """Rows {suite, score, version, model, ...} of each suite (all of `eval.suites` by default) on the
    target's model; `version` is the saved version's number (0 for a model directory)."""
    import ray

    from actors.evaluator import Evaluator
    from runtime.core.cluster import connect, remote_class
    from runtime.core.inference_client import service_name
    from runtime.pools.sandbox_pool import SandboxPool
    from serve.inference_service import InferenceService

    cfg, run_dir, model, label = target_model(target, list(overrides), version)
    unknown = sorted(set(suites or []) - {s.name for s in cfg.eval.suites})
    if unknown:
        raise FactoryError(f"no eval suite {unknown[0]!r}; eval.suites has {', '.join(s.name for s in cfg.eval.suites)}")
    cfg = cfg.model_copy(update={"experiment": cfg.experiment.model_copy(update={"name": f"{cfg.experiment.name}-eval"})})
    cfg.placement.inference.replicas = cfg.placement.inference.min_replicas = cfg.placement.inference.max_replicas = 1
    connect(cfg.cluster)
    name = service_name(cfg.experiment.name)
    service = remote_class(InferenceService).options(name=name, max_concurrency=cfg.placement.service.max_concurrency) \
        .remote(cfg, str(model), None, None, name)
    sandbox = None
    try:
        ray.get(service.setup.remote(), timeout=cfg.inference.setup_timeout_s)
        sandbox = SandboxPool(cfg).start()
        evaluator = Evaluator(cfg, run_dir)  # a run's evals.jsonl: its best scores so far, and where rows go
        evaluator.setup()
        number = int(label[1:]) if run_dir is not None else 0
        return evaluator.evaluate(None, suites, {"version": number, "model": str(model), "on_demand": True})
    finally:
        if sandbox is not None:
            sandbox.shutdown()
        ray.kill(service)
