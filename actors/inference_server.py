"""InferenceServer: one vLLM engine, the weight version it serves, and its request loop.

A plain class; the pool makes it a Ray actor where it spawns it (a threaded
actor, so `health()` answers while the engine works). The engine runs on its
own thread, stepping vLLM's LLMEngine with continuous batching across every
caller; requests carry a workload class that becomes vLLM's scheduling priority.

Guarantees:
- every result is tagged with the one weight version that produced all its
  tokens: a reload waits until the requests in flight finish, and requests that
  arrive meanwhile start after it;
- versions only move forward: an older version is refused, the same one is a no-op.

The engine runs inside this process (VLLM_ENABLE_V1_MULTIPROCESSING=0 with the
"uni" executor): one process of ~1.7 GiB instead of four of ~3 GiB, ready in
~7 s instead of ~18 s, and a reload hands vLLM the tensors by reference. Tensor-
parallel GPU engines need vLLM's own processes and a weight transport that
crosses them; that arrives with the weight broadcaster.
"""

from __future__ import annotations

import os
import queue
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

from runtime.core.config import InferenceConfig
from runtime.core.errors import SetupNotRun, StaleVersionError
from runtime.core.generation import Completion, GenerationRequest, GenerationResult
from runtime.core.metrics import ServerMetrics
from runtime.model.engine_weights import (DirectWeights, keep_plain_weights, load_checkpoint, packed_weights,
                                           plain_linears, plan, plannable)
from runtime.model.weights import as_tensor


class InferenceServer:
    def __init__(self, cfg: InferenceConfig, model_path: str, name: str, index: int = 0, dtype: str = "float32"):
        self.cfg = cfg
        self.model_path = str(model_path)
        self.name = name
        self.index = index
        self.dtype = dtype
        self._loop: EngineLoop | None = None

    def setup(self) -> dict[str, Any]:
        """Start the engine. Raises whatever vLLM raises, so the caller sees why."""
        started = time.monotonic()
        os.environ.update(engine_env(self.cfg, self.index))
        loop = EngineLoop(self._build_engine, self.name)
        loop.start_engine()
        self._loop = loop
        return {"name": self.name, "version": 0, "setup_s": round(time.monotonic() - started, 2)}

    def _build_engine(self):
        """(vLLM's LLM, its DirectWeights or None); runs on the engine's own thread."""
        from vllm import LLM

        if self.cfg.weight_load == "plain":
            keep_plain_weights()
        llm = LLM(
            self.model_path,
            dtype=self.dtype,
            max_model_len=self.cfg.max_model_len,
            max_num_seqs=self.cfg.max_num_seqs,
            distributed_executor_backend="uni",
            enforce_eager=not compiled(self.cfg),
            scheduling_policy="priority",
            logprobs_mode=self.cfg.logprobs_mode,
            seed=0,
            # whole prompts only: a prompt split across engine steps has its sampled token discarded,
            # and vLLM then rewinds that request's seeded generator, which CPU generators cannot do
            # ("CPU Generator does not use offset"), so seeded sampling needs it off on CPU
            enable_chunked_prefill=self.cfg.chunked_prefill,
            **gpu_options(self.cfg),
        )
        return llm, None if self.cfg.weight_load == "reload" else direct_weights(llm, self.model_path,
                                                                                self.cfg.weight_load)

    def generate(self, requests: list[GenerationRequest]) -> list[GenerationResult]:
        """Generate for every request; results in request order."""
        futures = [self._require_loop().submit(request) for request in requests]
        return [future.result() for future in futures]

    def generate_chunk(self, requests: list[GenerationRequest]) -> dict[str, Any]:
        """Generate for every request, letting a higher class preempt them: `{"results": [...] in
        request order, "preempted": [ids]}`. While sequences of a lower priority number run, the
        engine holds only those: a preemptible request of a higher number is stopped (vLLM aborts
        it) and handed back to be sent again later, so the higher class runs alone and within one
        engine step of arriving (what the inference service sends)."""
        loop = self._require_loop()
        futures = [(request.id, loop.submit(request, preemptible=True)) for request in requests]
        results, preempted = [], []
        for request_id, future in futures:
            try:
                results.append(future.result())
            except Preempted:
                preempted.append(request_id)
        return {"results": results, "preempted": preempted}

    def generate_stream(self, request: GenerationRequest) -> Iterator[dict[str, Any]]:
        """Yield `{"text", "token_ids"}` deltas as tokens are sampled, then `{"result": GenerationResult}`.

        One completion (n=1); call it as a Ray streaming generator."""
        if request.sampling.n != 1:
            raise ValueError("streaming supports n=1")
        deltas: queue.Queue = queue.Queue()
        future = self._require_loop().submit(request, stream=deltas)
        while (item := deltas.get()) is not None:
            yield {"text": item[0], "token_ids": item[1]}
        yield {"result": future.result()}

    def load_weights(self, version: int, weights: Mapping[str, Any]) -> int:
        """Reload `weights` (HF parameter names to tensors) in place as `version`; returns the version served."""
        return self._require_loop().reload(version, weights).result()

    def get_version(self) -> int:
        return self._require_loop().version

    def health(self) -> dict[str, Any]:
        """Answers at once, whatever the engine is doing."""
        import os

        if self._loop is None:
            return {"name": self.name, "pid": os.getpid(), "ready": False}
        return {"name": self.name, "pid": os.getpid(), "ready": True, **self._loop.stats()}

    def shutdown(self) -> None:
        if self._loop is not None:
            self._loop.stop()

    def _require_loop(self) -> EngineLoop:
        if self._loop is None:
            raise SetupNotRun(f"{self.name}: setup() has not run")
        self._loop.raise_if_dead()
        return self._loop


