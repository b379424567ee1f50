"""The OpenAI-compatible server, tested with the official openai client over a real socket."""

from __future__ import annotations

import json
import threading
import time

import fastapi  # noqa: F401 - installed by make; missing is an error
import httpx
import openai
import pytest

from alignkit import GenerationConfig, Message  # noqa: E402
from alignkit.methods import MethodOptions, apply_method  # noqa: E402
from alignkit.server.app import Limits, build_app  # noqa: E402
from alignkit.server.service import Service  # noqa: E402
from tests.support.openai_server import ServerThread  # noqa: E402

KEY = "sk-test-key"


@pytest.fixture(scope="module")
def served(tiny_aligned):
    model = apply_method(tiny_aligned, MethodOptions(method="template"))
    service = Service(model, "tiny-chat", max_batch=4, max_queue=16)
    app = build_app(service, api_key=KEY, limits=Limits(max_tokens=300, default_max_tokens=16, max_n=2,
                                                        max_body_bytes=4096))
    with ServerThread(app) as srv:
        srv.service, srv.model = service, model
        srv.client = openai.OpenAI(base_url=srv.url, api_key=KEY, max_retries=0)
        yield srv


def test_models_and_health(served):
    assert [m.id for m in served.client.models.list().data] == ["tiny-chat"]
    assert httpx.get(served.url.removesuffix("/v1") + "/health").json()["status"] == "ok"


def test_models_retrieve_gives_one_route_and_a_404_for_others(served):
    m = served.client.models.retrieve("tiny-chat")
    assert (m.id, m.object, m.owned_by) == ("tiny-chat", "model", "alignkit")
    with pytest.raises(openai.NotFoundError) as e:
        served.client.models.retrieve("org/other-model")  # an id with a slash reaches the route too
    assert e.value.body["code"] == "model_not_found" and "tiny-chat" in e.value.body["message"]


def test_chat_matches_the_model_and_reports_usage(served):
    r = served.client.chat.completions.create(model="tiny-chat", messages=[{"role": "user", "content": "Hello"}],
                                              max_tokens=8, temperature=0)
    want = served.model.generate([[Message("user", "Hello")]], GenerationConfig(max_new_tokens=8))[0]
    assert r.choices[0].message.content == want.text and r.choices[0].message.role == "assistant"
    assert r.usage.completion_tokens == want.completion_tokens and r.usage.prompt_tokens > 0
    assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens


def test_streaming_chat_adds_up(served):
    msgs = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Tell me a story"}]
    full = served.client.chat.completions.create(model="tiny-chat", messages=msgs, max_tokens=12, temperature=0)
    chunks = list(served.client.chat.completions.create(model="tiny-chat", messages=msgs, max_tokens=12,
                                                        temperature=0, stream=True,
                                                        stream_options={"include_usage": True}))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == full.choices[0].message.content
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] in ("stop", "length")
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == full.usage.completion_tokens


def test_completions_streaming_and_n(served):
    r = served.client.completions.create(model="tiny-chat", prompt="The quick", max_tokens=6, temperature=0)
    s = list(served.client.completions.create(model="tiny-chat", prompt="The quick", max_tokens=6, temperature=0,
                                              stream=True))
    assert "".join(c.choices[0].text for c in s) == r.choices[0].text
    two = served.client.chat.completions.create(model="tiny-chat", messages=[{"role": "user", "content": "Hi"}],
                                                max_tokens=6, temperature=1.0, seed=3, n=2)
    assert [c.index for c in two.choices] == [0, 1]


def test_logprobs(tiny_base):
    service = Service(apply_method(tiny_base, MethodOptions(method="none")), "raw")
    with ServerThread(build_app(service)) as srv:
        client = openai.OpenAI(base_url=srv.url, api_key="none", max_retries=0)
        r = client.chat.completions.create(model="raw", messages=[{"role": "user", "content": "The quick"}],
                                           max_tokens=5, temperature=0, logprobs=True, top_logprobs=2)
        content = r.choices[0].logprobs.content
        assert r.choices[0].message.content
        assert content and all(len(t.top_logprobs) == 2 and t.logprob <= 0 for t in content)
        assert "".join(t.token for t in content) == r.choices[0].message.content
        # greedy: every chosen token is the model's top choice
        assert all(t.top_logprobs[0].token == t.token for t in content)
        c = client.completions.create(model="raw", prompt="The quick", max_tokens=4, temperature=0, logprobs=3,
                                      echo=True)
        lp = c.choices[0].logprobs
        assert c.choices[0].text.startswith("The quick") and lp.token_logprobs[0] is None
        assert "".join(lp.tokens) == c.choices[0].text and lp.text_offset[0] == 0


def _post(served, path, body, key=KEY, raw=None):
    headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
    return httpx.post(served.url + path, content=raw if raw is not None else json.dumps(body), headers=headers,
                      timeout=30)


@pytest.mark.parametrize("body, status, needle", [
    (None, 400, "not valid JSON"),
    ({"messages": [{"role": "user", "content": "hi"}], "temperature": "hot"}, 400, "temperature"),
    ({"messages": []}, 400, "messages"),
    ({"messages": [{"role": "robot", "content": "hi"}]}, 400, "messages.0.role"),
    ({"messages": [{"role": "user", "content": "hi"}], "max_tokens": 5000}, 400, "at most 300"),
    ({"messages": [{"role": "user", "content": "hi"}], "n": 3}, 400, "n is 3"),
    ({"messages": [{"role": "user", "content": "hi"}], "tools": [{"type": "function"}]}, 400, "tools"),
    ({"messages": [{"role": "assistant", "content": "hi"}]}, 400, "end with a user message"),
    ({"messages": [{"role": "user", "content": "word " * 300}], "max_tokens": 300}, 400, "context"),
    ({"messages": [{"role": "user", "content": "x" * 5000}]}, 413, "limit"),
    ([1, 2], 400, "JSON object"),
])
def test_bad_requests_get_openai_style_4xx(served, body, status, needle):
    r = _post(served, "/chat/completions", body, raw=b"{not json" if body is None else None)
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert needle in err["message"] and err["type"]


