"""FastAPI routes of the OpenAI-compatible server. Logic lives in :mod:`service`, request shapes in
:mod:`protocol`; this module parses, checks limits and auth, and formats responses (JSON and SSE)."""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import logging
import time
import uuid
from dataclasses import dataclass
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import ValidationError

from alignkit.errors import AlignkitError, ContextLengthError
from alignkit.methods import recommended_repetition_penalty
from alignkit.server.protocol import ChatCompletionRequest, CompletionRequest
from alignkit.server.service import Overloaded, Service, collect
from alignkit.types import GenerationConfig, Message

log = logging.getLogger("alignkit.server")


@dataclass(frozen=True)
class Limits:
    max_tokens: int = 2048
    """largest max_tokens a request may ask for"""
    default_max_tokens: int = 256
    max_n: int = 4
    max_body_bytes: int = 1 << 20
    retry_after: int = 2


class APIError(Exception):
    def __init__(self, status: int, message: str, *, type_: str = "invalid_request_error", param: str | None = None,
                 code: str | None = None, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type_, param, code
        self.headers = headers or {}

    def response(self) -> JSONResponse:
        body = {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}
        return JSONResponse(body, status_code=self.status, headers=self.headers)


def build_app(service: Service, *, api_key: str | None = None, limits: Limits = Limits(),
              log_prompts: bool = False) -> FastAPI:
    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        service.start()
        yield
        await asyncio.to_thread(service.stop)  # running batches finish; queued requests get 503

    app = FastAPI(title="alignkit", version="1", docs_url=None, redoc_url=None, lifespan=lifespan)
    model = service.model

    @app.exception_handler(APIError)
    async def _api_error(request: Request, exc: APIError):
        return exc.response()

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception):  # pragma: no cover - a bug, never user input
        log.exception("internal error")
        return APIError(500, f"internal error: {type(exc).__name__}", type_="server_error").response()

    @app.middleware("http")
    async def _auth(request: Request, call_next):
        if api_key and request.url.path.startswith("/v1"):
            header = request.headers.get("authorization", "")
            given = header[7:] if header.lower().startswith("bearer ") else ""
            if not hmac.compare_digest(given.encode(), api_key.encode()):
                return APIError(401, "invalid or missing API key (send Authorization: Bearer KEY)",
                                code="invalid_api_key").response()
        return await call_next(request)

    @app.get("/health")
    async def health():
        return {"status": "ok" if service.accepting else "shutting down", "model": service.name,
                "stats": service.stats.__dict__}

    @app.get("/v1/models")
    async def models():
        return {"object": "list", "data": [{"id": service.name, "object": "model", "created": 0,
                                            "owned_by": "alignkit", "info": _safe_info(model)}]}

    @app.post("/v1/chat/completions")
    async def chat(request: Request):
        req = await _parse(request, ChatCompletionRequest, limits)
        msgs = [Message(m.role, m.content) for m in req.messages]
        if req.stream and req.logprobs:
            raise APIError(400, "logprobs are available without streaming only", param="logprobs")
        if log_prompts:
            log.info("chat request: %s", json.dumps([m.to_dict() for m in msgs], ensure_ascii=False))
        return await _complete(request, req, msgs, chat=True)

    @app.post("/v1/completions")
    async def completions(request: Request):
        req = await _parse(request, CompletionRequest, limits)
        if req.stream and (req.logprobs or req.echo):
            raise APIError(400, "logprobs and echo are available without streaming only", param="stream")
        if log_prompts:
            log.info("completion request: %r", req.prompt)
        return await _complete(request, req, req.prompt, chat=False)

    async def _complete(request: Request, req: Any, prompt: Any, *, chat: bool):
        max_tokens = req.max_completion_tokens or req.max_tokens or limits.default_max_tokens
        if max_tokens > limits.max_tokens:
            raise APIError(400, f"max_tokens is {max_tokens}; this server allows at most {limits.max_tokens}",
                           param="max_tokens")
        if req.n > limits.max_n:
            raise APIError(400, f"n is {req.n}; this server allows at most {limits.max_n}", param="n")
        prompt_tokens = await asyncio.to_thread(_count, model, prompt, max_tokens)
        ctx = model.context_length
        if ctx and prompt_tokens is not None and prompt_tokens + max_tokens > ctx:
            raise APIError(400, f"the prompt has {prompt_tokens} tokens and max_tokens is {max_tokens}; together "
                           f"they exceed the model's context of {ctx} tokens", param="messages" if chat else "prompt",
                           code="context_length_exceeded")
        rp = req.repetition_penalty
        if rp is None:
            rp = recommended_repetition_penalty(model)
        try:
            configs = [GenerationConfig(max_new_tokens=max_tokens, temperature=req.temperature, top_p=req.top_p,
                                        top_k=req.top_k, repetition_penalty=rp, stop=tuple(req.stops),
                                        seed=None if req.seed is None else req.seed + i) for i in range(req.n)]
        except ValueError as e:
            raise APIError(400, str(e)) from None
        try:
            job = service.submit([prompt] * req.n, configs)
        except Overloaded as e:
            raise APIError(503, f"server busy: {e}; retry later", type_="server_error", code="overloaded",
                           headers={"Retry-After": str(limits.retry_after)}) from None
        rid = ("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex[:24]
        if req.stream:
            opts = (req.model_extra or {}).get("stream_options") or {}
            include_usage = isinstance(opts, dict) and bool(opts.get("include_usage"))
            return StreamingResponse(_sse(job, rid, chat, req.n, include_usage), media_type="text/event-stream")
        try:
            comps = await collect(job)
        except asyncio.CancelledError:
            job.cancel()
            raise
        except Overloaded as e:
            raise APIError(503, str(e), type_="server_error", headers={"Retry-After": str(limits.retry_after)}) from None
        except AlignkitError as e:
            raise APIError(400, str(e)) from None
        logprobs = None
        want_lp = req.logprobs if chat else req.logprobs is not None
        if want_lp or (not chat and req.echo):
            logprobs = await asyncio.to_thread(_logprobs, model, req, prompt, comps, chat)
        return _response(rid, chat, service.name, prompt, comps, req, logprobs)

    async def _sse(job, rid: str, chat: bool, n: int, include_usage: bool):
        created = int(time.time())
        obj = "chat.completion.chunk" if chat else "text_completion"
        started: set[int] = set()
        finals: dict[int, Any] = {}
        try:
            while True:
                item = await job.events.get()
                if item[0] == "error":
                    err = item[1]
                    yield _sse_data({"error": {"message": str(err), "type": "server_error"}})
                    break
                if item[0] == "done":
                    break
                _, choice, ev = item
                if chat:
                    delta: dict[str, Any] = {"content": ev.text} if ev.text else {}
                    if choice not in started:
                        delta = {"role": "assistant", **delta}
                        started.add(choice)
                    ch = {"index": choice, "delta": delta, "finish_reason": ev.finish_reason, "logprobs": None}
                else:
                    ch = {"index": choice, "text": ev.text, "finish_reason": ev.finish_reason, "logprobs": None}
                if ev.completion is not None:
                    finals[choice] = ev.completion
                yield _sse_data({"id": rid, "object": obj, "created": created, "model": service.name, "choices": [ch]})
            if include_usage and finals:
                yield _sse_data({"id": rid, "object": obj, "created": created, "model": service.name, "choices": [],
                                 "usage": _usage(list(finals.values()))})
            yield "data: [DONE]\n\n"
        finally:  # the client went away, or the stream ended: stop generating for it
            job.cancel()

    return app


def _sse_data(obj: dict[str, Any]) -> str:
    return f"data: {json.dumps(obj, ensure_ascii=False)}\n\n"


async def _parse(request: Request, cls, limits: Limits):
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limits.max_body_bytes:
        raise APIError(413, f"request body is {declared} bytes; the limit is {limits.max_body_bytes}")
    body = bytearray()
    async for chunk in request.stream():
        body.extend(chunk)
        if len(body) > limits.max_body_bytes:
            raise APIError(413, f"request body is over the limit of {limits.max_body_bytes} bytes")
    try:
        data = json.loads(bytes(body))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise APIError(400, f"the request body is not valid JSON: {e}") from None
    if not isinstance(data, dict):
        raise APIError(400, "the request body must be a JSON object")
    try:
        return cls.model_validate(data)
    except ValidationError as e:
        err = e.errors()[0]
        where = ".".join(str(x) for x in err.get("loc", ()))
        msg = err.get("msg", "invalid value").removeprefix("Value error, ")
        raise APIError(400, f"{where}: {msg}" if where else msg, param=where or None) from None


def _count(model: Any, prompt: Any, max_tokens: int) -> int | None:
    """Tokens of the prompt as the model will see it (None if the model cannot count)."""
    from alignkit.methods.base import MethodModel

    try:
        if isinstance(model, MethodModel):
            prepared = model.prepare(prompt, GenerationConfig(max_new_tokens=max_tokens))
            base = model.base
            return base.count_tokens(prepared.prompt) if hasattr(base, "count_tokens") else None
        return model.count_tokens(prompt) if hasattr(model, "count_tokens") else None
    except ContextLengthError as e:
        raise APIError(400, str(e), code="context_length_exceeded") from None
    except AlignkitError as e:
        raise APIError(400, str(e)) from None


def _usage(comps) -> dict[str, int]:
    """Token usage of a response; for a route, every stage's tokens added up (rewriter, model, corrector)."""
    from alignkit.methods.routes import usage

    each = [usage(x) for x in comps]
    p = each[0]["prompt_tokens"] if each else 0
    c = sum(u["completion_tokens"] for u in each)
    return {"prompt_tokens": p, "completion_tokens": c, "total_tokens": p + c}


def _logprobs(model: Any, req: Any, prompt: Any, comps, chat: bool) -> list[Any]:
    """Per-choice log-probabilities of the returned text, from a teacher-forced pass of the same model."""
    k = (req.top_logprobs or 0) if chat else (req.logprobs or 0)
    if not model.capabilities.topk_logprobs and not model.capabilities.full_vocab_logits:
        raise APIError(400, "this model does not give log-probabilities", param="logprobs")
    if not chat and req.echo and getattr(model, "method", "none") != "none":
        raise APIError(400, "echo with logprobs needs a server started with --method none", param="echo")
    out = []
    for c in comps:
        if not chat and req.echo:  # the prompt's own tokens too, each given what precedes it
            sc = model.score([""], [prompt + c.text], top_k=max(k, 1))[0]
        else:
            sc = model.score([prompt], [c.text], top_k=max(k, 1))[0]
        piece = _piece_fn(model)
        pieces = [piece(t) for t in sc.tokens]
        tops = [tuple((piece(t), v) for t, v in top) for top in (sc.top_logprobs or [()] * len(pieces))]
        if chat:
            out.append({"content": [
                {"token": t, "logprob": lp, "bytes": list(t.encode()),
                 "top_logprobs": [{"token": tt, "logprob": v, "bytes": list(tt.encode())} for tt, v in top[:k]]}
                for t, lp, top in zip(pieces, sc.logprobs, tops)]})
        else:
            offsets, pos = [], 0
            for t in pieces:
                offsets.append(pos)
                pos += len(t)
            lps = list(sc.logprobs)
            if req.echo and lps:
                lps[0] = None  # nothing precedes the first token
            out.append({"tokens": pieces, "token_logprobs": lps,
                        "top_logprobs": [dict(top[:k]) for top in tops], "text_offset": offsets})
    return out


def _piece_fn(model: Any):
    """Raw vocabulary tokens ('Ġthe', '▁the') -> the text they stand for (' the'), as OpenAI reports tokens."""
    tok = getattr(model, "tokenizer", None)
    if tok is None:
        return lambda t: t
    return lambda t: tok.convert_tokens_to_string([t])


def _response(rid: str, chat: bool, name: str, prompt: Any, comps, req: Any, logprobs) -> dict[str, Any]:
    created = int(time.time())
    if chat:
        choices = [{"index": i, "message": {"role": "assistant", "content": c.text}, "finish_reason": c.finish_reason,
                    "logprobs": logprobs[i] if logprobs else None} for i, c in enumerate(comps)]
        return {"id": rid, "object": "chat.completion", "created": created, "model": name, "choices": choices,
                "usage": _usage(comps)}
    choices = [{"index": i, "text": (prompt + c.text) if req.echo else c.text, "finish_reason": c.finish_reason,
                "logprobs": logprobs[i] if logprobs else None} for i, c in enumerate(comps)]
    return {"id": rid, "object": "text_completion", "created": created, "model": name, "choices": choices,
            "usage": _usage(comps)}


def _safe_info(model: Any) -> dict[str, Any]:
    info = model.info()
    return {k: info.get(k) for k in ("backend", "method", "spec", "template") if k in info}
