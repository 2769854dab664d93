"""`factory serve RUN_DIR|MODEL`: the playground for a finished run, or for any HF checkpoint."""

from __future__ import annotations

import time
from pathlib import Path

from runtime.core.config import FactoryConfig, load_config, validate_tree
from runtime.core.errors import FactoryError
from runtime.core.signals import wait_for_stop


def playground_config(target: str, overrides: list[str]) -> tuple[FactoryConfig, Path]:
    """A run directory serves its own config and versions; a model directory becomes v0 of a new run."""
    import yaml

    from runtime.core.config import apply_override
    from runtime.model.build import check_model_dir
    from runtime.model.versions import link_base

    path = Path(target).expanduser()
    if (path / "config.yaml").is_file():
        tree = yaml.safe_load((path / "config.yaml").read_text())
        for override in overrides:
            apply_override(tree, override)
        return validate_tree(tree, source=str(path / "config.yaml")), path.resolve()
    model = check_model_dir(path) if path.exists() or "/" in target else None
    if model is None:
        raise FactoryError(f"{target}: neither a run directory (with config.yaml) nor an HF model directory")
    cfg = load_config(None, [f"model.path={model}", "experiment.name=serve", *overrides])
    run_dir = Path(cfg.experiment.runs_root).resolve() / f"serve-{model.name}-{time.strftime('%Y%m%d-%H%M%S')}"
    cfg.experiment.run_dir = str(run_dir)
    link_base(run_dir, model)
    return cfg, run_dir


def serve_forever(target: str, overrides: list[str]) -> None:
    from ray import serve

    from runtime.core.cluster import connect
    from serve.playground import start

    cfg, run_dir = playground_config(target, overrides)
    connect(cfg.cluster)
    url = start(cfg, run_dir)
    print(f"playground: {url}   (OpenAI API at {url}v1; feedback in {run_dir / 'feedback.sqlite'}; Ctrl-C stops)",
          flush=True)
    try:
        wait_for_stop()
    finally:
        serve.shutdown()
