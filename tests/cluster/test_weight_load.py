"""How a server loads a weight version (`inference.weight_load`), with real vLLM engines: the
default `direct` load (one copy per tensor, then the CPU oneDNN matmuls packed again) answers
bit for bit what vLLM's own reload answers, and a request's answer does not depend on the batch it
ran in, which is what lets a request retried on another server after a fault come back the same."""

import pytest
import ray
from transformers import AutoConfig

from actors.inference_server import InferenceServer
from runtime.core.config import SamplingConfig, load_config
from runtime.core.generation import GenerationRequest
from runtime.model.build import init_model
from runtime.model.weights import shareable

pytestmark = pytest.mark.cluster
PROMPTS = [[5, 6, 7, 8], [9, 10, 11], [12, 13, 14, 15, 16], [17, 18]]


def start(tiny_model, mode: str):
    cfg = load_config("default", [f"model.path={tiny_model}", "inference.cpu_bind=nobind",
                                  "inference.kv_cache_gb=0.25", f"inference.weight_load={mode}"])
    server = ray.remote(InferenceServer).options(num_cpus=0.5, max_concurrency=8).remote(
        cfg.inference, str(tiny_model), f"test-load/{mode}/0", 0)
    ray.get(server.setup.remote(), timeout=300)
    return server


def requests(prompts, seed=0):
    return [GenerationRequest(prompt_token_ids=p, id=f"r{seed}-{i}",
                              sampling=SamplingConfig(temperature=1.0, max_tokens=12, seed=seed + i))
            for i, p in enumerate(prompts)]


def answers(server, batch):
    return [(r.completions[0].token_ids, r.completions[0].logprobs)
            for r in ray.get(server.generate.remote(batch), timeout=120)]


@pytest.fixture(scope="module")
def servers(ray_cluster, tiny_model):
    started = {mode: start(tiny_model, mode) for mode in ("direct", "reload")}
    state = ray.put(shareable(init_model(AutoConfig.from_pretrained(tiny_model), seed=99).state_dict()))
    assert ray.get([s.load_weights.remote(1, state) for s in started.values()], timeout=120) == [1, 1]
    yield started
    for server in started.values():
        ray.get(server.shutdown.remote(), timeout=60)
        ray.kill(server)


def test_the_direct_load_answers_bit_for_bit_what_vllms_reload_answers(servers):
    assert ray.get(servers["direct"].health.remote(), timeout=30)["last_load"]["direct"]
    direct, reload = answers(servers["direct"], requests(PROMPTS)), answers(servers["reload"], requests(PROMPTS))
    assert direct == reload


def test_after_a_direct_load_an_answer_does_not_depend_on_its_batch(servers):
    alone = answers(servers["direct"], requests(PROMPTS[:1]))
    crowded = answers(servers["direct"], requests(PROMPTS[:1] + PROMPTS[1:] * 5))[:1]
    assert alone == crowded
