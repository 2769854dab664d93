"""SyntheticGenerator: generation jobs whose kept samples feed the pre-training blend while the run goes on.

A plain class; the run makes it a threaded Ray actor when `synthetic.jobs` has any. A thread of its
own makes the jobs' batches in turn: prompts from the job's generator and template, samples from
the shared inference service under the synthetic workload class (small requests, which give way
to rollouts and evals), then the filter: with `filter: tests` a code sample is kept only if it
passes its own task's tests in the run's sandbox workers (judged outside the sandboxed process),
an answer sample only if it gives the exact answer. Kept samples not fed before (by text) are
`put` into the blender's live source `job.source`, readable from the next step it serves; a
source the generator adds runs the blend's `dedup` filter too (against every document of the
blend that went through it).

Provenance: each document's id is `synthetic/<job>/v<version>/b<batch>/<k>` and its record holds
job, version and `synthetic: true`, so `factory trace` names the job and the weight version that
made every synthetic sample in a step. Per batch, RUN_DIR/synthetic.jsonl and Ray metrics get the
job's acceptance rate, diversity (distinct samples over samples) and mean length.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import threading
import time
import zlib
from pathlib import Path
from typing import Any

from ray import method

from rl.scoring import score
from rl.tasks import task_of
from runtime.core.calls import wait
from runtime.core.cluster import HEALTH_GROUP
from runtime.core.config import FactoryConfig, SamplingConfig, SyntheticJob
from runtime.core.errors import FactoryError
from runtime.core.generation import GenerationRequest, Workload
from runtime.core.inference_client import InferenceClient
from runtime.core.jsonl import objects
from runtime.core.metrics import SyntheticMetrics
from runtime.data.sources import generator
from runtime.sandbox.workers import WorkerRunner


class SyntheticGenerator:
    def __init__(self, cfg: FactoryConfig, run_dir: str | Path | None, blender: str, name: str = "synthetic"):
        self.cfg, self.blender, self.name = cfg, blender, name
        self.path = Path(run_dir) / "synthetic.jsonl" if run_dir else None
        self.rows: list[dict[str, Any]] = []
        self.seen: set[str] = set()
        self._stop = threading.Event()
        self._lock = threading.Lock()

    def setup(self) -> dict[str, Any]:
        """Resolve every job's generator (an unknown one fails here), add missing live sources to the
        blend, and pick up where a lost generator left off (its rows and the texts it fed)."""
        cfg = self.cfg
        self.makers = {job.name: generator(job.generator, f"synthetic job {job.name}") for job in cfg.synthetic.jobs}
        self.client = InferenceClient(cfg.experiment.name, cfg.inference.request_timeout_s)
        self.runner = WorkerRunner.of_run(cfg)
        self.metrics = SyntheticMetrics(cfg.experiment.name)
        if self.path is not None and self.path.is_file():
            self.rows = [row for _, row in objects(self.path, FactoryError)]
            self.seen = {h for row in self.rows for h in row.get("hashes", [])}
        known = set(wait(self._blender().sources.remote(), cfg.data.batch_timeout_s, f"{self.blender}: sources"))
        for source in {job.source: job for job in cfg.synthetic.jobs if job.source not in known}.values():
            spec = {"name": source.source, "type": "live", "weight": source.weight, "transforms": ["dedup", "length"]}
            wait(self._blender().add_source.remote(spec),
                 cfg.data.batch_timeout_s, f"{self.blender}: add live source {source.source}")
        return {"name": self.name, "jobs": [job.name for job in cfg.synthetic.jobs]}

    def start(self) -> None:
        """Make the jobs' batches in the background until every job is done or shutdown()."""
        threading.Thread(target=self._work, name="synthetic-jobs", daemon=True).start()

    def run_batch(self, job_name: str, batch: int) -> dict[str, Any]:
        """Make, filter and feed one batch of `job_name`; returns its row."""
        job = next(j for j in self.cfg.synthetic.jobs if j.name == job_name)
        started = time.perf_counter()
        records = self._records(job, batch)
        prompts = [job.template.format(**record) for record in records]
        sampling = SamplingConfig(n=job.samples, temperature=job.temperature, max_tokens=job.max_tokens,
                                  stop=["\n"] if job.filter == "tests" else [])
        requests = [GenerationRequest(prompt=p, workload=Workload.SYNTHETIC, sampling=sampling.model_copy(
            update={"seed": zlib.crc32(f"{job.name}/{batch}/{i}".encode()) % 2**20 * 1024})) for i, p in enumerate(prompts)]
        results = self.client.generate(requests)
        texts = [(r.version, p + c.text) for p, r in zip(prompts, results) for c in r.completions]
        passed = self._passing(job, records, prompts, results)
        kept = self._new([(v, t + ("\n" if job.filter == "tests" else "")) for (v, t), ok in zip(texts, passed) if ok])
        step = self._feed(job, batch, kept)
        lengths = [len(c.token_ids) for r in results for c in r.completions]
        row = {"job": job.name, "batch": batch, "versions": sorted({r.version for r in results}), "samples": len(texts),
               "passed": sum(passed), "kept": len(kept), "acceptance": len(kept) / len(texts),
               "diversity": len({t for _, t in texts}) / len(texts), "mean_tokens": sum(lengths) / len(lengths),
               "fed_at_step": step, "seconds": round(time.perf_counter() - started, 3),
               "hashes": [_hash(t) for _, t in kept]}
        self._record(row)
        return row

    def results(self, since: int = 0) -> list[dict[str, Any]]:
        with self._lock:
            return [{k: v for k, v in row.items() if k != "hashes"} for row in self.rows[since:]]

    @method(concurrency_group=HEALTH_GROUP)
    def health(self) -> dict[str, Any]:
        with self._lock:
            return {"name": self.name, "pid": os.getpid(), "batches": len(self.rows)}

    def shutdown(self) -> None:
        self._stop.set()

    # ---- inside ------------------------------------------------------------

    def _work(self) -> None:
        made = {job.name: sum(r["job"] == job.name for r in self.rows) for job in self.cfg.synthetic.jobs}
        while not self._stop.is_set():
            todo = [job for job in self.cfg.synthetic.jobs if not job.batches or made[job.name] < job.batches]
            if not todo:
                return
            for job in todo:
                try:
                    self.run_batch(job.name, made[job.name])
                    made[job.name] += 1
                except Exception as exc:  # the thread is a boundary: say it, wait a moment, go on
                    print(f"[factory] synthetic job {job.name}, batch {made[job.name]}: {exc}", flush=True)
                    self._stop.wait(1.0)

    def _records(self, job: SyntheticJob, batch: int) -> list[dict[str, Any]]:
        make, out = self.makers[job.name], []
        for i in range(job.prompts):
            text = make(random.Random(f"{self.cfg.experiment.seed}:synthetic:{job.name}:{batch}:{i}"))
            try:
                record = json.loads(text)
            except json.JSONDecodeError:
                record = None
            out.append(record if isinstance(record, dict) else {"text": text})
        return out

    def _passing(self, job: SyntheticJob, records: list[dict], prompts: list[str], results: list) -> list[bool]:
        """Per sample, in order: kept by the job's filter."""
        if job.filter == "none":
            return [True] * sum(len(r.completions) for r in results)
        tasks = [task_of(record, f"synthetic job {job.name}") for record in records]
        rewards, _ = score(self.runner, tasks, results)
        return [bool(x > 0) for x in rewards.flatten().tolist()]

    def _new(self, texts: list[tuple[int, str]]) -> list[tuple[int, str]]:
        """Texts not fed before (by this generator, or in this batch)."""
        out = []
        for version, text in texts:
            if _hash(text) not in self.seen:
                self.seen.add(_hash(text))
                out.append((version, text))
        return out

    def _feed(self, job: SyntheticJob, batch: int, kept: list[tuple[int, str]]) -> int | None:
        if not kept:
            return None
        docs = [{"id": f"synthetic/{job.name}/v{v}/b{batch}/{k}", "text": t, "job": job.name, "version": v,
                 "synthetic": True} for k, (v, t) in enumerate(kept)]
        return wait(self._blender().put.remote(job.source, docs), self.cfg.data.batch_timeout_s,
                    f"{self.blender}: put {len(docs)} synthetic documents")

    def _record(self, row: dict[str, Any]) -> None:
        with self._lock:
            self.rows.append(row)
            if self.path is not None:
                with self.path.open("a") as f:
                    f.write(json.dumps(row) + "\n")
        self.metrics.batch(row["job"], row["samples"], row["kept"], row["acceptance"], row["diversity"],
                           row["mean_tokens"])

    def _blender(self) -> Any:
        import ray

        try:
            return ray.get_actor(self.blender)
        except ValueError:
            raise FactoryError(f"{self.blender}: not running (a replacement may be starting)") from None


def _hash(text: str) -> str:
    return hashlib.sha1(text.encode()).hexdigest()
