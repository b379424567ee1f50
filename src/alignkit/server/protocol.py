"""Request models of the OpenAI-compatible API (pydantic). Responses are plain dicts in OpenAI's shape.

Unknown fields are accepted and ignored (clients send many), except features this server does not offer
(the legacy ``functions``, logit bias), which are refused with a 400 that names them. Structured output
(``response_format``, vLLM's ``guided_*``) and tool calls (``tools`` with ``tool_choice``: alignkit.server.tools)
are read by :attr:`_Request.constraint`.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, field_validator, model_validator

from alignkit.errors import AlignkitError
from alignkit.server import tools as toolcalls
from alignkit.structured import from_request

UNSUPPORTED = ("functions", "function_call", "logit_bias", "structured_outputs")
#: structured output, enforced by alignkit.structured (response_format, and vLLM's guided_* fields)
STRUCTURED = ("response_format", "guided_json", "guided_regex", "guided_choice", "guided_grammar")


class _Request(BaseModel):
    model_config = ConfigDict(extra="allow")

    model: str | None = None
    max_tokens: int | None = Field(default=None, ge=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    temperature: float = Field(default=1.0, ge=0, le=2)
    top_p: float = Field(default=1.0, gt=0, le=1)
    top_k: int = Field(default=0, ge=0)
    repetition_penalty: float | None = Field(default=None, ge=0.01, le=100)
    stop: str | list[str] | None = None
    seed: int | None = Field(default=None, ge=0, le=2**63 - 1)
    n: int = Field(default=1, ge=1)
    stream: bool = False
    user: str | None = None
    mix_weights: dict[str, float] | None = Field(default=None, description=(
        "alignkit: for a weighted route (DeRa, proxy-tuning, EFT, a logit mix), other weights for this request "
        "alone, by name, e.g. {\"lam\": 0.5}; the route's model card lists them under info.weights"))

    @field_validator("stop")
    @classmethod
    def _stops(cls, v):
        stops = [v] if isinstance(v, str) else (v or [])
        if len(stops) > 16:
            raise ValueError("at most 16 stop strings")
        if any(s == "" for s in stops):
            raise ValueError("stop strings must be non-empty")
        return stops

    @model_validator(mode="after")
    def _unsupported(self):
        extra = self.model_extra or {}
        bad = [k for k in UNSUPPORTED if extra.get(k) not in (None, [], {})]
        if bad:
            raise ValueError(f"not supported by this server: {', '.join(bad)}")
        return self

    @property
    def stops(self) -> list[str]:
        return list(self.stop or [])

    @property
    def constraint(self):
        """The request's structured-output constraint (alignkit.structured.Constraint) or None."""
        extra = self.model_extra or {}
        return from_request({k: extra[k] for k in STRUCTURED if k in extra})


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="ignore")

    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[dict[str, Any]] | None = Field(
        default=None,
        description="the text, or content parts: text parts are joined; images, audio and files are refused")
    tool_calls: list[dict[str, Any]] | None = Field(default=None, description="an assistant's earlier tool calls")
    tool_call_id: str | None = Field(default=None, description="role tool: the call this result answers")

    @model_validator(mode="after")
    def _has_content(self):
        if self.content is None and not (self.role == "assistant" and self.tool_calls):
            raise ValueError(f"a {self.role} message needs its content")
        return self

    @field_validator("content", mode="before")
    @classmethod
    def _parts(cls, v):
        if isinstance(v, list):
            for part in v:
                kind = part.get("type") if isinstance(part, dict) else None
                if kind != "text":
                    raise ValueError(f"content parts of type {kind!r} are not supported by this server (text only)")
                if not isinstance(part.get("text"), str):
                    raise ValueError("a text content part needs its text (a string)")
        return v

    @property
    def _plain(self) -> str:
        if self.content is None or isinstance(self.content, str):
            return self.content or ""
        return "\n".join(p["text"] for p in self.content)  # text parts joined by newlines (as vLLM does)

    @property
    def text(self) -> str:
        """The message as text the route reads (earlier tool calls and results written out: server.tools)."""
        return toolcalls.as_text({"role": self.role, "content": self._plain, "tool_calls": self.tool_calls,
                                  "tool_call_id": self.tool_call_id})[1]

    @property
    def turn(self) -> dict[str, Any]:
        """The message in OpenAI's shape, for a chat template that renders tools (developer read as system)."""
        out: dict[str, Any] = {"role": "system" if self.role == "developer" else self.role, "content": self._plain}
        if self.tool_calls:
            out["tool_calls"] = self.tool_calls
        if self.tool_call_id:
            out["tool_call_id"] = self.tool_call_id
        return out

    @property
    def alignkit_role(self) -> str:
        if self.role == "tool":  # a tool's result is read as the user's turn
            return "user"
        return "system" if self.role == "developer" else self.role  # developer: the newer name of system


