"""The HTTP API (FastAPI): OpenAI-compatible completions and embeddings, classification, health, metrics.

Every request body is read as bytes, checked as UTF-8, parsed as JSON and validated against
:mod:`edgeft.serve.schemas` here, so every bad input gets a 400 with a one-line message in the OpenAI
error shape (``{"error": {"message", "type", "param", "code"}}``) and the server keeps serving. Nothing in
a request is evaluated, loaded or used as a path: inputs are text for the tokenizer and numbers for the
sampler.

Admission (:class:`Workers`): at most ``concurrency`` requests compute at once (worker threads sharing the
one loaded model), at most ``queue`` more wait; a request that finds the queue full gets 429 with
``Retry-After``. ``timeout`` bounds queue wait plus compute: past it, a waiting request gets 503, a
computing one 504 (a stream ends with an error event).
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import math
import threading
import time
import uuid
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import dataclass

import numpy as np
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from pydantic import ValidationError

from edgeft.serve import schemas
from edgeft.serve.engine import Cancelled, RequestError
from edgeft.serve.metrics import CONTENT_TYPE_LATEST, Metrics

log = logging.getLogger(__name__)

MAX_BODY_BYTES = 1 << 20


@dataclass
class Settings:
    concurrency: int = 1
    queue: int = 8
    timeout_s: float = 60.0
    max_tokens: int = 256  # when a request gives none (and the context allows)
    max_inputs: int = 64  # texts per classify / embeddings request


class HTTPError(Exception):
    def __init__(self, status: int, message: str, kind: str = "invalid_request_error", param: str | None = None,
                 headers: dict | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.kind, self.param, self.headers = status, message, kind, param, headers or {}


def error_body(message: str, kind: str, param: str | None = None) -> dict:
    return {"error": {"message": message, "type": kind, "param": param, "code": None}}


def _one_line(e: ValidationError) -> tuple[str, str | None]:
    err = e.errors(include_url=False)[0]
    if err["type"] == "json_invalid":
        return f"malformed JSON: {err.get('ctx', {}).get('error', err['msg'])}", None
    loc = ".".join(str(p) for p in err["loc"])
    more = f" (and {len(e.errors()) - 1} more)" if len(e.errors()) > 1 else ""
    return (f"{loc}: {err['msg']}{more}" if loc else f"{err['msg']}{more}"), loc or None


async def read_body(request: Request, model: type):
    """The request body validated as ``model``; HTTPError 400/413 with a one-line message otherwise."""
    size = request.headers.get("content-length")
    if size is not None and size.isdigit() and int(size) > MAX_BODY_BYTES:
        raise HTTPError(413, f"body of {size} bytes exceeds the limit of {MAX_BODY_BYTES}")
    body = await request.body()
    if len(body) > MAX_BODY_BYTES:
        raise HTTPError(413, f"body of {len(body)} bytes exceeds the limit of {MAX_BODY_BYTES}")
    if not body.strip():
        raise HTTPError(400, "empty body; send a JSON object")
    try:
        body.decode("utf-8")
    except UnicodeDecodeError as e:
        raise HTTPError(400, f"body is not valid UTF-8 (byte {e.start})") from None
    try:
        return model.model_validate_json(body)
    except ValidationError as e:
        msg, param = _one_line(e)
        raise HTTPError(400, msg, param=param) from None


class Workers:
    """A bounded queue in front of ``concurrency`` worker threads (see the module docstring)."""

    def __init__(self, settings: Settings, metrics: Metrics) -> None:
        self.settings = settings
        self.metrics = metrics
        self.pool = ThreadPoolExecutor(settings.concurrency, thread_name_prefix="edgeft-serve")
        self.sem: asyncio.Semaphore | None = None
        self.waiting = 0
        self.running = 0
        self.recent: deque[float] = deque(maxlen=32)  # compute seconds of recent requests, for Retry-After

    def retry_after(self) -> int:
        per = (sum(self.recent) / len(self.recent)) if self.recent else 1.0
        return max(1, math.ceil(per * (self.waiting + 1) / self.settings.concurrency))

    async def submit(self, fn, deadline: float) -> asyncio.Future:
        """Run ``fn`` in a worker once one is free; the worker is freed when ``fn`` returns (not when the caller
        stops waiting). HTTPError 429 when the queue is full, 503 when the deadline passes in the queue."""
        if self.sem is None:
            self.sem = asyncio.Semaphore(self.settings.concurrency)
        if self.sem.locked() and self.waiting >= self.settings.queue:
            raise HTTPError(429, f"server busy: {self.running} requests computing and {self.waiting} queued "
                                 f"(limit {self.settings.queue}); retry later", kind="rate_limit_error",
                            headers={"Retry-After": str(self.retry_after())})
        self.waiting += 1
        self.metrics.queue_depth.set(self.waiting)
        t0 = time.monotonic()
        try:
            await asyncio.wait_for(self.sem.acquire(), timeout=max(deadline - t0, 0.001))
        except (asyncio.TimeoutError, TimeoutError):
            raise HTTPError(503, f"timed out after {self.settings.timeout_s:g}s waiting in the queue",
                            kind="timeout", headers={"Retry-After": str(self.retry_after())}) from None
        finally:
            self.waiting -= 1
            self.metrics.queue_depth.set(self.waiting)
        self.metrics.queue_wait.observe(time.monotonic() - t0)
        self.running += 1
        self.metrics.in_flight.set(self.running)
        started = time.monotonic()
        fut = asyncio.get_running_loop().run_in_executor(self.pool, fn)

        def done(_):
            self.running -= 1
            self.metrics.in_flight.set(self.running)
            self.recent.append(time.monotonic() - started)
            self.sem.release()

        fut.add_done_callback(done)
        return fut


def create_app(engine, bundle, settings: Settings | None = None, request_log=None) -> FastAPI:
    """The app serving ``engine`` (loaded from ``bundle``); ``request_log`` a RequestLog or None."""
    # Over 80 lines: the app factory: every route is a closure over this app's engine, settings, metrics, workers and
    # request log, and FastAPI registers them where they are defined; the helpers they share sit at the top.
    settings = settings or Settings()
    metrics = Metrics(bundle.model_id)
    manifest_hash = bundle.manifest.get("manifest_sha256", "")
    metrics.info.labels(bundle.model_id, manifest_hash).set(1)
    workers = Workers(settings, metrics)
    kind = engine.kind
    names = {bundle.model_id, bundle.artifact, f"{bundle.manifest.get('name')}-{bundle.manifest.get('version')}",
             str(bundle.manifest.get("name"))}

    @asynccontextmanager
    async def lifespan(app):
        yield
        # uvicorn has finished every in-flight request when this runs; let the workers end, then close the log
        workers.pool.shutdown(wait=True)
        if request_log is not None:
            request_log.close()

    app = FastAPI(title="edgeft serve", version=str(bundle.manifest.get("edgeft_version")), lifespan=lifespan,
                  docs_url=None, redoc_url=None, openapi_url=None)
    app.state.workers = workers
    app.state.metrics = metrics

    @app.exception_handler(Exception)
    async def internal(request: Request, e: Exception):  # a bug, not bad input: one line, logged, still JSON
        endpoint = {"/v1/chat/completions": "chat", "/v1/completions": "completions", "/v1/classify": "classify",
                    "/v1/embeddings": "embeddings"}.get(request.url.path, "other")
        log.error("%s: %s: %s", request.url.path, type(e).__name__, e)
        metrics.requests.labels(endpoint, "500").inc()
        metrics.errors.labels(endpoint, "internal").inc()
        return JSONResponse(error_body(f"internal error: {type(e).__name__}", "server_error"), status_code=500)

    def fail(endpoint: str, e: HTTPError) -> JSONResponse:
        metrics.requests.labels(endpoint, str(e.status)).inc()
        metrics.errors.labels(endpoint, {429: "queue_full", 503: "timeout", 504: "timeout"}.get(
            e.status, "bad_request" if e.status < 500 else "internal")).inc()
        return JSONResponse(error_body(e.message, e.kind, e.param), status_code=e.status, headers=e.headers)

    def ok(endpoint: str, body: dict, t0: float) -> JSONResponse:
        metrics.requests.labels(endpoint, "200").inc()
        metrics.latency.labels(endpoint).observe(time.monotonic() - t0)
        return JSONResponse(body)

    def check_kind(endpoint_kind: str) -> None:
        if kind != endpoint_kind:
            hint = {"causal-lm": "/v1/chat/completions or /v1/completions", "classifier": "/v1/classify",
                    "encoder": "/v1/embeddings"}[kind]
            raise HTTPError(404, f"this server serves a {kind} ({bundle.model_id}); use {hint}", kind="not_found")

    def check_model(req) -> None:
        if req.model is not None and req.model not in names:
            raise HTTPError(404, f"model {req.model!r} is not served here; this server serves {bundle.model_id!r} "
                                 "(GET /v1/models)", kind="not_found", param="model")

    def log_request(record: dict) -> None:
        if request_log is not None:
            try:
                request_log.write({"model": bundle.model_id, "artifact": bundle.artifact, **record})
            except OSError as e:  # a full disk must not take the server down
                log.warning("request log: %s", e)

    # ------------------------------------------------------------------ causal LM
    def sampling_args(req, max_tokens: int | None, n_prompt: int) -> dict:
        if max_tokens is None:
            max_tokens = max(1, min(settings.max_tokens, engine.context - n_prompt))
        engine.check_length(n_prompt, max_tokens)
        stops = req.stops()
        if len(stops) > 4:
            raise HTTPError(400, f"stop: at most 4 sequences (got {len(stops)})", param="stop")
        return {"max_tokens": max_tokens, "temperature": req.temperature, "top_p": req.top_p, "stop": stops,
                "seed": req.seed}

    async def lm_request(request: Request, endpoint: str, chat: bool):
        # Over 80 lines: one request from body to response (checks, tokenize, queue, stream or not, finish reasons,
        # usage, metrics, log) sharing the deadline, timings and logged input; the streaming and plain paths differ in
        # a few lines each.
        t0 = time.monotonic()
        deadline = t0 + settings.timeout_s
        try:
            check_kind("causal-lm")
            req = await read_body(request, schemas.ChatRequest if chat else schemas.CompletionRequest)
            check_model(req)
            if chat:
                ids = engine.chat_ids([m.model_dump() for m in req.messages])
                user = next((m for m in reversed(req.messages) if m.role == "user"), None)
                logged_input = {"messages": [m.model_dump() for m in req.messages],
                                "prompt": schemas_text(user.content) if user else ""}
                max_tokens = req.max_completion_tokens or req.max_tokens
            else:
                prompts = [req.prompt] if isinstance(req.prompt, str) else req.prompt
                if len(prompts) != 1:
                    raise HTTPError(400, f"prompt: one prompt per request (got {len(prompts)})", param="prompt")
                ids = engine.text_ids(prompts[0])
                logged_input = {"prompt": prompts[0]}
                max_tokens = req.max_tokens
            args = sampling_args(req, max_tokens, len(ids))
        except RequestError as e:
            return fail(endpoint, HTTPError(e.status, str(e), param=e.param))
        except HTTPError as e:
            return fail(endpoint, e)
        rid = ("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex[:24]
        created = int(time.time())
        cancel = threading.Event()
        metrics.prompt_tokens.inc(len(ids))

        def finish(c) -> None:
            metrics.completion_tokens.inc(c.completion_tokens)
            metrics.ttft.observe(c.ttft_s)
            if c.completion_tokens > 1 and c.decode_s > 0:
                metrics.tok_s.observe((c.completion_tokens - 1) / c.decode_s)
            log_request({"id": rid, "endpoint": endpoint, "input": logged_input, "output": c.text,
                         "prompt_tokens": c.prompt_tokens, "completion_tokens": c.completion_tokens,
                         "finish_reason": c.finish_reason, "latency_ms": round(1e3 * (time.monotonic() - t0), 2),
                         "ttft_ms": round(1e3 * c.ttft_s, 2), "temperature": args["temperature"],
                         "top_p": args["top_p"],
                         "confidence": {"mean_logprob": c.mean_logprob, "mean_entropy": c.mean_entropy}})

        def usage(c) -> dict:
            return {"prompt_tokens": c.prompt_tokens, "completion_tokens": c.completion_tokens,
                    "total_tokens": c.prompt_tokens + c.completion_tokens}

        if not req.stream:
            try:
                fut = await workers.submit(lambda: engine.complete(ids, deadline=deadline, cancel=cancel, **args),
                                           deadline)
                c = await fut
            except HTTPError as e:
                return fail(endpoint, e)
            except Cancelled:
                return fail(endpoint, HTTPError(504, f"timed out after {settings.timeout_s:g}s while computing",
                                                kind="timeout"))
            finish(c)
            choice = ({"index": 0, "message": {"role": "assistant", "content": c.text}, "logprobs": None,
                       "finish_reason": c.finish_reason} if chat else
                      {"index": 0, "text": c.text, "logprobs": None, "finish_reason": c.finish_reason})
            return ok(endpoint, {"id": rid, "object": "chat.completion" if chat else "text_completion",
                                 "created": created, "model": bundle.model_id, "choices": [choice],
                                 "usage": usage(c), "system_fingerprint": manifest_hash[:16]}, t0)

        loop = asyncio.get_running_loop()
        queue: asyncio.Queue = asyncio.Queue()

        def job():
            try:
                c = engine.complete(ids, deadline=deadline, cancel=cancel,
                                    on_text=lambda piece: loop.call_soon_threadsafe(queue.put_nowait, ("text", piece)),
                                    **args)
                loop.call_soon_threadsafe(queue.put_nowait, ("done", c))
            except BaseException as e:  # noqa: BLE001 - handed to the stream, which reports it
                loop.call_soon_threadsafe(queue.put_nowait, ("error", e))

        try:
            await workers.submit(job, deadline)
        except HTTPError as e:
            return fail(endpoint, e)
        obj = "chat.completion.chunk" if chat else "text_completion"
        include_usage = bool(req.stream_options and req.stream_options.include_usage)

        def chunk(delta: str | None, finish_reason: str | None = None, first: bool = False) -> str:
            if chat:
                d = ({"role": "assistant", "content": ""} if first else ({"content": delta} if delta else {}))
                choice = {"index": 0, "delta": d, "logprobs": None, "finish_reason": finish_reason}
            else:
                choice = {"index": 0, "text": delta or "", "logprobs": None, "finish_reason": finish_reason}
            body = {"id": rid, "object": obj, "created": created, "model": bundle.model_id, "choices": [choice],
                    "system_fingerprint": manifest_hash[:16]}
            return f"data: {json.dumps(body, ensure_ascii=False)}\n\n"

        async def events():
            status = "200"
            try:
                if chat:
                    yield chunk(None, first=True)
                while True:
                    what, value = await queue.get()
                    if what == "text":
                        yield chunk(value)
                    elif what == "done":
                        finish(value)
                        yield chunk(None, value.finish_reason)
                        if include_usage:
                            body = {"id": rid, "object": obj, "created": created, "model": bundle.model_id,
                                    "choices": [], "usage": usage(value)}
                            yield f"data: {json.dumps(body)}\n\n"
                        break
                    else:
                        timed_out = isinstance(value, Cancelled)
                        status = "504" if timed_out else "500"
                        metrics.errors.labels(endpoint, "timeout" if timed_out else "internal").inc()
                        msg = (f"timed out after {settings.timeout_s:g}s while computing" if timed_out
                               else f"internal error: {type(value).__name__}: {value}")
                        if not timed_out:
                            log.error("%s %s: %s", endpoint, rid, msg)
                        yield f"data: {json.dumps(error_body(msg, 'timeout' if timed_out else 'server_error'))}\n\n"
                        break
                yield "data: [DONE]\n\n"
            finally:
                cancel.set()  # the client went away (or we are done): stop decoding
                metrics.requests.labels(endpoint, status).inc()
                metrics.latency.labels(endpoint).observe(time.monotonic() - t0)

        return StreamingResponse(events(), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

    def schemas_text(content) -> str:
        if content is None:
            return ""
        if isinstance(content, str):
            return content
        return "".join(p.text or "" for p in content if p.type == "text")

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request):
        return await lm_request(request, "chat", chat=True)

    @app.post("/v1/completions")
    async def completions(request: Request):
        return await lm_request(request, "completions", chat=False)

    # ------------------------------------------------------------------ classifiers and encoders
    async def text_request(request: Request, endpoint: str, model: type, want: str):
        t0 = time.monotonic()
        deadline = t0 + settings.timeout_s
        try:
            check_kind(want)
            req = await read_body(request, model)
            check_model(req)
            texts = [req.input] if isinstance(req.input, str) else list(req.input)
            if not texts:
                raise HTTPError(400, "input: give at least one text", param="input")
            if len(texts) > settings.max_inputs:
                raise HTTPError(400, f"input: at most {settings.max_inputs} texts per request (got {len(texts)})",
                                param="input")
            fut = await workers.submit(
                (lambda: (engine.classify(texts), engine.token_counts(texts))) if want == "classifier" else
                (lambda: (engine.embed(texts), engine.token_counts(texts))), deadline)
            result, counts = await fut
        except HTTPError as e:
            return fail(endpoint, e)
        metrics.prompt_tokens.inc(sum(counts))
        latency_ms = round(1e3 * (time.monotonic() - t0), 2)
        usage = {"prompt_tokens": sum(counts), "total_tokens": sum(counts)}
        if want == "classifier":
            for i, (t, r) in enumerate(zip(texts, result)):
                log_request({"endpoint": endpoint, "input": {"text": t}, "output": r["label"], "input_tokens": counts[i],
                             "latency_ms": latency_ms, "confidence": {"score": r["score"], "entropy": r["entropy"]},
                             "probs": r["probs"], "centroid_distance": r["centroid_distance"]})
            data = [{"index": i, "label": r["label"], "score": r["score"], "probs": r["probs"]}
                    for i, r in enumerate(result)]
            return ok(endpoint, {"object": "list", "data": data, "model": bundle.model_id, "usage": usage}, t0)
        emb, dist = result
        for i, t in enumerate(texts):
            log_request({"endpoint": endpoint, "input": {"text": t}, "input_tokens": counts[i], "latency_ms": latency_ms,
                         "centroid_distance": dist[i]})
        if req.encoding_format == "base64":
            vecs = [base64.b64encode(np.ascontiguousarray(v, "<f4").tobytes()).decode() for v in emb]
        else:
            vecs = [[float(x) for x in v] for v in emb]
        data = [{"object": "embedding", "index": i, "embedding": v} for i, v in enumerate(vecs)]
        return ok(endpoint, {"object": "list", "data": data, "model": bundle.model_id, "usage": usage}, t0)

    @app.post("/v1/classify")
    async def classify(request: Request):
        return await text_request(request, "classify", schemas.ClassifyRequest, "classifier")

    @app.post("/v1/embeddings")
    async def embeddings(request: Request):
        return await text_request(request, "embeddings", schemas.EmbeddingRequest, "encoder")

    # ------------------------------------------------------------------ service endpoints
    @app.get("/health")
    async def health():
        return {"status": "ok", "model": bundle.model_id, "kind": kind, "in_flight": workers.running,
                "queued": workers.waiting, "concurrency": settings.concurrency, "queue": settings.queue}

    @app.get("/metrics")
    async def prometheus():
        return Response(metrics.render(), media_type=CONTENT_TYPE_LATEST)

    @app.get("/v1/models")
    async def models():
        info = bundle.artifact_info
        return {"object": "list", "data": [{
            "id": bundle.model_id, "object": "model", "created": _created(bundle.manifest), "owned_by": "edgeft",
            "kind": kind, "artifact": bundle.artifact, "format": info.format,
            "precision": info.precision, "bundle": bundle.manifest.get("name"),
            "version": bundle.manifest.get("version"), "manifest_sha256": manifest_hash,
            "device": bundle.device, "threads": bundle.threads, "selected_because": bundle.why}]}

    return app


def _created(manifest: dict) -> int:
    from datetime import datetime, timezone

    try:
        return int(datetime.strptime(manifest["created_utc"], "%Y-%m-%dT%H:%M:%SZ")
                   .replace(tzinfo=timezone.utc).timestamp())
    except (KeyError, ValueError):
        return 0
