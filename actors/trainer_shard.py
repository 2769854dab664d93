"""TrainerShard: one data-parallel replica of model and optimiser in a torch.distributed group.

A plain class; `runtime/pools/trainer_group.py` spawns N of them as Ray actors, does
the rendezvous (rank 0 picks a free port on its node: no fixed ports) and steps
them together. DDP keeps the replicas identical: gradients are all-reduced
(gloo on CPU, nccl on GPU) before every AdamW step. A shard trains on its GPU when
Ray gave it one (`placement.trainer.num_gpus`), else on the CPU; whatever leaves the
shard (published weights, its state for a replacement, checkpoints) is in host memory.

Each shard pulls its own samples of a step from the DataBlender, trains on them
with the packed-sequence loss (attention and positions stop at piece
boundaries; SDPA attention, which honours the block mask), and reports the loss
of every sample back to the blender, so `factory trace` can list the
highest-loss documents of a step.

A step's data is cut into `parts`, one per configured replica, whatever the
number of processes: a shard trains on its parts one after another, their
gradients accumulated locally and synced once. While the group runs smaller
(a lost shard not yet replaced), a survivor holds two parts and the maths of
the step does not change: each part's loss is scaled by processes / parts, so
the all-reduced gradient is still the mean over parts (exactly, bit for bit,
when the scale is a power of two: 2 parts on 1 process).
"""

from __future__ import annotations

import math
import socket
import time
from pathlib import Path
from typing import Any

from ray import method

from runtime.core.cluster import HEALTH_GROUP
from runtime.core.config import DPOConfig, RLConfig, SFTConfig, TrainConfig


