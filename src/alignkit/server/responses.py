"""OpenAI's Responses API (``POST /v1/responses``) on alignkit's routes: the request read into a chat request (the
one generation path every route serves), the answer written back as a ``response`` object, or as the Responses
stream's typed events.

What is served: ``input`` as text or as message items (roles user / assistant / system / developer, text content or
``input_text`` / ``output_text`` parts), ``instructions`` (a system message first), ``max_output_tokens``,
``temperature``, ``top_p``, ``seed``, ``stop`` and alignkit's sampling fields, ``text.format`` (``json_schema`` /
``json_object``: structured output), ``stream``. This server keeps no state: ``previous_response_id`` and
``store: true`` lookups are refused (send the whole conversation in ``input``); tools, images, files and other item
types are refused with a 400 that names them."""

from __future__ import annotations

import time
import uuid
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

#: fields of the Responses API this server does not offer: refused by name, never silently ignored
REFUSED = ("previous_response_id", "tools", "tool_choice", "conversation", "prompt", "background")


class ResponsesRequest(BaseModel):
    """``POST /v1/responses``; unknown fields are accepted and ignored (``store``, ``metadata``, ``reasoning``...),
    except those in :data:`REFUSED`."""

    model_config = ConfigDict(extra="allow")

    model: str | None = None
    input: str | list[dict[str, Any]] = Field(description="the user's text, or message items ending with a user one")
    instructions: str | None = Field(default=None, description="a system message put before the input")
    max_output_tokens: int | None = Field(default=None, ge=1)
    temperature: float = Field(default=1.0, ge=0, le=2)
    top_p: float = Field(default=1.0, gt=0, le=1)
    top_k: int = Field(default=0, ge=0)
    repetition_penalty: float | None = Field(default=None, ge=0.01, le=100)
    seed: int | None = Field(default=None, ge=0, le=2**63 - 1)
    stop: str | list[str] | None = None
    stream: bool = False
    text: dict[str, Any] | None = Field(default=None, description="{format: {type: text | json_object | "
                                        "json_schema, schema: ...}}: structured output")
    mix_weights: dict[str, float] | None = None

    @field_validator("input")
    @classmethod
    def _items(cls, v):
        if isinstance(v, str):
            if not v:
                raise ValueError("input must not be empty")
            return v
        if not v:
            raise ValueError("input must not be an empty list")
        for i, item in enumerate(v):
            kind = item.get("type", "message")
            if kind != "message":
                raise ValueError(f"input[{i}]: items of type {kind!r} are not supported by this server (messages "
                                 "only)")
            if item.get("role") not in ("user", "assistant", "system", "developer"):
                raise ValueError(f"input[{i}]: role must be user, assistant, system or developer, got "
                                 f"{item.get('role')!r}")
            content = item.get("content")
            if isinstance(content, list):
                for part in content:
                    ptype = part.get("type") if isinstance(part, dict) else None
                    if ptype not in ("input_text", "output_text", "text"):
                        raise ValueError(f"input[{i}]: content parts of type {ptype!r} are not supported by this "
                                         "server (text only)")
                    if not isinstance(part.get("text"), str):
                        raise ValueError(f"input[{i}]: a text part needs its text (a string)")
            elif not isinstance(content, str):
                raise ValueError(f"input[{i}]: content must be a string or a list of text parts")
        turns = [m for m in v if m["role"] not in ("system", "developer")]
        if not turns or turns[-1]["role"] != "user":
            raise ValueError("input must end with a user message")
        return v

    @model_validator(mode="after")
    def _refused(self):
        extra = self.model_extra or {}
        bad = [k for k in REFUSED if extra.get(k) not in (None, [], {}, "")]
        if bad:
            why = (" (this server keeps no responses: send the whole conversation as input)"
                   if "previous_response_id" in bad or "conversation" in bad else "")
            raise ValueError(f"not supported by this server: {', '.join(bad)}{why}")
        fmt = (self.text or {}).get("format")
        if fmt is not None and (not isinstance(fmt, dict) or fmt.get("type") not in ("text", "json_object",
                                                                                       "json_schema")):
            raise ValueError("text.format must be {\"type\": \"text\" | \"json_object\" | \"json_schema\", ...}")
        if isinstance(fmt, dict) and fmt.get("type") == "json_schema" and not isinstance(fmt.get("schema"), dict):
            raise ValueError("text.format json_schema needs its schema (an object)")
        return self

    def messages(self) -> list[dict[str, Any]]:
        """The conversation as chat messages (``instructions`` first, as a system message)."""
        out: list[dict[str, Any]] = []
        if self.instructions:
            out.append({"role": "system", "content": self.instructions})
        if isinstance(self.input, str):
            return out + [{"role": "user", "content": self.input}]
        for item in self.input:
            content = item["content"]
            text = content if isinstance(content, str) else "\n".join(p["text"] for p in content)
            out.append({"role": item["role"], "content": text})
        return out

    def chat_body(self) -> dict[str, Any]:
        """The equivalent ``/v1/chat/completions`` body (non-streaming: the caller streams from the job)."""
        body: dict[str, Any] = {"model": self.model, "messages": self.messages(), "temperature": self.temperature,
                                "top_p": self.top_p, "top_k": self.top_k, "n": 1}
        for key in ("repetition_penalty", "seed", "stop", "mix_weights"):
            if getattr(self, key) is not None:
                body[key] = getattr(self, key)
        if self.max_output_tokens is not None:
            body["max_tokens"] = self.max_output_tokens
        fmt = (self.text or {}).get("format")
        if isinstance(fmt, dict) and fmt.get("type") == "json_schema":
            body["response_format"] = {"type": "json_schema", "json_schema": {
                "name": fmt.get("name", "answer"), "schema": fmt["schema"], "strict": fmt.get("strict", True)}}
        elif isinstance(fmt, dict) and fmt.get("type") == "json_object":
            body["response_format"] = {"type": "json_object"}
        return body


