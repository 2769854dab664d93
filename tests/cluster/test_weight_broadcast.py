"""The broadcaster and the gRPC weight stream with real vLLM engines: after an update, greedy
output equals transformers' with the same weights, in Ray and outside it."""

import json
import subprocess
import sys

import grpc
import pytest
import ray
import torch
from transformers import AutoConfig

from runtime.core.cluster import remote_class
from actors.weight_broadcaster import WeightBroadcaster
from runtime.core.config import SamplingConfig, load_config
from runtime.core.errors import ConfigError, StaleVersionError
from runtime.core.generation import GenerationRequest
from runtime.pools.inference_pool import InferencePool, server_names
from runtime.model.build import init_model
from runtime.model.weights import VersionStore, shareable
from serve.weight_service import WeightClient, expose, serve

pytestmark = pytest.mark.cluster
PROMPT = [5, 6, 7, 8]


def hf_greedy(model, n=16):
    out = model.generate(torch.tensor([PROMPT]), max_new_tokens=n, do_sample=False, pad_token_id=model.config.pad_token_id)
    return out[0, len(PROMPT):].tolist()


@pytest.fixture(scope="module")
def setup(ray_cluster, tiny_model):
    cfg = load_config("default", [f"model.path={tiny_model}", "experiment.name=test-weights",
                                  "inference.cpu_bind=nobind", "weights.grpc.enabled=true"])
    pool = InferencePool(cfg, tiny_model).start()
    broadcaster = remote_class(WeightBroadcaster).options(name="test-weights/broadcaster/0").remote(
        cfg.weights, server_names(cfg), expose=expose)
    info = ray.get(broadcaster.setup.remote(), timeout=60)
    yield cfg, pool, broadcaster, info["endpoint"]
    ray.get(broadcaster.shutdown.remote(), timeout=30)
    pool.shutdown()


def test_one_put_reaches_every_server_and_matches_transformers(setup, tiny_model):
    cfg, pool, broadcaster, _ = setup
    model = init_model(AutoConfig.from_pretrained(tiny_model), seed=4321)
    versions = ray.get(broadcaster.publish.remote(1, [ray.put(shareable(model.state_dict()))]), timeout=120)
    assert versions == {"test-weights/inference/0": 1, "test-weights/inference/1": 1}
    results = pool.generate([GenerationRequest(prompt_token_ids=PROMPT, sampling=SamplingConfig(temperature=0,
                                                                                                max_tokens=16))
                             for _ in range(4)])
    expected = hf_greedy(model)
    assert {r.server for r in results} == set(versions), "both servers answered"
    assert all(r.version == 1 and r.completions[0].token_ids == expected for r in results)
    with pytest.raises(StaleVersionError):
        ray.get(broadcaster.publish.remote(1, [ray.put(model.state_dict())]), timeout=60)


OUTSIDE = """
import json, sys
from runtime.core.config import SamplingConfig, load_config
from actors.inference_server import InferenceServer
from runtime.core.generation import GenerationRequest
from serve.weight_service import WeightClient
cfg = load_config("default", ["inference.cpu_bind=nobind"])
server = InferenceServer(cfg.inference, sys.argv[1], "outside/0")
server.setup()
client = WeightClient(sys.argv[2])
version = client.load_into(server)
result = server.generate([GenerationRequest(prompt_token_ids=[5, 6, 7, 8],
                                            sampling=SamplingConfig(temperature=0, max_tokens=16))])[0]
print(json.dumps({"version": version, "served": result.version, "tokens": result.completions[0].token_ids}))
"""


def test_a_server_outside_ray_loads_the_stream_into_vllm(setup, tiny_model):
    _, _, broadcaster, endpoint = setup
    model = init_model(AutoConfig.from_pretrained(tiny_model), seed=777)
    ray.get(broadcaster.publish.remote(2, [ray.put(shareable(model.state_dict()))]), timeout=120)
    out = subprocess.run([sys.executable, "-c", OUTSIDE, str(tiny_model), endpoint], capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    got = json.loads(out.stdout.strip().splitlines()[-1])
    assert got == {"version": 2, "served": 2, "tokens": hf_greedy(model)}


def test_weight_service_off_loopback_needs_a_token():
    store = VersionStore()
    store.publish(1, {"w": torch.ones(3)})
    with pytest.raises(ConfigError, match="binding 127.0.0.2 needs a token"):
        serve(store, host="127.0.0.2")
    server, port = serve(store, host="127.0.0.2", token="t0k")
    try:
        for call in (lambda c: c.latest(), lambda c: c.fetch()):
            with pytest.raises(grpc.RpcError) as denied:
                call(WeightClient(f"127.0.0.2:{port}", token="wrong"))
            assert denied.value.code() == grpc.StatusCode.UNAUTHENTICATED
        version, state = WeightClient(f"127.0.0.2:{port}", token="t0k").fetch()
        assert version == 1 and torch.equal(state["w"], torch.ones(3))
    finally:
        server.stop(grace=None)


def test_a_replacement_server_catches_up_to_the_broadcast_version(ray_cluster, tiny_model):
    from actors.weight_broadcaster import latest_of

    cfg = load_config("default", [f"model.path={tiny_model}", "experiment.name=test-catchup",
                                  "inference.cpu_bind=nobind"])
    broadcaster = remote_class(WeightBroadcaster).options(name="test-catchup/broadcaster/0").remote(
        cfg.weights, server_names(cfg))
    ray.get(broadcaster.setup.remote(), timeout=60)
    pool = InferencePool(cfg, tiny_model, latest=latest_of(broadcaster)).start()
    try:
        model = init_model(AutoConfig.from_pretrained(tiny_model), seed=55)
        ray.get(broadcaster.publish.remote(3, [ray.put(shareable(model.state_dict()))]), timeout=120)
        victim = pool.slots[0]
        ray.kill(victim.handle)
        requests = [GenerationRequest(prompt_token_ids=PROMPT, sampling=SamplingConfig(temperature=0, max_tokens=16))
                    for _ in range(8)]
        assert all(r.version == 3 for r in pool.generate(requests)), "the survivor answers meanwhile"
        import time

        deadline = time.monotonic() + 180
        while len(pool.versions()) < 2:
            assert time.monotonic() < deadline, "no replacement"
            time.sleep(0.2)
        assert pool.versions() == {"test-catchup/inference/0": 3, "test-catchup/inference/1": 3}
        result = pool.generate(requests)
        assert {r.completions[0].token_ids == hf_greedy(model) for r in result} == {True}
    finally:
        pool.shutdown()
        ray.kill(broadcaster)
