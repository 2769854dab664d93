"""Claim: the sandbox pool's isolation costs little throughput against unisolated subprocesses.

Same programs, same concurrency: the pool (2 bubblewrap workers x 4 slots, Ray
actors, every isolation guarantee of runtime/sandbox.py) against plain
`python -I -S` subprocesses run by 8 threads with no isolation and no limits.
Reports executions/s and p50/p99 latency of each.

    python bench/sandbox.py [--quick]

The last stdout line is one JSON document with both figures and the ratio.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import ray

from runtime.config import load_config
from runtime.sandbox import Execution, Status
from runtime.sandbox_pool import SandboxPool

WORKERS, SLOTS = 2, 4
PROGRAMS = [
    "print(sum(i * i for i in range(2000)))",
    "def fib(n):\n    return n if n < 2 else fib(n - 1) + fib(n - 2)\nprint(fib(15))",
    "import json\nprint(json.dumps(sorted({'b': 1, 'a': 2}.items())))",
    "assert ''.join(reversed('abc')) == 'cba'\nprint('ok')",
]


def percentile(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))]


def measure(run_one, programs: list[str], concurrency: int) -> dict:
    latencies: list[float] = []

    def timed(code: str) -> str:
        start = time.perf_counter()
        out = run_one(code)
        latencies.append(time.perf_counter() - start)
        return out

    start = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as threads:
        outputs = list(threads.map(timed, programs))
    elapsed = time.perf_counter() - start
    return {"executions_per_s": round(len(programs) / elapsed, 1), "p50_ms": round(1000 * statistics.median(latencies), 2),
            "p99_ms": round(1000 * percentile(latencies, 0.99), 2), "outputs": outputs}


def plain(code: str) -> str:
    return subprocess.run([sys.executable, "-I", "-S", "-c", code], capture_output=True, text=True, timeout=30).stdout


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer executions, under a minute")
    args = parser.parse_args()
    n = 200 if args.quick else 1000
    programs = [PROGRAMS[i % len(PROGRAMS)] for i in range(n)]
    ray.init(address="local", num_cpus=8, include_dashboard=False, log_to_driver=False)
    cfg = load_config("default", ["experiment.name=bench-sandbox", f"placement.sandbox.replicas={WORKERS}",
                                  f"sandbox.concurrency={SLOTS}"])
    pool = SandboxPool(cfg).start()
    try:
        def sandboxed(code: str) -> str:
            result = pool.execute(Execution(code))
            assert result.status == Status.OK, result
            return result.stdout

        measure(sandboxed, programs[:20], WORKERS * SLOTS)
        ours = measure(sandboxed, programs, WORKERS * SLOTS)
    finally:
        pool.shutdown()
        ray.shutdown()
    base = measure(plain, programs, WORKERS * SLOTS)
    assert ours.pop("outputs") == base.pop("outputs"), "both must compute the same thing"
    ratio = round(ours["executions_per_s"] / base["executions_per_s"], 3)
    print(f"pool (bubblewrap, {WORKERS}x{SLOTS}): {ours}")
    print(f"plain subprocesses ({WORKERS * SLOTS} threads): {base}")
    print(json.dumps({"bench": "sandbox", "quick": args.quick, "executions": n, "concurrency": WORKERS * SLOTS,
                      "pool": ours, "plain_subprocess": base, "ratio": ratio}))


if __name__ == "__main__":
    main()
