"""Several routes from one server process: raw, in-context aligned, a LoRA adapter and a DeRa mix of the base and
its adapter, on one copy of the base weights (the adapter a PEFT view switched on per call), each route answering
exactly what the same route answers when served -- or loaded -- on its own."""

from __future__ import annotations

from dataclasses import replace

import httpx
import openai  # noqa: E402
import pytest

from alignkit import GenerationConfig, load_model  # noqa: E402
from alignkit.cli.serve import open_routes  # noqa: E402
from alignkit.methods import MethodOptions, apply_method  # noqa: E402
from alignkit.methods.dera import DeRa  # noqa: E402
from alignkit.models.registry import ModelOptions  # noqa: E402
from alignkit.server.app import build_app  # noqa: E402
from alignkit.server.service import Service  # noqa: E402
from tests.support.openai_server import ServerThread  # noqa: E402

PROMPT = "Hello"


@pytest.fixture(scope="module")
def routes(tiny_dir):
    base, adapter = str(tiny_dir["base"]), str(tiny_dir["adapter"])
    specs = (f"raw=model={base},method=none", f"urial=model={base},method=urial,template=urial-k0",
             f"adapter=model={adapter},method=none", f"mix=model={adapter},method=dera,ref={base},lam=0.5")
    opened = open_routes(specs, base, ModelOptions())
    with ServerThread(build_app([Service(m, name) for name, m in opened])) as srv:
        srv.models = dict(opened)
        srv.client = openai.OpenAI(base_url=srv.url, api_key="none", max_retries=0)
        yield srv


def _weights(model):
    inner = model
    while hasattr(inner, "base"):
        inner = inner.base
    return inner.model


def test_one_copy_of_the_base_weights_serves_every_route(routes):
    m = routes.models
    shared = _weights(m["raw"])
    assert _weights(m["urial"]) is shared and _weights(m["adapter"]) is shared
    assert m["mix"].ref_inner.model is shared and m["mix"].aligned_inner.model is shared
    health = httpx.get(routes.url.removesuffix("/v1") + "/health").json()
    loaded = health["memory"]["loaded_weights"]
    assert len(loaded) == 1 and len(loaded[0]["specs"]) == 2  # the base and its adapter, one set of weights
    assert set(health["routes"]) == {"raw", "urial", "adapter", "mix"}
    listed = {d.id: d.info["method"] for d in routes.client.models.list().data}
    assert listed == {"raw": "none", "urial": "urial", "adapter": "none", "mix": "dera"}


def test_each_route_answers_as_it_does_alone(routes, tiny_dir):
    cfg = GenerationConfig(max_new_tokens=8, temperature=2.0, seed=3)  # sampled: the whole distribution matters
    base = load_model(str(tiny_dir["base"]))
    alone_adapter = load_model(str(tiny_dir["adapter"]))  # its own copy of the weights, the adapter attached
    want = {
        "raw": apply_method(base, MethodOptions(method="none")).generate([PROMPT], cfg)[0].text,
        # the server decodes with the method's recommended repetition penalty (1.15 for in-context alignment)
        "urial": apply_method(base, MethodOptions(method="urial", template="urial-k0")).generate(
            [PROMPT], replace(cfg, repetition_penalty=1.15))[0].text,
        "adapter": apply_method(alone_adapter, MethodOptions(method="none")).generate([PROMPT], cfg)[0].text,
        "mix": DeRa(apply_method(base, MethodOptions(method="none")),
                    apply_method(alone_adapter, MethodOptions(method="none")), 0.5).generate([PROMPT], cfg)[0].text,
    }
    assert want["adapter"] != want["raw"]  # the adapter changes what the model says
    # interleaved, so each call must switch the shared weights to its own adapter (or to none)
    for name in ("adapter", "raw", "mix", "adapter", "urial", "raw", "mix"):
        r = routes.client.completions.create(model=name, prompt=PROMPT, max_tokens=8, temperature=2.0, seed=3)
        assert r.choices[0].text == want[name], name
    # scoring too: the adapter route's log-probabilities are the adapter's, the raw route's the base's
    seen = {}
    for name, model in (("adapter", alone_adapter), ("raw", base)):
        r = routes.client.completions.create(model=name, prompt=PROMPT, max_tokens=6, temperature=0, logprobs=1)
        alone = model.score([PROMPT], [r.choices[0].text], top_k=1)[0].logprobs
        assert r.choices[0].logprobs.token_logprobs == pytest.approx(list(alone), abs=1e-5), name
        seen[name] = list(alone)
    assert seen["adapter"] != pytest.approx(seen["raw"], abs=1e-3)


def test_the_request_picks_the_route_by_name(routes):
    with pytest.raises(openai.NotFoundError, match="no route 'nope'"):
        routes.client.completions.create(model="nope", prompt=PROMPT, max_tokens=2)
    r = httpx.post(routes.url + "/completions", json={"prompt": PROMPT, "max_tokens": 2})
    assert r.status_code == 400 and "several routes" in r.json()["error"]["message"]


@pytest.mark.parametrize("route, needle", [
    ("justaname", "NAME=KEY=VALUE"), ("x=method=telepathy", "'method' must be one of"),
    ("x=lam=-1,method=dera", "'lam' must be >= 0"), ("x=flavour=vanilla", "unknown key(s)")])
def test_bad_routes_are_refused_before_anything_loads(route, needle):
    from alignkit.errors import InputError

    with pytest.raises(InputError, match=needle.replace("(", r"\(").replace(")", r"\)")):
        open_routes((route,), "./no-such-model", ModelOptions())


def test_two_routes_with_one_name_are_refused():
    from alignkit.errors import InputError

    with pytest.raises(InputError, match="used twice"):
        open_routes(("a=method=none", "a=method=urial"), "./no-such-model", ModelOptions())