def engine_env(cfg: InferenceConfig, index: int) -> dict[str, str]:
    """Environment vLLM reads at engine start."""
    cores = os.cpu_count() or 1
    bind = str(index % cores) if cfg.cpu_bind == "spread" else cfg.cpu_bind
    return {
        "VLLM_ENABLE_V1_MULTIPROCESSING": "0",
        "VLLM_CPU_KVCACHE_SPACE": str(max(1, round(cfg.kv_cache_gb))),
        "VLLM_CPU_OMP_THREADS_BIND": bind,
        "VLLM_LOGGING_LEVEL": os.environ.get("VLLM_LOGGING_LEVEL", "WARNING"),
    }


def gpu_options(cfg: InferenceConfig) -> dict[str, Any]:
    """vLLM options for an engine on a GPU (none on CPU): the share of the GPU's memory it takes and,
    where servers share the GPU, the size of its KV cache given rather than profiled."""
    import torch

    if not torch.cuda.is_available():
        return {}
    import ray

    share = ray.get_runtime_context().get_assigned_resources().get("GPU", 1.0) if ray.is_initialized() else 1.0
    options = {"gpu_memory_utilization": cfg.gpu_memory_utilization or round(0.9 * min(share, 1.0), 3)}
    if share < 1:
        # vLLM sizes the KV cache from the free memory its profiling sees, assuming no other process
        # changes its use meanwhile (gpu_worker.determine_available_memory): servers that share a GPU
        # and start together, or one replacing a dying one, do. On an H200 the second of two such
        # servers found "No available memory for the cache blocks". Bytes given skip the profiling.
        options["kv_cache_memory_bytes"] = int(cfg.kv_cache_gb * 2**30)
    return options


def compiled(cfg: InferenceConfig) -> bool:
    """Whether the engine is torch.compiled (and on a GPU runs CUDA graphs): `inference.compile`;
    unset, on a GPU only (see the field) and not on CPU."""
    import torch

    return cfg.compile if cfg.compile is not None else torch.cuda.is_available()


def direct_weights(llm, model_path: str, mode: str) -> DirectWeights | None:
    """The engine's load plan (runtime.model.engine_weights): `direct` packs the CPU linear layers'
    oneDNN matmuls again at each load; `plain` gives them plain weights read through F.linear
    (the checkpoint loaded into them here). None where the model cannot be planned and vLLM's
    reload stays."""
    def prepare(worker) -> DirectWeights | None:
        model = worker.model_runner.get_model()
        if not plannable(model):
            return None
        if mode == "direct":
            matmuls = packed_weights(model)
            return None if matmuls is None else plan(model, matmuls)
        made_plain = plain_linears(model)
        direct = plan(model)
        if made_plain:  # the plain weights given are zeros
            load_checkpoint(direct, model_path)
        return direct

    [direct] = llm.collective_rpc(prepare)
    return direct


