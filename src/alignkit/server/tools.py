"""Tool calls on the chat endpoint for every route, base models under URIAL included. The tools are described to
the model in a system note (alignkit's wording), and the answer is constrained token by token (alignkit.structured,
llguidance) so that a call is always well formed:

- ``tool_choice`` ``required`` or a named function: the answer is one call -- ``{"name": ..., "arguments": {...}}``
  under each tool's own parameter schema -- handed back as OpenAI's ``tool_calls`` (``finish_reason:
  "tool_calls"``);
- ``auto`` (the default when tools are given): the model decides -- the note shows two worked examples (one request
  a tool answers, one it does not), and the grammar allows either a call (as above) or words that do not start
  with ``{``; a call comes back as ``tool_calls``, words as the message's content;
- ``none``: words, the tools not mentioned.

Earlier calls (an assistant turn with ``tool_calls``) and their results (``role: "tool"``) are written into the
conversation as text the route can read.

A route that hands the conversation to a model's own chat template as it is (``--method template``, ``auto`` on a
chat model) whose template renders tools in a format alignkit knows (``capabilities.tool_format``:
alignkit.models.tool_formats) gets the tools, the earlier calls and results the way that template renders them
(a :class:`~alignkit.types.ToolChat`), and its answer is read in the template's own format -- several calls in one
answer included: ``auto`` and ``none`` leave the model to its template's instructions; ``required`` and a named
function open the answer with the family's call opener and constrain the call's JSON to the tools' schemas.
:class:`ToolUse` is that choice for one request."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from alignkit.errors import InputError
from alignkit.models.tool_formats import FORMATS, ToolFormat, call_schema, openai_call
from alignkit.structured import Constraint
from alignkit.types import Message, Prompt, ToolChat

#: alignkit's own call format (the note's): one JSON object ``{"name", "arguments"}``, the whole answer
NOTE = ToolFormat("note", "", "arguments", starts=("{",))
#: how the tools are described to the model (a system note before the conversation)
TOOLS_NOTE = ("You can call these tools. To call one, reply with a JSON object only: {{\"name\": the tool's name, "
              "\"arguments\": an object with its arguments}}.\n\n{tools}")
#: ``auto``: when to call, with two short examples (alignkit's wording)
AUTO_NOTE = ("Call a tool only when the request needs what it gives; otherwise answer in words.\n"
             "Example: \"How many yen are 20 euros?\" -> {{\"name\":\"convert\",\"arguments\":{{\"amount\":20,"
             "\"to\":\"JPY\"}}}}\n"
             "Example: \"Write a line about rain.\" -> Soft rain taps on the roof.")


def check_tools(tools: Any) -> list[dict[str, Any]]:
    """The request's ``tools`` as a list of ``{name, description, parameters}``; a clear error for anything else."""
    if not isinstance(tools, list) or not tools:
        raise InputError("tools must be a non-empty list of {\"type\": \"function\", \"function\": {...}}")
    out, names = [], set()
    for i, t in enumerate(tools):
        fn = t.get("function") if isinstance(t, dict) and t.get("type") == "function" else None
        if not isinstance(fn, dict):
            raise InputError(f"tools[{i}]: only {{\"type\": \"function\", \"function\": {{...}}}} tools are served")
        name = fn.get("name")
        if not isinstance(name, str) or not name:
            raise InputError(f"tools[{i}].function.name must be a non-empty string")
        if name in names:
            raise InputError(f"tools[{i}]: the name {name!r} is used twice")
        names.add(name)
        params = fn.get("parameters", {"type": "object", "properties": {}})
        if not isinstance(params, dict):
            raise InputError(f"tools[{i}].function.parameters must be a JSON schema (an object)")
        out.append({"name": name, "description": fn.get("description") or "", "parameters": params})
    return out


def chosen(tools: list[dict[str, Any]], choice: Any) -> tuple[list[dict[str, Any]], bool] | None:
    """``(tools, must_call)``: the tools the answer may call and whether it must call one (``required``: any of
    them; a named function: that one; ``auto``, the default: the model decides), or None for ``none``."""
    if choice == "none":
        return None
    if choice in (None, "auto"):
        return tools, False
    if choice == "required":
        return tools, True
    if isinstance(choice, dict) and choice.get("type") == "function":
        name = (choice.get("function") or {}).get("name")
        picked = [t for t in tools if t["name"] == name]
        if not picked:
            raise InputError(f"tool_choice names the function {name!r}, which is not among the tools "
                             f"({', '.join(t['name'] for t in tools)})")
        return picked, True
    raise InputError("tool_choice must be \"none\", \"auto\", \"required\" or {\"type\": \"function\", \"function\": "
                     "{\"name\": ...}}")


def constraint(tools: list[dict[str, Any]], must_call: bool) -> Constraint:
    """The constraint of the answer: one call, or (``auto``) a call or words that do not open with ``{``."""
    if must_call:
        return Constraint.json_schema(call_schema(tools))
    grammar = ("start: call | words\n"
               f"call: %json {json.dumps(call_schema(tools))}\n"
               "words: /[^{\\s][\\s\\S]*/\n")
    return Constraint("lark", grammar)