class TrainerShard:
    """Constructed with its section, `train`; each post-training step brings the settings of its stage
    (and RL steps the algorithm, whose advantages and loss it applies: the shard imports none)."""

    def __init__(self, train: TrainConfig, model_path: str, rank: int, world_size: int, name: str):
        self.train = train
        self.model_path = model_path
        self.rank = rank
        self.world_size = world_size
        """Processes in the group now."""
        self.data_parts = world_size
        """Parts a step's data is cut into: the configured replicas, fixed for the run."""
        self.parts = [rank]
        """The parts this shard trains on (two or more while the group runs smaller)."""
        self.name = name
        self.step = 0

    def rendezvous(self) -> str:
        """init_method for the group: this node's address and a port free right now."""
        import ray

        with socket.socket() as s:
            s.bind(("", 0))
            port = s.getsockname()[1]
        return f"tcp://{ray.util.get_node_ip_address()}:{port}"

    def setup(self, init_method: str, resume_from: str | None = None, state: dict | None = None,
              world_size: int | None = None, parts: list[int] | None = None) -> dict[str, Any]:
        """Load the model (a saved run directory with `resume_from`; a peer's `state()`, passed as its
        object ref so Ray hands it over, for a replacement), then join the group (of `world_size`
        processes, training on `parts` of each step, when fewer shards than parts start)."""
        if world_size is not None:
            self.world_size, self.parts = world_size, list(parts)
        self.warm(resume_from)
        if resume_from:
            self._load_state(Path(resume_from))
        if state:
            self.load_state(state)
        self._join(init_method)
        return {"name": self.name, "rank": self.rank, "backend": self.backend, "device": str(self.device),
                "step": self.step}

    def warm(self, source: str | None = None) -> dict[str, Any]:
        """Import torch and load the model outside any group: what a spare does before it is needed."""
        import torch
        from transformers import AutoModelForCausalLM

        from runtime.core.metrics import TrainerMetrics

        torch.set_num_threads(1)
        self.metrics = TrainerMetrics(self.name)
        self.device = shard_device()
        self.model = AutoModelForCausalLM.from_pretrained(source or self.model_path, attn_implementation="sdpa",
                                                          dtype=torch.float32).to(self.device)
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=self.train.lr, betas=self.train.betas,
                                           weight_decay=self.train.weight_decay)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, self._lr_factor)
        return {"name": self.name, "warm": True}

    def regroup(self, init_method: str, rank: int, world_size: int, state: dict | None = None,
                parts: list[int] | None = None) -> dict[str, Any]:
        """Leave the broken group and join a re-formed one as `rank` of `world_size`, training on
        `parts` of each step; with `state` (a peer's `state()`), take the peer's parameters,
        optimizers, step and RNG first."""
        import torch.distributed as dist

        if dist.is_initialized():
            dist.destroy_process_group()
        self.rank, self.world_size, self.parts = rank, world_size, list(parts if parts is not None else [rank])
        if state:
            self.load_state(state)
        self._join(init_method)
        return {"name": self.name, "rank": self.rank, "step": self.step, "parts": self.parts}

    def _join(self, init_method: str) -> None:
        import datetime

        import torch
        import torch.distributed as dist
        from torch.nn.parallel import DistributedDataParallel

        on_gpu = self.device.type == "cuda"
        self.backend = self.train.backend if self.train.backend != "auto" else ("nccl" if on_gpu else "gloo")
        dist.init_process_group(self.backend, init_method=init_method, rank=self.rank, world_size=self.world_size,
                                timeout=datetime.timedelta(seconds=self.train.group_timeout_s))
        self.ddp = DistributedDataParallel(self.model, device_ids=[self.device.index] if on_gpu else None)

    @method(concurrency_group=HEALTH_GROUP)
    def health(self) -> dict[str, Any]:
        """Answers from its own thread, whatever a step is doing."""
        import os

        return {"name": self.name, "rank": self.rank, "step": self.step, "parts": self.parts, "pid": os.getpid()}

    def last_metrics(self) -> dict[str, Any] | None:
        """The metrics of the last step this shard committed (a step whose caller saw a fault)."""
        return getattr(self, "_last_metrics", None)

    # ---- moving a shard's whole state to a replacement --------------------

    def state(self) -> dict[str, Any]:
        """Everything a replacement needs to continue as this shard: parameters, every stage's
        optimizer and schedule (and frozen references), the step and the RNG; in host memory, so it
        crosses the object store to any node (a no-op on CPU)."""
        import torch

        out = {"step": self.step, "model": self.model.state_dict(), "rng": torch.get_rng_state(),
               "optimizer": self.optimizer.state_dict(), "scheduler": _schedule_state(self.scheduler)}
        if getattr(self, "rl_optimizer", None) is not None:
            out["rl"] = {"args": self._rl_args, "optimizer": self.rl_optimizer.state_dict(),
                         "schedule": _schedule_state(self.rl_schedule),
                         "reference": self.reference.state_dict() if self.reference is not None else None}
        if getattr(self, "sft_optimizer", None) is not None:
            out["sft"] = {"args": self._sft_args, "optimizer": self.sft_optimizer.state_dict()}
        if getattr(self, "dpo_optimizer", None) is not None:
            out["dpo"] = {"args": self._dpo_args, "optimizer": self.dpo_optimizer.state_dict(),
                          "reference": self.dpo_reference.state_dict()}
        if self.device.type == "cuda":
            out["cuda_rng"] = torch.cuda.get_rng_state(self.device)
        return on_host(out)

    def load_state(self, state: dict[str, Any]) -> None:
        import torch

        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        _load_schedule(self.scheduler, state["scheduler"])
        torch.set_rng_state(state["rng"])
        if "cuda_rng" in state and self.device.type == "cuda":
            torch.cuda.set_rng_state(state["cuda_rng"], self.device)
        self.step = state["step"]
        if "rl" in state:
            self.rl_optimizer = None
            self._rl_state(*state["rl"]["args"])
            self.rl_optimizer.load_state_dict(state["rl"]["optimizer"])
            _load_schedule(self.rl_schedule, state["rl"]["schedule"])
            if state["rl"]["reference"] is not None:
                self.reference.load_state_dict(state["rl"]["reference"])
        if "sft" in state:
            self.sft_optimizer = None
            self._sft_optimizer(*state["sft"]["args"]).load_state_dict(state["sft"]["optimizer"])
        if "dpo" in state:
            self.dpo_optimizer = None
            self._dpo_state(*state["dpo"]["args"])
            self.dpo_optimizer.load_state_dict(state["dpo"]["optimizer"])
            self.dpo_reference.load_state_dict(state["dpo"]["reference"])

    def fetch(self, blender, step: int) -> int:
        """Pull this shard's parts of `step` from the blender (before any shard enters the step's
        collectives, so a lost blender fails the fetch, not a half-done step); returns its samples."""
        from runtime.core.calls import wait

        batches = wait([blender.batch.remote(step, part, self.data_parts) for part in self.parts],
                       self.train.batch_timeout_s, f"blender: batch {step}")
        self._fetched = (step, batches)
        return sum(len(batch["sample_index"]) for batch in batches)

    def train_fetched(self, blender, step: int) -> dict[str, Any]:
        """Train on the parts of `step` fetched last; report per-sample losses to the blender (their
        loss is counted, not fatal: they are provenance, not training)."""
        from runtime.core.calls import wait
        from runtime.core.errors import CallTimeout, PeerLost

        fetched_step, batches = self._fetched
        if fetched_step != step:
            raise RuntimeError(f"{self.name}: asked to train on step {step}, holds step {fetched_step}")
        metrics = self.train_step(batches)
        losses = dict(zip([i for batch in batches for i in batch["sample_index"]], metrics.pop("sample_losses")))
        try:
            wait(blender.record_losses.remote(step, losses), self.train.batch_timeout_s, f"blender: losses of step {step}")
        except (CallTimeout, PeerLost):
            metrics["losses_unrecorded"] = len(losses)
        return metrics

    def train_step(self, batches: list[dict[str, Any]]) -> dict[str, Any]:
        """One pre-training step on this shard's parts (one packed batch each)."""
        import torch

        from rl.sft import segment_attention_mask, segment_positions, sft_loss

        def loss_of(batch):
            # copies (the object-store arrays are read-only), on the shard's device
            ids = torch.tensor(batch["input_ids"], dtype=torch.long, device=self.device)
            segments = torch.tensor(batch["segment_ids"], dtype=torch.long, device=self.device)
            with self._autocast():
                logits = self.ddp(ids, attention_mask=segment_attention_mask(segments),
                                  position_ids=segment_positions(segments)).logits
            loss, per_row = sft_loss(logits, ids, segments)
            return loss, (per_row.tolist(), int((segments > 0).sum()))

        started = time.perf_counter()
        self.optimizer.zero_grad(set_to_none=True)
        losses, extras = self._backward(batches, loss_of)
        grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.train.grad_clip)
        self.optimizer.step()
        self.scheduler.step()
        self.step += 1
        tokens = sum(t for _, t in extras)
        metrics = {"step": self.step, "loss": _mean(losses), "parts": len(batches), "grad_norm": float(grad_norm),
                   "lr": self.scheduler.get_last_lr()[0], "tokens": tokens,
                   "tokens_per_s": tokens / (time.perf_counter() - started)}
        self._commit(metrics)
        return {**metrics, "sample_losses": [x for rows, _ in extras for x in rows]}

    def _backward(self, parts: list, loss_of) -> tuple[list[float], list[Any]]:
        """loss_of(part) -> (loss, extra) for each part, backward one by one: gradients accumulate
        locally (DDP's no_sync) and are all-reduced with the last part's. Each loss is scaled by
        processes / parts, so the group's gradient is the mean over parts however they are spread."""
        from contextlib import nullcontext

        scale = self.world_size / self.data_parts
        losses, extras = [], []
        for i, part in enumerate(parts):
            with self.ddp.no_sync() if i + 1 < len(parts) else nullcontext():
                loss, extra = loss_of(part)
                (loss if scale == 1 else loss * scale).backward()
            losses.append(loss.item())
            extras.append(extra)
        return losses, extras

    def sft_step(self, parts: list[list[dict[str, str]]], sft: SFTConfig) -> dict[str, Any]:
        """One supervised step on this shard's parts of {prompt, completion} texts: mean NLL of the
        completion tokens only. Its own AdamW at `sft.lr` (made on the first call)."""
        import torch

        def loss_of(examples):
            rows = [self._tokens(e["prompt"], e["completion"]) for e in examples]
            ids, attention, completion, _, _ = self._padded(rows)
            mask = completion[:, 1:].float()
            with self._autocast():
                loss = -(token_logprobs(self.ddp, ids, attention) * mask).sum() / mask.sum().clamp(min=1)
            return loss, int(mask.sum())

        self._sft_optimizer(sft)
        started = time.perf_counter()
        self.sft_optimizer.zero_grad(set_to_none=True)
        losses, tokens = self._backward(parts, loss_of)
        grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.train.grad_clip)
        self.sft_optimizer.step()
        self.step += 1
        metrics = {"step": self.step, "loss": _mean(losses), "parts": len(parts), "grad_norm": float(grad_norm),
                   "tokens": sum(tokens), "tokens_per_s": sum(tokens) / (time.perf_counter() - started)}
        self._commit(metrics)
        return metrics

    def _sft_optimizer(self, sft: SFTConfig):
        import torch

        if getattr(self, "sft_optimizer", None) is None:
            self._sft_args = (sft,)
            self.sft_optimizer = torch.optim.AdamW(self.model.parameters(), lr=sft.lr, weight_decay=0.0)
        return self.sft_optimizer

    def rl_step(self, parts: list[list[dict[str, Any]]], algorithm, rl: RLConfig) -> dict[str, Any]:
        """One policy-gradient step on this shard's parts of the rollouts: {prompt_ids,
        completion_ids, logprobs (vLLM's), advantage}, with `algorithm.loss` (rl/algorithms/).

        Each part's rollouts split into `rl.updates_per_step` minibatches, one AdamW update each
        (over the same minibatch of every part); every ratio is taken against this step's starting
        policy (`old`), which the clip bounds. The truncated importance weight corrects for the
        sampler (vLLM's kernels, and in async mode an older version) differing from `old`."""
        import torch

        started = time.perf_counter()
        optimizer, schedule, reference = self._rl_state(rl, algorithm.kl_coef)
        rollouts = [self._rollouts(rows, rl.updates_per_step, reference) for rows in parts]
        losses, norms = [], []
        for update in range(rl.updates_per_step):
            optimizer.zero_grad(set_to_none=True)
            losses += self._backward(rollouts, lambda r: (self._rl_loss(r, update, algorithm, rl), None))[0]
            norms.append(float(torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.train.grad_clip)))
            optimizer.step()
            schedule.step()
        self.step += 1
        used = torch.cat([r["weights"][r["mask"].bool()] for r in rollouts])
        tokens = sum(int(r["mask"].sum()) for r in rollouts)
        metrics = {"step": self.step, "loss": _mean(losses), "parts": len(parts), "grad_norm": max(norms),
                   "tis_weight": float(used.mean()) if used.numel() else 1.0, "lr": schedule.get_last_lr()[0],
                   "tokens": tokens, "tokens_per_s": tokens / (time.perf_counter() - started)}
        self._commit(metrics)
        return metrics

    def _rollouts(self, experience: list[dict[str, Any]], updates: int, reference) -> dict[str, Any]:
        """One part's rollouts as tensors, its minibatches, and the starting policy's (and the
        reference's) logprobs."""
        import torch

        ids, attention, completion, sampler, advantages = self._padded(experience)
        chunks = torch.arange(len(ids), device=self.device).chunk(updates)
        old, ref = self._old_and_reference(ids, attention, chunks, reference)
        return {"ids": ids, "attention": attention, "mask": completion[:, 1:], "sampler": sampler[:, 1:],
                "advantages": advantages, "chunks": chunks, "old": old, "ref": ref,
                "weights": torch.zeros_like(sampler[:, 1:])}

    def _rl_loss(self, r: dict[str, Any], update: int, algorithm, rl: RLConfig):
        """The loss of minibatch `update` of one part's rollouts `r`."""
        from rl.algorithms.off_policy import truncated_importance_weights

        rows = r["chunks"][update]
        with self._autocast():
            logp = token_logprobs(self.ddp, r["ids"][rows], r["attention"][rows])
        if update == 0:  # nothing has changed yet: this forward is the starting policy's
            r["old"][rows] = logp.detach()
        mask = r["mask"][rows]
        r["weights"][rows] = truncated_importance_weights(r["old"][rows], r["sampler"][rows], cap=rl.tis_cap, mask=mask)
        return algorithm.loss(logp, r["old"][rows], r["advantages"][rows], mask,
                              logp_ref=None if r["ref"] is None else r["ref"][rows], weights=r["weights"][rows])

    def _commit(self, metrics: dict[str, Any]) -> None:
        self._last_metrics = metrics
        self.metrics.step(metrics)

    def _old_and_reference(self, ids, attention, chunks, reference):
        """Starting-policy logprobs of every minibatch but the first (whose own forward gives them),
        and the reference's of all rows when a KL term needs them."""
        import torch

        old = torch.zeros(ids.shape[0], ids.shape[1] - 1, device=self.device)
        with torch.no_grad(), self._autocast():
            if len(chunks) > 1:
                later = torch.cat(chunks[1:])
                old[later] = token_logprobs(self.model, ids[later], attention[later])
            ref = token_logprobs(reference, ids, attention) if reference is not None else None
        return old, ref

    def _autocast(self):
        """bf16 autocast of forward and backward when `train.precision` is bf16; weights, optimizer
        state and published versions stay fp32."""
        import torch

        return torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.train.precision == "bf16")

    def _rl_state(self, rl: RLConfig, kl_coef: float):
        """The RL stage's own AdamW, warm-up and (with kl_coef) frozen reference, made on its first step.
        Not pre-training's AdamW: its second moments, built from far larger gradients, shrink every
        RL step (measured: no learning with them)."""
        import copy

        import torch

        if getattr(self, "rl_optimizer", None) is None:
            self._rl_args = (rl, kl_coef)
            self.rl_optimizer = torch.optim.AdamW(self.model.parameters(), lr=rl.lr, weight_decay=0.0)
            self.rl_schedule = torch.optim.lr_scheduler.LambdaLR(
                self.rl_optimizer, lambda update: min(1.0, (update + 1) / rl.warmup_steps) if rl.warmup_steps else 1.0)
            self.reference = copy.deepcopy(self.model).eval().requires_grad_(False) if kl_coef else None
        return self.rl_optimizer, self.rl_schedule, self.reference

    def dpo_step(self, parts: list[list[dict[str, str]]], dpo: DPOConfig) -> dict[str, Any]:
        """One DPO step (rl/algorithms/dpo.py) on this shard's parts of {prompt, chosen, rejected}
        texts against the policy the stage started from (frozen on the first call, with the stage's
        own AdamW at `dpo.lr`). Reports the loss, the mean reward margin (chosen minus rejected) and
        how often it is positive."""
        import torch

        from rl.algorithms.dpo import dpo_loss

        def loss_of(pairs):
            rows = [self._tokens(p["prompt"], p[side]) for side in ("chosen", "rejected") for p in pairs]
            ids, attention, completion, _, _ = self._padded(rows)
            mask = completion[:, 1:].float()
            with self._autocast():
                policy = (token_logprobs(self.ddp, ids, attention) * mask).sum(1)
                with torch.no_grad():
                    reference = (token_logprobs(self.dpo_reference, ids, attention) * mask).sum(1)
            n = len(pairs)
            loss, chosen, rejected = dpo_loss(policy[:n], policy[n:], reference[:n], reference[n:], dpo.beta)
            return loss, ((chosen - rejected).detach(), int(mask.sum()))

        self._dpo_state(dpo)
        started = time.perf_counter()
        self.dpo_optimizer.zero_grad(set_to_none=True)
        losses, extras = self._backward(parts, loss_of)
        grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.train.grad_clip)
        self.dpo_optimizer.step()
        self.step += 1
        margin, tokens = torch.cat([m for m, _ in extras]), sum(t for _, t in extras)
        metrics = {"step": self.step, "loss": _mean(losses), "parts": len(parts), "grad_norm": float(grad_norm),
                   "margin": float(margin.mean()), "accuracy": float((margin > 0).float().mean()),
                   "tokens": tokens, "tokens_per_s": tokens / (time.perf_counter() - started)}
        self._commit(metrics)
        return metrics

    def _dpo_state(self, dpo: DPOConfig) -> None:
        """The DPO stage's own AdamW and the policy it started from, frozen (made on its first step)."""
        import copy

        import torch

        if getattr(self, "dpo_optimizer", None) is None:
            self._dpo_args = (dpo,)
            self.dpo_optimizer = torch.optim.AdamW(self.model.parameters(), lr=dpo.lr, weight_decay=0.0)
            self.dpo_reference = copy.deepcopy(self.model).eval().requires_grad_(False)

    def _padded(self, rows: list[dict[str, Any]]):
        """pad_experience's tensors, on the shard's device."""
        return [t.to(self.device) for t in pad_experience(rows, self.model.config.pad_token_id or 0)]

    def _tokens(self, prompt: str, completion: str) -> dict[str, list[int]]:
        from transformers import AutoTokenizer

        if getattr(self, "tokenizer", None) is None:
            self.tokenizer = AutoTokenizer.from_pretrained(self.model_path)
        return {"prompt_ids": self.tokenizer(prompt)["input_ids"], "completion_ids": self.tokenizer(completion)["input_ids"]}

    def weights(self) -> dict[str, Any]:
        """The model's state as numpy arrays (runtime.model.weights.shareable): what rank 0 publishes."""
        from runtime.model.weights import shareable

        return shareable(self.model.state_dict())

    def save(self, path: str) -> str:
        """HF model directory (config, tokenizer, safetensors) plus optimiser, schedule and step."""
        import shutil

        import torch

        out = Path(path)
        self.model.save_pretrained(out)
        for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja"):
            if (Path(self.model_path) / name).is_file():
                shutil.copy2(Path(self.model_path) / name, out / name)
        torch.save({"optimizer": self.optimizer.state_dict(), "scheduler": _schedule_state(self.scheduler),
                    "step": self.step},
                   out / "trainer_state.pt")
        return str(out)

    def shutdown(self) -> None:
        import torch.distributed as dist

        if dist.is_initialized():
            dist.destroy_process_group()

    def _load_state(self, path: Path) -> None:
        import torch

        state = torch.load(path / "trainer_state.pt", weights_only=True, map_location=self.device)
        self.optimizer.load_state_dict(state["optimizer"])
        _load_schedule(self.scheduler, state["scheduler"])
        self.step = state["step"]

    def _lr_factor(self, step: int) -> float:
        warmup, total, floor = self.train.warmup_steps, self.train.total_steps, self.train.min_lr_ratio
        if step < warmup:
            return (step + 1) / warmup
        progress = min(1.0, (step - warmup) / max(1, total - warmup))
        return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))


