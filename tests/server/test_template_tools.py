"""Tool calls on a route whose model's own chat template renders tools, through the official openai client.

The model is a tiny one built here (tests.support.tiny.build_tool_model): its template lists the functions and
writes each call as ``<tool_call>{json}</tool_call>`` (the ``hermes`` family's format), and it was taught to call
get_weather for "Weather in Paris?", to answer "Say hello." in words and to answer from a tool's result. The server
renders the tools with that template (not alignkit's note) and reads the calls in its format: ``auto`` gives the
model's own call or words, ``required`` and a named function open the answer with ``<tool_call>`` and constrain the
call to the tools' schemas, ``none`` renders no tools, a ``role: tool`` follow-up reaches the template as a tool
turn, and streaming sends words as they come and a call as a tool-call delta. Each family's parser is checked on
answers in its own format."""

from __future__ import annotations

import json

import openai
import pytest

from alignkit import GenerationConfig, Message, load_model
from alignkit.methods import MethodOptions, apply_method
from alignkit.models import tool_formats
from alignkit.server import tools as toolcalls
from alignkit.server.app import build_app
from alignkit.server.service import Service
from alignkit.types import ToolChat
from tests.support import tiny
from tests.support.openai_server import ServerThread

TOOLS = tiny.TOOLS
WEATHER_Q = [{"role": "user", "content": "Weather in Paris?"}]
HELLO = [{"role": "user", "content": "Say hello."}]


@pytest.fixture(scope="module")
def tool_model(tmp_path_factory):
    return load_model(str(tiny.build_tool_model(tmp_path_factory.mktemp("tools") / "model")), dtype="float32")


@pytest.fixture(scope="module")
def tsrv(tool_model):
    route = apply_method(tool_model, MethodOptions(method="template"))
    with ServerThread(build_app(Service(route, "chat", max_batch=4))) as s:
        s.route = route
        s.client = openai.OpenAI(base_url=s.url, api_key="none", max_retries=0)
        yield s


def _chat(tsrv, messages, **kw):
    return tsrv.client.chat.completions.create(model="chat", messages=messages, tools=TOOLS, max_tokens=96,
                                               temperature=0, **kw)


def test_the_template_s_family_is_read_from_it_and_only_the_template_route_takes_it(tool_model, tiny_aligned):
    assert tool_model.capabilities.tool_format == "hermes"
    assert apply_method(tool_model, MethodOptions(method="template")).capabilities.tool_format == "hermes"
    # a route that rewrites the conversation does not hand it to the template: alignkit's note serves its tools
    for method in ("urial", "none"):
        assert apply_method(tool_model, MethodOptions(method=method)).capabilities.tool_format == ""
    assert tiny_aligned.capabilities.tool_format == ""  # a template that renders no tools


def test_auto_returns_the_call_the_model_writes_in_its_template_s_format(tsrv, tool_model):
    r = _chat(tsrv, WEATHER_Q)
    choice = r.choices[0]
    assert choice.finish_reason == "tool_calls" and choice.message.content is None
    (call,) = choice.message.tool_calls
    assert call.function.name == "get_weather" and call.id.startswith("call_")
    assert json.loads(call.function.arguments) == {"city": "Paris", "unit": "C"}
    # what the model read is its own template's rendering of the tools, not alignkit's note
    chat = ToolChat([Message("user", "Weather in Paris?")], WEATHER_Q, toolcalls.check_tools(TOOLS))
    rendered = tool_model.render(chat)
    assert rendered == tool_model.tokenizer.apply_chat_template(WEATHER_Q, tools=TOOLS, tokenize=False,
                                                                add_generation_prompt=True)
    assert "<tools>" in rendered and "You can call these tools" not in rendered
    assert tool_model.generate([chat], GenerationConfig(max_new_tokens=96))[0].text.startswith("<tool_call>")


def test_auto_returns_words_when_the_model_answers_in_words(tsrv):
    choice = _chat(tsrv, HELLO).choices[0]
    assert choice.message.tool_calls is None and choice.message.content == "Hello to you!"
    assert choice.finish_reason == "stop"


def test_a_tool_result_reaches_the_template_as_a_tool_turn(tsrv, tool_model):
    first = _chat(tsrv, WEATHER_Q).choices[0].message
    follow = [*WEATHER_Q, first.model_dump(exclude_none=True),
              {"role": "tool", "tool_call_id": first.tool_calls[0].id, "content": "18 C, sunny"}]
    choice = _chat(tsrv, follow).choices[0]
    assert choice.message.content == "It is 18 C and sunny in Paris." and not choice.message.tool_calls
    # the earlier call was rendered in the template's format, its arguments an object
    rendered = tool_model.render(ToolChat([], follow, toolcalls.check_tools(TOOLS)))
    assert '<tool_call>{"name": "get_weather", "arguments": {"city": "Paris", "unit": "C"}}</tool_call>' in rendered
    assert "<|tool|>\n18 C, sunny\n<|assistant|>\n" in rendered


