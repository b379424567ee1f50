"""Plain data types shared by every part of alignkit (frozen dataclasses, no torch)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

ROLES = ("system", "user", "assistant")


@dataclass(frozen=True)
class Message:
    """One turn of a conversation."""

    role: str
    content: str

    def __post_init__(self) -> None:
        if self.role not in ROLES:
            raise ValueError(f"unknown message role {self.role!r}; expected one of {', '.join(ROLES)}")
        if not isinstance(self.content, str):
            raise ValueError(f"message content must be a string, got {type(self.content).__name__}")

    @classmethod
    def from_dict(cls, d: Any) -> Message:
        if not isinstance(d, dict) or "role" not in d or "content" not in d:
            raise ValueError(f"a message must be an object with 'role' and 'content', got {d!r:.80}")
        return cls(role=d["role"], content=d["content"])

    def to_dict(self) -> dict[str, str]:
        return {"role": self.role, "content": self.content}


class ToolChat(tuple[Message, ...]):
    """A conversation with tools, for a model whose chat template renders them (``capabilities.tool_format``).

    As a sequence it is its plain messages -- earlier calls and tool results written out as text -- which is what
    a route that does not hand the conversation to such a template reads. :attr:`turns` are the messages in
    OpenAI's shape (an assistant's ``tool_calls``, ``role: "tool"`` results with their ``tool_call_id``),
    :attr:`tools` the functions (``{name, description, parameters}``) and :attr:`prefill` text the answer starts
    with (a call's opener, when a call is required): the model's template renders all three."""

    turns: tuple[dict[str, Any], ...]
    tools: tuple[dict[str, Any], ...]
    prefill: str

    def __new__(cls, messages: Sequence[Message], turns: Sequence[dict[str, Any]],
                tools: Sequence[dict[str, Any]] = (), prefill: str = "") -> ToolChat:
        chat = super().__new__(cls, messages)
        chat.turns, chat.tools, chat.prefill = tuple(turns), tuple(tools), prefill
        return chat

    def __reduce__(self):  # type: ignore[override]  # pickled with its tools (a worker process gets it whole)
        return (ToolChat, (tuple(self), self.turns, self.tools, self.prefill))


#: A prompt is either raw text (completion) or a conversation (chat; a :class:`ToolChat` carries tools too).
Prompt = str | Sequence[Message]

FinishReason = Literal["stop", "length"]


#: the range of repetition penalties (outside it logits overflow or vanish); temperatures below the minimum are greedy
MIN_PENALTY, MAX_PENALTY, MIN_TEMPERATURE = 0.01, 100.0, 1e-5
PENALTY_SCOPES = ("answer", "all")


@dataclass(frozen=True)
class GenerationConfig:
    """Decoding parameters of one request. ``temperature == 0`` (below 1e-5) means greedy decoding."""

    max_new_tokens: int = 256
    temperature: float = 0.0
    top_p: float = 1.0
    top_k: int = 0
    repetition_penalty: float = 1.0
    repetition_penalty_scope: str = "answer"
    """Which tokens the repetition penalty counts: ``answer`` (the answer so far -- alignkit's default: an
    in-context prompt holds the very tokens an answer must be free to use) or ``all`` (prompt and answer, as
    URIAL's original setting and vLLM do)."""
    seed: int | None = None
    stop: tuple[str, ...] = field(default_factory=tuple)
    constraint: Any = None
    """Structured output (:class:`alignkit.structured.Constraint`): what the completion must match, or None."""

    def __post_init__(self) -> None:
        if isinstance(self.stop, str) or not isinstance(self.stop, (tuple, list)):
            raise ValueError("stop must be a sequence of strings, not a single string")
        object.__setattr__(self, "stop", tuple(self.stop))
        if any(not isinstance(s, str) or s == "" for s in self.stop):
            raise ValueError("stop strings must be non-empty strings")
        if not isinstance(self.max_new_tokens, int) or self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be a positive integer, got {self.max_new_tokens!r}")
        if not (self.temperature >= 0 and math.isfinite(self.temperature)):
            raise ValueError(f"temperature must be >= 0, got {self.temperature!r}")
        if not (0 < self.top_p <= 1):
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p!r}")
        if not isinstance(self.top_k, int) or self.top_k < 0:
            raise ValueError(f"top_k must be an integer >= 0 (0 = off), got {self.top_k!r}")
        if self.repetition_penalty_scope not in PENALTY_SCOPES:
            raise ValueError(f"repetition_penalty_scope must be one of {', '.join(PENALTY_SCOPES)}, got "
                             f"{self.repetition_penalty_scope!r}")
        if not (MIN_PENALTY <= self.repetition_penalty <= MAX_PENALTY):
            raise ValueError(f"repetition_penalty must be between {MIN_PENALTY} and {MAX_PENALTY} (1: off), got "
                             f"{self.repetition_penalty!r}")

    @property
    def greedy(self) -> bool:
        """Temperatures below 1e-5 decode greedily (as vLLM does): dividing logits by them overflows."""
        return self.temperature < MIN_TEMPERATURE

    def to_dict(self) -> dict[str, Any]:
        return {
            "max_new_tokens": self.max_new_tokens,
            "temperature": self.temperature,
            "top_p": self.top_p,
            "top_k": self.top_k,
            "repetition_penalty": self.repetition_penalty,
            # (only when not the default, so records made before the option stay comparable)
            **({"repetition_penalty_scope": self.repetition_penalty_scope}
               if self.repetition_penalty_scope != "answer" else {}),
            "seed": self.seed,
            "stop": list(self.stop),
            **({"constraint": self.constraint.to_dict()} if self.constraint is not None else {}),
        }


@dataclass(frozen=True)
class Completion:
    """The result of generating from one prompt.

    ``text`` is clean: it ends before the first stop string. ``token_ids`` are the generated tokens up to and
    including the one that completed the stop string or end-of-sequence token (empty for API backends that do
    not report ids).
    """

    text: str
    finish_reason: FinishReason
    prompt_tokens: int
    completion_tokens: int
    token_ids: tuple[int, ...] = ()
    stop: str | None = None
    meta: dict[str, Any] | None = field(default=None, compare=False)
    """Per-completion details a method adds (e.g. which in-context examples were selected)."""

    def to_dict(self) -> dict[str, Any]:
        return {
            "text": self.text,
            "finish_reason": self.finish_reason,
            "stop": self.stop,
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
        }


@dataclass(frozen=True)
class StreamEvent:
    """A piece of streamed output for prompt number ``index`` of a batch.

    ``text`` is the new text since the previous event of that prompt. The last event of a prompt has
    ``finish_reason`` set and carries its full :class:`Completion`.
    """

    index: int
    text: str
    finish_reason: FinishReason | None = None
    completion: Completion | None = None


@dataclass(frozen=True)
class TokenScores:
    """Teacher-forced scores of one continuation given its prompt.

    Attributes:
        token_ids: the continuation's token ids (empty where an API backend does not give ids).
        tokens: the continuation's tokens as text pieces.
        logprobs: log-probability of each continuation token under the model.
        top_logprobs: per position, the model's top-k ``(token, logprob)`` pairs, most likely first
            (``None`` if not asked for).
        reduced: per position, what the caller's reduction returned (``None`` if no reduction was given).
    """

    token_ids: tuple[int, ...]
    tokens: tuple[str, ...]
    logprobs: tuple[float, ...]
    top_logprobs: tuple[tuple[tuple[str, float], ...], ...] | None = None
    reduced: tuple[Any, ...] | None = None

    def __len__(self) -> int:
        return len(self.logprobs)


def as_messages(value: Any) -> list[Message]:
    """Turn a list of ``{"role", "content"}`` dicts (or Messages) into Messages, with clear errors."""
    if not isinstance(value, (list, tuple)) or not value:
        raise ValueError("messages must be a non-empty list of {role, content} objects")
    return [m if isinstance(m, Message) else Message.from_dict(m) for m in value]
