"""The OpenAI API as common clients use it: prompt lists and token-id prompts on /v1/completions (n per prompt,
usage summed), chat content parts and the developer role, vLLM's /tokenize and /detokenize, an OpenAPI document
that declares every request body -- checked with the official openai client and with langchain-openai."""

from __future__ import annotations

import httpx
import openai  # noqa: E402
import pytest

from alignkit import GenerationConfig, Message  # noqa: E402
from alignkit.methods import MethodOptions, apply_method  # noqa: E402
from alignkit.server.app import Limits, build_app  # noqa: E402
from alignkit.server.service import Service  # noqa: E402
from tests.support.openai_server import ServerThread  # noqa: E402

PROMPTS = ["The quick brown", "Once upon a time"]


@pytest.fixture(scope="module")
def raw_server(tiny_base):
    model = apply_method(tiny_base, MethodOptions(method="none"))
    with ServerThread(build_app(Service(model, "raw", max_batch=8), limits=Limits(max_n=3, max_prompts=4))) as srv:
        srv.model = model
        srv.client = openai.OpenAI(base_url=srv.url, api_key="none", max_retries=0)
        yield srv


@pytest.fixture(scope="module")
def chat_server(tiny_aligned):
    model = apply_method(tiny_aligned, MethodOptions(method="template"))
    with ServerThread(build_app(Service(model, "chat", max_batch=8))) as srv:
        srv.model = model
        srv.client = openai.OpenAI(base_url=srv.url, api_key="none", max_retries=0)
        yield srv


def _root(srv) -> str:
    return srv.url.removesuffix("/v1")


def test_a_prompt_list_gives_n_choices_per_prompt_in_order(raw_server):
    r = raw_server.client.completions.create(model="raw", prompt=PROMPTS, n=2, max_tokens=6, temperature=0.9,
                                             seed=5)
    assert [c.index for c in r.choices] == [0, 1, 2, 3]
    wants = []
    for i, p in enumerate(PROMPTS):
        for j in range(2):
            want = raw_server.model.generate([p], GenerationConfig(max_new_tokens=6, temperature=0.9, seed=5 + j))[0]
            assert r.choices[i * 2 + j].text == want.text
            wants.append(want)
    # each prompt's tokens once (its n choices share it), every choice's generated tokens
    assert r.usage.prompt_tokens == sum(raw_server.model.count_tokens(p) for p in PROMPTS)
    assert r.usage.completion_tokens == sum(w.completion_tokens for w in wants)


def test_token_id_prompts_are_the_same_as_their_text(raw_server):
    ids = raw_server.model.encode(PROMPTS[0])
    by_text = raw_server.client.completions.create(model="raw", prompt=PROMPTS[0], max_tokens=6, temperature=0)
    by_ids = raw_server.client.completions.create(model="raw", prompt=ids, max_tokens=6, temperature=0)
    both = raw_server.client.completions.create(model="raw", prompt=[ids, raw_server.model.encode(PROMPTS[1])],
                                                max_tokens=6, temperature=0)
    assert by_ids.choices[0].text == by_text.choices[0].text == both.choices[0].text
    assert len(both.choices) == 2
    # ids that are not how the tokenizer writes their text would show the model other tokens: refused
    letters = [raw_server.model.encode(ch)[0] for ch in "The"]
    if raw_server.model.encode("The") != letters:
        with pytest.raises(openai.BadRequestError, match="not how this model's tokenizer"):
            raw_server.client.completions.create(model="raw", prompt=letters, max_tokens=2)
    with pytest.raises(openai.BadRequestError, match="out of range"):
        raw_server.client.completions.create(model="raw", prompt=[10**7], max_tokens=2)


def test_echo_and_logprobs_per_prompt(raw_server):
    r = raw_server.client.completions.create(model="raw", prompt=PROMPTS, max_tokens=3, temperature=0, logprobs=2)
    assert len(r.choices) == 2
    for p, c in zip(PROMPTS, r.choices):
        sc = raw_server.model.score([p], [c.text])[0]
        assert c.logprobs.token_logprobs == pytest.approx(list(sc.logprobs), abs=1e-4)
    e = raw_server.client.completions.create(model="raw", prompt=PROMPTS, max_tokens=2, temperature=0, echo=True)
    assert [c.text[: len(p)] for c, p in zip(e.choices, PROMPTS)] == PROMPTS


def test_too_many_prompts_is_a_400_that_says_so(raw_server):
    with pytest.raises(openai.BadRequestError, match="at most 4"):
        raw_server.client.completions.create(model="raw", prompt=["a"] * 5, max_tokens=2)


