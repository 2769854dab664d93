"""`factory generate`: one InferenceServer in this process, no Ray, for a quick look at a model; or,
with --live, a running experiment's inference service."""

from __future__ import annotations

from runtime.core.config import FactoryConfig


def generate(cfg: FactoryConfig, prompt: str, n: int = 1, max_tokens: int | None = None,
             temperature: float | None = None) -> list[str]:
    from actors.inference_server import InferenceServer
    from runtime.core.generation import GenerationRequest, Workload
    from runtime.model.build import resolve_model

    sampling = cfg.inference.sampling.model_copy(update={
        "n": n,
        "max_tokens": max_tokens or cfg.inference.sampling.max_tokens,
        "temperature": cfg.inference.sampling.temperature if temperature is None else temperature,
    })
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
    from runtime.core.config import SamplingConfig
    from runtime.core.generation import GenerationRequest, Workload
    from runtime.core.inference_client import InferenceClient

    defaults = SamplingConfig()
    sampling = SamplingConfig(n=n, max_tokens=max_tokens or defaults.max_tokens,
                              temperature=defaults.temperature if temperature is None else temperature)
    [result] = InferenceClient.connect(experiment).generate(
        [GenerationRequest(prompt=prompt, sampling=sampling, workload=Workload.PLAYGROUND)])
    return [c.text for c in result.completions]
