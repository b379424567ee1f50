"""Tool calls through the official openai client, on a route whose model has no notion of tools (the tiny base
as a raw route, as a base model under URIAL would be): ``required`` and a named function give one call whose
arguments follow the tool's schema, token by token; ``none`` gives words; streaming gives the call as a tool-call
delta; an earlier call and its result (``role: tool``) are read as part of the conversation; what is not served is
a clear 400."""

from __future__ import annotations

import json

import httpx
import pytest

from alignkit import GenerationConfig, Message
from alignkit.server import tools as toolcalls

WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "Weather now.",
    "parameters": {"type": "object", "properties": {"city": {"type": "string", "maxLength": 8},
                                                    "unit": {"enum": ["C", "F"]}},
                   "required": ["city", "unit"], "additionalProperties": False}}}
TIME = {"type": "function", "function": {
    "name": "get_time", "description": "Time now.",
    "parameters": {"type": "object", "properties": {"zone": {"type": "string", "maxLength": 6}},
                   "required": ["zone"], "additionalProperties": False}}}
WX = {"type": "function", "function": {"name": "wx", "parameters": {
    "type": "object", "properties": {"c": {"type": "string", "maxLength": 6}}, "required": ["c"]}}}
ASK = [{"role": "user", "content": "Weather in Paris?"}]


def _args_ok(call, tool):
    args = json.loads(call.function.arguments)
    props = tool["function"]["parameters"]["properties"]
    assert set(args) == set(tool["function"]["parameters"]["required"])
    for k, v in args.items():
        if "enum" in props[k]:
            assert v in props[k]["enum"]
        else:
            assert isinstance(v, str) and len(v) <= props[k]["maxLength"]
    return args


def test_required_gives_one_call_with_arguments_under_the_schema(srv):
    r = srv.client.chat.completions.create(model="raw", messages=ASK, tools=[WEATHER, TIME], tool_choice="required",
                                           max_tokens=64, temperature=0)
    choice = r.choices[0]
    assert choice.finish_reason == "tool_calls" and choice.message.content is None
    (call,) = choice.message.tool_calls
    assert call.type == "function" and call.id.startswith("call_")
    assert call.function.name in ("get_weather", "get_time")
    _args_ok(call, WEATHER if call.function.name == "get_weather" else TIME)
    # the call is what the route writes under the constraint, from the conversation with the tools' note
    tools = toolcalls.check_tools([WEATHER, TIME])
    want = srv.model.generate([toolcalls.with_note([Message("user", ASK[0]["content"])], tools)], GenerationConfig(
        max_new_tokens=64, temperature=0, constraint=toolcalls.constraint(tools, True)))[0]
    assert json.loads(want.text) == {"name": call.function.name, "arguments": json.loads(call.function.arguments)}


def test_auto_lets_the_model_choose_a_call_or_words(srv):
    """Under auto every answer is either one well-formed call or words that do not open with "{" -- over seeded
    samples both occur -- and the server returns each as the route writes it."""
    tools = toolcalls.check_tools([WX])
    msgs = toolcalls.with_note([Message("user", ASK[0]["content"])], tools, False)
    assert "Call a tool only when" in msgs[0].content
    kinds = set()
    for seed in range(6):
        cfg = GenerationConfig(max_new_tokens=64, temperature=1.0, seed=seed, constraint=toolcalls.constraint(tools, False))
        want = srv.model.generate([msgs], cfg)[0]
        r = srv.client.chat.completions.create(model="raw", messages=ASK, tools=[WX], max_tokens=64,
                                               temperature=1.0, seed=seed)  # tool_choice unset: auto
        choice = r.choices[0]
        if want.text.lstrip().startswith("{"):
            if want.finish_reason == "length":  # a call cut by the token limit comes back as text
                assert choice.message.content == want.text
                continue
            kinds.add("call")
            assert choice.finish_reason == "tool_calls"
            assert json.loads(want.text)["arguments"] == json.loads(choice.message.tool_calls[0].function.arguments)
        else:
            kinds.add("words")
            assert choice.message.tool_calls is None and choice.message.content == want.text
            if "streamed" not in kinds:  # words stream as they come, not held back like a call
                kinds.add("streamed")
                chunks = list(srv.client.chat.completions.create(model="raw", messages=ASK, tools=[WX], max_tokens=64,
                                                                 temperature=1.0, seed=seed, stream=True))
                pieces = [c.choices[0].delta.content for c in chunks if c.choices and c.choices[0].delta.content]
                assert "".join(pieces) == want.text and len(pieces) >= 2
    assert kinds, "every sample was cut off"


@pytest.mark.parametrize("text, ok", [
    ('{"name":"wx","arguments":{"c":"Paris"}}', True),   # a call
    ("It is sunny in Paris.", True),                      # words
    ('{"name":"wx","arguments":{"c":"Paris, France"}}', False),  # the argument breaks the tool's schema
    ('{"name":"other","arguments":{}}', False),           # no such tool
    ("{ not a call", False),                              # opens like a call, is not one
])
def test_the_auto_grammar_takes_a_call_or_words_and_nothing_else(srv, text, ok):
    import llguidance

    from alignkit.structured import ll_tokenizer

    tok = srv.model.tokenizer
    matcher = llguidance.LLMatcher(ll_tokenizer(tok, len(tok)),
                                   toolcalls.constraint(toolcalls.check_tools([WX]), False).grammar())
    took = all(matcher.consume_token(t) for t in tok(text, add_special_tokens=False).input_ids)
    assert (took and (matcher.is_accepting() or matcher.is_stopped())) == ok


