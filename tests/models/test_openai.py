"""openai-backend behaviour beyond the conformance suite: retries, concurrency, errors (real HTTP)."""

from __future__ import annotations

import fastapi  # noqa: F401 - installed by make; missing is an error
import openai  # noqa: F401 - installed by make; missing is an error
import pytest

from alignkit import GenerationConfig, load_model  # noqa: E402
from alignkit.errors import ModelConnectionError  # noqa: E402
from tests.support.openai_server import ServerThread, build_app  # noqa: E402


@pytest.fixture(scope="module")
def server(tiny_aligned):
    with ServerThread(build_app(tiny_aligned, "tiny")) as srv:
        yield srv


def test_retries_429_and_503_then_succeeds(server, tiny_aligned):
    m = load_model(f"openai:tiny@{server.url}", max_retries=3)
    server.app.state.fail = [429, 503, 500]
    before = server.app.state.requests
    comp = m.generate(["The quick"], GenerationConfig(max_new_tokens=5))[0]
    assert server.app.state.requests - before == 4
    assert comp.text == tiny_aligned.generate(["The quick"], GenerationConfig(max_new_tokens=5))[0].text


def test_gives_up_with_a_clear_error(server):
    m = load_model(f"openai:tiny@{server.url}", max_retries=1)
    server.app.state.fail = [503, 503]
    with pytest.raises(ModelConnectionError, match="answered 503"):
        m.generate(["The quick"], GenerationConfig(max_new_tokens=3))
    server.app.state.fail = []


def test_unknown_model_lists_what_the_server_has(server):
    from alignkit import ModelSpecError

    with pytest.raises(ModelSpecError, match="serves: tiny"):
        load_model(f"openai:other@{server.url}")


def test_many_requests_run_with_bounded_concurrency(server):
    m = load_model(f"openai:tiny@{server.url}", concurrency=3)
    prompts = [f"The quick {i}" for i in range(10)]
    comps = m.generate(prompts, GenerationConfig(max_new_tokens=4))
    assert len(comps) == 10 and all(c.completion_tokens > 0 for c in comps)
    assert m._pool._max_workers == 3


def test_usage_is_reported(server):
    m = load_model(f"openai:tiny@{server.url}")
    c = m.generate(["The quick"], GenerationConfig(max_new_tokens=4))[0]
    assert c.prompt_tokens > 0 and c.completion_tokens == 4


def test_a_slow_server_times_out_with_a_clear_error(server):
    m = load_model(f"openai:tiny@{server.url}", timeout=0.5, max_retries=0)
    server.app.state.delay = 2.0
    try:
        with pytest.raises(ModelConnectionError, match="timed out"):
            m.generate(["The quick"], GenerationConfig(max_new_tokens=2))
    finally:
        server.app.state.delay = 0.0


def test_api_key_comes_from_the_environment(server, monkeypatch):
    monkeypatch.setenv("MY_KEY", "sk-test-123")
    m = load_model(f"openai:tiny@{server.url}", api_key_env="MY_KEY")
    assert m.client.api_key == "sk-test-123"
