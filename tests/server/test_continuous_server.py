"""The server's continuous scheduler, end to end (official openai client, real sockets): a short request is
answered while a long one runs, outputs equal the static scheduler's, a client that goes away frees its rows,
and routes sharing one model take turns."""

from __future__ import annotations

import json
import threading
import time

import httpx
import openai
import pytest

from alignkit import GenerationConfig
from alignkit.methods import MethodOptions, apply_method
from alignkit.server.app import Limits, build_app
from alignkit.server.service import Service
from tests.support.openai_server import ServerThread

LONG = {"prompt": "The quick", "max_tokens": 400, "temperature": 1.0, "seed": 1}


@pytest.fixture(scope="module")
def raw(tiny_base):
    return apply_method(tiny_base, MethodOptions(method="none"))


def _short_while_long_runs(raw, scheduler: str) -> tuple[list[str], dict, dict]:
    """Start a long streamed completion; once it is producing, send a short one. Returns the order in which the
    two finished and both bodies."""
    service = Service(raw, "raw", max_batch=4, scheduler=scheduler)
    finished: list[str] = []
    out: dict[str, dict] = {}
    with ServerThread(build_app(service, limits=Limits(max_tokens=400))) as srv:
        started = threading.Event()

        def long():
            text, reason = "", None
            with httpx.stream("POST", srv.url + "/completions", json={**LONG, "stream": True}, timeout=120) as r:
                for line in r.iter_lines():
                    if line.startswith("data: {"):
                        choice = json.loads(line[6:])["choices"][0]
                        text += choice["text"]
                        reason = choice.get("finish_reason") or reason
                        started.set()
            finished.append("long")
            out["long"] = {"text": text, "finish_reason": reason}

        t = threading.Thread(target=long)
        t.start()
        assert started.wait(60)
        short = httpx.post(srv.url + "/completions", json={"prompt": "Once", "max_tokens": 3, "temperature": 0},
                           timeout=120).json()
        finished.append("short")
        out["short"] = short["choices"][0]
        t.join(120)
    return finished, out, service.stats.__dict__


def test_a_short_request_is_answered_while_a_long_one_runs(raw):
    order, out, stats = _short_while_long_runs(raw, "continuous")
    assert out["long"]["finish_reason"] == "length"  # the long request really ran its 400 tokens
    assert order == ["short", "long"], (order, stats)
    assert stats["joined"] == 1 and stats["batches"] == 1  # it joined the running batch
    # the same request alone gives the same answer
    assert out["short"]["text"] == raw.generate(["Once"], GenerationConfig(max_new_tokens=3))[0].text


def test_the_static_scheduler_makes_it_wait_for_the_whole_batch(raw):
    order, out, stats = _short_while_long_runs(raw, "static")
    assert order == ["long", "short"] and stats["batches"] == 2 and stats["joined"] == 0


def test_continuous_and_static_give_the_same_outputs_under_concurrent_load(raw):
    prompts = ["The quick brown", "Once upon", "def add(a, b):", "Thank you", "x y z", "Hello there"]

    def load(scheduler: str) -> dict[tuple[int, int], tuple[str, int]]:
        service = Service(raw, "raw", max_batch=3, scheduler=scheduler)
        got: dict[tuple[int, int], tuple[str, int]] = {}
        with ServerThread(build_app(service)) as srv:
            client = openai.OpenAI(base_url=srv.url, api_key="none", max_retries=0)

            def user(c: int) -> None:
                for r in range(3):
                    resp = client.completions.create(model="raw", prompt=prompts[(c + r) % len(prompts)],
                                                     max_tokens=4 + 7 * ((c * 3 + r) % 4), temperature=0)
                    got[c, r] = (resp.choices[0].text, resp.usage.completion_tokens)

            threads = [threading.Thread(target=user, args=(c,)) for c in range(6)]
            for t in threads:
                t.start()
            for t in threads:
                t.join(120)
        assert service.stats.max_batch_rows <= 3
        return got

    continuous, static = load("continuous"), load("static")
    assert len(continuous) == 18 and continuous == static


