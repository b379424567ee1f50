"""Tool calls in the formats models' own chat templates define.

A chat template that renders tools (``apply_chat_template(..., tools=...)``) also fixes how the model writes a call,
and each model family writes it its own way. alignkit reads the family from the template text (:func:`detect`) and
knows, per family (:data:`FORMATS`): what opens a call (forced at the start of the answer when a call is required),
the JSON of one call (constrained token by token when a call is required) and how to read calls back out of an
answer (:meth:`ToolFormat.parse`):

* ``hermes`` -- Qwen2.5/Qwen3, Hermes, SmolLM3 and other ChatML templates: each call a JSON object
  ``{"name", "arguments"}`` between ``<tool_call>`` and ``</tool_call>``, after any words;
* ``llama3`` -- Llama 3.1-3.3's JSON calls: ``{"name", "parameters"}`` objects (``;``-separated), the whole answer;
* ``mistral`` -- Mistral's ``[TOOL_CALLS]`` followed by a JSON list of ``{"name", "arguments"}``.

A template that renders tools in none of these formats gets ``""``: its routes describe tools in alignkit's own
system note (alignkit.server.tools), as every other route does. Earlier calls and tool results are handed to the
template in the shape transformers documents (:func:`template_messages`)."""

from __future__ import annotations

import json
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from alignkit.types import Message, Prompt, ToolChat


@dataclass(frozen=True)
class ToolFormat:
    """How one family's template has a model write tool calls."""

    name: str
    opener: str
    """Text that starts an answer that is a call (the prompt ends with it when a call is required)."""
    args_key: str
    """The key of a call's arguments: ``arguments`` or (Llama 3) ``parameters``."""
    as_list: bool = False
    """Calls are written as one JSON list (Mistral)."""
    tag: str = ""
    """The tag that opens each call where calls may follow words (``<tool_call>``); "" where an answer that is a
    call is nothing else, and begins with one of :attr:`starts`."""
    starts: tuple[str, ...] = ()

    def call_schema(self, tools: Sequence[dict[str, Any]]) -> dict[str, Any]:
        """The JSON schema of what follows :attr:`opener` in an answer that is one call of one of ``tools``
        (``{name, description, parameters}`` each)."""
        one = call_schema(tools, self.args_key)
        return {"type": "array", "items": one, "minItems": 1, "maxItems": 1} if self.as_list else one

    def streamable(self, text: str) -> int:
        """How much of an unfinished answer is words for sure (the rest may still become a call)."""
        if self.tag:  # words, then perhaps calls: hold from the tag on, and a tail that may begin it
            at = text.find(self.tag)
            if at >= 0:
                return at
            for k in range(min(len(self.tag) - 1, len(text)), 0, -1):
                if self.tag.startswith(text[-k:]):
                    return len(text) - k
            return len(text)
        head = text.lstrip()
        if not head or any(s.startswith(head) or head.startswith(s) for s in self.starts):
            return 0
        return len(text)

    def parse(self, text: str, names: Sequence[str]) -> tuple[str | None, list[dict[str, Any]]]:
        """``(content, calls)`` of an answer: calls in OpenAI's shape (``arguments`` a JSON string) and the words
        around them (None when there are none). An answer whose calls do not all parse -- bad JSON, an unknown
        function, arguments that are not an object -- is words only, returned whole."""
        whole: tuple[str | None, list[dict[str, Any]]] = (text or None), []
        if self.name == "hermes":
            head, sep, rest = text.partition("<tool_call>")
            if not sep:
                return whole
            objs = [_load(block.split("</tool_call>")[0]) for block in rest.split("<tool_call>")]
            content = head.strip() or None
        elif self.name == "llama3":
            body = text.strip().removeprefix("<|python_tag|>").strip()
            if not body.startswith("{"):
                return whole
            objs, content = _json_sequence(body), None
        else:  # mistral
            body = text.strip().removeprefix("[TOOL_CALLS]").strip()
            if not body.startswith("["):
                return whole
            listed = _load(body)
            objs, content = (listed if isinstance(listed, list) and listed else [None]), None
        calls = [_openai_call(o, self.args_key, names) for o in objs]
        if not calls or any(c is None for c in calls):
            return whole
        return content, [c for c in calls if c is not None]


FORMATS = {f.name: f for f in (ToolFormat("hermes", "<tool_call>\n", "arguments", tag="<tool_call>"),
                                ToolFormat("llama3", "", "parameters", starts=("{", "<|python_tag|>")),
                                ToolFormat("mistral", "[TOOL_CALLS]", "arguments", as_list=True, starts=("[",)))}