@pytest.mark.parametrize("choice,names", [("required", {"get_weather", "get_time"}),
                                          ({"type": "function", "function": {"name": "get_time"}}, {"get_time"})])
def test_required_and_named_open_the_call_and_constrain_it_to_the_schema(tsrv, tool_model, choice, names):
    r = _chat(tsrv, HELLO, tool_choice=choice)  # the model would answer in words: the call is forced
    c = r.choices[0]
    assert c.finish_reason == "tool_calls" and c.message.content is None
    (call,) = c.message.tool_calls
    assert call.function.name in names
    args = json.loads(call.function.arguments)
    props = {t["function"]["name"]: t["function"]["parameters"] for t in TOOLS}[call.function.name]
    assert set(args) == set(props["required"])
    for k, v in args.items():
        assert v in props["properties"][k]["enum"] if "enum" in props["properties"][k] else \
            isinstance(v, str) and len(v) <= props["properties"][k]["maxLength"]
    # the prompt ends with the family's opener; the model writes the JSON after it
    tools = toolcalls.chosen(toolcalls.check_tools(TOOLS), choice)
    use = toolcalls.ToolUse.of(tools, "hermes")
    prompt = use.prompt([Message("user", "Say hello.")], HELLO)
    assert tool_model.render(prompt).endswith("<|assistant|>\n<tool_call>\n")
    want = tool_model.generate([prompt], GenerationConfig(max_new_tokens=96, constraint=use.constraint()))[0]
    assert json.loads(want.text) == {"name": call.function.name, "arguments": args}


def test_none_renders_no_tools_and_answers_in_words(tsrv, tool_model):
    c = _chat(tsrv, WEATHER_Q, tool_choice="none").choices[0]
    assert c.message.tool_calls is None and c.finish_reason in ("stop", "length")
    use = toolcalls.ToolUse.of(None, "hermes")
    prompt = use.prompt([Message("user", "Weather in Paris?")], WEATHER_Q)
    assert "<tools>" not in tool_model.render(prompt)
    want = tool_model.generate([prompt], GenerationConfig(max_new_tokens=96))[0]
    assert c.message.content == want.text.strip()


def test_streaming_sends_words_as_they_come_and_a_call_as_a_tool_call_delta(tsrv):
    chunks = list(_chat(tsrv, WEATHER_Q, stream=True))
    calls = [tc for ch in chunks for c in ch.choices for tc in (c.delta.tool_calls or [])]
    assert len(calls) == 1 and calls[0].function.name == "get_weather"
    assert json.loads(calls[0].function.arguments) == {"city": "Paris", "unit": "C"}
    assert chunks[-1].choices[0].finish_reason == "tool_calls"
    assert not any(c.delta.content for ch in chunks for c in ch.choices)  # the tag and the JSON are not words

    chunks = list(_chat(tsrv, HELLO, stream=True))
    words = [c.delta.content for ch in chunks for c in ch.choices if c.delta.content]
    assert "".join(words) == "Hello to you!" and len(words) >= 2  # streamed, not held to the end
    assert chunks[-1].choices[0].finish_reason == "stop"


# --------------------------------------------------------------------------- each family's format
NAMES = ["get_weather", "get_time"]


@pytest.mark.parametrize("template,family", [
    (tiny.TOOL_TEMPLATE, "hermes"),
    # the telling parts of the families' templates
    ("{%- if tools %}<|im_start|>system\n<tools>{{ tool | tojson }}</tools>{% endif %}<tool_call>\n", "hermes"),
    ("{%- if tools %}[AVAILABLE_TOOLS]{{ tools | tojson }}[/AVAILABLE_TOOLS]{% endif %}[TOOL_CALLS]", "mistral"),
    ("<|start_header_id|>user<|end_header_id|>{% if tools %}Respond with a JSON for a function call: "
     "{\"name\": function name, \"parameters\": dictionary of argument name and its value}{% endif %}", "llama3"),
    (tiny.CHAT_TEMPLATE, ""),  # renders no tools
    ("{% if tools %}{{ tools }}{% endif %}<|user|>", ""),  # renders tools, in no format known here
    (None, ""),
])
def test_the_family_is_detected_from_the_template(template, family):
    assert tool_formats.detect(template) == family


