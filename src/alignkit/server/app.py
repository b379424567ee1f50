"""FastAPI routes of the OpenAI-compatible server. Logic lives in :mod:`service`, request shapes in
:mod:`protocol` (the Responses API's in :mod:`responses`, tool calls in :mod:`tools`), reading and declaring bodies
in :mod:`bodies`, token ids and log-probabilities in :mod:`tokens`, limits and errors in :mod:`limits`, the
comparison page's shift and weights in :mod:`compare`; this module checks limits and auth, runs the requests and
formats responses (JSON and SSE)."""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import logging
import time
import uuid
from collections.abc import Sequence
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, StreamingResponse

from alignkit.errors import AlignkitError
from alignkit.methods import recommended_repetition_penalty
from alignkit.methods.routes import usage
from alignkit.models.base import answering_backend, backend_models
from alignkit.server import tools as toolcalls
from alignkit.server.bodies import declare_bodies, parse_body, validated
from alignkit.server.compare import UI_CSP, route_extras, shift_one, takes_chat, weighted_variant
from alignkit.server.limits import APIError, Limits, count_tokens
from alignkit.server.protocol import (
    ChatCompletionRequest,
    CompletionRequest,
    DetokenizeRequest,
    ShiftRequest,
    TokenizeRequest,
)
from alignkit.server.responses import EventStream, ResponsesRequest, new_ids, response_object
from alignkit.server.service import Overloaded, Service, collect, share_gates, weights_id
from alignkit.server.tokens import from_ids, logprobs_of, strip_bos, tokens_of
from alignkit.server.ui import page
from alignkit.types import GenerationConfig, Message

log = logging.getLogger("alignkit.server")
DEFAULT_LIMITS = Limits()


