"""schemathesis over the server's OpenAPI document: requests generated from every declared request body (valid and
invalid), sent to a running server; none may answer 5xx, and every 4xx is an OpenAI-style error body."""

from __future__ import annotations

import pytest
import schemathesis  # noqa: E402
from hypothesis import HealthCheck, given, settings  # noqa: E402

from alignkit.methods import MethodOptions, apply_method  # noqa: E402
from alignkit.server.app import Limits, build_app  # noqa: E402
from alignkit.server.service import Service  # noqa: E402
from tests.support.openai_server import ServerThread  # noqa: E402


@pytest.fixture(scope="module")
def fuzzed(tiny_aligned):
    model = apply_method(tiny_aligned, MethodOptions(method="template"))
    # small limits keep each generated request cheap; everything beyond them must be a clean 400
    app = build_app(Service(model, "chat", max_batch=4), limits=Limits(max_tokens=4, default_max_tokens=2, max_n=2,
                                                                        max_prompts=4, max_body_bytes=1 << 16))
    with ServerThread(app) as srv:
        yield srv


def test_no_request_from_the_openapi_document_gets_a_5xx(fuzzed):
    root = fuzzed.url.removesuffix("/v1")
    schema = schemathesis.openapi.from_url(root + "/openapi.json")
    paths = ("/v1/chat/completions", "/v1/completions", "/v1/responses", "/tokenize", "/detokenize", "/v1/shift")
    seen: dict[str, set[int]] = {}
    failures: list[str] = []
    def run(path: str) -> None:
        operation = schema[path]["POST"]

        @settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck), database=None)
        @given(case=operation.as_strategy())
        def check(case):
            response = case.call(base_url=root, timeout=60)
            seen.setdefault(path, set()).add(response.status_code)
            if response.status_code >= 500:
                failures.append(f"{path}: {response.status_code} for {case.body!r:.300}: {response.text[:300]}")
            elif response.status_code >= 400:
                body = response.json()
                assert isinstance(body.get("error"), dict) and body["error"].get("message"), response.text

        check()

    for path in paths:
        run(path)
    assert not failures, "\n".join(failures[:10])
    assert set(seen) == set(paths)
    # and the server still answers valid requests on every path after all that
    import httpx

    valid = {"/v1/chat/completions": {"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2},
             "/v1/completions": {"prompt": ["Hi", "Ho"], "max_tokens": 2},
             "/v1/responses": {"input": "Hi", "max_output_tokens": 2},
             "/tokenize": {"prompt": "Hi"}, "/detokenize": {"tokens": [5, 6]},
             "/v1/shift": {"reference": "chat", "messages": [{"role": "user", "content": "Hi"}], "answer": "Ho"}}
    for path, body in valid.items():
        assert httpx.post(root + path, json=body, timeout=60).status_code == 200, path