def new_ids() -> tuple[str, str]:
    """A response's id and its message item's id."""
    return "resp_" + uuid.uuid4().hex[:24], "msg_" + uuid.uuid4().hex[:24]


def message_item(msg_id: str, text: str, status: str) -> dict[str, Any]:
    return {"id": msg_id, "type": "message", "status": status, "role": "assistant",
            "content": [{"type": "output_text", "text": text, "annotations": [], "logprobs": []}]}


def response_object(rid: str, msg_id: str, req: ResponsesRequest, name: str, *, created: int,
                    text: str | None, finish_reason: str | None, usage: dict[str, int] | None,
                    extras: dict[str, Any] | None = None) -> dict[str, Any]:
    """The ``response`` object: in progress (``text`` None) or finished (``completed``, or ``incomplete`` when the
    token limit cut the answer)."""
    if text is None:
        status, output, details = "in_progress", [], None
    else:
        cut = finish_reason == "length"
        status = "incomplete" if cut else "completed"
        details = {"reason": "max_output_tokens"} if cut else None
        output = [message_item(msg_id, text, status)]
    fmt = (req.text or {}).get("format") or {"type": "text"}
    out: dict[str, Any] = {
        "id": rid, "object": "response", "created_at": created, "status": status, "model": name, "output": output,
        "error": None, "incomplete_details": details, "instructions": req.instructions,
        "max_output_tokens": req.max_output_tokens, "temperature": req.temperature, "top_p": req.top_p,
        "parallel_tool_calls": False, "tool_choice": "none", "tools": [], "text": {"format": fmt},
        "metadata": (req.model_extra or {}).get("metadata") or {}, "store": False, "truncation": "disabled",
        "usage": None if usage is None else {
            "input_tokens": usage["prompt_tokens"], "input_tokens_details": {"cached_tokens": 0},
            "output_tokens": usage["completion_tokens"], "output_tokens_details": {"reasoning_tokens": 0},
            "total_tokens": usage["total_tokens"]},
    }
    if extras:
        out["alignkit"] = extras
    return out


class EventStream:
    """The Responses stream's events, numbered: ``response.created``, ``response.in_progress``, the message item and
    its text part added, one ``response.output_text.delta`` per piece, then the text, the part and the item done,
    and ``response.completed`` (whose response says ``incomplete`` when the token limit cut the answer, as vLLM
    sends it; the openai client's stream helper waits for that event)."""

    def __init__(self, rid: str, msg_id: str, req: ResponsesRequest, name: str):
        self.rid, self.msg_id, self.req, self.name = rid, msg_id, req, name
        self.created = int(time.time())
        self.seq = 0
        self.text = ""

    def _ev(self, kind: str, **fields: Any) -> dict[str, Any]:
        ev = {"type": kind, "sequence_number": self.seq, **fields}
        self.seq += 1
        return ev

    def opening(self) -> list[dict[str, Any]]:
        resp = response_object(self.rid, self.msg_id, self.req, self.name, created=self.created, text=None,
                               finish_reason=None, usage=None)
        item = {"id": self.msg_id, "type": "message", "status": "in_progress", "role": "assistant", "content": []}
        part = {"type": "output_text", "text": "", "annotations": [], "logprobs": []}
        return [self._ev("response.created", response=resp), self._ev("response.in_progress", response=resp),
                self._ev("response.output_item.added", output_index=0, item=item),
                self._ev("response.content_part.added", item_id=self.msg_id, output_index=0, content_index=0,
                         part=part)]

    def delta(self, piece: str) -> dict[str, Any]:
        self.text += piece
        return self._ev("response.output_text.delta", item_id=self.msg_id, output_index=0, content_index=0,
                        delta=piece, logprobs=[])

    def closing(self, finish_reason: str | None, usage: dict[str, int],
                extras: dict[str, Any] | None = None) -> list[dict[str, Any]]:
        resp = response_object(self.rid, self.msg_id, self.req, self.name, created=self.created, text=self.text,
                               finish_reason=finish_reason, usage=usage, extras=extras)
        item = resp["output"][0]
        part = item["content"][0]
        return [self._ev("response.output_text.done", item_id=self.msg_id, output_index=0, content_index=0,
                         text=self.text, logprobs=[]),
                self._ev("response.content_part.done", item_id=self.msg_id, output_index=0, content_index=0,
                         part=part),
                self._ev("response.output_item.done", output_index=0, item=item),
                self._ev("response.completed", response=resp)]  # as vLLM: also when the answer was cut

    def failed(self, message: str) -> dict[str, Any]:
        resp = response_object(self.rid, self.msg_id, self.req, self.name, created=self.created, text=None,
                               finish_reason=None, usage=None)
        resp.update(status="failed", error={"code": "server_error", "message": message})
        return self._ev("response.failed", response=resp)