def test_context_length_code(served):
    r = _post(served, "/chat/completions", {"messages": [{"role": "user", "content": "word " * 300}], "max_tokens": 300})
    assert r.json()["error"]["code"] == "context_length_exceeded"


def test_api_key_is_required(served):
    bad = openai.OpenAI(base_url=served.url, api_key="wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        bad.models.list()
    assert httpx.get(served.url + "/models").status_code == 401


def test_disconnecting_mid_stream_cancels_the_generation(tiny_base):
    service = Service(apply_method(tiny_base, MethodOptions(method="none")), "raw")
    with ServerThread(build_app(service)) as srv:
        with httpx.stream("POST", srv.url + "/completions", json={"prompt": "The quick", "max_tokens": 400,
                                                                  "stream": True, "temperature": 1.0, "seed": 1},
                          timeout=30) as r:
            for line in r.iter_lines():
                if line.startswith("data: {"):
                    break  # read one chunk, then hang up
        deadline = time.time() + 20
        while service.stats.cancelled == 0 and time.time() < deadline:
            time.sleep(0.05)
        assert service.stats.cancelled == 1
        assert service.stats.rows == 1


def test_concurrent_requests_are_batched(tiny_aligned):
    """Requests that arrive while the model is busy are answered together in one batch. The model is held
    (its `exclusive()` lock) until all six requests are in, so the batching does not depend on timing."""
    model = apply_method(tiny_aligned, MethodOptions(method="template"))
    service = Service(model, "tiny-chat", max_batch=8, max_queue=16)
    results = []
    with ServerThread(build_app(service)) as srv:
        client = openai.OpenAI(base_url=srv.url, api_key="x", max_retries=0)

        def call(i):
            r = client.chat.completions.create(model="tiny-chat", messages=[{"role": "user", "content": f"Hi {i}"}],
                                               max_tokens=8, temperature=0)
            results.append(r.choices[0].message.content)

        threads = [threading.Thread(target=call, args=(i,)) for i in range(6)]
        with tiny_aligned.exclusive():
            for t in threads:
                t.start()
            deadline = time.time() + 20
            while service.stats.jobs < 6 and time.time() < deadline:
                time.sleep(0.02)
            assert service.stats.jobs == 6 and not results  # all six are in; none answered yet
        for t in threads:
            t.join()
    assert len(results) == 6
    # one at a time would be six batches of one row; the requests that waited shared a batch
    assert service.stats.max_batch_rows >= 3 and service.stats.batches <= 2, service.stats


def test_full_queue_answers_503_with_retry_after(tiny_aligned):
    model = apply_method(tiny_aligned, MethodOptions(method="template"))
    service = Service(model, "stalled", max_batch=1, max_queue=1)
    service.start = lambda: None  # no worker: the queue fills up and stays full
    with ServerThread(build_app(service)) as srv:
        body = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
        first = threading.Thread(target=lambda: httpx.post(srv.url + "/chat/completions", json=body, timeout=5))
        first.start()
        deadline = time.time() + 5
        while service._queue.qsize() < 1 and time.time() < deadline:
            time.sleep(0.01)
        r = httpx.post(srv.url + "/chat/completions", json=body, timeout=5)
        assert r.status_code == 503 and r.headers["retry-after"] and "busy" in r.json()["error"]["message"]
        service._stopping.set()
        service.stop(timeout=1)  # shutdown refuses what is queued: the first request ends with 503, not a hang
        first.join(10)
        assert not first.is_alive()


def test_urial_over_the_server(tiny_base, tmp_path):
    from alignkit.methods.templates import parse_template
    from alignkit.methods.urial import InContextAligned

    t = parse_template({"id": "s", "preamble": "Be kind.", "examples": [{"query": "Hi", "answer": "Hello!"}]})
    service = Service(InContextAligned(tiny_base, t), "urial:tiny")
    with ServerThread(build_app(service)) as srv:
        client = openai.OpenAI(base_url=srv.url, api_key="none", max_retries=0)
        r = client.chat.completions.create(model="urial:tiny", messages=[{"role": "user", "content": "Hello"}],
                                           max_tokens=10)
        assert "````" not in r.choices[0].message.content
        assert client.models.list().data[0].info["method"] == "urial"


def test_a_server_that_owns_its_models_closes_them_when_it_stops(tiny_base):
    """`alignkit serve` owns its models (close_models=True): an engine with processes of its own (vLLM's async one)
    stops with the server; a server built around models it was lent (these tests) leaves them open."""
    closed: list[str] = []
    owned = apply_method(tiny_base, MethodOptions(method="none"))
    owned.close = lambda: closed.append("owned")  # (the session's tiny model itself stays open)
    lent = apply_method(tiny_base, MethodOptions(method="none"))
    lent.close = lambda: closed.append("lent")
    with ServerThread(build_app(Service(owned, "owned"), close_models=True)) as s:
        assert httpx.get(f"{s.url}/models").status_code == 200
    with ServerThread(build_app(Service(lent, "lent"))):
        pass
    assert closed == ["owned"]
