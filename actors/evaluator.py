"""Evaluator: runs eval suites on weight versions while training goes on.

A plain class; the run makes it a threaded Ray actor. `submit(version)` returns at once: a
thread of its own evaluates every suite of `eval.suites` on that version, pinned to it (the whole
suite is answered by that one version, even if training publishes newer ones meanwhile), under
the eval workload class of the shared inference service, so rollouts go first and the evals use
the capacity they leave. Code tasks are judged by their tests in the run's sandbox workers,
answer tasks by the exact answer, `judge` suites by a judge model (the policy, a saved version or
any HF directory) that the same service serves, grading each completion by a rubric.

Each result is a row of RUN_DIR/evals.jsonl keyed by (version, suite), a Ray metric, and a line on
the console; a suite more than `eval.regression` below its best so far is a regression, reported
in the row, on the console, as a metric, and in the run's summary. A replacement reads evals.jsonl back, so its best
scores survive it.
"""

from __future__ import annotations

import itertools
import json
import os
import queue
import re
import threading
import time
import zlib
from pathlib import Path
from typing import Any

from ray import method

from rl import procedural
from rl.scoring import answer_reward_of, score
from rl.tasks import AnswerTask, TaskFileError, task_of
from runtime.core.cluster import HEALTH_GROUP
from runtime.core.config import EvalSuite, FactoryConfig, SamplingConfig
from runtime.core.errors import FactoryError, StaleVersionError
from runtime.core.generation import GenerationRequest, Workload
from runtime.core.inference_client import InferenceClient
from runtime.core.jsonl import objects
from runtime.core.metrics import EvalMetrics
from runtime.model.versions import VERSION, version_dir
from runtime.sandbox.workers import WorkerRunner


STOP = object()


