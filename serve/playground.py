"""The playground: an OpenAI-compatible API and a web page over every model version of a run.

One Ray Serve application (FastAPI ingress):
- `/v1/models`, `/v1/completions`, `/v1/chat/completions` (with `stream`), the
  official `openai` client works unchanged. `model` is `live` (the running
  experiment's inference service, which routes it under the playground workload class and re-sends
  it when a server is lost; after the run, the newest saved version), `vN` (a version under RUN_DIR/versions) or a checkpoint name under
  RUN_DIR/checkpoints. Unknown names get a 404 listing the known ones.
- Requests run under the playground workload class (`inference.classes.playground`).
- Saved versions get an InferenceServer on first use (at most
  `max_loaded_models`, least recently used stopped first).
- Bound off 127.0.0.1 it needs an API key (FACTORY_PLAYGROUND_KEY or the owner-only
  file `playground.api_key_file`) on every request, whatever the path (the page and
  unknown paths included): `Authorization: Bearer KEY`, or Basic with KEY as the
  password, which a browser asks for when it opens the page. There are no /docs or
  /openapi.json routes. Ray Serve's proxy answers `/-/routes` and `/-/healthz` itself,
  outside this app and without a key (it has no switch to turn them off): each Serve
  application's route prefix and name (`{"/": "playground"}`), and liveness.
  Limits on max_tokens, prompt tokens and concurrency per key answer 400/429, never crash.
- `/` is the page (chat, side-by-side comparison, feedback); `/feedback` stores
  thumbs up/down; `/feedback/pairs.jsonl` exports preference pairs.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import collections
import json
import time
from pathlib import Path
from typing import Any

import ray
from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, PlainTextResponse, StreamingResponse
from ray import serve
from starlette.datastructures import Headers

from runtime.core.config import FactoryConfig, SamplingConfig
from runtime.core import credentials
from runtime.core.cluster import actor_name
from runtime.core.generation import GenerationRequest, GenerationResult, Workload
from runtime.core.inference_client import service_name
from runtime.model.versions import VERSION, list_models
from serve.feedback import FeedbackStore

SECRET = "playground.api_key"
PAGE = Path(__file__).with_name("static") / "playground.html"
app = FastAPI(title="model factory playground", docs_url=None, redoc_url=None, openapi_url=None)


class ApiError(Exception):
    def __init__(self, status: int, message: str, code: str = "invalid_request_error"):
        super().__init__(message)
        self.status, self.message, self.code = status, message, code

    def response(self) -> JSONResponse:
        return JSONResponse({"error": {"message": self.message, "type": self.code, "code": self.code}},
                            status_code=self.status)


def resolve_key(cfg: FactoryConfig) -> str | None:
    """The key every request must carry: from `playground.api_key_file`, else FACTORY_PLAYGROUND_KEY.

    None on 127.0.0.1 without one; ConfigError elsewhere without one, or with an unsafe file."""
    return credentials.required_secret(cfg.playground.host, SECRET, cfg.playground.api_key_file,
                                       what="an API key")


def authorised(header: str, key: str) -> bool:
    """Whether an Authorization header carries `key`: `Bearer KEY`, or Basic with KEY as the password."""
    scheme, _, value = header.partition(" ")
    if scheme.lower() == "basic":
        try:
            value = base64.b64decode(value, validate=True).decode().partition(":")[2]
        except (binascii.Error, UnicodeDecodeError):
            return False
    elif scheme.lower() != "bearer":
        return False
    return credentials.same_secret(value, key)


class KeyCheck:
    """ASGI middleware: when the replica has a key, every HTTP request must carry it, whatever its path
    (the app has no websocket routes: Starlette closes every websocket).

    Refusals are 401: OpenAI-style JSON under /v1, else a Basic challenge so a browser asks for the key."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        key = serve.get_replica_context().servable_object.key if scope["type"] == "http" else None
        if key is not None and not authorised(Headers(scope=scope).get("authorization", ""), key):
            await _denied(scope["path"])(scope, receive, send)
            return
        await self.app(scope, receive, send)