class EngineLoop(threading.Thread):
    """Builds one vLLM LLMEngine and steps it on the same thread: vLLM binds the OpenMP threads of
    the thread that builds the engine (VLLM_CPU_OMP_THREADS_BIND), and steps taken on any other
    thread ran ~1.4x slower on CPU. Admits requests and runs reloads between steps."""

    def __init__(self, build: Callable[[], tuple[Any, DirectWeights | None]], name: str):
        super().__init__(name=f"engine-{name}", daemon=True)
        self._build = build
        self._built: Future = Future()
        self.server = name
        self.version = 0
        self.last_load: dict[str, Any] = {}
        self.metrics = ServerMetrics(name)
        self._cv = threading.Condition()
        self._pending: deque[tuple[GenerationRequest, Future, queue.Queue | None, bool]] = deque()
        self._controls: deque[tuple[Callable[[], Any], Future]] = deque()
        self._running: dict[str, Running] = {}
        self._stopped = False
        self._error: BaseException | None = None
        self.engine_s = 0.0
        self.steps = 0

    def submit(self, request: GenerationRequest, stream: queue.Queue | None = None, preemptible: bool = False) -> Future:
        """The future result; with `stream`, (text, token_ids) deltas are put there as they come, then
        None. A `preemptible` request may end in Preempted (see InferenceServer.generate_chunk)."""
        future: Future = Future()
        with self._cv:
            self._pending.append((request, future, stream, preemptible))
            self._cv.notify()
        return future

    def reload(self, version: int, weights: Mapping[str, Any]) -> Future:
        future: Future = Future()
        asked = time.perf_counter()
        with self._cv:
            self._controls.append((lambda: self._reload(version, weights, asked), future))
            self._cv.notify()
        return future

    def stats(self) -> dict[str, Any]:
        with self._cv:
            return {
                "version": self.version,
                "in_flight": len(self._running),
                "queued": len(self._pending),
                "alive": self.is_alive() and self._error is None,
                "last_load": self.last_load,
                "engine_s": round(self.engine_s, 6),
                "steps": self.steps,
            }

    def stop(self) -> None:
        with self._cv:
            self._stopped = True
            self._cv.notify()
        self.join(timeout=30)

    def raise_if_dead(self) -> None:
        if self._error is not None:
            raise RuntimeError(f"{self.server}: engine loop died: {self._error!r}") from self._error

    def start_engine(self) -> None:
        """Start the thread and wait until the engine is built; raises what building raised."""
        self.start()
        self._built.result()

    def run(self) -> None:
        try:
            self.llm, self.direct = self._build()
            self.engine = self.llm.llm_engine
            self.tokenizer = self.llm.get_tokenizer()
        except BaseException as exc:  # delivered to start_engine's caller
            self._built.set_exception(exc)
            return
        self._built.set_result(None)
        try:
            while self._next_round():
                pass
        except BaseException as exc:  # the loop is the boundary: fail every waiter, then report via health
            self._error = exc
            self._fail_all(exc)

    def _next_round(self) -> bool:
        with self._cv:
            while not (self._pending or self._controls or self._running or self._stopped):
                self._cv.wait()
            if self._stopped:
                return False
            control = self._controls.popleft() if self._controls and not self._running else None
            admitted = [] if self._controls else list(self._pending)
            if not self._controls:
                self._pending.clear()
        if control is not None:
            _run_into(*control)
        for request, future, stream, preemptible in admitted:
            self._admit(request, future, stream, preemptible)
        self._preempt()
        if self._running:
            self._step()
        return True

    def _admit(self, request: GenerationRequest, future: Future, stream: queue.Queue | None,
               preemptible: bool = False) -> None:
        try:
            if request.id in self._running:
                raise ValueError(f"request id {request.id} is already running on {self.server}")
            prompt = request.prompt if request.prompt is not None else {"prompt_token_ids": request.prompt_token_ids}
            params = sampling_params(request, stream=stream is not None)
            self.engine.add_request(request.id, prompt, params, priority=priority_of(request))
        except Exception as exc:  # a bad request fails alone; the engine goes on
            future.set_exception(exc)
            if stream is not None:
                stream.put(None)
            return
        self._running[request.id] = Running(request, future, stream, preemptible)
        self.metrics.in_flight(len(self._running))

    def _preempt(self) -> None:
        """Stop preemptible requests of a higher priority number than the best one running."""
        if not self._running:
            return
        best = min(priority_of(r.request) for r in self._running.values())
        victims = [rid for rid, r in self._running.items() if r.preemptible and priority_of(r.request) > best]
        if not victims:
            return
        self.engine.abort_request(victims)
        for rid in victims:
            self._running.pop(rid).future.set_exception(Preempted(rid))
        self.metrics.preempted(len(victims))

    def _step(self) -> None:
        started = time.perf_counter()
        outputs = self.engine.step()
        self.engine_s += time.perf_counter() - started
        self.steps += 1
        for output in outputs:
            running = self._running.get(output.request_id)
            if running is None:  # preempted in this round
                continue
            if running.stream is not None:
                running.add_delta(output.outputs[0])
            if not output.finished:
                continue
            self._running.pop(output.request_id)
            result = self._result(running, output)
            self.metrics.finished(sum(len(c.token_ids) for c in result.completions))
            running.future.set_result(result)
            if running.stream is not None:
                running.stream.put(None)
        self.metrics.in_flight(len(self._running))

    def _result(self, running: Running, output) -> GenerationResult:
        request = running.request
        prompt_ids = list(output.prompt_token_ids or [])
        prompt = request.prompt if request.prompt is not None else self.tokenizer.decode(prompt_ids)
        if running.stream is not None:
            last = output.outputs[0]
            completions = [Completion(running.text, running.token_ids, running.logprobs, last.finish_reason or "stop")]
        else:
            completions = [self._completion(request, c) for c in sorted(output.outputs, key=lambda c: c.index)]
        return GenerationResult(request.id, prompt, prompt_ids, completions, self.version, self.server)

    def _completion(self, request: GenerationRequest, c) -> Completion:
        text = c.text if request.sampling.stop else self.tokenizer.decode(c.token_ids, skip_special_tokens=True)
        return Completion(text, list(c.token_ids), token_logprobs(c), c.finish_reason or "stop")

    def _reload(self, version: int, weights: Mapping[str, Any], asked: float) -> int:
        """Runs with no request in the engine. The prefix cache is emptied with the old weights: a
        prompt's cached KV from the old version would otherwise start an answer of the new one."""
        if version < self.version:
            raise StaleVersionError(f"{self.server}: refusing version {version}, already serving {self.version}")
        if version == self.version:
            return self.version
        started = time.perf_counter()
        if self.direct is not None:
            self.direct.load(weights)
        else:
            tensors = ((name, as_tensor(value)) for name, value in weights.items())
            self.llm.collective_rpc("reload_weights", kwargs={"weights_iterator": tensors})
        if not self.llm.reset_prefix_cache():
            raise RuntimeError(f"{self.server}: the prefix cache could not be reset after loading version {version}")
        self.last_load = {"version": version, "wait_s": round(started - asked, 6),
                          "copy_s": round(time.perf_counter() - started, 6), "direct": self.direct is not None}
        self.version = version
        self.metrics.version(version)
        return version

    def _fail_all(self, exc: BaseException) -> None:
        with self._cv:
            waiting = [(f, q) for _, f, q, _ in self._pending] + [(f, None) for _, f in self._controls]
            waiting += [(r.future, r.stream) for r in self._running.values()]
            self._pending.clear()
            self._controls.clear()
            self._running.clear()
        for future, stream in waiting:
            if not future.done():
                future.set_exception(exc)
            if stream is not None:
                stream.put(None)


