"""TrainerShard: one data-parallel replica of model and optimiser in a torch.distributed group.

A plain class; `runtime/pools/trainer_group.py` spawns N of them as Ray actors, does
the rendezvous (rank 0 picks a free port on its node: no fixed ports) and steps
them together. DDP keeps the replicas identical: gradients are all-reduced
(gloo on CPU, nccl on GPU) before every AdamW step.

Each shard pulls its own samples of a step from the DataBlender, trains on them
with the packed-sequence loss (attention and positions stop at piece
boundaries; SDPA attention, which honours the block mask), and reports the loss
of every sample back to the blender, so `factory trace` can list the
highest-loss documents of a step.
"""

from __future__ import annotations

import math
import socket
import time
from pathlib import Path
from typing import Any

from runtime.core.config import DPOConfig, RLConfig, SFTConfig, TrainConfig


class TrainerShard:
    """Constructed with its section, `train`; each post-training step brings the settings of its stage
    (and RL steps the algorithm, whose advantages and loss it applies: the shard imports none)."""

    def __init__(self, train: TrainConfig, model_path: str, rank: int, world_size: int, name: str):
        self.train = train
        self.model_path = model_path
        self.rank = rank
        self.world_size = world_size
        self.name = name
        self.step = 0

    def rendezvous(self) -> str:
        """init_method for the group: this node's address and a port free right now."""
        import ray

        with socket.socket() as s:
            s.bind(("", 0))
            port = s.getsockname()[1]
        return f"tcp://{ray.util.get_node_ip_address()}:{port}"

    def setup(self, init_method: str, resume_from: str | None = None) -> dict[str, Any]:
        import datetime

        import torch
        import torch.distributed as dist
        from torch.nn.parallel import DistributedDataParallel
        from transformers import AutoModelForCausalLM

        from runtime.core.metrics import TrainerMetrics

        torch.set_num_threads(1)
        self.metrics = TrainerMetrics(self.name)
        backend = self.train.backend if self.train.backend != "auto" else ("nccl" if torch.cuda.is_available() else "gloo")
        dist.init_process_group(backend, init_method=init_method, rank=self.rank, world_size=self.world_size,
                                timeout=datetime.timedelta(seconds=self.train.group_timeout_s))
        source = resume_from or self.model_path
        self.model = AutoModelForCausalLM.from_pretrained(source, attn_implementation="sdpa", dtype=torch.float32)
        self.ddp = DistributedDataParallel(self.model)
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=self.train.lr, betas=self.train.betas,
                                           weight_decay=self.train.weight_decay)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, self._lr_factor)
        if resume_from:
            self._load_state(Path(resume_from))
        return {"name": self.name, "rank": self.rank, "backend": backend, "step": self.step}

    def train_on(self, blender, step: int) -> dict[str, Any]:
        """Pull this shard's part of `step` from the blender, train on it, report per-sample losses."""
        from runtime.core.calls import wait

        timeout = self.train.batch_timeout_s
        batch = wait(blender.batch.remote(step, self.rank, self.world_size), timeout, f"blender: batch {step}")
        metrics = self.train_step(batch)
        losses = dict(zip(batch["sample_index"], metrics.pop("sample_losses")))
        wait(blender.record_losses.remote(step, losses), timeout, f"blender: losses of step {step}")
        return metrics

    def train_step(self, batch: dict[str, Any]) -> dict[str, Any]:
        import torch

        from rl.sft import segment_attention_mask, segment_positions, sft_loss

        started = time.perf_counter()
        ids = torch.as_tensor(batch["input_ids"], dtype=torch.long)
        segments = torch.as_tensor(batch["segment_ids"], dtype=torch.long)
        with self._autocast():
            logits = self.ddp(ids, attention_mask=segment_attention_mask(segments),
                              position_ids=segment_positions(segments)).logits
        loss, per_row = sft_loss(logits, ids, segments)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.train.grad_clip)
        self.optimizer.step()
        self.scheduler.step()
        self.step += 1
        tokens = int((segments > 0).sum())
        metrics = {"step": self.step, "loss": loss.item(), "grad_norm": float(grad_norm),
                   "lr": self.scheduler.get_last_lr()[0], "tokens": tokens,
                   "tokens_per_s": tokens / (time.perf_counter() - started)}
        self.metrics.step(metrics)
        return {**metrics, "sample_losses": per_row.tolist()}

    def sft_step(self, examples: list[dict[str, str]], sft: SFTConfig) -> dict[str, Any]:
        """One supervised step on {prompt, completion} texts: mean NLL of the completion tokens only.
        Its own AdamW at `sft.lr` (made on the first call)."""
        import torch

        if getattr(self, "sft_optimizer", None) is None:
            self.sft_optimizer = torch.optim.AdamW(self.model.parameters(), lr=sft.lr, weight_decay=0.0)
        started = time.perf_counter()
        rows = [self._tokens(e["prompt"], e["completion"]) for e in examples]
        ids, attention, completion, _, _ = pad_experience(rows, self.model.config.pad_token_id or 0)
        mask = completion[:, 1:].float()
        with self._autocast():
            loss = -(token_logprobs(self.ddp, ids, attention) * mask).sum() / mask.sum().clamp(min=1)
        self.sft_optimizer.zero_grad(set_to_none=True)
        loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.train.grad_clip)
        self.sft_optimizer.step()
        self.step += 1
        tokens = int(mask.sum())
        metrics = {"step": self.step, "loss": loss.item(), "grad_norm": float(grad_norm), "tokens": tokens,
                   "tokens_per_s": tokens / (time.perf_counter() - started)}
        self.metrics.step(metrics)
        return metrics

    def rl_step(self, experience: list[dict[str, Any]], algorithm, rl: RLConfig) -> dict[str, Any]:
        """One policy-gradient step on this shard's rollouts: {prompt_ids, completion_ids, logprobs
        (vLLM's), advantage}, with `algorithm.loss` (rl/algorithms/).

        The rollouts split into `rl.updates_per_step` minibatches, one AdamW update each; every
        ratio is taken against this step's starting policy (`old`), which the clip bounds. The
        truncated importance weight corrects for the sampler (vLLM's kernels, and in async mode
        an older version) differing from `old`."""
        import torch

        from rl.algorithms.off_policy import truncated_importance_weights

        started = time.perf_counter()
        optimizer, schedule, reference = self._rl_state(rl, algorithm.kl_coef)
        ids, attention, completion, sampler, advantages = pad_experience(experience, self.model.config.pad_token_id or 0)
        mask = completion[:, 1:]
        chunks = torch.arange(len(ids)).chunk(rl.updates_per_step)
        old, ref = self._old_and_reference(ids, attention, chunks, reference)
        weights = torch.zeros_like(sampler[:, 1:])
        losses, norms = [], []
        for first, rows in zip([True] + [False] * len(chunks), chunks):
            with self._autocast():
                logp = token_logprobs(self.ddp, ids[rows], attention[rows])
            if first:  # nothing has changed yet: this forward is the starting policy's
                old[rows] = logp.detach()
            weights[rows] = truncated_importance_weights(old[rows], sampler[rows, 1:], cap=rl.tis_cap, mask=mask[rows])
            loss = algorithm.loss(logp, old[rows], advantages[rows], mask[rows],
                                  logp_ref=None if ref is None else ref[rows], weights=weights[rows])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            norms.append(float(torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.train.grad_clip)))
            optimizer.step()
            schedule.step()
            losses.append(loss.item())
        self.step += 1
        used, tokens = weights[mask.bool()], int(mask.sum())
        metrics = {"step": self.step, "loss": sum(losses) / len(losses), "grad_norm": max(norms),
                   "tis_weight": float(used.mean()) if used.numel() else 1.0, "lr": schedule.get_last_lr()[0],
                   "tokens": tokens, "tokens_per_s": tokens / (time.perf_counter() - started)}
        self.metrics.step(metrics)
        return metrics

    def _old_and_reference(self, ids, attention, chunks, reference):
        """Starting-policy logprobs of every minibatch but the first (whose own forward gives them),
        and the reference's of all rows when a KL term needs them."""
        import torch

        old = torch.zeros(ids.shape[0], ids.shape[1] - 1)
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

        device = "cuda" if torch.cuda.is_available() else "cpu"
        return torch.autocast(device, dtype=torch.bfloat16, enabled=self.train.precision == "bf16")

    def _rl_state(self, rl: RLConfig, kl_coef: float):
        """The RL stage's own AdamW, warm-up and (with kl_coef) frozen reference, made on its first step.
        Not pre-training's AdamW: its second moments, built from far larger gradients, shrink every
        RL step (measured: no learning with them)."""
        import copy

        import torch

        if getattr(self, "rl_optimizer", None) is None:
            self.rl_optimizer = torch.optim.AdamW(self.model.parameters(), lr=rl.lr, weight_decay=0.0)
            self.rl_schedule = torch.optim.lr_scheduler.LambdaLR(
                self.rl_optimizer, lambda update: min(1.0, (update + 1) / rl.warmup_steps) if rl.warmup_steps else 1.0)
            self.reference = copy.deepcopy(self.model).eval().requires_grad_(False) if kl_coef else None
        return self.rl_optimizer, self.rl_schedule, self.reference

    def dpo_step(self, pairs: list[dict[str, str]], dpo: DPOConfig) -> dict[str, Any]:
        """One DPO step (rl/algorithms/dpo.py) on {prompt, chosen, rejected} texts against the policy
        the stage started from (frozen on the first call, with the stage's own AdamW at `dpo.lr`).
        Reports the loss, the mean reward margin (chosen minus rejected) and how often it is positive."""
        import copy

        import torch

        from rl.algorithms.dpo import dpo_loss

        if getattr(self, "dpo_optimizer", None) is None:
            self.dpo_optimizer = torch.optim.AdamW(self.model.parameters(), lr=dpo.lr, weight_decay=0.0)
            self.dpo_reference = copy.deepcopy(self.model).eval().requires_grad_(False)
        started = time.perf_counter()
        rows = [self._tokens(p["prompt"], p[side]) for side in ("chosen", "rejected") for p in pairs]
        ids, attention, completion, _, _ = pad_experience(rows, self.model.config.pad_token_id or 0)
        mask = completion[:, 1:].float()
        with self._autocast():
            policy = (token_logprobs(self.ddp, ids, attention) * mask).sum(1)
            with torch.no_grad():
                reference = (token_logprobs(self.dpo_reference, ids, attention) * mask).sum(1)
        n = len(pairs)
        loss, chosen, rejected = dpo_loss(policy[:n], policy[n:], reference[:n], reference[n:], dpo.beta)
        self.dpo_optimizer.zero_grad(set_to_none=True)
        loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.train.grad_clip)
        self.dpo_optimizer.step()
        self.step += 1
        margin = chosen - rejected
        metrics = {"step": self.step, "loss": loss.item(), "grad_norm": float(grad_norm),
                   "margin": float(margin.mean()), "accuracy": float((margin > 0).float().mean()),
                   "tokens": int(mask.sum()), "tokens_per_s": int(mask.sum()) / (time.perf_counter() - started)}
        self.metrics.step(metrics)
        return metrics

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
        schedule = {k: v for k, v in self.scheduler.state_dict().items() if k != "lr_lambdas"}  # rebuilt from config
        torch.save({"optimizer": self.optimizer.state_dict(), "scheduler": schedule, "step": self.step},
                   out / "trainer_state.pt")
        return str(out)

    def shutdown(self) -> None:
        import torch.distributed as dist

        if dist.is_initialized():
            dist.destroy_process_group()

    def _load_state(self, path: Path) -> None:
        import torch

        state = torch.load(path / "trainer_state.pt", weights_only=True)
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict({**state["scheduler"], "lr_lambdas": [None] * len(self.optimizer.param_groups)})
        self.step = state["step"]

    def _lr_factor(self, step: int) -> float:
        warmup, total, floor = self.train.warmup_steps, self.train.total_steps, self.train.min_lr_ratio
        if step < warmup:
            return (step + 1) / warmup
        progress = min(1.0, (step - warmup) / max(1, total - warmup))
        return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))


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
