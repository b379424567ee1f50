"""Fixtures of the server tests."""

from __future__ import annotations

from pathlib import Path

import openai
import pytest

from alignkit.methods import MethodOptions, apply_method
from alignkit.server.app import build_app
from alignkit.server.service import Service
from tests.support.openai_server import ServerThread

CLIENTS = Path(__file__).resolve().parents[2] / ".venv-clients" / "bin" / "python"


@pytest.fixture(scope="module")
def clients_python() -> str:
    """The Python of the clients' own environment (.venv-clients, made by `make clients-env`: litellm pins
    openai < 3, instructor an older jiter, so they cannot share alignkit's)."""
    if not CLIENTS.is_file():
        pytest.fail("the clients' environment is missing: run `make clients-env` (make test does)")
    return str(CLIENTS)


@pytest.fixture(scope="module")
def srv(tiny_base):
    """A server with one route, "raw": the tiny base under method none (it writes visible text, where the tiny chat
    model's sampled answers are whitespace), with the official client and the route itself attached."""
    model = apply_method(tiny_base, MethodOptions(method="none"))
    with ServerThread(build_app(Service(model, "raw", max_batch=8))) as s:
        s.model = model
        s.client = openai.OpenAI(base_url=s.url, api_key="none", max_retries=0)
        yield s