def shard_device():
    """Where a shard trains: the GPU Ray gave it (Ray makes it the process's only visible one), else
    the CPU; outside Ray, a visible GPU."""
    import torch

    if not torch.cuda.is_available():
        return torch.device("cpu")
    import ray

    share = ray.get_runtime_context().get_assigned_resources().get("GPU", 0.0) if ray.is_initialized() else 1.0
    return torch.device("cuda", torch.cuda.current_device()) if share > 0 else torch.device("cpu")


def on_host(value: Any) -> Any:
    """`value` (dicts, lists and tuples of tensors and plain values) with every tensor in host memory;
    tensors already there are the same objects, not copies."""
    import torch

    if isinstance(value, torch.Tensor):
        return value.cpu()
    if isinstance(value, dict):
        return {k: on_host(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(on_host(v) for v in value)
    return value


def _mean(values: list[float]) -> float:
    return sum(values) / len(values)


def _schedule_state(schedule) -> dict[str, Any]:
    """A LambdaLR's state without its lambdas (they are rebuilt from config)."""
    return {k: v for k, v in schedule.state_dict().items() if k != "lr_lambdas"}


def _load_schedule(schedule, state: dict[str, Any]) -> None:
    schedule.load_state_dict({**state, "lr_lambdas": [None] * len(schedule.optimizer.param_groups)})


def pad_experience(experience: list[dict[str, Any]], pad_id: int):
    """Right-padded rows of prompt + completion: ids, attention mask, completion mask, vLLM's
    logprob at each completion token's position, and each row's advantage (SFT rows have neither)."""
    import torch

    length = max(len(e["prompt_ids"]) + len(e["completion_ids"]) for e in experience)
    ids = torch.full((len(experience), length), pad_id, dtype=torch.long)
    attention, completion = torch.zeros_like(ids), torch.zeros_like(ids)
    sampler = torch.zeros(len(experience), length)
    for row, e in enumerate(experience):
        p, c = len(e["prompt_ids"]), len(e["completion_ids"])
        ids[row, : p + c] = torch.tensor(e["prompt_ids"] + e["completion_ids"])
        attention[row, : p + c] = 1
        completion[row, p : p + c] = 1
        if "logprobs" in e:
            sampler[row, p : p + c] = torch.tensor(e["logprobs"])
    return ids, attention, completion, sampler, torch.tensor([e.get("advantage", 0.0) for e in experience])


def token_logprobs(model, ids, attention):
    """log p(token t | tokens < t) for t >= 1: [B, T - 1]."""
    import torch

    logits = model(ids, attention_mask=attention).logits
    return torch.log_softmax(logits[:, :-1].float(), -1).gather(2, ids[:, 1:, None])[..., 0]