def test_a_named_function_is_the_one_called(srv):
    r = srv.client.chat.completions.create(
        model="raw", messages=ASK, tools=[WEATHER, TIME], max_tokens=64, temperature=0,
        tool_choice={"type": "function", "function": {"name": "get_time"}})
    (call,) = r.choices[0].message.tool_calls
    assert call.function.name == "get_time"
    _args_ok(call, TIME)


def test_none_answers_in_words(srv):
    r = srv.client.chat.completions.create(model="raw", messages=ASK, tools=[WEATHER], tool_choice="none",
                                           max_tokens=6, temperature=0)
    plain = srv.client.chat.completions.create(model="raw", messages=ASK, max_tokens=6, temperature=0)
    assert r.choices[0].message.tool_calls is None
    assert r.choices[0].message.content == plain.choices[0].message.content


def test_streaming_sends_the_call_as_a_tool_call_delta(srv):
    kw = dict(model="raw", messages=ASK, tools=[WEATHER], tool_choice="required", max_tokens=64, temperature=0)
    full = srv.client.chat.completions.create(**kw)
    chunks = list(srv.client.chat.completions.create(**kw, stream=True))
    deltas = [c.choices[0].delta for c in chunks if c.choices and c.choices[0].delta.tool_calls]
    assert len(deltas) == 1
    tc = deltas[0].tool_calls[0]
    assert tc.index == 0 and tc.function.name == "get_weather"
    assert json.loads(tc.function.arguments) == json.loads(full.choices[0].message.tool_calls[0].function.arguments)
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "tool_calls"
    # the client's stream helper puts the call together
    with srv.client.chat.completions.stream(**kw) as stream:
        final = stream.get_final_completion()
    assert final.choices[0].message.tool_calls[0].function.name == "get_weather"


def test_a_tool_result_continues_the_conversation(srv):
    first = srv.client.chat.completions.create(model="raw", messages=ASK, tools=[WEATHER], tool_choice="required",
                                               max_tokens=64, temperature=0)
    call = first.choices[0].message.tool_calls[0]
    follow = ASK + [{"role": "assistant", "content": None, "tool_calls": [call.model_dump()]},
                    {"role": "tool", "tool_call_id": call.id, "content": "18 C, sunny"}]
    r = srv.client.chat.completions.create(model="raw", messages=follow, tools=[WEATHER], tool_choice="none",
                                           max_tokens=6, temperature=0)
    args = json.loads(call.function.arguments)
    want = srv.model.generate([[Message("user", ASK[0]["content"]),
                                Message("assistant", json.dumps({"name": "get_weather", "arguments": args})),
                                Message("user", f"Result of tool call {call.id}:\n18 C, sunny")]],
                              GenerationConfig(max_new_tokens=6, temperature=0))[0]
    assert r.choices[0].message.content == want.text


@pytest.mark.parametrize("body, words", [
    ({"tools": [WEATHER], "stop": ["}"]}, ["stop"]),
    ({"tools": [WEATHER], "tool_choice": {"type": "function", "function": {"name": "nope"}}}, ["nope", "get_weather"]),
    ({"tools": [{"type": "code_interpreter"}], "tool_choice": "required"}, ["function"]),
    ({"tools": [WEATHER, WEATHER], "tool_choice": "required"}, ["twice"]),
    ({"tool_choice": "required"}, ["needs tools"]),
    ({"tools": [WEATHER], "tool_choice": "required", "n": 2}, ["n = 1"]),
    ({"tools": [WEATHER], "tool_choice": "required", "response_format": {"type": "json_object"}}, ["combined"]),
    ({"tools": [WEATHER], "tool_choice": "sometimes"}, ["tool_choice"]),
    ({"functions": [WEATHER["function"]]}, ["functions"]),
])
def test_what_is_not_served_is_a_clear_400(srv, body, words):
    r = httpx.post(f"{srv.url}/chat/completions", json={"messages": ASK, "max_tokens": 4, **body}, timeout=30)
    assert r.status_code == 400, r.text
    msg = r.json()["error"]["message"]
    for w in words:
        assert w in msg, msg


def test_langchain_bind_tools_gets_the_call(srv):
    from langchain_openai import ChatOpenAI

    llm = ChatOpenAI(base_url=srv.url, api_key="none", model="raw", temperature=0, max_tokens=64, max_retries=0)
    msg = llm.bind_tools([WEATHER], tool_choice="get_weather").invoke("Weather in Paris?")
    (call,) = msg.tool_calls
    assert call["name"] == "get_weather"
    assert set(call["args"]) == {"city", "unit"} and call["args"]["unit"] in ("C", "F")
    assert msg.response_metadata["finish_reason"] == "tool_calls"