def _denied(path: str) -> JSONResponse:
    response = ApiError(401, "missing or wrong API key (Authorization: Bearer ...)", "invalid_api_key").response()
    if not path.startswith("/v1/"):
        response.headers["WWW-Authenticate"] = 'Basic realm="model factory playground"'
    return response


app.add_middleware(KeyCheck)


# Helpers stand above the class: serve.ingress rebuilds its methods with the module's globals
# as they are when the decorator runs.
def _chunk(rid: str, model: str, text: str, chat: bool, finish: str | None) -> dict:
    choice = {"index": 0, "finish_reason": finish}
    choice.update({"delta": {"role": "assistant", "content": text}} if chat else {"text": text, "logprobs": None})
    return {"id": rid, "object": "chat.completion.chunk" if chat else "text_completion", "created": int(time.time()),
            "model": model, "choices": [choice]}


def _extra(result: GenerationResult, elapsed: float, label: str) -> dict:
    tokens = len(result.completions[0].token_ids)
    return {"version": label, "server": result.server,
            "tokens_per_s": round(tokens / elapsed, 1) if elapsed > 0 else None, "completion_tokens": tokens}


async def _json(request: Request) -> dict:
    try:
        body = await request.json()
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise ApiError(400, "the body is not valid JSON") from None
    if not isinstance(body, dict):
        raise ApiError(400, "the body must be a JSON object")
    return body


async def _maybe_await(value):
    return await value if asyncio.iscoroutine(value) else value


