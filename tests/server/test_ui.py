"""The comparison page at ``/ui`` and the ``/v1/shift`` endpoint it uses: every chosen route answers in its own
streaming column, each finished answer's tokens coloured by a reference route's view of them (exactly what the shift
analysis computes), a card per token, a slider per weight of a weighted route, the address that reproduces the
comparison; the key kept out of the address; model output never read as HTML. Real Chromium, tiny real models
(with a 4096-token context: the in-context preamble is long in their tokenizer)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import httpx
import pytest

from alignkit.analysis.shift import Item, ShiftAnalyzer, ShiftOptions
from alignkit.cli.serve import open_routes
from alignkit.models.registry import ModelOptions
from alignkit.server.app import Limits, build_app
from alignkit.server.service import Service
from alignkit.types import Message
from tests.support.browser import chromium_page
from tests.support.openai_server import ServerThread

ROOT = Path(__file__).resolve().parents[2]
SAMPLED = {"temperature": 2.0, "seed": 3}  # the tiny models' greedy answers are one token repeated
HOSTILE = 'fine <script>window.__owned = 1</script><img src=x onerror="window.__owned = 2"> <b>bold</b>'


@pytest.fixture(scope="module")
def tiny4k(tmp_path_factory):
    from tests.support import tiny

    root = tmp_path_factory.mktemp("tiny4k")
    tok = tiny.build_tokenizer()
    base = tiny.save_model(root / "base", tiny.build_model(tok, seed=1, positions=4096), tok)
    return {"base": base, "adapter": tiny.build_adapter(base, root / "adapter")}


def _routes(tiny4k):
    base, adapter = tiny4k["base"], tiny4k["adapter"]
    specs = (f"raw=model={base},method=none", f"urial=model={base},method=urial,template=urial-k0",
             f"adapter=model={adapter},method=none", f"mix=model={adapter},method=dera,ref={base},lam=0.5")
    return open_routes(specs, str(base), ModelOptions())


@pytest.fixture(scope="module")
def server(tiny4k):
    opened = _routes(tiny4k)
    with ServerThread(build_app([Service(m, name) for name, m in opened])) as srv:
        srv.models = dict(opened)
        srv.root = srv.url.removesuffix("/v1")
        yield srv


def _chat(srv, route, messages, max_tokens=8, **extra):
    r = httpx.post(srv.root + "/v1/chat/completions", timeout=120, json={
        "model": route, "messages": messages, "max_tokens": max_tokens, **SAMPLED, **extra})
    assert r.status_code == 200, r.text
    return r.json()["choices"][0]["message"]["content"]


# ---------------------------------------------------------------------------------------------- the endpoints
def test_the_shift_endpoint_is_the_shift_analysis(server):
    msgs = [{"role": "user", "content": "Hello"}]
    answer = _chat(server, "urial", msgs)
    assert answer
    got = httpx.post(server.root + "/v1/shift", timeout=120,
                     json={"model": "urial", "messages": msgs, "answer": answer}).json()
    assert got["reference"] == "raw"  # by default the route under method none
    assert got["mode"] == "exact" and got["approximation"] is None
    # the analysis itself, run directly: the reference reads the conversation as the raw route does (joined text)
    m = server.models
    (record,) = ShiftAnalyzer(m["raw"], m["urial"], label="urial", options=ShiftOptions(context="raw")).analyse(
        [Item("x", [Message("user", "Hello")], answer, base_prompt="Hello")])
    assert [t["ref_rank"] for t in got["tokens"]] == [p["base_rank"] for p in record["positions"]]
    assert [t["category"] for t in got["tokens"]] == [p["category"] for p in record["positions"]]
    assert [t["kl"] for t in got["tokens"]] == pytest.approx([p["kl"] for p in record["positions"]], rel=1e-5)
    assert got["summary"] == pytest.approx(record["summary"])
    assert "".join(t["text"] for t in got["tokens"]) == answer  # the tokens spell the answer the page showed
    assert all(len(t["ref_top"]) == 5 for t in got["tokens"])
    assert any(t["category"] != "unshifted" for t in got["tokens"])  # in-context alignment moves something
    # a route against itself: the reference's top token is always the answer's under greedy decoding
    greedy = _chat(server, "raw", msgs, temperature=0)
    same = httpx.post(server.root + "/v1/shift", timeout=120, json={
        "model": "raw", "reference": "raw", "messages": msgs, "answer": greedy}).json()
    assert same["tokens"] and {t["ref_rank"] for t in same["tokens"]} == {0}
    doc = httpx.get(server.root + "/openapi.json").json()
    assert doc["paths"]["/v1/shift"]["post"]["requestBody"]["content"]["application/json"]["schema"]["$ref"].endswith(
        "/ShiftRequest")


def test_the_shift_endpoint_refuses_bad_requests_clearly(tiny4k):
    opened = _routes(tiny4k)
    limits = Limits(max_tokens=16, max_body_bytes=4096, max_shift_jobs=1)
    with ServerThread(build_app([Service(m, n) for n, m in opened], api_key="sekrit", limits=limits)) as srv:
        root, auth = srv.url.removesuffix("/v1"), {"Authorization": "Bearer sekrit"}
        msgs = [{"role": "user", "content": "Hello"}]

        def post(body, headers=auth):
            return httpx.post(root + "/v1/shift", json=body, headers=headers, timeout=120)

        r = post({"model": "urial", "messages": msgs, "answer": "hi"}, headers={})
        assert r.status_code == 401  # the same key as the completion endpoints
        cases = [
            ({"model": "urial", "messages": msgs, "answer": "word " * 40}, 400, "analyses at most 16"),
            ({"model": "urial", "messages": msgs, "answer": "x" * 5000}, 413, "limit"),
            ({"model": "urial", "reference": "nope", "messages": msgs, "answer": "hi"}, 404, "no route 'nope'"),
            ({"model": "nope", "messages": msgs, "answer": "hi"}, 404, "no route 'nope'"),
            ({"model": "urial", "answer": "hi"}, 400, "give either prompt or messages"),
            ({"model": "urial", "messages": [{"role": "assistant", "content": "x"}], "answer": "hi"}, 400,
             "end with a user message"),
            ({"model": "urial", "messages": msgs, "answer": ""}, 400, "answer"),
            ({"model": "urial", "messages": msgs, "answer": "hi", "top_k": 50}, 400, "top_k"),
            ({"model": "urial", "messages": msgs, "answer": "hi", "mix_weights": {"lam": 1}}, 400, "no weights"),
            ({"model": "mix", "messages": msgs, "answer": "hi", "mix_weights": {"alpha": 1}}, 400,
             "no weight 'alpha'; its weights are lam"),
        ]
        for body, status, words in cases:
            r = post(body)
            assert r.status_code == status and words in r.json()["error"]["message"], (body, r.text)
        ok = post({"model": "urial", "messages": msgs, "answer": "hi"})
        assert ok.status_code == 200, ok.text
    busy = Limits(max_shift_jobs=0)
    with ServerThread(build_app([Service(m, n) for n, m in opened], limits=busy)) as srv:
        r = httpx.post(srv.url + "/shift", json={"model": "urial", "messages": msgs, "answer": "hi"})
        assert r.status_code == 503 and r.headers["retry-after"]


def test_a_weighted_route_takes_other_weights_per_request(server):
    msgs = [{"role": "user", "content": "Hello"}]
    card = httpx.get(server.url + "/models/mix").json()
    assert card["info"]["weights"] == {"lam": 0.5}
    assert card["info"]["chat"] is False  # a raw model leads the mix: it reads the conversation as text
    before = _chat(server, "mix", msgs)
    # lam 1 is the aligned side alone, lam 0 the reference alone: the same answers as those routes give
    assert _chat(server, "mix", msgs, mix_weights={"lam": 1.0}) == _chat(server, "adapter", msgs)
    assert _chat(server, "mix", msgs, mix_weights={"lam": 0.0}) == _chat(server, "raw", msgs)
    assert _chat(server, "mix", msgs) == before  # the route itself keeps its weight
    r = httpx.post(server.url + "/chat/completions", json={"model": "urial", "messages": msgs,
                                                           "mix_weights": {"lam": 0.2}})
    assert r.status_code == 400 and "no weights to set" in r.json()["error"]["message"]
    r = httpx.post(server.url + "/chat/completions", json={"model": "mix", "messages": msgs,
                                                           "mix_weights": {"lam": -1}})
    assert r.status_code == 400 and "lambda must be >= 0" in r.json()["error"]["message"]


def test_on_api_routes_the_shift_is_approximate_and_says_so(tiny4k):
    """Routes on an OpenAI-compatible server give top-k log-probabilities only: the endpoint computes the shift from
    them, names the approximation, and its shift classes equal the exact ones (top-5 lists decide rank < 3)."""
    from alignkit import load_model
    from alignkit.methods import MethodOptions, apply_method
    from tests.support.openai_server import build_app as upstream_app

    local = {"raw": load_model(str(tiny4k["base"])), "adapter": load_model(str(tiny4k["adapter"]))}
    with ServerThread(upstream_app(local["raw"], "raw")) as up_raw, \
            ServerThread(upstream_app(local["adapter"], "adapter")) as up_adapter:
        api = {"raw": load_model(f"openai:raw@{up_raw.url}"), "adapter": load_model(f"openai:adapter@{up_adapter.url}")}
        routes = [Service(apply_method(m, MethodOptions(method="none")), name) for name, m in api.items()]
        with ServerThread(build_app(routes)) as srv:
            answer = "the cat sat on a warm mat"
            got = httpx.post(srv.url + "/shift", timeout=120, json={
                "model": "adapter", "reference": "raw", "prompt": "Tell me a story.", "answer": answer}).json()
    assert got["mode"] == "approx" and "top-k log-probabilities" in got["approximation"]
    (exact,) = ShiftAnalyzer(apply_method(local["raw"], MethodOptions(method="none")),
                             apply_method(local["adapter"], MethodOptions(method="none")), label="x",
                             options=ShiftOptions(context="raw")).analyse([Item("x", "Tell me a story.", answer)])
    assert [t["category"] for t in got["tokens"]] == [p["category"] for p in exact["positions"]]
    assert len(got["tokens"]) == len(exact["positions"])  # (token texts as the upstream API reports them)
    for t, p in zip(got["tokens"], exact["positions"]):
        assert t["ref_p"] == pytest.approx(p["p_base"], rel=1e-4)  # the answer token's own log-prob is exact
        if p["base_rank"] < 5:
            assert t["rank_exact"] and t["ref_rank"] == p["base_rank"]
        else:
            assert not t["rank_exact"] and t["ref_rank"] == 5  # beyond the top 5: a lower bound, said so


def test_a_routes_stages_come_with_its_answer_and_show_on_the_page(tiny4k):
    """Best-of-N's candidates with their scores travel with the answer (an ``alignkit`` field OpenAI clients
    ignore), and the page shows them under the answer."""
    from alignkit import load_model
    from alignkit.methods import MethodOptions, apply_method
    from alignkit.methods.best_of_n import BestOfN
    from tests.methods.test_best_of_n import CountScorer

    raw = apply_method(load_model(str(tiny4k["base"])), MethodOptions(method="none"))
    routes = [Service(raw, "raw"), Service(BestOfN(raw, CountScorer(char="o"), 3), "bon")]
    with ServerThread(build_app(routes)) as srv:
        root = srv.url.removesuffix("/v1")
        body = {"model": "bon", "messages": [{"role": "user", "content": "Hello"}], "max_tokens": 6, **SAMPLED}
        extra = httpx.post(srv.url + "/chat/completions", json=body, timeout=120).json()["choices"][0]["alignkit"]
        bon = extra["best_of_n"]
        assert len(bon["candidates"]) == 3 and [c["score"] for c in bon["candidates"]] == [
            float(c["text"].count("o")) for c in bon["candidates"]]
        assert [st["stage"] for st in extra["route"]][-1] == "select"
        with chromium_page() as (page, errors):
            page.goto(root + "/ui?routes=bon&ref=raw&prompt=Hello&max_tokens=6&temperature=2&seed=3")
            _wait_coloured(page, ["bon"])
            page.click('.col[data-route="bon"] details summary')
            shown = page.inner_text('.col[data-route="bon"] details')
            assert "best of 3 candidates" in shown and ", chosen]" in shown
            for c in bon["candidates"]:
                assert f"[{c['score']:.3f}" in shown
            assert errors == []


# ---------------------------------------------------------------------------------------------- the page
def _wait_coloured(page, routes, timeout=180_000):
    for route in routes:
        page.wait_for_selector(f'.col[data-route="{route}"] .answer .tok', timeout=timeout, state="attached")


def _answers(page) -> dict[str, str]:
    return page.evaluate("""() => Object.fromEntries([...document.querySelectorAll('.col')].map(
        c => [c.dataset.route, [...c.querySelectorAll('.answer')].map(a => a.textContent)]))""")


def test_the_page_compares_routes_with_coloured_tokens(server):
    msgs = [{"role": "user", "content": "Hello"}]
    # enough tokens that every column's stream shows several states, however fast the machine (at 24 the raw
    # column, the fastest, sometimes arrived in one or two reads of a loaded machine's browser)
    MT = 48
    with chromium_page() as (page, errors):
        page.goto(server.root + f"/ui?routes=raw,urial,mix&ref=raw&max_tokens={MT}&temperature=2&seed=3")
        page.wait_for_selector("#routes input[value=urial]:checked")
        # count the states each answer passes through while it streams
        page.evaluate("""() => { window.__states = {};
            new MutationObserver(() => document.querySelectorAll('.col').forEach(c => {
                const a = c.querySelector('.answer'); if (!a || a.querySelector('.tok') || !a.textContent) return;
                (window.__states[c.dataset.route] ||= new Set()).add(a.textContent);
            })).observe(document.getElementById('columns'), {subtree: true, childList: true, characterData: true}); }""")
        page.fill("#prompt", "Hello")
        page.click("#send")
        _wait_coloured(page, ["raw", "urial", "mix"])
        assert [c.get_attribute("data-route") for c in page.query_selector_all(".col")] == ["raw", "urial", "mix"]
        states = page.evaluate("() => Object.fromEntries(Object.entries(window.__states).map(([k, v]) => [k, v.size]))")
        # streamed in pieces, not at once: each column showed a part of its answer before the whole of it
        assert all(states.get(r, 0) >= 2 for r in ("raw", "urial", "mix")), states
        shown = _answers(page)
        for route in ("raw", "urial", "mix"):  # the same answer as the API gives for the same request
            assert shown[route] == [_chat(server, route, msgs, MT)], route
        # the tokens' colours and the card are the reference's view, as /v1/shift reports it
        want = httpx.post(server.root + "/v1/shift", timeout=120, json={
            "model": "urial", "reference": "raw", "messages": msgs, "answer": shown["urial"][0]}).json()
        spans = page.query_selector_all('.col[data-route="urial"] .tok')
        assert [s.get_attribute("class").split()[1] for s in spans] == [t["category"] for t in want["tokens"]]
        k = max(range(len(spans)), key=lambda i: want["tokens"][i]["ref_rank"])
        spans[k].hover()
        page.wait_for_selector("#card", state="visible")
        card = page.inner_text("#card")
        assert f"raw rank\t{want['tokens'][k]['ref_rank']}" in card, card
        assert "KL here" in card and "raw's top 5" in card
        stats = page.inner_text('.col[data-route="urial"] .stats')
        assert re.search(rf"{MT} tokens · [\d.]+% shifted vs raw · [\d.]+ s · [\d.]+ tokens/s", stats), stats
        # the weighted route's slider: lam 1 regenerates the column as the aligned side alone answers
        slider = page.query_selector('.col[data-route="mix"] input[type=range][data-knob=lam]')
        assert slider is not None and slider.get_attribute("value") == "0.5"
        page.evaluate("""() => { const s = document.querySelector('.col[data-route="mix"] input[data-knob=lam]');
            s.value = '1'; s.dispatchEvent(new Event('input')); s.dispatchEvent(new Event('change')); }""")
        page.wait_for_function("""(want) => { const a = document.querySelector('.col[data-route="mix"] .answer');
            return a && a.querySelector('.tok') && a.textContent === want; }""", arg=_chat(server, "adapter", msgs, MT),
                               timeout=120_000)
        # a second turn: every column continues its own conversation
        page.fill("#prompt", "And then?")
        page.click("#send")
        page.wait_for_function("() => document.querySelectorAll('.col .turn .answer .tok').length > 0 && "
                               "[...document.querySelectorAll('.col')].every(c => c.querySelectorAll('.turn').length "
                               "== 2 && c.querySelectorAll('.turn')[1].querySelector('.tok'))", timeout=180_000)
        second = _answers(page)
        first_urial = shown["urial"][0]
        assert second["urial"][1] == _chat(server, "urial", [*msgs, {"role": "assistant", "content": first_urial},
                                                            {"role": "user", "content": "And then?"}], MT)
        address = page.url
        assert errors == []
    # the address reproduces the comparison: it opens already running, with the same routes, settings and weights
    assert "prompt=Hello" in address and "prompt=And+then%3F" in address and "w.mix.lam=1" in address
    with chromium_page() as (page, errors):
        page.goto(address)
        page.wait_for_function("() => [...document.querySelectorAll('.col')].length == 3 && "
                               "[...document.querySelectorAll('.col')].every(c => c.querySelectorAll('.turn').length "
                               "== 2 && c.querySelectorAll('.turn')[1].querySelector('.tok'))", timeout=240_000)
        assert _answers(page) == second
        assert page.input_value("#ref") == "raw"
        assert errors == []


def test_the_page_asks_for_the_key_and_never_renders_output_as_html(tiny4k):
    opened = _routes(tiny4k)
    with ServerThread(build_app([Service(m, n) for n, m in opened], api_key="sekrit")) as srv:
        root = srv.url.removesuffix("/v1")
        page_resp = httpx.get(root + "/ui")
        assert page_resp.status_code == 200  # the page itself needs no key; everything it asks for does
        assert "script-src 'unsafe-inline'" in page_resp.headers["content-security-policy"]
        assert "connect-src 'self'" in page_resp.headers["content-security-policy"]
        with chromium_page() as (page, errors):
            urls: list[str] = []
            page.on("request", lambda r: urls.append(r.url))
            auth: list[str | None] = []
            page.on("request", lambda r: auth.append(r.headers.get("authorization")) if "/v1/" in r.url else None)
            # a crafted answer with markup, streamed in place of the model's; the shift of it is the real endpoint's
            sse = "".join(f"data: {json.dumps(x)}\n\n" for x in [
                {"choices": [{"index": 0, "delta": {"role": "assistant", "content": HOSTILE[:20]}}]},
                {"choices": [{"index": 0, "delta": {"content": HOSTILE[20:]}, "finish_reason": "stop"}]},
                {"choices": [], "usage": {"prompt_tokens": 1, "completion_tokens": 30, "total_tokens": 31}}]) + \
                "data: [DONE]\n\n"
            page.route("**/v1/chat/completions", lambda route: route.fulfill(
                status=200, headers={"content-type": "text/event-stream"}, body=sse))
            page.goto(root + "/ui?routes=urial&ref=raw&key=sekrit")  # a key in the address is dropped from it
            page.wait_for_selector("#keyform", state="visible")
            assert "sekrit" not in page.url
            page.fill("#key", "sekrit")
            page.click("#keyform button")
            page.wait_for_selector("#routes input[value=urial]:checked")
            page.fill("#prompt", "Say something")
            page.click("#send")
            _wait_coloured(page, ["urial"])
            shown = page.inner_text('.col[data-route="urial"] .answer')
            assert shown == HOSTILE  # shown as text, exactly
            assert page.evaluate("() => window.__owned") is None
            assert page.query_selector("#columns img, #columns script, #columns b") is None
            assert "error" not in page.inner_text('.col[data-route="urial"] .stats')  # the shift call went through
            page.click("#share")
            assert urls[0].endswith("key=sekrit")  # the address the user opened; no request after it has the key
            assert all("sekrit" not in u for u in urls[1:]) and "sekrit" not in page.url
            assert "Bearer sekrit" in auth  # sent in the header
            assert [e for e in errors if "401" not in e] == []  # (the first /v1/models answered 401: no key yet)


@pytest.mark.gemma
def test_screenshots_of_the_page_on_gemma(gemma):
    """The page on the embedded model, raw and in-context aligned, at desktop and phone width: the pictures the
    README and the serve guide show (docs/assets/ui-*.png)."""
    from alignkit.methods import MethodOptions, apply_method

    routes = [Service(apply_method(gemma, MethodOptions(method="none")), "base"),
              Service(apply_method(gemma, MethodOptions(method="urial")), "urial")]
    with ServerThread(build_app(routes)) as srv:
        root = srv.url.removesuffix("/v1")
        q = "/ui?prompt=How+do+I+keep+basil+alive+indoors%3F&routes=base,urial&ref=base&max_tokens=60&temperature=0"
        with chromium_page(1280, 820) as (page, errors):
            page.goto(root + q)
            _wait_coloured(page, ["base", "urial"], timeout=300_000)
            for name, (w, h) in {"desktop": (1280, 820), "phone": (390, 844)}.items():
                page.set_viewport_size({"width": w, "height": h})
                spans = page.query_selector_all('.col[data-route="urial"] .tok.shifted')
                assert spans, "URIAL's answer shifts some tokens against the raw base"
                spans[0].hover()
                page.wait_for_selector("#card", state="visible")
                out = ROOT / "docs" / "assets" / f"ui-{name}.png"
                page.screenshot(path=str(out), full_page=name == "phone")
                assert out.stat().st_size > 10_000
            assert errors == []
