"""A small, real OpenAI-compatible HTTP server over a local LanguageModel, for testing the openai backend
end to end (real sockets, the official client). It can inject failures (429/5xx) to test retries."""

from __future__ import annotations

import json
import threading
import time
from typing import Any

import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse

from alignkit.types import GenerationConfig, Message


def _config(body: dict[str, Any]) -> GenerationConfig:
    stop = body.get("stop") or ()
    return GenerationConfig(
        max_new_tokens=int(body.get("max_tokens") or 16),
        temperature=float(body.get("temperature", 1.0)),
        top_p=float(body.get("top_p", 1.0)),
        top_k=int(body.get("top_k", 0)),
        repetition_penalty=float(body.get("repetition_penalty", 1.0)),
        seed=body.get("seed"),
        stop=(stop,) if isinstance(stop, str) else tuple(stop),
    )


def _usage(c) -> dict[str, int]:
    return {"prompt_tokens": c.prompt_tokens, "completion_tokens": c.completion_tokens,
            "total_tokens": c.prompt_tokens + c.completion_tokens}


def build_app(model, name: str) -> FastAPI:
    app = FastAPI()
    app.state.fail: list[int] = []
    app.state.requests = 0
    app.state.delay = 0.0
    #: response_format types this server takes (None: it ignores response_format, as many servers do)
    app.state.formats: set[str] | None = None

    @app.middleware("http")
    async def inject(request: Request, call_next):
        app.state.requests += 1
        if app.state.delay:
            import asyncio

            await asyncio.sleep(app.state.delay)
        if app.state.fail:
            code = app.state.fail.pop(0)
            return JSONResponse({"error": {"message": f"injected {code}"}}, status_code=code,
                                headers={"retry-after-ms": "10"})
        return await call_next(request)

    @app.get("/v1/models")
    def models():
        return {"object": "list", "data": [{"id": name, "object": "model", "owned_by": "test"}]}

    def _echo_logprobs(prompt: str, k: int) -> dict[str, Any]:
        enc = model.tokenizer(prompt, add_special_tokens=False, return_offsets_mapping=True)
        ids = list(enc.input_ids)
        sc = model.score([""], [ids], top_k=k)[0]
        return {
            "tokens": list(sc.tokens),
            "token_logprobs": list(sc.logprobs),
            "top_logprobs": [dict(t) for t in sc.top_logprobs],
            "text_offset": [a for a, _ in enc.offset_mapping],
        }

    @app.post("/v1/completions")
    async def completions(request: Request):
        body = await request.json()
        cfg = _config(body)
        prompt = body["prompt"]
        if body.get("stream"):
            def events():
                for ev in model.stream([prompt], cfg):
                    choice = {"index": 0, "text": ev.text, "finish_reason": ev.finish_reason}
                    yield f"data: {json.dumps({'id': 'c', 'object': 'text_completion', 'created': int(time.time()), 'model': name, 'choices': [choice]})}\n\n"
                    if ev.completion is not None:
                        usage = _usage(ev.completion)
                        yield f"data: {json.dumps({'id': 'c', 'object': 'text_completion', 'created': int(time.time()), 'model': name, 'choices': [], 'usage': usage})}\n\n"
                yield "data: [DONE]\n\n"
            return StreamingResponse(events(), media_type="text/event-stream")
        c = model.generate([prompt], cfg)[0]
        text, logprobs = c.text, None
        if body.get("echo"):
            text = prompt + c.text
            if body.get("logprobs") is not None:
                logprobs = _echo_logprobs(prompt, int(body["logprobs"]))
        choice = {"index": 0, "text": text, "finish_reason": c.finish_reason, "logprobs": logprobs}
        return {"id": "c", "object": "text_completion", "created": int(time.time()), "model": name,
                "choices": [choice], "usage": _usage(c)}

    @app.post("/v1/chat/completions")
    async def chat(request: Request):
        body = await request.json()
        fmt = (body.get("response_format") or {}).get("type")
        if fmt and app.state.formats is not None and fmt not in app.state.formats:
            return JSONResponse({"error": {"message": f"response_format type {fmt!r} is not supported"}},
                                status_code=400)
        msgs = [Message(**m) for m in body["messages"]]
        c = model.generate([msgs], _config(body))[0]
        return {"id": "x", "object": "chat.completion", "created": int(time.time()), "model": name,
                "choices": [{"index": 0, "message": {"role": "assistant", "content": c.text},
                             "finish_reason": c.finish_reason}], "usage": _usage(c)}

    return app


class ServerThread:
    """Run an app with uvicorn on a free localhost port in a background thread."""

    def __init__(self, app: FastAPI):
        self.app = app
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="error"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> ServerThread:
        self.thread.start()
        deadline = time.time() + 20
        while not self.server.started:
            if time.time() > deadline:
                raise RuntimeError("test server did not start")
            time.sleep(0.02)
        self.port = self.server.servers[0].sockets[0].getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}/v1"
        return self

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)
