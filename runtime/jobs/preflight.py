"""Preflight: what a run will read and need, checked before any actor starts.

The config tree already checks every field and the rules across fields. What only the disk and
the cluster can say is checked here, in the driver, before work is spent: every data and task
source opened and its first documents parsed (a bad line is `file:line`), generator names
resolved, the task, eval, preference and judge files read, the model's positions against
`data.seq_len`, and each role's resources against the cluster's. Each failure is one
PreflightError line naming the field, the file and line, and what to do.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from itertools import islice
from pathlib import Path
from typing import Any

from rl.preferences import read_preference_pairs
from rl.rewards.custom import load_reward
from rl.tasks import parse_line
from runtime.core.config import DataConfig, FactoryConfig, SourceConfig
from runtime.core.errors import FactoryError
from runtime.core.jsonl import objects
from runtime.data.sources import generator, make_source
from runtime.jobs.parts import task_data

FIRST = 64
"""Documents read from each source (lines from each file) before the run starts."""


class PreflightError(FactoryError):
    """A run would fail on what it reads or needs; the message names the field and the file."""


def check(cfg: FactoryConfig) -> None:
    """Everything the run reads, before the model is built or any actor starts (no cluster needed)."""
    _sources("data.sources", cfg.data)
    _sources("rl.tasks.sources", task_data(cfg), task=True)
    for i, suite in enumerate(cfg.eval.suites):
        if suite.path:
            _rows(f"eval.suites.{i}.path", suite.path, parse=None if suite.type == "judge" else _task)
    if cfg.rl.reward:
        load_reward(cfg.rl.reward)  # its errors name rl.reward
    if cfg.dpo.steps and cfg.dpo.pairs:
        _read("dpo.pairs", cfg.dpo.pairs, lambda: read_preference_pairs(cfg.dpo.pairs))
    for i, job in enumerate(cfg.synthetic.jobs):
        _read(f"synthetic.jobs.{i}.generator", job.generator, lambda job=job: generator(job.generator, job.name))


def check_resources(cfg: FactoryConfig, total: dict[str, float]) -> None:
    """Each role's actors, and all of them together, against the cluster's resources `total`
    (ray.cluster_resources()); nothing would ever schedule an actor that asks for more."""
    needs: dict[str, float] = {}
    for field, place in demands(cfg):
        for resource, amount in place.items():
            have = total.get(resource, 0.0)
            if amount > have:
                raise PreflightError(f"{field}: needs {amount:g} {_unit(resource)} and the cluster has {have:g} "
                                     f"(lower {field}.replicas or {field}.{_knob(resource)}, or join a bigger cluster)")
            needs[resource] = needs.get(resource, 0.0) + amount
    for resource, amount in needs.items():
        if amount > total.get(resource, 0.0):
            roles = ", ".join(f"{f} {a[resource]:g}" for f, a in demands(cfg) if a.get(resource))
            raise PreflightError(f"placement: the run's actors need {amount:g} {_unit(resource)} together and the "
                                 f"cluster has {total.get(resource, 0.0):g} ({roles})")


def demands(cfg: FactoryConfig) -> list[tuple[str, dict[str, float]]]:
    """(placement field, resources all its actors reserve) per role the main job starts."""
    place = cfg.placement
    roles = [("placement.inference", place.inference), ("placement.sandbox", place.sandbox),
             ("placement.trainer", place.trainer), ("placement.blender", place.blender),
             ("placement.tasks", place.tasks), ("placement.service", place.service),
             ("placement.evaluator", place.evaluator)]
    if cfg.synthetic.jobs:
        roles.append(("placement.synthetic", place.synthetic))
    at_start = {"placement.inference": place.inference.replicas, "placement.sandbox": place.sandbox.replicas,
                "placement.trainer": (place.trainer.min_replicas or place.trainer.replicas) + place.trainer.spares}
    out = []
    for field, role in roles:
        replicas = at_start.get(field, 1)
        asks = {"CPU": role.num_cpus, "GPU": role.num_gpus, **role.resources}
        out.append((field, {k: v * replicas for k, v in asks.items() if v}))
    return out


def _sources(field: str, data: DataConfig, task: bool = False) -> None:
    for i, source in enumerate(data.sources):
        if source.type == "live":
            continue
        where = f"{field}.{i} ({source.name})"
        try:
            documents = _first(source, data)
            if task:
                for document in documents:
                    parse_line(document.text, f"task source {source.name}, document {document.id}")
        except FactoryError as exc:
            raise PreflightError(f"{where}: {str(exc).removeprefix(f'source {source.name}: ')}") from None
        if not documents:
            raise PreflightError(f"{where}: no documents in {', '.join(source.paths)} (an empty file, or every "
                                 "line blank)")


def _first(source: SourceConfig, data: DataConfig) -> list:
    reader = make_source(source, 0, None, data.skip_bad_lines)
    return [d for d, _ in islice(reader.read(reader.start(), 0), FIRST) if d is not None]


def _rows(field: str, path: str, parse: Callable[[dict, str], Any] | None) -> None:
    if not Path(path).is_file():
        raise PreflightError(f"{field}: no such file {path}")
    rows = list(islice(_objects(field, path), FIRST))
    if not rows:
        raise PreflightError(f"{field}: {path} has no lines")
    for where, row in rows:
        if parse is not None:
            _read(field, path, lambda: parse(row, where))


def _objects(field: str, path: str) -> Iterable[tuple[str, dict]]:
    try:
        yield from objects(path, PreflightError)
    except PreflightError as exc:
        raise PreflightError(f"{field}: {exc}") from None


def _task(row: dict, where: str) -> Any:
    from rl.tasks import task_of

    return task_of(row, where)


def _read(field: str, what: str, read: Callable[[], Any]) -> None:
    try:
        read()
    except FileNotFoundError:
        raise PreflightError(f"{field}: no such file {what}") from None
    except FactoryError as exc:
        raise PreflightError(f"{field}: {exc}") from None


def check_model(cfg: FactoryConfig, model_path: Path) -> None:
    """The model's positions against data.seq_len."""
    try:
        positions = json.loads((model_path / "config.json").read_text()).get("max_position_embeddings")
    except (OSError, ValueError):
        return  # resolve_model already checked the directory; an odd config is the engine's to judge
    if positions and cfg.data.seq_len > positions:
        raise PreflightError(f"data.seq_len ({cfg.data.seq_len}) is beyond the model's {positions} positions "
                             f"({model_path}/config.json max_position_embeddings): lower data.seq_len")


def _unit(resource: str) -> str:
    return {"CPU": "CPUs", "GPU": "GPUs"}.get(resource, f"of resource {resource}")


def _knob(resource: str) -> str:
    return {"CPU": "num_cpus", "GPU": "num_gpus"}.get(resource, f"resources.{resource}")
