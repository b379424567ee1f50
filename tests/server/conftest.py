"""Fixtures of the server tests."""

from __future__ import annotations

from pathlib import Path

import pytest

CLIENTS = Path(__file__).resolve().parents[2] / ".venv-clients" / "bin" / "python"


@pytest.fixture(scope="module")
def clients_python() -> str:
    """The Python of the clients' own environment (.venv-clients, made by `make clients-env`: litellm pins
    openai < 3, instructor an older jiter, so they cannot share alignkit's)."""
    if not CLIENTS.is_file():
        pytest.fail("the clients' environment is missing: run `make clients-env` (make test does)")
    return str(CLIENTS)