def note(tools: list[dict[str, Any]], must_call: bool = True) -> str:
    """The system note that tells the model which tools it may call (and, under ``auto``, when)."""
    lines = [json.dumps({"name": t["name"], "description": t["description"], "parameters": t["parameters"]},
                        ensure_ascii=False, separators=(",", ":")) for t in tools]
    text = TOOLS_NOTE.format(tools="\n".join(lines))
    return text if must_call else f"{text}\n\n{AUTO_NOTE.format()}"


def with_note(msgs: list[Any], tools: list[dict[str, Any]], must_call: bool = True) -> list[Any]:
    """The conversation with the tools' note: appended to its system message, or as one before it."""
    text = note(tools, must_call)
    if msgs and msgs[0].role == "system":
        return [Message("system", f"{msgs[0].content}\n\n{text}"), *msgs[1:]]
    return [Message("system", text), *msgs]


def parse_call(text: str, tools: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The answer as an OpenAI tool call (``arguments`` a JSON string), or None when it is not one complete call
    (e.g. cut by the token limit)."""
    try:
        obj = json.loads(text)
    except json.JSONDecodeError:
        return None
    if not isinstance(obj, dict) or obj.get("name") not in {t["name"] for t in tools} \
            or not isinstance(obj.get("arguments"), dict):
        return None
    return openai_call(obj["name"], obj["arguments"])


def as_text(message: dict[str, Any]) -> tuple[str, str]:
    """An earlier turn of a conversation with tools as ``(role, text)`` the route reads: an assistant's calls as the
    JSON it would have written, a tool's result as a user turn that names the call it answers."""
    role = message["role"]
    if role == "assistant" and message.get("tool_calls"):
        calls = []
        for c in message["tool_calls"]:
            fn = c.get("function") or {}
            try:
                args = json.loads(fn.get("arguments") or "{}")
            except json.JSONDecodeError:
                args = fn.get("arguments")
            calls.append(json.dumps({"name": fn.get("name"), "arguments": args}, ensure_ascii=False))
        text = "\n".join(calls)
        if message.get("content"):
            text = f"{message['content']}\n{text}"
        return "assistant", text
    if role == "tool":
        return "user", f"Result of tool call {message.get('tool_call_id') or ''}:\n{message.get('content') or ''}"
    return role, message.get("content") or ""


@dataclass(frozen=True)
class ToolUse:
    """How one chat request's tools reach its route, and how calls are read back out of the answer: in the format
    of the route's own chat template (``native``), or in alignkit's system note and JSON."""

    tools: list[dict[str, Any]]
    """The tools the answer may call (empty under ``none``)."""
    must_call: bool
    native: ToolFormat | None = None

    @classmethod
    def of(cls, plan: tuple[list[dict[str, Any]], bool] | None, tool_format: str,
           history: bool = True) -> ToolUse | None:
        """The request's use of tools on a route whose template defines ``tool_format`` ("" for none); None when
        the answer is words only and the template has nothing to render (no tool offered, ``history``: no earlier
        call or tool result in the conversation) or renders no tools."""
        native = FORMATS.get(tool_format)
        if plan is None:
            return cls([], False, native) if native is not None and history else None
        return cls(plan[0], plan[1], native)

    @property
    def callable(self) -> bool:
        return bool(self.tools)

    @property
    def prefill(self) -> str:
        return self.native.opener if self.native is not None and self.must_call else ""

    def prompt(self, msgs: list[Message], turns: list[dict[str, Any]]) -> Prompt:
        """What the route is sent: the tools in the template's own rendering, or the conversation with the note."""
        if self.native is not None:
            return ToolChat(msgs, turns, self.tools, self.prefill)
        return with_note(msgs, self.tools, self.must_call) if self.callable else msgs

    def constraint(self) -> Constraint | None:
        """One call under the tools' schemas when a call is required; under ``auto``, alignkit's note constrains to
        a call or words, and a template's own format is left to the model."""
        if not self.callable:
            return None
        if self.native is not None:
            return Constraint.json_schema(self.native.call_schema(self.tools)) if self.must_call else None
        return constraint(self.tools, self.must_call)

    def read(self, text: str) -> tuple[str | None, list[dict[str, Any]]]:
        """``(content, calls)`` of a finished answer (calls in OpenAI's shape; none when it is words, or a call that
        did not finish)."""
        if not self.callable:
            return text, []
        if self.native is not None:
            return self.native.parse(self.prefill + text, [t["name"] for t in self.tools])
        call = parse_call(text, self.tools)
        return (None, [call]) if call else (text, [])

    def streamable(self, text: str) -> int:
        """How much of an unfinished answer can be streamed now as words: none while it may still become a call
        (the call is sent whole, once it is complete)."""
        if not self.callable or self.must_call:
            return len(text) if not self.callable else 0
        return (self.native or NOTE).streamable(text)