def build_app(services: Service | Sequence[Service], *, api_key: str | None = None, limits: Limits = DEFAULT_LIMITS,
              log_prompts: bool = False, close_models: bool = False) -> FastAPI:
    """The API of one route (a :class:`Service`) or of several: a request's ``model`` field picks the route by
    its name (with one route, any name is that route). ``close_models``: the server owns the models and closes
    them when it shuts down (``alignkit serve``: an engine with processes of its own, vLLM's async one, stops with
    it -- uvicorn ends the process on SIGTERM right after the app's shutdown)."""
    routes: dict[str, Service] = {}
    for svc in [services] if isinstance(services, Service) else list(services):
        if svc.name in routes:
            raise ValueError(f"two routes are named {svc.name!r}")
        routes[svc.name] = svc
    if not routes:
        raise ValueError("no route to serve")
    share_gates(list(routes.values()))

    def pick(name: str | None) -> tuple[Service, Any]:
        if len(routes) == 1:
            svc = next(iter(routes.values()))
        elif name is None:
            raise APIError(400, f"this server has several routes; name one in 'model': {', '.join(routes)}",
                           param="model")
        elif name not in routes:
            raise APIError(404, f"no route {name!r} here; the routes are {', '.join(routes)}", param="model",
                           code="model_not_found")
        else:
            svc = routes[name]
        return svc, svc.model

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        for svc in routes.values():
            svc.start()
        yield
        for svc in routes.values():  # running batches finish; queued requests get 503
            await asyncio.to_thread(svc.stop)
        if close_models:
            for svc in routes.values():
                await asyncio.to_thread(svc.model.close)

    app = FastAPI(title="alignkit", version="1", docs_url="/docs", redoc_url=None, lifespan=lifespan,
                  description="OpenAI-compatible API of alignkit models and alignment methods (one per route).")

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
        accepting = all(svc.accepting for svc in routes.values())
        first = next(iter(routes.values()))
        return {"status": "ok" if accepting else "shutting down", "model": first.name,
                "routes": {name: svc.stats.__dict__ for name, svc in routes.items()}, "stats": first.stats.__dict__,
                "memory": _memory(routes)}

    def model_card(name: str, svc: Any) -> dict[str, Any]:
        return {"id": name, "object": "model", "created": 0, "owned_by": "alignkit", "info": _safe_info(svc.model)}

    def default_reference() -> str:
        """The route the comparison page measures answers against by default: the raw model (method none)."""
        raw = [name for name, svc in routes.items() if getattr(svc.model, "method", None) == "none"]
        if not raw:
            raise APIError(400, f"name the reference route in 'reference' (no route here runs method none); the routes "
                           f"are {', '.join(routes)}", param="reference")
        return raw[0]

    shift_busy = [0]

    @app.post("/v1/shift")
    async def shift(request: Request):
        """An answer of one route, token by token, as a reference route sees it: per token the reference's rank and
        probability of it, its top tokens, the KL between the two routes' distributions there, and the shift class
        (unshifted: rank 0, marginal: 1-2, shifted: >= 3) -- exact over the full vocabulary when both routes run
        on local models, from top-k log-probabilities otherwise (``mode`` and ``approximation`` say which)."""
        req = await parse_body(request, ShiftRequest, limits)
        service, model = pick(req.model)
        ref_name = req.reference or default_reference()
        if ref_name not in routes:
            raise APIError(404, f"no route {ref_name!r} here; the routes are {', '.join(routes)}", param="reference",
                           code="model_not_found")
        reference = routes[ref_name]
        if req.mix_weights:
            model = weighted_variant(model, req.mix_weights)
        prompt: Any = req.prompt if req.messages is None else [Message(m.alignkit_role, m.text) for m in req.messages]
        if shift_busy[0] >= limits.max_shift_jobs:
            raise APIError(503, f"server busy: {shift_busy[0]} shift analyses running; retry later", type_="server_error",
                           code="overloaded", headers={"Retry-After": str(limits.retry_after)})
        shift_busy[0] += 1
        try:
            out = await asyncio.to_thread(shift_one, reference, service, model, prompt, req, limits)
        finally:
            shift_busy[0] -= 1
        return {"object": "shift", "model": service.name, "reference": ref_name, **out}

    @app.get("/v1/models")
    async def models():
        return {"object": "list", "data": [model_card(name, svc) for name, svc in routes.items()]}

    @app.get("/v1/models/{model_id:path}")
    async def model(model_id: str):
        """One route by name (the openai client's ``models.retrieve``); model ids may contain slashes."""
        if model_id not in routes:
            raise APIError(404, f"no model {model_id!r} here; served: {', '.join(routes)}", param="model",
                           code="model_not_found")
        return model_card(model_id, routes[model_id])

    @app.post("/v1/chat/completions")
    async def chat(request: Request):
        req = await parse_body(request, ChatCompletionRequest, limits)
        service, model = pick(req.model)
        msgs = [Message(m.alignkit_role, m.text) for m in req.messages]
        # tools: in the route's own chat template where it renders them, else described in alignkit's system note
        prompt: Any = msgs
        if (use := req.use_tools(model.capabilities.tool_format)) is not None:
            prompt = use.prompt(msgs, [m.turn for m in req.messages])
        if req.stream and req.logprobs:
            raise APIError(400, "logprobs are available without streaming only", param="logprobs")
        if log_prompts:
            log.info("chat request: %s", json.dumps([m.to_dict() for m in prompt], ensure_ascii=False))
        return await _complete(service, req, [prompt], chat=True)

    @app.post("/v1/completions")
    async def completions(request: Request):
        req = await parse_body(request, CompletionRequest, limits)
        service, model = pick(req.model)
        if req.stream and (req.logprobs or req.echo):
            raise APIError(400, "logprobs and echo are available without streaming only", param="stream")
        if len(req.prompts) > limits.max_prompts:
            raise APIError(400, f"{len(req.prompts)} prompts in one request; this server allows at most "
                           f"{limits.max_prompts}", param="prompt")
        prompts = [p if isinstance(p, str) else await asyncio.to_thread(from_ids, model, p) for p in req.prompts]
        if log_prompts:
            log.info("completion request: %r", prompts)
        return await _complete(service, req, prompts, chat=False)

    @app.post("/v1/responses")
    async def responses(request: Request):
        """OpenAI's Responses API: the request read as a chat request, the answer as a ``response`` object or the
        Responses stream's events (alignkit.server.responses)."""
        req = await parse_body(request, ResponsesRequest, limits)
        chat_req = validated(ChatCompletionRequest, req.chat_body())
        service, _ = pick(req.model)
        msgs = [Message(m.alignkit_role, m.text) for m in chat_req.messages]
        if log_prompts:
            log.info("responses request: %s", json.dumps([m.to_dict() for m in msgs], ensure_ascii=False))
        job = await _submit(service, chat_req, [msgs], chat=True)
        rid, msg_id = new_ids()
        if req.stream:
            return StreamingResponse(_responses_sse(job, EventStream(rid, msg_id, req, service.name)),
                                     media_type="text/event-stream")
        comps = await _finished(job)
        return response_object(rid, msg_id, req, service.name, created=int(time.time()), text=comps[0].text,
                               finish_reason=comps[0].finish_reason, usage=_usage(comps), extras=route_extras(comps[0]))

    async def _responses_sse(job, events: EventStream):
        try:
            for ev in events.opening():
                yield _sse_event(ev)
            final = None
            while True:
                item = await job.events.get()
                if item[0] == "error":
                    yield _sse_event(events.failed(str(item[1])))
                    return
                if item[0] == "done":
                    break
                _, _, ev = item
                if ev.text:
                    yield _sse_event(events.delta(ev.text))
                if ev.completion is not None:
                    final = ev.completion
            if final is not None:
                for ev in events.closing(final.finish_reason, _usage([final]), route_extras(final)):
                    yield _sse_event(ev)
        finally:  # the client went away, or the stream ended: stop generating for it
            job.cancel()

    @app.post("/tokenize")
    async def tokenize(request: Request):
        """vLLM's shape: ``{count, max_model_len, tokens}`` -- a chat is tokenised as the served route renders it
        (template, in-context preamble and all), so ``count`` is what the model will read."""
        req = await parse_body(request, TokenizeRequest, limits)
        _, model = pick(req.model)
        if not hasattr(model, "render") or not hasattr(model, "encode"):
            raise APIError(400, "this model cannot tokenize here (no local tokenizer)")
        if req.messages is not None:
            prompt: Any = [Message(m.alignkit_role, m.text) for m in req.messages]
        else:
            prompt = req.prompt
        ids = await asyncio.to_thread(tokens_of, model, prompt, req.add_special_tokens)
        return {"count": len(ids), "max_model_len": model.context_length, "tokens": ids, "token_strs": None}

    @app.post("/detokenize")
    async def detokenize(request: Request):
        req = await parse_body(request, DetokenizeRequest, limits)
        _, model = pick(req.model)
        tok = getattr(model, "tokenizer", None)
        if tok is None:
            raise APIError(400, "this model cannot detokenize here (no local tokenizer)")
        vocab = len(tok) if hasattr(tok, "__len__") else None
        if vocab and any(t >= vocab for t in req.tokens):
            raise APIError(400, f"token id out of range (the vocabulary has {vocab} tokens)", param="tokens")
        return {"prompt": tok.decode(req.tokens, skip_special_tokens=False)}

    @app.get("/ui", include_in_schema=False)
    async def ui():
        """The comparison page (one self-contained file: no CDN, no build step)."""
        return HTMLResponse(page(), headers={"Content-Security-Policy": UI_CSP, "X-Content-Type-Options": "nosniff",
                                             "Referrer-Policy": "no-referrer"})

    declare_bodies(app, {"/v1/chat/completions": ChatCompletionRequest, "/v1/completions": CompletionRequest,
                          "/v1/responses": ResponsesRequest,
                          "/tokenize": TokenizeRequest, "/detokenize": DetokenizeRequest, "/v1/shift": ShiftRequest})

    async def _submit(service: Service, req: Any, prompts: list[Any], *, chat: bool):
        """Check a request against the limits and the route, and queue ``n`` choices for each prompt as one job."""
        model = service.model
        variant = weighted_variant(model, req.mix_weights) if req.mix_weights else None
        max_tokens = req.max_completion_tokens or req.max_tokens or limits.default_max_tokens
        if max_tokens > limits.max_tokens:
            raise APIError(400, f"max_tokens is {max_tokens}; this server allows at most {limits.max_tokens}",
                           param="max_tokens")
        if req.n > limits.max_n:
            raise APIError(400, f"n is {req.n}; this server allows at most {limits.max_n}", param="n")
        ctx = model.context_length
        for i, prompt in enumerate(prompts):
            prompt_tokens = await asyncio.to_thread(count_tokens, model, prompt, max_tokens)
            if ctx and prompt_tokens is not None and prompt_tokens + max_tokens > ctx:
                which = "the prompt" if len(prompts) == 1 else f"prompt {i}"
                raise APIError(400, f"{which} has {prompt_tokens} tokens and max_tokens is {max_tokens}; together "
                               f"they exceed the model's context of {ctx} tokens",
                               param="messages" if chat else "prompt", code="context_length_exceeded")
        rp = req.repetition_penalty
        if rp is None:
            rp = recommended_repetition_penalty(model)
        try:
            constraint = await asyncio.to_thread(lambda: req.constraint)
        except AlignkitError as e:
            raise APIError(400, str(e), param="response_format") from None
        if constraint is not None and not _can_constrain(model):
            raise APIError(400, "structured output (response_format / guided_*) needs a local transformers, llama.cpp "
                           "or vLLM model here; this route's model cannot enforce it", param="response_format")
        try:
            configs = [GenerationConfig(max_new_tokens=max_tokens, temperature=req.temperature, top_p=req.top_p,
                                        top_k=req.top_k, repetition_penalty=rp, stop=tuple(req.stops),
                                        seed=None if req.seed is None else req.seed + j, constraint=constraint)
                       for _ in prompts for j in range(req.n)]
        except ValueError as e:
            raise APIError(400, str(e)) from None
        try:
            return service.submit([p for p in prompts for _ in range(req.n)], configs, model=variant,
                                  streaming=bool(req.stream))
        except Overloaded as e:
            raise APIError(503, f"server busy: {e}; retry later", type_="server_error", code="overloaded",
                           headers={"Retry-After": str(limits.retry_after)}) from None

    async def _finished(job):
        """The job's completions; errors as the API's."""
        try:
            return await collect(job)
        except asyncio.CancelledError:
            job.cancel()
            raise
        except Overloaded as e:
            raise APIError(503, str(e), type_="server_error", headers={"Retry-After": str(limits.retry_after)}) from None
        except AlignkitError as e:
            raise APIError(400, str(e)) from None

    async def _complete(service: Service, req: Any, prompts: list[Any], *, chat: bool):
        """Generate ``n`` choices for each prompt in one job; choice ``i * n + j`` is prompt i's j-th."""
        model = service.model
        job = await _submit(service, req, prompts, chat=chat)
        rid = ("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex[:24]
        if req.stream:
            opts = (req.model_extra or {}).get("stream_options") or {}
            include_usage = isinstance(opts, dict) and bool(opts.get("include_usage"))
            use = req.tool_use if chat else None
            return StreamingResponse(_sse(service, job, rid, chat, req.n, include_usage, use),
                                     media_type="text/event-stream")
        comps = await _finished(job)
        logprobs = None
        want_lp = req.logprobs if chat else req.logprobs is not None
        if want_lp or (not chat and req.echo):
            logprobs = []
            sent = None if chat else req.prompts
            for i, prompt in enumerate(prompts):
                mine = comps[i * req.n : (i + 1) * req.n]
                ids = strip_bos(model, sent[i]) if sent is not None and not isinstance(sent[i], str) else None
                logprobs += await asyncio.to_thread(logprobs_of, model, req, prompt, mine, chat, ids)
        return _response(rid, chat, service.name, prompts, comps, req, logprobs)

    async def _sse(service: Service, job, rid: str, chat: bool, n: int, include_usage: bool,
                   use: toolcalls.ToolUse | None = None):
        """The stream of chunks. With tools to call, what may still become a call is held until the answer is
        complete and then sent as tool-call deltas (a call's name is known only once the model has written it);
        words are streamed as they come."""
        created = int(time.time())
        held: dict[int, str] = {}
        sent: dict[int, int] = {}
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
                if use is not None and use.callable:
                    text = held[choice] = held.get(choice, "") + ev.text
                    done = sent.get(choice, 0)
                    delta = {} if choice in started else {"role": "assistant"}
                    if ev.completion is None:
                        upto = use.streamable(text)  # words so far (what may still become a call is held)
                        if upto > done:
                            started.add(choice)
                            sent[choice] = upto
                            ch = {"index": choice, "delta": {**delta, "content": text[done:upto]},
                                  "finish_reason": None, "logprobs": None}
                            yield _sse_data({"id": rid, "object": "chat.completion.chunk", "created": created,
                                             "model": service.name, "choices": [ch]})
                        continue
                    content, calls = use.read(text)
                    if calls:
                        if content and not done:
                            delta["content"] = content
                        delta["tool_calls"] = [{"index": k, **c} for k, c in enumerate(calls)]
                    elif text[done:]:
                        delta["content"] = text[done:]
                    ch = {"index": choice, "delta": delta, "logprobs": None,
                          "finish_reason": "tool_calls" if calls else ev.finish_reason}
                    finals[choice] = ev.completion
                    yield _sse_data({"id": rid, "object": "chat.completion.chunk", "created": created,
                                     "model": service.name, "choices": [ch]})
                    continue
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
                    if extras := route_extras(ev.completion):
                        ch["alignkit"] = extras
                yield _sse_data({"id": rid, "object": obj, "created": created, "model": service.name, "choices": [ch]})
            if include_usage and finals:
                yield _sse_data({"id": rid, "object": obj, "created": created, "model": service.name, "choices": [],
                                 "usage": _usage([finals[k] for k in sorted(finals)], n)})
            yield "data: [DONE]\n\n"
        finally:  # the client went away, or the stream ended: stop generating for it
            job.cancel()

    return app


def _memory(routes: dict[str, Service]) -> dict[str, Any]:
    """What the routes hold in memory: each set of loaded weights once, with every model spec that uses it (routes
    on the same base and its adapters share one), and the process's peak resident set size."""
    import resource

    weights: dict[int, dict[str, Any]] = {}
    for svc in routes.values():
        for m in backend_models(svc.model):
            count = getattr(getattr(m, "model", None), "num_parameters", None)
            entry = weights.setdefault(weights_id(m), {"backend": getattr(m, "backend", None), "specs": [],
                                                       "parameters": count() if callable(count) else None})
            if m.spec not in entry["specs"]:
                entry["specs"].append(m.spec)
    return {"loaded_weights": list(weights.values()),
            "max_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}


def _sse_event(obj: dict[str, Any]) -> str:
    """One event of the Responses stream: its type as the SSE event name, the object as data."""
    return f"event: {obj['type']}\ndata: {json.dumps(obj, ensure_ascii=False)}\n\n"


def _sse_data(obj: dict[str, Any]) -> str:
    return f"data: {json.dumps(obj, ensure_ascii=False)}\n\n"


def _usage(comps, n: int = 1) -> dict[str, int]:
    """Token usage of a response: each prompt's tokens once (its ``n`` choices share it), every choice's tokens;
    for a route, every stage's tokens added up (rewriter, model, corrector)."""
    each = [usage(x) for x in comps]
    p = sum(u["prompt_tokens"] for u in each[::n]) if each else 0
    c = sum(u["completion_tokens"] for u in each)
    return {"prompt_tokens": p, "completion_tokens": c, "total_tokens": p + c}


def _can_constrain(model: Any) -> bool:
    """Whether this route declares it enforces structured output and the model that writes its answers can: its token
    loop builds the grammar, or its engine decodes under it (vLLM's guided decoding: ``guided_decoding``)."""
    backend = answering_backend(model)
    engine = getattr(backend, "engine", None)
    return bool(model.capabilities.constraints) and (getattr(engine, "grammar_tokenizer", None) is not None
                                                      or getattr(backend, "guided_decoding", False))


def _response(rid: str, chat: bool, name: str, prompts: list[Any], comps, req: Any, logprobs) -> dict[str, Any]:
    created = int(time.time())
    if chat:
        use = req.tool_use
        choices = []
        for i, c in enumerate(comps):
            content, calls = use.read(c.text) if use is not None else (c.text, [])
            message = ({"role": "assistant", "content": content, "tool_calls": calls} if calls else
                       {"role": "assistant", "content": c.text})
            choices.append({"index": i, "message": message, "finish_reason": "tool_calls" if calls else c.finish_reason,
                            "logprobs": logprobs[i] if logprobs else None,
                            **({"alignkit": x} if (x := route_extras(c)) else {})})
        return {"id": rid, "object": "chat.completion", "created": created, "model": name, "choices": choices,
                "usage": _usage(comps, req.n)}
    choices = [{"index": i, "text": (prompts[i // req.n] + c.text) if req.echo else c.text,
                "finish_reason": c.finish_reason, "logprobs": logprobs[i] if logprobs else None}
               for i, c in enumerate(comps)]
    return {"id": rid, "object": "text_completion", "created": created, "model": name, "choices": choices,
            "usage": _usage(comps, req.n)}


def _safe_info(model: Any) -> dict[str, Any]:
    info = model.info()
    out = {k: info.get(k) for k in ("backend", "method", "spec", "template") if k in info}
    out["chat"] = takes_chat(model)  # False: the route reads text only (send it /v1/completions)
    if hasattr(model, "knobs"):  # a weighted route: the weights a request may set (mix_weights)
        out["weights"] = model.knobs()
    return out
