"""Claim: publishing a weight version once (one `ray.put`, every server reloads from that copy) beats
sending the weights to each server separately, and approaches the memcpy floor.

For K servers (real vLLM InferenceServer actors) and models of several sizes:
- broadcast: one `ray.put` of the state as numpy arrays (`runtime.model.weights.shareable`,
  read zero-copy by every server), then `load_weights(version, ref)` on the K servers
  at once: what WeightBroadcaster.publish does; also shown with torch tensors in the
  object store, which every server copies when it reads them;
- per-server: `load_weights(version, state)` with the state passed by value to
  each server, so Ray serialises it once per server;
- floor: K x the time to memcpy the state once in this process (each engine
  needs its own copy in its own memory); on a GPU, to copy it from host memory into
  GPU memory (every server there shares the GPU, a quarter of it each).
Times are medians of 5 publishes after 2 warm-up ones, from the call until every server serves it, each split
into its phases (put, call, copy, wait: see Publisher). The rows over K measure the transport
(broadcast against per-server) on servers that load with copies only (`inference.weight_load=plain`:
F.linear, not batch-invariant; the lightest load, and 4 servers of 86M fit in 24 GiB that way);
at K = 1 each way of loading is measured too: `direct_k1` (the default: the copies, then the CPU
oneDNN matmuls packed again: batch-invariant) and `vllm_reload_k1` (vLLM's own reload, the way
before both). --quick: the ~10M model at K = 1, 2.

    python bench/weights.py [--quick]

The last stdout line is one JSON document with the figures and the ratios.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import ray
import torch
from transformers import AutoConfig

from actors.inference_server import InferenceServer
from runtime.core.cluster import verbose
from runtime.core.config import BuildConfig, load_config
from runtime.model.build import count_parameters, ensure_built, init_model
from runtime.model.weights import shareable
from device import DEVICE, GPUS, device_name
from quiet import process_trees, settle

SIZES = {"small": BuildConfig(preset="small"),
         "base": BuildConfig(preset="small", vocab_size=2048, hidden_size=768, intermediate_size=2048, num_layers=12,
                             num_heads=12)}


def median_time(fn, repeats: int = 3) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def memcpy_s(state: dict) -> float:
    """One copy of every tensor into memory already allocated and touched (a copy, not page faults)."""
    targets = {name: torch.empty_like(t, device=DEVICE).copy_(t) for name, t in state.items()}

    def copy() -> None:
        for name, t in state.items():
            targets[name].copy_(t)
        if DEVICE == "cuda":
            torch.cuda.synchronize()
    return median_time(copy)


def start_servers(model: Path, k: int, mode: str) -> list:
    cfg = load_config("default", [f"model.path={model}", "inference.max_model_len=128", "inference.cpu_bind=nobind",
                                  "inference.kv_cache_gb=0.25", f"inference.weight_load={mode}",
                                  # a load is the same copies either way, and compiling every server
                                  # the bench starts would take minutes of a lent GPU (off on CPU anyway)
                                  "inference.compile=false"])
    actor = ray.remote(InferenceServer).options(num_cpus=0.5, num_gpus=0.25 if DEVICE == "cuda" else 0,
                                                max_concurrency=8)
    servers = [actor.remote(cfg.inference, str(model), f"bench/inference/{i}", i) for i in range(k)]
    ray.get([s.setup.remote() for s in servers], timeout=600)
    return servers


def stop_servers(servers: list) -> None:
    """Stop them and wait for their processes to exit: the next memcpy floor is timed on quiet cores."""
    processes = process_trees([h["pid"] for h in ray.get([s.health.remote() for s in servers], timeout=60)])
    ray.get([s.shutdown.remote() for s in servers], timeout=60)
    for s in servers:
        ray.kill(s)
    settle(processes)


class Publisher:
    """Publishes versions and keeps where each one's time went: `put` (the state into the object
    store), `copy` (the slowest server's copy into its engine), `wait` (its wait for requests in
    flight: none here), and `call` (the rest: the Ray calls and the servers' reads of the object)."""

    def __init__(self, state: dict):
        self.state, self.version, self.phases = state, 0, []

    def broadcast(self, servers: list, torch_tensors: bool = False) -> None:
        start = time.perf_counter()
        ref = ray.put(self.state if torch_tensors else shareable(self.state))
        put = time.perf_counter() - start
        self._load(servers, ref, start, put)

    def per_server(self, servers: list) -> None:
        self._load(servers, self.state, time.perf_counter(), 0.0)

    def _load(self, servers: list, weights, start: float, put: float) -> None:
        self.version += 1
        ray.get([s.load_weights.remote(self.version, weights) for s in servers], timeout=600)
        total = time.perf_counter() - start
        loads = [h["last_load"] for h in ray.get([s.health.remote() for s in servers], timeout=60)]
        copy, wait = max(x["copy_s"] for x in loads), max(x["wait_s"] for x in loads)
        self.phases.append({"total_s": total, "put_s": put, "call_s": total - put - copy - wait, "copy_s": copy,
                            "wait_s": wait})

    def median(self, publish, repeats: int = 5, warmup: int = 2) -> dict[str, float]:
        """The median publish after `warmup` ones: a run publishes every step, so the object store's
        memory it reuses is already mapped in every process (the first publishes page-fault it in)."""
        for _ in range(warmup):
            publish()
        self.phases = []
        for _ in range(repeats):
            publish()
        middle = sorted(self.phases, key=lambda p: p["total_s"])[len(self.phases) // 2]
        return {name: round(value, 4) for name, value in middle.items()}


def measure(model: Path, k_values: list[int]) -> dict:
    state = init_model(AutoConfig.from_pretrained(model), seed=1).state_dict()
    floor_one = memcpy_s(state)
    publisher = Publisher(state)
    k1 = {}
    for mode in ("reload", "direct"):
        before = start_servers(model, 1, mode)
        k1[mode] = publisher.median(lambda: publisher.broadcast(before))
        stop_servers(before)
        print(f"  weight_load={mode}, K=1: {k1[mode]['total_s']:.3f}s (copy {k1[mode]['copy_s']:.3f})", flush=True)
    servers = start_servers(model, max(k_values), "plain")
    rows = []
    for k in k_values:
        targets = servers[:k]
        b = publisher.median(lambda: publisher.broadcast(targets))
        bt = publisher.median(lambda: publisher.broadcast(targets, torch_tensors=True))
        p = publisher.median(lambda: publisher.per_server(targets))
        floor = k * floor_one
        rows.append({"servers": k, "broadcast": b, "broadcast_torch_tensors": bt, "per_server": p,
                     "memcpy_floor_s": round(floor, 4),
                     "per_server_over_broadcast": round(p["total_s"] / b["total_s"], 2),
                     "broadcast_over_floor": round(b["total_s"] / floor, 2)})
        print(f"  K={k}: broadcast {b['total_s']:.3f}s (put {b['put_s']:.3f}, call {b['call_s']:.3f}, "
              f"copy {b['copy_s']:.3f}), per-server {p['total_s']:.3f}s, floor {floor:.4f}s", flush=True)
    stop_servers(servers)
    direct = {**k1["direct"], "over_floor": round(k1["direct"]["total_s"] / floor_one, 2)}
    return {"vllm_reload_k1": k1["reload"], "direct_k1": direct, "rows": rows}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="the ~10M model, K = 1 and 2, under a minute")
    args = parser.parse_args()
    sizes = ["small"] if args.quick else ["small", "base"]
    # 3 GiB of object store: puts walk fresh store memory before reusing freed memory (../shared/FACTS.md), and
    # tmpfs pages count as the node's memory: with the default store (30% of memory) the 86M rows at K = 4
    # ran the node out of memory (4 servers of ~1.5 GiB each besides)
    ray.init(address="local", num_cpus=8, num_gpus=GPUS, include_dashboard=False,
             log_to_driver=verbose(), object_store_memory=3 << 30)
    cache = Path(tempfile.mkdtemp(prefix="bench-weights-"))
    results = []
    for name in sizes:
        model = ensure_built(SIZES[name], 0, cache)
        params = count_parameters(model)
        print(f"{name}: {params / 1e6:.1f}M parameters", flush=True)
        k_values = [1, 2] if args.quick else [1, 2, 4]
        results.append({"model": name, "params": params, "bytes": params * 4, **measure(model, k_values)})
    ray.shutdown()
    print(json.dumps({"bench": "weights", "quick": args.quick,
                      "device": device_name(), "results": results,
                      "goals": goals(results)}))


def goals(results: list[dict]) -> dict:
    """The issue's goals: <= 3x the memcpy floor at K = 1 (the default load, and `plain`), >= 2x faster
    than per-server at K = 4."""
    found = {}
    for result in results:
        rows = {row["servers"]: row for row in result["rows"]}
        found[f"{result['model']}_k1_over_floor"] = result["direct_k1"]["over_floor"]
        found[f"{result['model']}_plain_k1_over_floor"] = rows[1]["broadcast_over_floor"]
        if 4 in rows:
            found[f"{result['model']}_k4_per_server_over_broadcast"] = rows[4]["per_server_over_broadcast"]
    return found


if __name__ == "__main__":
    main()
