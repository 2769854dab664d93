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
  needs its own copy in its own memory).
Times are medians of 3 publishes, from the call until every server serves it.
K = 4 runs for the ~10M model only: four engines of the ~85M model beside the
per-server copies exceed this machine's 24 GiB.

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
from runtime.core.config import BuildConfig, load_config
from runtime.model.build import count_parameters, ensure_built, init_model
from runtime.model.weights import shareable

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
    targets = {name: torch.empty_like(t).copy_(t) for name, t in state.items()}
    return median_time(lambda: [targets[name].copy_(t) for name, t in state.items()])


def start_servers(model: Path, k: int) -> list:
    cfg = load_config("default", [f"model.path={model}", "inference.max_model_len=128", "inference.cpu_bind=nobind"])
    actor = ray.remote(InferenceServer).options(num_cpus=0.5, max_concurrency=8)
    servers = [actor.remote(cfg.inference, str(model), f"bench/inference/{i}", i) for i in range(k)]
    ray.get([s.setup.remote() for s in servers], timeout=600)
    return servers


def measure(model: Path, k_values: list[int]) -> list[dict]:
    state = init_model(AutoConfig.from_pretrained(model), seed=1).state_dict()
    servers = start_servers(model, max(k_values))
    floor_one = memcpy_s(state)
    version = iter(range(1, 10_000))
    rows = []
    for k in k_values:
        targets = servers[:k]

        def broadcast():
            ref, v = ray.put(shareable(state)), next(version)
            ray.get([s.load_weights.remote(v, ref) for s in targets], timeout=600)

        def broadcast_tensors():
            ref, v = ray.put(state), next(version)
            ray.get([s.load_weights.remote(v, ref) for s in targets], timeout=600)

        def per_server():
            v = next(version)
            ray.get([s.load_weights.remote(v, state) for s in targets], timeout=600)

        b, p, bt = median_time(broadcast), median_time(per_server), median_time(broadcast_tensors)
        rows.append({"servers": k, "broadcast_s": round(b, 4), "broadcast_torch_tensors_s": round(bt, 4),
                     "per_server_s": round(p, 4),
                     "memcpy_floor_s": round(k * floor_one, 4), "per_server_over_broadcast": round(p / b, 2),
                     "broadcast_over_floor": round(b / (k * floor_one), 2)})
        print(f"  K={k}: broadcast {b:.3f}s, per-server {p:.3f}s, floor {k * floor_one:.3f}s", flush=True)
    for s in servers:
        ray.kill(s)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="the ~10M model, K = 1 and 2, under a minute")
    args = parser.parse_args()
    sizes = ["small"] if args.quick else ["small", "base"]
    ray.init(address="local", num_cpus=8, include_dashboard=False, log_to_driver=False)
    cache = Path(tempfile.mkdtemp(prefix="bench-weights-"))
    results = []
    for name in sizes:
        model = ensure_built(SIZES[name], 0, cache)
        params = count_parameters(model)
        print(f"{name}: {params / 1e6:.1f}M parameters", flush=True)
        k_values = [1, 2] if args.quick or name == "base" else [1, 2, 4]
        results.append({"model": name, "params": params, "bytes": params * 4, "rows": measure(model, k_values)})
    ray.shutdown()
    print(json.dumps({"bench": "weights", "quick": args.quick, "results": results}))


if __name__ == "__main__":
    main()