def call_schema(tools: Sequence[dict[str, Any]], args_key: str = "arguments") -> dict[str, Any]:
    """The JSON schema of one call ``{"name", args_key}`` of one of ``tools``, its arguments under the tool's own
    parameter schema (alignkit's own call format is ``args_key="arguments"``)."""
    each = [{"type": "object", "properties": {"name": {"const": t["name"]}, args_key: t["parameters"]},
             "required": ["name", args_key], "additionalProperties": False} for t in tools]
    return each[0] if len(each) == 1 else {"anyOf": each}


def openai_call(name: str, arguments: dict[str, Any]) -> dict[str, Any]:
    """A call in OpenAI's shape (a fresh id, ``arguments`` as a JSON string)."""
    return {"id": "call_" + uuid.uuid4().hex[:24], "type": "function",
            "function": {"name": name, "arguments": json.dumps(arguments, ensure_ascii=False)}}


def detect(template: str | None) -> str:
    """The family of tool calls a chat template defines ("" when it renders no tools, or in no format known here)."""
    if not template or "tools" not in template:
        return ""
    if "<tool_call>" in template:
        return "hermes"
    if "[TOOL_CALLS]" in template:
        return "mistral"
    if "<|start_header_id|>" in template and '"parameters"' in template:
        return "llama3"
    return ""


def template_messages(chat: ToolChat) -> list[dict[str, Any]]:
    """The conversation as transformers' chat templates take it: an assistant's calls as
    ``{"type": "function", "function": {"name", "arguments": {...}}}`` (arguments an object, not a JSON string), a
    tool's result as ``{"role": "tool", "content", "tool_call_id"}``."""
    out = []
    for m in chat.turns:
        msg: dict[str, Any] = {"role": m["role"], "content": m.get("content") or ""}
        if m.get("tool_calls"):
            msg["tool_calls"] = [{"id": c.get("id"), "type": "function",
                                  "function": {"name": (c.get("function") or {}).get("name"),
                                               "arguments": _arguments((c.get("function") or {}).get("arguments"))}}
                                 for c in m["tool_calls"]]
        if m.get("tool_call_id"):
            msg["tool_call_id"] = m["tool_call_id"]
        out.append(msg)
    return out


def template_tools(chat: ToolChat) -> list[dict[str, Any]] | None:
    """The tools as a template takes them (OpenAI's ``{"type": "function", "function": {...}}``), or None."""
    return [{"type": "function", "function": dict(t)} for t in chat.tools] or None


def render_messages(prompt: Prompt) -> tuple[list[dict[str, Any]], list[dict[str, Any]] | None, str]:
    """``(messages, tools, prefill)`` for a chat template: a :class:`ToolChat` with its calls, results and tools;
    any other conversation as its plain messages, no tools, nothing prefilled."""
    if isinstance(prompt, ToolChat):
        return template_messages(prompt), template_tools(prompt), prompt.prefill
    if isinstance(prompt, str):
        raise TypeError("a chat template renders a conversation, not raw text")
    return [m.to_dict() if isinstance(m, Message) else dict(m) for m in prompt], None, ""


def _arguments(value: Any) -> Any:
    if isinstance(value, str):
        try:
            return json.loads(value)
        except json.JSONDecodeError:
            return value
    return value if value is not None else {}


def _load(text: str) -> Any:
    try:
        return json.loads(text.strip())
    except json.JSONDecodeError:
        return None


def _json_sequence(body: str) -> list[Any]:
    """JSON values one after another, separated by whitespace or ``;`` (a value that does not parse: None)."""
    dec, i = json.JSONDecoder(), 0
    out: list[Any] = []
    while i < len(body):
        try:
            obj, i = dec.raw_decode(body, i)
        except json.JSONDecodeError:
            return [*out, None]
        out.append(obj)
        while i < len(body) and body[i] in " \t\r\n;":
            i += 1
    return out


def _openai_call(obj: Any, args_key: str, names: Sequence[str]) -> dict[str, Any] | None:
    if not isinstance(obj, dict) or obj.get("name") not in names:
        return None
    args = obj.get(args_key, obj.get("arguments"))
    if isinstance(args, str):
        args = _load(args)
    if not isinstance(args, dict):
        return None
    return openai_call(obj["name"], args)
