"""Claim: a lost trainer shard costs seconds, not a restart: the survivors keep their processes, a
replacement (or a warm spare) takes the lost shard's state from a peer through the object store,
and the interrupted step is redone; Ray Train restarts the whole worker group from its last
checkpoint instead.

Ours: TrainerGroup (2 gloo shards, tiny model, the real blender), SIGKILL to shard 1 just before a
step; seconds from the kill to that step committed: with a warm spare taking the rank
(`placement.trainer.spares=1`), and without one (killed again before the next spare is warm):
then the survivor carries the lost shard's part (the same maths, by accumulation) while a fresh
actor warms up, and the replacement joins before a later step. Also reported: seconds from that
kill until the group is whole again (steps go on meanwhile), and each recovery's re-form time.
Baseline: Ray Train `TorchTrainer` (2 gloo workers, same model, batch and sequence length, DDP via
`prepare_model`, a checkpoint reported every step, `FailureConfig(max_failures=3)`, Ray's
defaults otherwise); SIGKILL to worker 1's process; seconds from the kill to the next step that
rank 0 completes after the group restarted from the checkpoint.

    python bench/recovery.py [--quick]

The last stdout line is one JSON document with the figures (median over kills) and the ratio.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import tempfile
import threading
import time
from pathlib import Path

import ray

SEQ, BATCH = 64, 8


def ours(model: Path, root: Path, kills: int) -> dict:
    """One group with one warm spare; each round kills shard 1 twice: first with the spare warm (it
    takes the rank), then at once again, before the new spare is warm (the group goes on smaller)."""
    from actors.data_blender import DataBlender
    from runtime.core.config import load_config
    from runtime.pools.trainer_group import TrainerGroup
    from runtime.supervision.events import EventLog
    from runtime.supervision.role import Role
    from runtime.supervision.supervisor import Supervisor

    name = "bench-recovery"
    cfg = load_config("default", [f"model.path={model}", f"experiment.name={name}", f"experiment.run_dir={root}",
                                  f"data.seq_len={SEQ}", f"data.batch_size={BATCH}", "train.total_steps=1000",
                                  "placement.trainer.spares=1", "supervision.max_replacements=100"])
    sup = Supervisor(cfg.supervision, EventLog(root, name, say=lambda _: None))
    blender = f"{name}/blender/0"
    sup.spawn(Role("blender", 0, blender, DataBlender, (cfg.data, 0, str(root), str(model)), {"max_concurrency": 16},
                   lambda h: ray.get(h.setup.remote(True), timeout=120)))
    ray.get(sup.handle(blender).setup.remote(), timeout=120)
    group = TrainerGroup(cfg, model, sup).start()
    seconds: dict[str, list[float]] = {"spare": [], "fresh": [], "whole": []}
    step = 0
    try:
        for _ in range(kills):
            while len(group.members) < 2 or len(group.spares) < 1:  # whole, with a warm spare
                ray.get(list(group.spares.values()), timeout=120)
                group.train_step(blender, step)
                step += 1
            ray.get(list(group.spares.values()), timeout=120)
            for kind in ("spare", "fresh"):
                for _ in range(2):
                    group.train_step(blender, step)
                    step += 1
                pid = ray.get(group.shards[1].health.remote(), timeout=10)["pid"]
                killed = time.perf_counter()
                os.kill(pid, signal.SIGKILL)
                group.train_step(blender, step)
                seconds[kind].append(time.perf_counter() - killed)
                step += 1
            while len(group.members) < 2:  # steps go on (smaller) until the replacement has joined
                group.train_step(blender, step)
                step += 1
            seconds["whole"].append(time.perf_counter() - killed)
    finally:
        group.shutdown()
        sup.stop(5)
    return {**seconds, "recoveries": group.recoveries}


def train_loop(config: dict) -> None:
    """One Ray Train worker: DDP over the tiny model, a checkpoint every step, a line per step."""
    import torch
    import ray.train
    import ray.train.torch
    from transformers import AutoModelForCausalLM

    torch.set_num_threads(1)
    rank = ray.train.get_context().get_world_rank()
    model = ray.train.torch.prepare_model(AutoModelForCausalLM.from_pretrained(config["model"], dtype=torch.float32))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    start, checkpoint = 0, ray.train.get_checkpoint()
    if checkpoint:
        with checkpoint.as_directory() as d:
            state = torch.load(Path(d) / "state.pt", weights_only=False)
        model.module.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        start = state["step"] + 1
    for step in range(start, config["steps"]):
        ids = torch.randint(3, 500, (BATCH // 2, SEQ), generator=torch.Generator().manual_seed(step * 2 + rank))
        loss = model(ids, labels=ids).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        with tempfile.TemporaryDirectory() as d:
            if rank == 0:
                torch.save({"model": model.module.state_dict(), "optimizer": optimizer.state_dict(), "step": step},
                           Path(d) / "state.pt")
            ray.train.report({"step": step}, checkpoint=ray.train.Checkpoint.from_directory(d) if rank == 0 else None)
        with open(config["log"], "a") as f:
            f.write(json.dumps({"step": step, "rank": rank, "pid": os.getpid(), "time": time.time()}) + "\n")


def ray_train(model: Path, root: Path, kills: int) -> dict:
    from ray.train import FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    log = root / "steps.jsonl"
    log.touch()
    seconds: list[float] = []
    killer = threading.Thread(target=kill_workers, args=(log, kills, seconds), daemon=True)
    killer.start()
    trainer = TorchTrainer(train_loop, train_loop_config={"model": str(model), "steps": 2 + 3 * kills, "log": str(log)},
                           scaling_config=ScalingConfig(num_workers=2, resources_per_worker={"CPU": 1}),
                           run_config=RunConfig(storage_path=str(root / "ray-train"), name="recovery",
                                                failure_config=FailureConfig(max_failures=kills + 2)))
    trainer.fit()
    killer.join(timeout=30)
    return {"seconds": seconds}


def kill_workers(log: Path, kills: int, seconds: list[float]) -> None:
    """After rank 1 logs its 2nd step since the last restart, SIGKILL it; time to the first step that
    rank 0 of the restarted group (a new process) completes."""
    seen = 0
    for _ in range(kills):
        rows = wait_rows(log, lambda rows: sum(r["rank"] == 1 for r in rows[seen:]) >= 2)
        victim = [r for r in rows if r["rank"] == 1][-1]["pid"]
        old = {r["pid"] for r in rows if r["rank"] == 0}
        killed = time.time()
        os.kill(victim, signal.SIGKILL)
        rows = wait_rows(log, lambda rows: any(r["rank"] == 0 and r["pid"] not in old for r in rows))
        seconds.append(next(r["time"] for r in rows if r["rank"] == 0 and r["pid"] not in old) - killed)
        seen = len(rows)


def wait_rows(log: Path, done, timeout_s: float = 300) -> list[dict]:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        rows = [json.loads(line) for line in log.read_text().splitlines() if line.strip()]
        if done(rows):
            return rows
        time.sleep(0.05)
    raise TimeoutError(f"{log}: the condition did not hold within {timeout_s}s")


def main() -> None:
    from runtime.core.cluster import verbose
    from runtime.core.config import BuildConfig
    from runtime.model.build import ensure_built

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="one kill each, under a minute")
    args = parser.parse_args()
    kills = 1 if args.quick else 3
    root = Path(tempfile.mkdtemp(prefix="bench-recovery-"))
    model = ensure_built(BuildConfig(), 0, root / "models")
    ray.init(address="local", num_cpus=8, include_dashboard=False, log_to_driver=verbose())
    mine = ours(model, root / "ours", kills)
    baseline = ray_train(model, root, kills)
    ray.shutdown()
    ours_s, spare_s, whole_s, ray_s = (statistics.median(s) for s in (mine["fresh"], mine["spare"], mine["whole"],
                                                                      baseline["seconds"]))
    phases = [{k: round(r[k], 3) if isinstance(r[k], float) else r[k] for k in ("seconds", "probe", "shards") if k in r}
              | {"event": "lost" if "lost" in r else "joined"} for r in mine["recoveries"]]
    print(f"kill -> next committed step: ours {ours_s:.2f} s without a spare (whole again after {whole_s:.2f} s), "
          f"{spare_s:.2f} s with a warm spare; Ray Train TorchTrainer {ray_s:.2f} s")
    print(json.dumps({"bench": "recovery", "quick": args.quick, "kills": kills,
                      "ours_s": round(ours_s, 3), "ours_spare_s": round(spare_s, 3), "ray_train_s": round(ray_s, 3),
                      "ours_whole_again_s": round(whole_s, 3), "ours_recoveries": phases,
                      "ratio": round(ray_s / ours_s, 2), "ratio_spare": round(ray_s / spare_s, 2)}))


if __name__ == "__main__":
    main()
