"""The inference pool on real vLLM engines in real Ray actors.

Tests share one pool and run in file order: the reload test publishes version 1,
which the later tests rely on up to the kill test; the prefix-cache test then publishes version 2.
"""

import threading
import time

import pytest
import ray
import torch

from runtime.core.config import SamplingConfig, load_config
from runtime.core.errors import StaleVersionError
from runtime.core.generation import GenerationRequest
from runtime.pools.inference_pool import InferencePool
from runtime.model.build import init_model
from runtime.model.weights import shareable

pytestmark = pytest.mark.cluster

PROMPTS = ["def f(x):\n    return", "12 + 7 =", "def add(a, b):", "99 - 3 ="]


@pytest.fixture(scope="module")
def pool(ray_cluster, tiny_model):
    cfg = load_config("default", [f"model.path={tiny_model}", "experiment.name=test-pool", "inference.cpu_bind=nobind",
                                  "inference.weight_load=plain"])  # direct: test_weight_load, test_weight_broadcast
    pool = InferencePool(cfg, tiny_model).start()
    yield pool
    pool.shutdown()


@pytest.fixture(scope="module")
def new_weights(tiny_model):
    from transformers import AutoConfig, AutoTokenizer

    model = init_model(AutoConfig.from_pretrained(tiny_model), seed=1234)
    return model, AutoTokenizer.from_pretrained(tiny_model)


def hf_greedy(model, prompt_ids, max_new):
    out = model.generate(torch.tensor([prompt_ids]), max_new_tokens=max_new, do_sample=False,
                         pad_token_id=model.config.pad_token_id)
    return out[0, len(prompt_ids):].tolist()


def hf_token_logprobs(model, prompt_ids, completion_ids):
    ids = torch.tensor([prompt_ids + completion_ids])
    with torch.no_grad():
        logits = model(ids).logits[0, len(prompt_ids) - 1 : -1]
    return torch.log_softmax(logits.double(), -1).gather(1, torch.tensor(completion_ids)[:, None])[:, 0]


def test_reload_makes_vllm_greedy_equal_transformers_greedy(pool, new_weights):
    model, _ = new_weights
    before = pool.generate([GenerationRequest(prompt=p, sampling=SamplingConfig(temperature=0, max_tokens=24))
                            for p in PROMPTS])
    assert {r.version for r in before} == {0}

    versions = pool.load_weights(1, ray.put(model.state_dict()))
    assert set(versions.values()) == {1} and len(versions) == 2

    after = pool.generate([GenerationRequest(prompt=p, sampling=SamplingConfig(temperature=0, max_tokens=24))
                           for p in PROMPTS])
    for result in after:
        assert result.version == 1
        expected = hf_greedy(model, result.prompt_token_ids, 24)
        assert result.completions[0].token_ids == expected[: len(result.completions[0].token_ids)]
        assert len(result.completions[0].token_ids) == len(expected)
    assert [r.completions[0].token_ids for r in after] != [r.completions[0].token_ids for r in before]


def test_sampled_token_logprobs_match_transformers(pool, new_weights):
    model, _ = new_weights
    requests = [GenerationRequest(prompt=p, sampling=SamplingConfig(temperature=1.0, max_tokens=32, seed=i, n=2))
                for i, p in enumerate(PROMPTS)]
    worst = 0.0
    for result in pool.generate(requests):
        assert len(result.completions) == 2
        for c in result.completions:
            expected = hf_token_logprobs(model, result.prompt_token_ids, c.token_ids)
            worst = max(worst, (torch.tensor(c.logprobs, dtype=torch.float64) - expected).abs().max().item())
    assert worst < 1e-3, f"largest logprob difference {worst}"


def test_a_server_refuses_an_older_version(pool, new_weights):
    model, _ = new_weights
    handle = pool.slots[0].handle
    with pytest.raises(StaleVersionError, match="refusing version 0, already serving 1"):
        ray.get(handle.load_weights.remote(0, ray.put(model.state_dict())), timeout=60)
    assert ray.get(handle.get_version.remote(), timeout=10) == 1
    assert ray.get(handle.load_weights.remote(1, ray.put({})), timeout=60) == 1, "same version is a no-op"


def test_killing_a_server_mid_batch_loses_and_duplicates_nothing(pool):
    requests = [GenerationRequest(prompt=f"{i} + {i} =", sampling=SamplingConfig(max_tokens=256, seed=i))
                for i in range(64)]
    retried_before = pool.counts["retried"]
    victim = pool.slots[0]
    out: dict = {}
    worker = threading.Thread(target=lambda: out.setdefault("results", pool.generate(requests, timeout=300)))
    worker.start()
    wait_for(lambda: ray.get(victim.handle.health.remote(), timeout=10)["in_flight"] > 0, "victim busy")
    ray.kill(victim.handle)
    worker.join(timeout=300)

    results = out["results"]
    assert len(results) == 64
    assert [r.request_id for r in results] == [r.id for r in requests]
    assert all(r.server != victim.name or r.version == 1 for r in results)
    assert pool.counts["retried"] > retried_before, "the kill landed after the batch finished"

    wait_for(lambda: len(pool.versions()) == 2, "replacement ready", timeout=180)
    assert set(pool.versions().values()) == {1}, "the replacement must serve the current version"
    assert ray.get(victim.handle.health.remote(), timeout=10)["in_flight"] == 0


def test_a_reload_drops_the_prompts_cached_under_the_old_weights(pool, new_weights, tiny_model):
    """vLLM's prefix cache keeps the KV of every prompt it has seen; after a reload that KV belongs
    to the old weights, and an answer started from it would mix two versions."""
    from transformers import AutoConfig

    _, tokenizer = new_weights
    prompt_ids = tokenizer(" ".join(f"x{i} = {i} * 3;" for i in range(200)))["input_ids"][:300]
    requests = lambda: [GenerationRequest(prompt_token_ids=prompt_ids, sampling=SamplingConfig(  # noqa: E731
        temperature=1.0, max_tokens=8, seed=i)) for i in range(4)]
    assert {r.version for r in pool.generate(requests())} == {1}, "the prompt is now cached on both servers"

    model = init_model(AutoConfig.from_pretrained(tiny_model), seed=99)
    assert set(pool.load_weights(2, ray.put(shareable(model.state_dict()))).values()) == {2}
    worst = 0.0
    for result in pool.generate(requests()):
        assert result.version == 2
        c = result.completions[0]
        expected = hf_token_logprobs(model, prompt_ids, c.token_ids)
        worst = max(worst, (torch.tensor(c.logprobs, dtype=torch.float64) - expected).abs().max().item())
    assert worst < 1e-3, f"answers of version 2 differ from its weights' by {worst}: stale cached KV?"


def wait_for(predicate, what: str, timeout: float = 60.0):
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out waiting for: {what}")
        time.sleep(0.01)
