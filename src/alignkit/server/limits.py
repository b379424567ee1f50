"""What the API refuses, and how: the server's limits, its OpenAI-style error, and the prompt-length check every
endpoint that takes a prompt runs."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from fastapi.responses import JSONResponse

from alignkit.errors import AlignkitError, ContextLengthError
from alignkit.methods.base import prepared_for_backend
from alignkit.types import GenerationConfig


@dataclass(frozen=True)
class Limits:
    max_tokens: int = 2048
    """largest max_tokens a request may ask for"""
    default_max_tokens: int = 256
    max_n: int = 4
    max_prompts: int = 32
    """most prompts in one /v1/completions request"""
    max_body_bytes: int = 1 << 20
    retry_after: int = 2
    max_shift_jobs: int = 2
    """/v1/shift analyses running or waiting at once (more: 503)"""


class APIError(Exception):
    def __init__(self, status: int, message: str, *, type_: str = "invalid_request_error", param: str | None = None,
                 code: str | None = None, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type_, param, code
        self.headers = headers or {}

    def response(self) -> JSONResponse:
        body = {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}
        return JSONResponse(body, status_code=self.status, headers=self.headers)


def count_tokens(model: Any, prompt: Any, max_tokens: int) -> int | None:
    """Tokens of the prompt as the model will see it (None if the model cannot count)."""
    try:
        inner, prompt, _, _ = prepared_for_backend(model, prompt, GenerationConfig(max_new_tokens=max_tokens))
        return inner.count_tokens(prompt) if hasattr(inner, "count_tokens") else None
    except ContextLengthError as e:
        raise APIError(400, str(e), code="context_length_exceeded") from None
    except AlignkitError as e:
        raise APIError(400, str(e)) from None