def test_chat_content_parts_and_the_developer_role(chat_server):
    c = chat_server.client
    parts = c.chat.completions.create(model="chat", max_tokens=6, temperature=0, messages=[
        {"role": "developer", "content": "Be brief."},
        {"role": "user", "content": [{"type": "text", "text": "Name a colour."}, {"type": "text", "text": "One."}]}])
    want = chat_server.model.generate([[Message("system", "Be brief."), Message("user", "Name a colour.\nOne.")]],
                                      GenerationConfig(max_new_tokens=6))[0].text
    assert parts.choices[0].message.content == want
    with pytest.raises(openai.BadRequestError, match="image_url"):
        c.chat.completions.create(model="chat", max_tokens=2, messages=[{"role": "user", "content": [
            {"type": "text", "text": "What is this?"},
            {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}]}])
    assert c.chat.completions.create(model="chat", max_completion_tokens=3, temperature=0,
                                     messages=[{"role": "user", "content": "Hi"}]).usage.completion_tokens <= 3


def test_tokenize_and_detokenize_in_vllms_shapes(chat_server):
    root = _root(chat_server)
    r = httpx.post(root + "/tokenize", json={"model": "chat", "prompt": "Hello there"}).json()
    tok = chat_server.model.tokenizer
    assert r["tokens"] == tok("Hello there")["input_ids"] and r["count"] == len(r["tokens"])
    assert r["max_model_len"] == chat_server.model.context_length
    msgs = [{"role": "user", "content": "Name a colour."}]
    rc = httpx.post(root + "/tokenize", json={"model": "chat", "messages": msgs}).json()
    assert rc["tokens"] == chat_server.model.base.encode_prompt([Message("user", "Name a colour.")])
    # the count is what the request is charged: the same prompt's usage
    usage = chat_server.client.chat.completions.create(model="chat", messages=msgs, max_tokens=1).usage
    assert rc["count"] == usage.prompt_tokens
    d = httpx.post(root + "/detokenize", json={"model": "chat", "tokens": r["tokens"]}).json()
    assert d["prompt"].endswith("Hello there")
    bad = httpx.post(root + "/tokenize", json={"model": "chat"})
    assert bad.status_code == 400 and "either prompt or messages" in bad.json()["error"]["message"]


def test_the_openapi_document_declares_every_request_body_and_docs_exist(chat_server):
    root = _root(chat_server)
    doc = httpx.get(root + "/openapi.json").json()
    schemas = doc["components"]["schemas"]
    for path, name in (("/v1/chat/completions", "ChatCompletionRequest"), ("/v1/completions", "CompletionRequest"),
                       ("/tokenize", "TokenizeRequest"), ("/detokenize", "DetokenizeRequest")):
        body = doc["paths"][path]["post"]["requestBody"]["content"]["application/json"]["schema"]
        assert body == {"$ref": f"#/components/schemas/{name}"} and name in schemas
    text = str(schemas)
    for ref in [x.split("'")[0] for x in text.split("#/components/schemas/")[1:]]:
        assert ref in schemas, f"dangling reference {ref}"
    assert "messages" in schemas["ChatCompletionRequest"]["properties"]
    page = httpx.get(root + "/docs")
    assert page.status_code == 200 and "swagger" in page.text.lower()


def test_langchain_openai_invoke_stream_and_batch(chat_server, raw_server):
    import langchain_openai as lc

    chat = lc.ChatOpenAI(base_url=chat_server.url, api_key="none", model="chat", max_tokens=6, temperature=0,
                         max_retries=0)
    want = chat_server.model.generate([[Message("user", "Name a colour.")]], GenerationConfig(max_new_tokens=6))[0].text
    assert chat.invoke("Name a colour.").content == want
    assert "".join(ch.content for ch in chat.stream("Name a colour.")) == want
    assert [m.content for m in chat.batch(["Name a colour.", "Name a colour."])] == [want, want]
    llm = lc.OpenAI(base_url=raw_server.url, api_key="none", model="raw", max_tokens=5, temperature=0,
                    max_retries=0)
    got = llm.batch(PROMPTS)  # langchain sends both prompts in one request (a prompt list)
    assert got == [raw_server.model.generate([p], GenerationConfig(max_new_tokens=5))[0].text for p in PROMPTS]


def test_a_vanishing_temperature_is_greedy(raw_server):
    """Dividing logits by 1e-30 would overflow: temperatures below 1e-5 decode greedily (as vLLM does)."""
    tiny_t = raw_server.client.completions.create(model="raw", prompt=PROMPTS[0], max_tokens=6, temperature=1e-30)
    greedy = raw_server.client.completions.create(model="raw", prompt=PROMPTS[0], max_tokens=6, temperature=0)
    assert tiny_t.choices[0].text == greedy.choices[0].text
    with pytest.raises(openai.BadRequestError, match="repetition_penalty"):
        raw_server.client.completions.create(model="raw", prompt=PROMPTS[0], max_tokens=2,
                                             extra_body={"repetition_penalty": 1e-300})


@pytest.mark.parametrize("field, value", [("tools", [{"type": "function", "function": {"name": "f"}}]),
                                          ("logit_bias", {"5": 10}), ("structured_outputs", {"json": {}})])
def test_features_not_offered_are_refused_by_name_not_ignored(raw_server, field, value):
    with pytest.raises(openai.BadRequestError, match=field):
        raw_server.client.completions.create(model="raw", prompt="Hi", max_tokens=2, extra_body={field: value})
