"""What goes into an inference server and what comes out. Plain, picklable data."""

from __future__ import annotations

import enum
import uuid
from dataclasses import dataclass, field

from runtime.core.config import SamplingConfig


class Workload(enum.IntEnum):
    """Who asked: the inference service's workload class (`inference.classes`, by the lower-case
    name), which sets the request's priority and quota."""

    ROLLOUT = 0
    EVAL = 1
    PLAYGROUND = 2
    SYNTHETIC = 3

    @property
    def key(self) -> str:
        """The class's name in `inference.classes`."""
        return self.name.lower()


@dataclass
class GenerationRequest:
    """One prompt, given as text or as token ids, with its sampling settings."""

    prompt: str | None = None
    prompt_token_ids: list[int] | None = None
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    workload: Workload = Workload.ROLLOUT
    id: str = field(default_factory=lambda: uuid.uuid4().hex)
    priority: int | None = None
    """vLLM's scheduling priority (lower first); the service sets its class's. None: the workload's value."""

    def __post_init__(self):
        if (self.prompt is None) == (self.prompt_token_ids is None):
            raise ValueError(f"request {self.id}: give exactly one of prompt and prompt_token_ids")


@dataclass
class Completion:
    text: str
    token_ids: list[int]
    logprobs: list[float]
    """Logprob of each sampled token (raw model logprobs unless configured otherwise)."""
    finish_reason: str
    """`stop` (end of sequence or a stop string) or `length` (max_tokens reached)."""


@dataclass
class GenerationResult:
    request_id: str
    prompt: str
    prompt_token_ids: list[int]
    completions: list[Completion]
    version: int
    """Weight version that produced every token of this result."""
    server: str
    """Name of the server actor that produced it."""