@serve.deployment(ray_actor_options={"num_cpus": 0.25}, max_ongoing_requests=256)
@serve.ingress(app)
class Playground:
    def __init__(self, cfg_json: str, run_dir: str):
        from runtime.core.metrics import PlaygroundMetrics

        self.cfg = FactoryConfig.model_validate_json(cfg_json)
        self.limits = self.cfg.playground
        self.run_dir = Path(run_dir)
        self.key = resolve_key(self.cfg)
        self.engines: collections.OrderedDict[str, Any] = collections.OrderedDict()
        self.tokenizers: dict[str, Any] = {}
        self.running: collections.Counter[str] = collections.Counter()
        self.lock = asyncio.Lock()
        self.feedback = FeedbackStore(self.run_dir / "feedback.sqlite")
        self.metrics = PlaygroundMetrics()

    # ---- OpenAI-compatible API -------------------------------------------

    @app.get("/v1/models")
    async def models(self, request: Request):
        return await self._guard(request, self._models)

    @app.post("/v1/completions")
    async def completions(self, request: Request):
        return await self._guard(request, self._completions)

    @app.post("/v1/chat/completions")
    async def chat(self, request: Request):
        return await self._guard(request, self._chat)

    @app.post("/feedback")
    async def add_feedback(self, request: Request):
        return await self._guard(request, self._feedback)

    @app.get("/feedback/pairs.jsonl")
    async def pairs(self, request: Request):
        return await self._guard(request, lambda _: PlainTextResponse(self.feedback.export_jsonl()))

    @app.get("/")
    async def page(self):
        return HTMLResponse(PAGE.read_text())

    async def _guard(self, request: Request, handler):
        """Run `handler`, answering an ApiError as its JSON response (KeyCheck has already checked the key)."""
        try:
            return await _maybe_await(handler(request))
        except ApiError as exc:
            return exc.response()

    def _models(self, request: Request) -> dict:
        return {"object": "list", "data": [{"id": name, "object": "model", "created": 0, "owned_by": "factory"}
                                           for name in self.known()]}

    async def _completions(self, request: Request):
        body = await _json(request)
        if not isinstance(body.get("prompt"), str):
            raise ApiError(400, "prompt must be one string")
        return await self._respond(request, body, body["prompt"], chat=False)

    async def _chat(self, request: Request):
        body = await _json(request)
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages:
            raise ApiError(400, "messages must be a non-empty list")
        tokenizer = self._tokenizer(self._path(body.get("model")))
        try:
            prompt = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        except Exception as exc:  # a malformed message list is the caller's error
            raise ApiError(400, f"messages: {exc}") from None
        return await self._respond(request, body, prompt, chat=True)

    async def _feedback(self, request: Request) -> dict:
        body = await _json(request)
        try:
            rating = {"up": 1, "down": -1, 1: 1, -1: -1}[body["rating"]]
            row = self.feedback.add(str(body["model"]), str(body.get("version", "")), str(body["prompt"]),
                                    str(body["response"]), rating, str(body.get("comment", "")))
        except (KeyError, TypeError):
            raise ApiError(400, "feedback needs model, prompt, response and rating (up or down)") from None
        return {"id": row}

    # ---- generation --------------------------------------------------------

    async def _respond(self, request: Request, body: dict, prompt: str, chat: bool):
        model = body.get("model")
        sampling = self._sampling(body)
        self._check_prompt(model, prompt, sampling)
        key = self.key or "loopback"
        if self.running[key] >= self.limits.max_concurrency_per_key:
            raise ApiError(429, f"more than {self.limits.max_concurrency_per_key} requests running for this key",
                           "rate_limit_exceeded")
        self.running[key] += 1
        gen = GenerationRequest(prompt=prompt, sampling=sampling, workload=Workload.PLAYGROUND)
        if body.get("stream"):
            return StreamingResponse(self._stream(model, gen, chat, key), media_type="text/event-stream")
        try:
            result, elapsed = await self._generate(model, gen)
        finally:
            self.running[key] -= 1
        self.metrics.record(model, result, elapsed)
        return self._body(model, result, chat, elapsed)

    async def _generate(self, model: str, gen: GenerationRequest) -> tuple[GenerationResult, float]:
        """The result and its generation seconds (an engine's start on first use not counted)."""
        handle = await self._engine(model)
        started = time.monotonic()
        try:
            [result] = await asyncio.wait_for(handle.generate.remote([gen]), timeout=self.limits.request_timeout_s)
        except asyncio.TimeoutError:
            raise ApiError(504, f"no answer within {self.limits.request_timeout_s}s", "timeout") from None
        return result, time.monotonic() - started

    async def _stream(self, model: str, gen: GenerationRequest, chat: bool, key: str):
        rid = f"{'chatcmpl' if chat else 'cmpl'}-{gen.id}"
        try:
            handle = await self._engine(model)
            started = time.monotonic()
            async for ref in handle.generate_stream.options(num_returns="streaming").remote(gen):
                item = await asyncio.wait_for(ref, timeout=self.limits.request_timeout_s)
                if "result" in item:
                    result = item["result"]
                    self.metrics.record(model, result, time.monotonic() - started)
                    final = _chunk(rid, model, "", chat, result.completions[0].finish_reason)
                    final["factory"] = _extra(result, time.monotonic() - started, self._label(model, result))
                    yield f"data: {json.dumps(final)}\n\n"
                else:
                    yield f"data: {json.dumps(_chunk(rid, model, item['text'], chat, None))}\n\n"
            yield "data: [DONE]\n\n"
        finally:
            self.running[key] -= 1

    def _body(self, model: str, result: GenerationResult, chat: bool, elapsed: float) -> dict:
        c = result.completions[0]
        usage = {"prompt_tokens": len(result.prompt_token_ids), "completion_tokens": len(c.token_ids),
                 "total_tokens": len(result.prompt_token_ids) + len(c.token_ids)}
        choice = {"index": 0, "finish_reason": c.finish_reason, "logprobs": None}
        choice.update({"message": {"role": "assistant", "content": c.text}} if chat else {"text": c.text})
        return {"id": f"{'chatcmpl' if chat else 'cmpl'}-{result.request_id}", "created": int(time.time()),
                "object": "chat.completion" if chat else "text_completion", "model": model,
                "system_fingerprint": self._label(model, result), "choices": [choice], "usage": usage,
                "factory": _extra(result, elapsed, self._label(model, result))}

    def _label(self, model: str, result: GenerationResult) -> str:
        """The version that answered: a live server's weight version, else the saved model it loaded."""
        if result.server.startswith(actor_name(self.cfg.experiment.name, "inference", "")):
            return f"v{result.version}"
        return self._resolved_name(model)

    def _sampling(self, body: dict) -> SamplingConfig:
        max_tokens = body.get("max_tokens") or body.get("max_completion_tokens") or 64
        if not isinstance(max_tokens, int) or max_tokens > self.limits.max_tokens:
            raise ApiError(400, f"max_tokens must be an integer of at most {self.limits.max_tokens}")
        if (body.get("n") or 1) != 1:
            raise ApiError(400, "n must be 1")
        stop = body.get("stop") or []
        try:
            return SamplingConfig(max_tokens=max_tokens, temperature=body.get("temperature", 1.0),
                                  top_p=body.get("top_p", 1.0), seed=body.get("seed"),
                                  stop=[stop] if isinstance(stop, str) else stop)
        except ValueError as exc:
            raise ApiError(400, f"sampling: {exc.errors()[0]['loc'][0]}: {exc.errors()[0]['msg']}") from None

    def _check_prompt(self, model: str, prompt: str, sampling: SamplingConfig) -> None:
        n = len(self._tokenizer(self._path(model))(prompt)["input_ids"])
        if n > self.limits.max_prompt_tokens:
            raise ApiError(400, f"prompt has {n} tokens; the limit is {self.limits.max_prompt_tokens}")
        if n + sampling.max_tokens > self.cfg.inference.max_model_len:
            raise ApiError(400, f"prompt ({n}) plus max_tokens ({sampling.max_tokens}) exceeds the model's "
                                f"{self.cfg.inference.max_model_len} tokens")

    # ---- models and engines -----------------------------------------------

    def known(self) -> list[str]:
        return ["live", *list_models(self.run_dir)]

    def _path(self, model: Any) -> Path:
        saved = list_models(self.run_dir)
        versions = [k for k in saved if VERSION.match(k)]
        if model == "live" and saved:
            return saved[versions[-1]] if versions else list(saved.values())[-1]
        if model in saved:
            return saved[model]
        raise ApiError(404, f"model {model!r} not found; known models: {', '.join(self.known())}", "model_not_found")

    def _tokenizer(self, path: Path):
        from transformers import AutoTokenizer

        if str(path) not in self.tokenizers:
            self.tokenizers[str(path)] = AutoTokenizer.from_pretrained(path)
        return self.tokenizers[str(path)]

    async def _engine(self, model: str):
        if model == "live" and (live := self._live_service()) is not None:
            return live
        name = self._resolved_name(model)
        async with self.lock:
            if name not in self.engines:
                await self._start(name)
            self.engines.move_to_end(name)
            return self.engines[name]

    def _resolved_name(self, model: str) -> str:
        path = self._path(model)
        return next(k for k, v in list_models(self.run_dir).items() if v == path)

    def _live_service(self):
        """The running experiment's inference service (its generate and generate_stream answer like a
        server's, routed under the playground class with failover), or None when no run is live."""
        try:
            return ray.get_actor(service_name(self.cfg.experiment.name))
        except ValueError:
            return None

    async def _start(self, name: str) -> None:
        from actors.inference_server import InferenceServer

        while len(self.engines) >= self.limits.max_loaded_models:
            _, old = self.engines.popitem(last=False)
            ray.kill(old)
        placement = self.cfg.placement.inference
        handle = ray.remote(InferenceServer).options(
            name=actor_name(self.cfg.experiment.name, "playground", name), get_if_exists=True, num_cpus=placement.num_cpus,
            num_gpus=placement.num_gpus, max_concurrency=placement.max_concurrency,
        ).remote(self.cfg.inference, str(list_models(self.run_dir)[name]), f"playground/{name}", 0, self.cfg.model.dtype)
        try:
            await asyncio.wait_for(handle.setup.remote(), timeout=self.cfg.inference.setup_timeout_s)
        except asyncio.TimeoutError:
            ray.kill(handle)
            raise ApiError(503, f"model {name} did not start in time", "engine_unavailable") from None
        self.engines[name] = handle


def start(cfg: FactoryConfig, run_dir: Path | str, name: str = "playground") -> str:
    """Deploy the playground on the connected Ray cluster; returns its URL."""
    resolve_key(cfg)
    serve.start(http_options={"host": cfg.playground.host, "port": cfg.playground.port})
    serve.run(Playground.bind(cfg.model_dump_json(), str(run_dir)), name=name, route_prefix="/")
    return f"http://{cfg.playground.host}:{cfg.playground.port}/"