@dataclass
class Running:
    """A request in the engine; streamed ones accumulate their deltas here."""

    request: GenerationRequest
    future: Future
    stream: queue.Queue | None = None
    preemptible: bool = False
    text: str = ""
    token_ids: list[int] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)

    def add_delta(self, c) -> None:
        self.text += c.text
        self.token_ids += list(c.token_ids)
        self.logprobs += token_logprobs(c)
        self.stream.put((c.text, list(c.token_ids)))


class Preempted(Exception):
    """A preemptible request stopped to let a higher class run; the caller sends it again."""


def priority_of(request: GenerationRequest) -> int:
    return request.priority if request.priority is not None else int(request.workload)


def token_logprobs(c) -> list[float]:
    return [step[token].logprob for step, token in zip(c.logprobs or [], c.token_ids)]


def sampling_params(request: GenerationRequest, stream: bool = False):
    """vLLM's params; text is decoded once at the end unless stop strings or streaming need it step by step."""
    from vllm import SamplingParams
    from vllm.sampling_params import RequestOutputKind

    s = request.sampling
    return SamplingParams(
        n=s.n,
        temperature=s.temperature,
        top_p=s.top_p,
        max_tokens=s.max_tokens,
        stop=list(s.stop) or None,
        seed=s.seed,
        ignore_eos=s.ignore_eos,
        detokenize=bool(s.stop) or stream,
        logprobs=0,
        output_kind=RequestOutputKind.DELTA if stream else RequestOutputKind.FINAL_ONLY,
    )


def _run_into(fn: Callable[[], Any], future: Future) -> None:
    try:
        future.set_result(fn())
    except Exception as exc:  # delivered to the caller of reload()
        future.set_exception(exc)
