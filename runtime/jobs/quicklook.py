"""`factory generate`: one InferenceServer in this process, no Ray, for a quick look at a model; or,
with --live, a running experiment's inference service."""

from __future__ import annotations

from runtime.core.config import FactoryConfig, SamplingConfig
from runtime.core.errors import ConfigError


def generate(cfg: FactoryConfig, prompt: str, n: int = 1, max_tokens: int | None = None,
             temperature: float | None = None) -> list[str]:
    from actors.inference_server import InferenceServer
    from runtime.core.generation import GenerationRequest, Workload
    from runtime.model.build import resolve_model

    sampling = sampling_of(cfg.inference.sampling, n, max_tokens, temperature)
    server = InferenceServer(cfg.inference, resolve_model(cfg.model, cfg.experiment.seed), "generate/0",
                             dtype=cfg.model.dtype)
    server.setup()
    try:
        result = server.generate([GenerationRequest(prompt=prompt, sampling=sampling, workload=Workload.PLAYGROUND)])[0]
    finally:
        server.shutdown()
    return [c.text for c in result.completions]


def generate_live(experiment: str, prompt: str, n: int = 1, max_tokens: int | None = None,
                  temperature: float | None = None) -> list[str]:
    """Completions from `experiment`'s inference service (its newest version), under the playground class."""
    from runtime.core.generation import GenerationRequest, Workload
    from runtime.core.inference_client import InferenceClient

    sampling = sampling_of(SamplingConfig(), n, max_tokens, temperature)
    [result] = InferenceClient.connect(experiment).generate(
        [GenerationRequest(prompt=prompt, sampling=sampling, workload=Workload.PLAYGROUND)])
    return [c.text for c in result.completions]


def sampling_of(base: SamplingConfig, n: int, max_tokens: int | None, temperature: float | None) -> SamplingConfig:
    """`base` with the command line's choices, checked (one ConfigError line) before an engine starts."""
    from pydantic import ValidationError

    from runtime.core.config import describe_errors

    tree = {**base.model_dump(), "n": n, **({"max_tokens": max_tokens} if max_tokens else {}),
            **({"temperature": temperature} if temperature is not None else {})}
    try:
        return SamplingConfig.model_validate(tree)
    except ValidationError as exc:
        raise ConfigError(describe_errors(exc)) from None
