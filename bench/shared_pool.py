"""Claim: rollouts, evals and synthetic generation share one inference service, and the rollouts
barely notice: rollout throughput together is >= 0.9 of alone, and the service does more useful
work in total than with rollouts alone.

One InferenceService (2 vLLM servers, the tiny model) in real Ray actors. The rollout loop is the
shape of synchronous RL: a burst of prompts x 8 samples under the rollout class, then a pause while
"the trainers train" (as long as a burst took alone; the servers idle then, as GPU servers do while
the trainer GPUs work). Alone: just that loop. Together: the same loop while an eval loop (pinned
to the newest version, prompts x 4 samples, eval class) and a synthetic loop (batches of single
samples, synthetic class) run without pause. Figures: rollout tokens/s over the loop's wall time
(bursts and pauses), total tokens/s of every class, and per class the mean wait of a chunk and the
share of capacity it held (from the service's own stats). All sequences run to a fixed length.

    python bench/shared_pool.py [--quick]

The last stdout line is one JSON document.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import threading
import time
from pathlib import Path

import ray

from runtime.core.cluster import remote_class, verbose
from runtime.core.config import BuildConfig, SamplingConfig, load_config
from runtime.core.generation import GenerationRequest, Workload
from runtime.core.inference_client import InferenceClient, service_name
from runtime.model.build import ensure_built
from runtime.pools.scheduling import class_rates
from serve.inference_service import InferenceService

EXPERIMENT = "bench-shared"


def requests(workload: Workload, count: int, n: int, tokens: int, tag: str) -> list[GenerationRequest]:
    sampling = SamplingConfig(n=n, max_tokens=tokens, ignore_eos=True, temperature=1.0)
    return [GenerationRequest(prompt=f"def {tag}{i}(x):\n    return", workload=workload, sampling=sampling)
            for i in range(count)]


def tokens_of(results) -> int:
    return sum(len(c.token_ids) for r in results for c in r.completions)


def rollout_loop(client: InferenceClient, steps: int, prompts: int, pause_s: float | None) -> dict:
    """`steps` bursts of `prompts` x 8 samples, each followed by `pause_s` (None: the burst's own time)."""
    bursts, tokens, started = [], 0, time.perf_counter()
    for step in range(steps):
        begun = time.perf_counter()
        tokens += tokens_of(client.generate(requests(Workload.ROLLOUT, prompts, 8, 16, f"r{step}_")))
        bursts.append(time.perf_counter() - begun)
        time.sleep(bursts[-1] if pause_s is None else pause_s)
    wall = time.perf_counter() - started
    return {"tokens": tokens, "wall_s": wall, "tokens_per_s": tokens / wall, "burst_s": statistics.median(bursts)}


def background(client: InferenceClient, stop: threading.Event, workload: Workload, prompts: int, n: int,
               tokens: int, pin: bool, done: dict) -> threading.Thread:
    def loop():
        round_ = 0
        while not stop.is_set():
            results = client.generate(requests(workload, prompts, n, tokens, f"{workload.key}{round_}_"), pin=pin)
            done[workload.key] = done.get(workload.key, 0) + tokens_of(results)
            round_ += 1

    thread = threading.Thread(target=loop, daemon=True)
    thread.start()
    return thread


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer, smaller bursts: under a minute")
    args = parser.parse_args()
    steps, prompts = (5, 64) if args.quick else (10, 64)
    ray.init(address="local", num_cpus=8, include_dashboard=False, log_to_driver=verbose())
    model = ensure_built(BuildConfig(preset="tiny"), 0, Path(tempfile.mkdtemp(prefix="bench-models-")))
    cfg = load_config("default", [f"model.path={model}", f"experiment.name={EXPERIMENT}"])
    service = remote_class(InferenceService).options(name=service_name(EXPERIMENT), max_concurrency=64).remote(
        cfg, str(model), None, None, service_name(EXPERIMENT))
    ray.get(service.setup.remote(), timeout=300)
    client = InferenceClient(EXPERIMENT, timeout_s=300)
    try:
        client.generate(requests(Workload.ROLLOUT, 8, 8, 4, "warm"))
        alone = rollout_loop(client, steps, prompts, None)
        print(f"alone: rollouts {alone['tokens_per_s']:.0f} tokens/s (burst {alone['burst_s']:.2f} s)", flush=True)

        before, stop, done = client.stats(), threading.Event(), {}
        others = [background(client, stop, Workload.EVAL, prompts, 4, 16, True, done),
                  background(client, stop, Workload.SYNTHETIC, 16, 1, 16, False, done)]
        together = rollout_loop(client, steps, prompts, alone["burst_s"])
        stop.set()
        classes = class_rates(before, client.stats())
        for thread in others:
            thread.join(timeout=120)
    finally:
        ray.get(service.shutdown.remote(), timeout=60)
        ray.kill(service)
    useful = together["tokens"] + sum(done.values())
    total = useful / together["wall_s"]
    print(f"together: rollouts {together['tokens_per_s']:.0f} tokens/s, all classes {total:.0f} tokens/s", flush=True)
    for name, row in classes.items():
        print(f"  {name:10s} wait {row['wait_s']:.3f} s/chunk  share {row['share']:.2f}  {row['tokens']} tokens", flush=True)
    print(json.dumps({
        "bench": "shared_pool", "quick": args.quick, "steps": steps, "prompts": prompts,
        "rollout_tokens_per_s_alone": round(alone["tokens_per_s"], 1),
        "rollout_tokens_per_s_together": round(together["tokens_per_s"], 1),
        "rollout_fraction_of_alone": round(together["tokens_per_s"] / alone["tokens_per_s"], 3),
        "total_tokens_per_s_together": round(total, 1),
        "total_over_rollouts_alone": round(total / alone["tokens_per_s"], 3),
        "tokens_together": {"rollout": together["tokens"], **done},
        "classes": {k: {m: round(v, 4) for m, v in row.items()} for k, row in classes.items()},
        "goals": {"rollout_fraction_of_alone": ">= 0.9", "total_over_rollouts_alone": "> 1"},
    }))


if __name__ == "__main__":
    main()