class ChatCompletionRequest(_Request):
    messages: list[ChatMessage] = Field(min_length=1)
    logprobs: bool = False
    top_logprobs: int | None = Field(default=None, ge=0, le=20)
    tools: list[dict[str, Any]] | None = Field(default=None, description=(
        "functions the answer may call: with tool_choice \"required\" or a named function the answer is one call, "
        "constrained to the tool's parameter schema; with \"auto\" (the default) a call or words"))
    tool_choice: str | dict[str, Any] | None = None
    _plan: tuple[list[dict[str, Any]], bool] | None = PrivateAttr(default=None)
    _use: toolcalls.ToolUse | None = PrivateAttr(default=None)

    @model_validator(mode="after")
    def _ends_with_user(self):
        turns = [m for m in self.messages if m.role not in ("system", "developer")]
        if not turns or turns[-1].role not in ("user", "tool"):
            raise ValueError("messages must end with a user message (or a tool's result)")
        return self

    @model_validator(mode="after")
    def _tools(self):
        if self.tools in (None, []):
            if self.tool_choice not in (None, "none"):
                raise ValueError("tool_choice needs tools")
            self.tools = None
            return self
        try:
            picked = toolcalls.chosen(toolcalls.check_tools(self.tools), self.tool_choice)
        except AlignkitError as e:
            raise ValueError(str(e)) from None
        self._plan = picked
        if picked is not None:
            if self.n != 1:
                raise ValueError("tool calls are served with n = 1")
            if self.stops:
                raise ValueError("stop strings and tools cannot be combined (a stop inside a call would cut it)")
            if any(k in (self.model_extra or {}) for k in STRUCTURED):
                raise ValueError("tool calls and response_format / guided_* cannot be combined")
        return self

    @property
    def tool_plan(self) -> tuple[list[dict[str, Any]], bool] | None:
        """``(tools, must_call)`` when the answer may be a call (server.tools.chosen, read once when the request is
        validated), else None."""
        return self._plan

    def use_tools(self, tool_format: str) -> toolcalls.ToolUse | None:
        """Settle how this request's tools reach a route whose chat template defines ``tool_format`` ("" when it
        renders none: alignkit's note): read back by :attr:`tool_use` and :attr:`constraint`."""
        history = any(m.role == "tool" or m.tool_calls for m in self.messages)
        self._use = toolcalls.ToolUse.of(self.tool_plan, tool_format, history)
        return self._use

    @property
    def tool_use(self) -> toolcalls.ToolUse | None:
        """How the answer's calls are read (None: words only)."""
        return self._use if self._use is not None else toolcalls.ToolUse.of(self.tool_plan, "")

    @property
    def constraint(self):
        if (use := self.tool_use) is not None and use.callable:
            return use.constraint()
        return super().constraint


class CompletionRequest(_Request):
    """``prompt`` is a string, a list of strings, a list of token ids, or a list of lists of token ids (OpenAI's
    four forms); ``prompts`` is it as a list, one entry (text or token ids) per prompt."""

    prompt: str | list[str] | list[int] | list[list[int]]
    logprobs: int | None = Field(default=None, ge=0, le=20)
    echo: bool = False

    @model_validator(mode="after")
    def _no_tools(self):
        bad = [k for k in ("tools", "tool_choice") if (self.model_extra or {}).get(k) not in (None, [], {})]
        if bad:
            raise ValueError(f"not supported on /v1/completions: {', '.join(bad)} (tool calls are served on "
                             "/v1/chat/completions)")
        return self

    @field_validator("prompt")
    @classmethod
    def _prompts(cls, v):
        if isinstance(v, list):
            if not v:
                raise ValueError("prompt must not be an empty list")
            if all(isinstance(x, int) for x in v) and any(x < 0 for x in v):
                raise ValueError("token ids must be >= 0")
            if any(isinstance(x, list) and (not x or any(t < 0 for t in x)) for x in v):
                raise ValueError("each token-id prompt must be a non-empty list of ids >= 0")
            if any(isinstance(x, str) and not x for x in v):
                raise ValueError("prompts must not be empty")
        elif not v:
            raise ValueError("prompt must not be empty")
        return v

    @property
    def prompts(self) -> list[str | list[int]]:
        v = self.prompt
        if isinstance(v, str):
            return [v]
        if all(isinstance(x, int) for x in v):
            return [list(v)]  # type: ignore[list-item]
        return list(v)  # type: ignore[arg-type]


class TokenizeRequest(BaseModel):
    """vLLM's ``/tokenize``: a completion prompt, or chat messages (rendered as the served route renders them)."""

    model_config = ConfigDict(extra="ignore")

    model: str | None = None
    prompt: str | None = None
    messages: list[ChatMessage] | None = Field(default=None, min_length=1)
    add_special_tokens: bool = True

    @model_validator(mode="after")
    def _one_of(self):
        if (self.prompt is None) == (self.messages is None):
            raise ValueError("give either prompt or messages")
        return self


class DetokenizeRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")

    model: str | None = None
    tokens: list[Annotated[int, Field(ge=0)]] = Field(min_length=0)


class ShiftRequest(BaseModel):
    """alignkit's ``/v1/shift``: an answer of one route, token by token, as a reference route sees it -- the token
    shift analysis (unshifted / marginal / shifted) of one answer, for the comparison page."""

    model_config = ConfigDict(extra="ignore")

    model: str | None = Field(default=None, description="the route that wrote the answer")
    reference: str | None = Field(default=None, description=(
        "the route whose view of the answer is measured (default: the server's route under method none)"))
    messages: list[ChatMessage] | None = Field(default=None, min_length=1, description=(
        "the conversation the answer replies to (ending with a user message)"))
    prompt: str | None = Field(default=None, description="or a single instruction")
    answer: str = Field(min_length=1, description="the answer to analyse")
    top_k: int = Field(default=5, ge=1, le=20, description="the reference's top tokens kept per position")
    mix_weights: dict[str, float] | None = Field(default=None, description=(
        "the weights the answering route ran with, when they were not its own (see the completion endpoints)"))

    @model_validator(mode="after")
    def _one_of(self):
        if (self.prompt is None) == (self.messages is None):
            raise ValueError("give either prompt or messages")
        if self.messages is not None:
            turns = [m for m in self.messages if m.role != "system"]
            if not turns or turns[-1].role != "user":
                raise ValueError("messages must end with a user message")
        return self
