"""Request models of the OpenAI-compatible API (pydantic). Responses are plain dicts in OpenAI's shape.

Unknown fields are accepted and ignored (clients send many), except features this server does not offer
(tools, functions, response formats, logit bias), which are refused with a 400 that names them.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

UNSUPPORTED = ("tools", "tool_choice", "functions", "function_call", "response_format", "logit_bias")


class _Request(BaseModel):
    model_config = ConfigDict(extra="allow")

    model: str | None = None
    max_tokens: int | None = Field(default=None, ge=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    temperature: float = Field(default=1.0, ge=0, le=2)
    top_p: float = Field(default=1.0, gt=0, le=1)
    top_k: int = Field(default=0, ge=0)
    repetition_penalty: float | None = Field(default=None, gt=0)
    stop: str | list[str] | None = None
    seed: int | None = None
    n: int = Field(default=1, ge=1)
    stream: bool = False
    user: str | None = None

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


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="ignore")

    role: Literal["system", "user", "assistant"]
    content: str


class ChatCompletionRequest(_Request):
    messages: list[ChatMessage] = Field(min_length=1)
    logprobs: bool = False
    top_logprobs: int | None = Field(default=None, ge=0, le=20)

    @model_validator(mode="after")
    def _ends_with_user(self):
        turns = [m for m in self.messages if m.role != "system"]
        if not turns or turns[-1].role != "user":
            raise ValueError("messages must end with a user message")
        return self


class CompletionRequest(_Request):
    prompt: str | list[str]
    logprobs: int | None = Field(default=None, ge=0, le=20)
    echo: bool = False

    @field_validator("prompt")
    @classmethod
    def _one_prompt(cls, v):
        if isinstance(v, list):
            if len(v) != 1 or not isinstance(v[0], str):
                raise ValueError("give one prompt (a string); batch prompts by sending requests concurrently")
            v = v[0]
        if not v:
            raise ValueError("prompt must not be empty")
        return v
