"""The shared inference service on real vLLM engines in real Ray actors: classes under contention,
version pins across a publish, and the playground answering through it while a server is killed.

One service (two servers, 8 sequences each, chunks of 2 requests) serves the whole file."""

import json
import socket
import threading
import time

import openai
import pytest
import ray
from ray import serve
from transformers import AutoConfig

from runtime.core.cluster import remote_class
from runtime.core.config import SamplingConfig, load_config
from runtime.core.generation import GenerationRequest, Workload
from runtime.core.inference_client import InferenceClient, service_name
from runtime.model.build import init_model
from runtime.model.versions import link_base
from runtime.model.weights import shareable
from serve.inference_service import InferenceService

pytestmark = pytest.mark.cluster
EXPERIMENT = "test-service"


@pytest.fixture(scope="module")
def cfg(tiny_model, tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("service-run")
    link_base(run_dir, tiny_model)  # what a run does: the playground reads the tokenizer there
    return load_config("default", [f"model.path={tiny_model}", f"experiment.name={EXPERIMENT}",
                                   f"experiment.run_dir={run_dir}",
                                   "inference.cpu_bind=nobind", "inference.max_num_seqs=8",
                                   "inference.chunk_requests=2", "playground.max_tokens=64"])


@pytest.fixture(scope="module")
def client(ray_cluster, cfg, tiny_model):
    service = remote_class(InferenceService).options(name=service_name(EXPERIMENT), max_concurrency=64).remote(
        cfg, str(tiny_model), cfg.experiment.run_dir, None, service_name(EXPERIMENT))
    ray.get(service.setup.remote(), timeout=300)
    yield InferenceClient(EXPERIMENT, timeout_s=300)
    ray.get(service.shutdown.remote(), timeout=60)
    ray.kill(service)


def requests(workload: Workload, count: int, tokens: int, prefix: str = "") -> list[GenerationRequest]:
    return [GenerationRequest(prompt=f"{prefix}{i} + {i} =", workload=workload,
                              sampling=SamplingConfig(max_tokens=tokens, ignore_eos=True, seed=i))
            for i in range(count)]


def in_background(fn, *args, **kwargs) -> tuple[threading.Thread, dict]:
    out: dict = {}

    def run():
        try:
            out["value"] = fn(*args, **kwargs)
        except BaseException as exc:
            out["error"] = exc
        out["done"] = time.monotonic()

    thread = threading.Thread(target=run)
    thread.start()
    return thread, out


def test_rollouts_are_served_first_while_eval_and_synthetic_progress_on_idle_capacity(client):
    before = client.stats()["classes"]
    synthetic_requests = requests(Workload.SYNTHETIC, 48, 48, "s")
    synthetic, synth_out = in_background(client.generate, synthetic_requests)
    evals, eval_out = in_background(client.generate, requests(Workload.EVAL, 48, 48, "e"))
    time.sleep(1.0)  # both hold the servers now: nothing else waits
    assert "done" not in eval_out and "done" not in synth_out, "make the background work longer"
    started = time.monotonic()
    rollouts = client.generate(requests(Workload.ROLLOUT, 16, 48, "r"))
    rollout_done = time.monotonic()
    synthetic.join(300), evals.join(300)
    assert "error" not in synth_out and "error" not in eval_out, (synth_out.get("error"), eval_out.get("error"))
    assert len(rollouts) == 16 and len(synth_out["value"]) == 48 and len(eval_out["value"]) == 48
    # the rollouts came last and finished first: queued synthetic and eval chunks waited for them
    assert rollout_done < eval_out["done"] and rollout_done < synth_out["done"]
    after = client.stats()["classes"]
    served = {c: after[c]["requests"] - before[c]["requests"] for c in ("rollout", "eval", "synthetic")}
    assert served == {"rollout": 16, "eval": 48, "synthetic": 48}
    waited = {c: (after[c]["wait_s"] - before[c]["wait_s"]) / (after[c]["chunks"] - before[c]["chunks"])
              for c in ("rollout", "synthetic")}
    assert waited["rollout"] < waited["synthetic"], waited
    # running lower-class sequences gave way to the rollouts and were sent again, none lost
    assert sum(after[c]["preempted"] - before[c]["preempted"] for c in ("eval", "synthetic")) > 0
    assert after["rollout"]["preempted"] == before["rollout"]["preempted"]
    assert {r.request_id for r in synth_out["value"]} == {r.id for r in synthetic_requests}


def test_an_eval_pinned_to_a_version_finishes_on_it_across_a_publish(client, tiny_model):
    start_version = client.newest()
    pinned, out = in_background(client.generate, requests(Workload.EVAL, 24, 64, "p"), pin=True)
    time.sleep(1.0)
    service = ray.get_actor(service_name(EXPERIMENT))
    weights = shareable(init_model(AutoConfig.from_pretrained(tiny_model), seed=7).state_dict())
    published = ray.get(service.load_weights.remote(start_version + 1, ray.put(weights)), timeout=120)
    assert start_version + 1 in published.values()  # at least one server took it at once
    fresh = client.generate(requests(Workload.ROLLOUT, 4, 8, "n"))
    assert {r.version for r in fresh} == {start_version + 1}
    pinned.join(300)
    assert "error" not in out, out.get("error")
    assert {r.version for r in out["value"]} == {start_version}
    deadline = time.monotonic() + 60
    while set(client.versions().values()) != {start_version + 1}:  # the held-back server follows
        assert time.monotonic() < deadline, client.versions()
        time.sleep(0.2)


def test_the_playground_answers_through_the_service_and_survives_a_server_kill(client, cfg):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    from serve.playground import start

    serve.shutdown()
    url = start(cfg.model_copy(update={"playground": cfg.playground.model_copy(update={"port": port})}),
                cfg.experiment.run_dir, name="test-service-playground")
    try:
        api = openai.OpenAI(base_url=f"{url}v1", api_key="unused-on-loopback", max_retries=0)
        before = client.stats()["classes"]["playground"]["requests"]
        first = api.completions.create(model="live", prompt="1 + 1 =", max_tokens=8, temperature=0)
        assert first.system_fingerprint == f"v{client.newest()}"
        service = ray.get_actor(service_name(EXPERIMENT))
        victim = ray.get(service.server.remote(0), timeout=30)[0]
        ray.kill(victim)
        answers = [api.completions.create(model="live", prompt="1 + 1 =", max_tokens=8, temperature=0)
                   for _ in range(4)]
        assert {a.choices[0].text for a in answers} == {first.choices[0].text}
        stream = api.completions.create(model="live", prompt="1 + 1 =", max_tokens=8, temperature=0, stream=True)
        assert "".join(c.choices[0].text for c in stream) == first.choices[0].text
        assert client.stats()["classes"]["playground"]["requests"] >= before + 5
    finally:
        serve.shutdown()


def test_the_service_grows_under_load_and_shrinks_back_when_idle(ray_cluster, tiny_model, tmp_path):
    name = "test-autoscale"
    cfg = load_config("default", [f"model.path={tiny_model}", f"experiment.name={name}", f"experiment.run_dir={tmp_path}",
                                  "inference.cpu_bind=nobind", "inference.max_num_seqs=2", "inference.chunk_requests=1",
                                  "placement.inference.replicas=1", "placement.inference.min_replicas=1",
                                  "placement.inference.max_replicas=2", "inference.autoscale.up_after_s=0.5",
                                  "inference.autoscale.down_after_s=3", "inference.autoscale.interval_s=0.2"])
    service = remote_class(InferenceService).options(name=service_name(name), max_concurrency=64).remote(
        cfg, str(tiny_model), str(tmp_path), None, service_name(name))
    try:
        ray.get(service.setup.remote(), timeout=300)
        weights = shareable(init_model(AutoConfig.from_pretrained(tiny_model), seed=5).state_dict())
        ray.get(service.load_weights.remote(1, ray.put(weights)), timeout=120)
        client = InferenceClient(name, timeout_s=300)
        results = client.generate(requests(Workload.SYNTHETIC, 64, 192, "load"))
        assert len(results) == 64 and {r.version for r in results} == {1}  # the new server loaded v1 first
        assert {r.server for r in results} == {f"{name}/inference/0", f"{name}/inference/1"}
        deadline = time.monotonic() + 60
        while len(client.versions()) != 1:
            assert time.monotonic() < deadline, client.versions()
            time.sleep(0.5)
        events = [json.loads(line) for line in (tmp_path / "events.jsonl").read_text().splitlines()]
        assert [(e["kind"], e["actor"]) for e in events if e["kind"] == "scaled"] == [
            ("scaled", f"{name}/inference/1"), ("scaled", f"{name}/inference/1")]
        with pytest.raises(ValueError):
            ray.get_actor(f"{name}/inference/1")
        assert len(client.generate(requests(Workload.ROLLOUT, 4, 8, "after"))) == 4
    finally:
        ray.get(service.shutdown.remote(), timeout=60)
        ray.kill(service)


def test_a_judge_suite_is_graded_by_another_model_served_by_the_same_service(client, cfg, tiny_model, tmp_path):
    from actors.evaluator import Evaluator

    prompts = tmp_path / "questions.jsonl"
    prompts.write_text("".join(f'{{"prompt": "What is {i} + {i}?"}}\n' for i in range(6)))
    judged = cfg.model_copy(update={"eval": cfg.eval.model_copy(update={"suites": [
        cfg.eval.suites[0].model_copy(update={"name": "judged", "type": "judge", "path": str(prompts), "samples": 2,
                                              "judge": str(tiny_model)})]})})
    before = client.stats()["classes"]["eval"]["requests"]
    evaluator = Evaluator(judged, tmp_path)
    evaluator.setup()
    [row] = evaluator.evaluate()
    assert row["suite"] == "judged" and row["tasks"] == 6 and 0.0 <= row["score"] <= 1.0
    assert row["judge_servers"] == [f"{EXPERIMENT}/model0/inference/0"], row  # the judge has a server of its own
    assert 0 <= row["unjudged"] <= 12
    assert client.stats()["classes"]["eval"]["requests"] == before + 6  # the policy's part; the judge's pool counts apart
    assert ray.get_actor(f"{EXPERIMENT}/model0/inference/0") is not None