@pytest.mark.parametrize("family,text,content,calls", [
    ("hermes", '<tool_call>\n{"name": "get_time", "arguments": {"zone": "UTC"}}\n</tool_call>', None,
     [("get_time", {"zone": "UTC"})]),
    ("hermes", 'Let me check.\n<tool_call>\n{"name": "get_time", "arguments": {"zone": "UTC"}}\n</tool_call>\n'
               '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Oslo", "unit": "C"}}\n</tool_call>',
     "Let me check.", [("get_time", {"zone": "UTC"}), ("get_weather", {"city": "Oslo", "unit": "C"})]),
    ("hermes", '<tool_call>\n{"name": "get_time", "arguments": {"zone": "UTC"}}', None,  # cut before its close
     [("get_time", {"zone": "UTC"})]),
    ("llama3", '{"name": "get_time", "parameters": {"zone": "UTC"}}', None, [("get_time", {"zone": "UTC"})]),
    ("llama3", '<|python_tag|>{"name": "get_time", "parameters": {"zone": "UTC"}}; '
               '{"name": "get_weather", "parameters": {"city": "Oslo", "unit": "F"}}', None,
     [("get_time", {"zone": "UTC"}), ("get_weather", {"city": "Oslo", "unit": "F"})]),
    ("mistral", '[TOOL_CALLS] [{"name": "get_time", "arguments": {"zone": "UTC"}}]', None,
     [("get_time", {"zone": "UTC"})]),
    ("mistral", '[{"name": "get_time", "arguments": "{\\"zone\\": \\"UTC\\"}"}]', None,  # special token dropped
     [("get_time", {"zone": "UTC"})]),
])
def test_each_family_s_calls_are_read(family, text, content, calls):
    got_content, got = tool_formats.FORMATS[family].parse(text, NAMES)
    assert got_content == content
    assert [(c["function"]["name"], json.loads(c["function"]["arguments"])) for c in got] == calls
    assert all(c["type"] == "function" and c["id"].startswith("call_") for c in got)


@pytest.mark.parametrize("family,text", [
    ("hermes", "Just words."),
    ("hermes", '<tool_call>\n{"name": "get_time", "arguments": {"zone": \n</tool_call>'),  # bad JSON
    ("hermes", '<tool_call>{"name": "rm_rf", "arguments": {}}</tool_call>'),  # not among the tools
    ("llama3", '{"name": "get_time", "parameters": "UTC"}'),  # arguments not an object
    ("llama3", "The time is noon."),
    ("mistral", "[1, 2]"),
])
def test_an_answer_that_is_not_a_well_formed_call_is_words(family, text):
    assert tool_formats.FORMATS[family].parse(text, NAMES) == (text, [])


def test_the_constrained_call_has_each_family_s_shape():
    tools = toolcalls.check_tools(TOOLS[1:])
    assert tool_formats.FORMATS["llama3"].call_schema(tools)["required"] == ["name", "parameters"]
    mistral = tool_formats.FORMATS["mistral"].call_schema(tools)
    assert mistral["type"] == "array" and mistral["maxItems"] == 1


def test_the_vllm_backends_render_a_tool_chat_as_transformers_does(tool_model):
    """The vLLM engines' tokenizer side (models.vllm_common, shared by both; vLLM itself not needed here) renders a
    conversation with tools, an earlier call and its result exactly as the transformers backend does, and reads the
    same family from the template."""
    from alignkit.models.base import Capabilities, TokenMemo
    from alignkit.models.vllm_common import VLLMTokens

    class Tokens(VLLMTokens):
        def __init__(self, tokenizer):
            self.spec, self.tokenizer, self._memo = "tiny-tools", tokenizer, TokenMemo()
            self.capabilities = Capabilities(chat_template=True, tool_format=tool_formats.detect(
                tokenizer.chat_template))

    vt = Tokens(tool_model.tokenizer)
    assert vt.capabilities.tool_format == "hermes"
    first = {"role": "assistant", "content": None, "tool_calls": [
        {"id": "call_1", "type": "function", "function": {"name": "get_weather",
                                                          "arguments": '{"city": "Paris", "unit": "C"}'}}]}
    follow = [*WEATHER_Q, first, {"role": "tool", "tool_call_id": "call_1", "content": "18 C, sunny"}]
    chat = ToolChat([Message("user", "x")], follow, toolcalls.check_tools(TOOLS), "<tool_call>\n")
    assert vt.render(chat) == tool_model.render(chat)
    assert vt.encode_prompt(chat) == tool_model.encode_prompt(chat)
    assert vt.render(chat).endswith("<|assistant|>\n<tool_call>\n")