class Evaluator:
    def __init__(self, cfg: FactoryConfig, run_dir: str | Path | None, name: str = "evaluator"):
        self.cfg, self.name = cfg, name
        self.path = Path(run_dir) / "evals.jsonl" if run_dir else None
        self.rows: list[dict[str, Any]] = []
        self._queue: queue.Queue = queue.Queue()
        self._busy = 0
        self._lock = threading.Lock()

    def setup(self) -> dict[str, Any]:
        """Load every suite's tasks (a missing file fails here, before any version is evaluated)."""
        cfg = self.cfg
        self.tasks = {s.name: suite_tasks(s, cfg.experiment.seed) for s in cfg.eval.suites}
        self.client = InferenceClient(cfg.experiment.name, cfg.eval.timeout_s)
        self.runner = WorkerRunner.of_run(cfg)
        self.metrics = EvalMetrics(cfg.experiment.name)
        if self.path is not None and self.path.is_file():
            self.rows = [row for _, row in objects(self.path, FactoryError)]
        threading.Thread(target=self._work, name="evaluations", daemon=True).start()
        return {"name": self.name, "suites": {k: len(v) for k, v in self.tasks.items()}}

    def submit(self, version: int | None = None) -> None:
        """Evaluate every suite on `version` (None: the newest when it starts), in the background."""
        with self._lock:
            self._busy += 1
        self._queue.put(version)

    def evaluate(self, version: int | None = None, suites: list[str] | None = None,
                 fields: dict[str, Any] | None = None) -> list[dict[str, Any]]:
        """Evaluate now and answer the rows (on demand: `factory eval`, the Python client); `fields`
        go into each row before it is recorded (`factory eval` names the saved version it served)."""
        return [self._suite(name, version, fields or {}) for name in (suites or list(self.tasks))]

    def results(self, since: int = 0) -> list[dict[str, Any]]:
        """Rows from the `since`-th on."""
        with self._lock:
            return self.rows[since:]

    def idle(self) -> bool:
        """True when nothing submitted is waiting or running."""
        with self._lock:
            return self._busy == 0

    @method(concurrency_group=HEALTH_GROUP)
    def health(self) -> dict[str, Any]:
        with self._lock:
            return {"name": self.name, "pid": os.getpid(), "busy": self._busy, "rows": len(self.rows)}

    def shutdown(self) -> None:
        self._queue.put(STOP)

    def _work(self) -> None:
        while (version := self._queue.get()) is not STOP:
            try:
                for name in self.tasks:
                    self._suite(name, version)
            except Exception as exc:  # the thread is a boundary: reported, counted as missed in the summary
                print(f"[factory] evaluation of v{version} failed: {exc}", flush=True)
            finally:
                with self._lock:
                    self._busy -= 1

    def _suite(self, name: str, version: int | None, fields: dict[str, Any] | None = None) -> dict[str, Any]:
        suite = next(s for s in self.cfg.eval.suites if s.name == name)
        tasks, started = self.tasks[name], time.perf_counter()
        requests = [GenerationRequest(prompt=t.prompt, workload=Workload.EVAL, sampling=SamplingConfig(
            n=suite.samples, temperature=suite.temperature, max_tokens=suite.max_tokens, stop=["\n"],
            seed=zlib.crc32(f"{name}/{i}".encode()) % 2**20 * 1024)) for i, t in enumerate(tasks)]
        try:
            results = self.client.generate(requests, version=version, pin=version is None)
        except StaleVersionError:  # a newer version came before this one was started: evaluate that
            results = self.client.generate(requests, pin=True)
        judged = self._judged(suite, tasks, results) if suite.type == "judge" else self._tested(tasks, results)
        row = {"version": results[0].version, "asked": version, "suite": name, **judged, "tasks": len(tasks),
               "samples": suite.samples, "seconds": round(time.perf_counter() - started, 3), **(fields or {})}
        self._record(row)
        return row

    def _tested(self, tasks: list, results: list) -> dict[str, Any]:
        """Code tests in the sandbox workers, or the exact answer: the mean success."""
        rewards, statuses = score(self.runner, tasks, results, answer_reward_of(self.cfg.rl.reward))
        return {"score": rewards.mean().item(), "sandbox_errors": sum(st.count("sandbox_error") for st in statuses)}

    def _judged(self, suite: EvalSuite, tasks: list, results: list) -> dict[str, Any]:
        """Each completion graded 0..10 by the judge model, through the same service; the score is the
        mean grade / 10. The grade is read from the judge's answer here, outside any model."""
        judge, pinned = self._judge_model(suite.judge), results[0].version
        requests = [GenerationRequest(prompt=suite.rubric.format(prompt=t.prompt, completion=c.text), workload=Workload.EVAL,
                                      sampling=SamplingConfig(temperature=0.0, max_tokens=8))
                    for t, r in zip(tasks, results) for c in r.completions]
        answers = self.client.generate(requests, version=pinned if judge is None else None, model=judge)
        grades = [grade(a.completions[0].text) for a in answers]
        return {"score": sum(g or 0.0 for g in grades) / (10 * len(grades)), "unjudged": grades.count(None),
                "judge": suite.judge, "judge_servers": sorted({a.server for a in answers})}

    def _judge_model(self, judge: str) -> str | None:
        """None for the policy itself (the version evaluated); else an HF model directory."""
        if judge == "policy":
            return None
        if VERSION.match(judge):
            if self.path is None:
                raise FactoryError(f"judge {judge}: a saved version needs the run directory")
            return str(version_dir(self.path.parent, int(judge[1:])))
        return judge

    def _record(self, row: dict[str, Any]) -> None:
        with self._lock:
            earlier = [r for r in self.rows if r["suite"] == row["suite"]]
            best = max(earlier, key=lambda r: r["score"], default=None)
            if best is not None and best["score"] - row["score"] > self.cfg.eval.regression:
                row["regression"] = {"best": best["score"], "best_version": best["version"]}
            self.rows.append(row)
            if self.path is not None:
                with self.path.open("a") as f:
                    f.write(json.dumps(row) + "\n")
        self.metrics.scored(row["suite"], row["score"], "regression" in row)
        message = f"eval {row['suite']} on v{row['version']}: {row['score']:.3f}"
        if "regression" in row:
            message = (f"regression: {message}, down from {best['score']:.3f} on v{best['version']} "
                       f"(more than eval.regression={self.cfg.eval.regression})")
        print(f"[factory] {message}", flush=True)


def grade(text: str) -> float | None:
    """The first number of a judge's answer, clamped to 0..10; None when it has none."""
    found = re.search(r"\d+(?:\.\d+)?", text)
    return None if found is None else min(10.0, max(0.0, float(found.group())))


def suite_tasks(suite: EvalSuite, seed: int) -> list:
    """The suite's tasks: held-out procedural ones (drawn apart from the training stream) or a file's first ones."""
    if suite.type == "procedural":
        return procedural.tasks(seed, suite.tasks, prefix=f"eval-{suite.name}")
    rows = itertools.islice(objects(suite.path, TaskFileError), suite.tasks)
    if suite.type == "judge":  # {prompt} lines: only the prompt is used
        return [AnswerTask(str(row.get("id", where)), str(_prompt(row, where)), "") for where, row in rows]
    return [task_of(row, where) for where, row in rows]


def _prompt(row: dict, where: str) -> str:
    if "prompt" not in row:
        raise TaskFileError(f"{where}: a judge suite's line needs a prompt (keys: {', '.join(sorted(row))})")
    return row["prompt"]