def test_a_client_that_goes_away_frees_its_rows_and_the_others_finish(raw):
    service = Service(raw, "raw", max_batch=4, scheduler="continuous")
    with ServerThread(build_app(service, limits=Limits(max_tokens=400))) as srv:
        client = openai.OpenAI(base_url=srv.url, api_key="none", max_retries=0)
        result = {}
        other = threading.Thread(target=lambda: result.setdefault("r", client.completions.create(
            model="raw", prompt="Once upon", max_tokens=60, temperature=0)))
        with httpx.stream("POST", srv.url + "/completions", json={**LONG, "stream": True}, timeout=30) as r:
            for line in r.iter_lines():
                if line.startswith("data: {"):
                    other.start()  # joins the running batch
                    time.sleep(0.2)
                    break  # then hang up
        other.join(60)
        deadline = time.time() + 20
        while service.stats.cancelled == 0 and time.time() < deadline:
            time.sleep(0.05)
    assert service.stats.cancelled == 1
    want = raw.generate(["Once upon"], GenerationConfig(max_new_tokens=60))[0]
    assert result["r"].choices[0].text == want.text


def test_routes_on_one_model_take_turns(tiny_base):
    """A flood of requests on one route does not starve another route on the same weights: while the second
    waits, the running batch takes no more requests and hands the model over when it drains."""
    busy = Service(apply_method(tiny_base, MethodOptions(method="none")), "busy", max_batch=2)
    other = Service(apply_method(tiny_base, MethodOptions(method="none")), "other", max_batch=2)
    done: list[str] = []
    with ServerThread(build_app([busy, other])) as srv:
        assert busy.gate is other.gate and busy.continuous and other.continuous
        client = openai.OpenAI(base_url=srv.url, api_key="none", max_retries=0)

        def flood(c: int) -> None:
            for _ in range(6):
                client.completions.create(model="busy", prompt="The quick", max_tokens=30, temperature=0)
            done.append(f"busy{c}")

        threads = [threading.Thread(target=flood, args=(c,)) for c in range(3)]
        for t in threads:
            t.start()
        deadline = time.time() + 30
        while busy.stats.rows < 3 and time.time() < deadline:
            time.sleep(0.01)
        client.completions.create(model="other", prompt="Once", max_tokens=5, temperature=0)
        done.append("other")
        for t in threads:
            t.join(120)
    assert done.index("other") < 3, done  # answered before the flood was over
    assert other.stats.jobs == 1 and busy.stats.jobs == 18


def test_a_proxy_route_is_batched_continuously_like_any_model(tiny_dir):
    """A logit-arithmetic route (proxy-tuning over three tiny models) under the continuous scheduler: requests join
    the running lockstep batch, and every answer equals the static scheduler's and the route's own greedy one."""
    import alignkit as ak

    proxy = ak.load({"proxy": {"alpha": 1.0, "base": {"none": {"model": str(tiny_dir["base"])}},
                               "expert": {"none": {"model": str(tiny_dir["aligned"])}},
                               "antiexpert": {"none": {"model": str(tiny_dir["llama"])}}}})
    assert proxy.capabilities.continuous_batching
    prompts = ["The quick brown", "Once upon", "Thank you", "Hello there"]

    def load(scheduler: str):
        service = Service(proxy, "proxy", max_batch=2, scheduler=scheduler)
        got = {}
        with ServerThread(build_app(service)) as srv:
            client = openai.OpenAI(base_url=srv.url, api_key="none", max_retries=0)

            def user(c: int) -> None:
                for r in range(2):
                    p = prompts[(c + r) % len(prompts)]
                    resp = client.completions.create(model="proxy", prompt=p, max_tokens=3 + 5 * ((c + r) % 3),
                                                     temperature=0)
                    got[c, r] = (p, resp.choices[0].text, resp.usage.completion_tokens)

            threads = [threading.Thread(target=user, args=(c,)) for c in range(4)]
            for t in threads:
                t.start()
            for t in threads:
                t.join(120)
        return got, service.stats

    continuous, stats = load("continuous")
    static, _ = load("static")
    assert len(continuous) == 8 and continuous == static and stats.max_batch_rows <= 2
    assert stats.joined >= 1  # requests joined the running lockstep batch (not one batch after another)
    for p, text, n in continuous.values():
        assert text == proxy.generate([p], GenerationConfig(max_new_tokens=n))[0].text
