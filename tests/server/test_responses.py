"""OpenAI's Responses API (``POST /v1/responses``) through the official openai client: plain and streaming (the
typed events, and the client's own ``responses.stream`` helper), instructions and message items, structured output
through ``text.format``, and clear 400s for what this stateless server does not offer."""

from __future__ import annotations

import json

import httpx
import pytest

from alignkit import GenerationConfig, Message


def _direct(srv, msgs, n=8):
    """What the route itself writes for ``msgs`` (seeded sampling, as the requests below)."""
    return srv.model.generate([msgs], GenerationConfig(max_new_tokens=n, temperature=1.0, seed=SEED))[0]


SEED = 7


def test_a_text_input_is_answered_as_the_chat_endpoint_answers_it(srv):
    r = srv.client.responses.create(model="raw", input="Name a colour.", max_output_tokens=8, temperature=1.0,
                                    extra_body={"seed": SEED})
    want = _direct(srv, [Message("user", "Name a colour.")])
    assert want.text.strip()
    assert r.object == "response" and r.id.startswith("resp_")
    assert r.output_text == want.text
    assert r.output[0].type == "message" and r.output[0].role == "assistant"
    assert r.output[0].content[0].type == "output_text"
    assert r.usage.output_tokens == want.completion_tokens
    assert r.usage.input_tokens == want.prompt_tokens
    assert r.usage.total_tokens == r.usage.input_tokens + r.usage.output_tokens
    chat = srv.client.chat.completions.create(model="raw", messages=[{"role": "user", "content": "Name a colour."}],
                                              max_tokens=8, temperature=1.0, seed=SEED)
    assert chat.choices[0].message.content == r.output_text
    # cut by the token limit: incomplete, as OpenAI reports it
    if want.finish_reason == "length":
        assert r.status == "incomplete" and r.incomplete_details.reason == "max_output_tokens"
    else:
        assert r.status == "completed"


def test_instructions_and_message_items_are_the_conversation(srv):
    items = [{"role": "user", "content": "Hi."},
             {"role": "assistant", "content": [{"type": "output_text", "text": "Hello!"}]},
             {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "Count to three."}]}]
    r = srv.client.responses.create(model="raw", instructions="Be brief.", input=items, max_output_tokens=6,
                                    temperature=1.0, extra_body={"seed": SEED})
    want = _direct(srv, [Message("system", "Be brief."), Message("user", "Hi."), Message("assistant", "Hello!"),
                         Message("user", "Count to three.")], 6)
    assert r.output_text == want.text
    assert r.instructions == "Be brief."


def test_streaming_events_arrive_in_order_and_add_up_to_the_answer(srv):
    events = list(srv.client.responses.create(model="raw", input="Name a colour.", max_output_tokens=8,
                                              temperature=1.0, extra_body={"seed": SEED}, stream=True))
    kinds = [e.type for e in events]
    assert kinds[:4] == ["response.created", "response.in_progress", "response.output_item.added",
                         "response.content_part.added"]
    assert kinds[-4:-1] == ["response.output_text.done", "response.content_part.done", "response.output_item.done"]
    assert kinds[-1] == "response.completed"  # as vLLM sends it, cut or not (the client's helper waits for it)
    assert events[-1].response.status in ("completed", "incomplete")
    assert [e.sequence_number for e in events] == list(range(len(events)))
    deltas = [e.delta for e in events if e.type == "response.output_text.delta"]
    assert len(deltas) >= 2  # token by token, not one whole answer
    want = _direct(srv, [Message("user", "Name a colour.")])
    assert "".join(deltas) == want.text == events[-1].response.output_text
    assert events[-1].response.usage.output_tokens == want.completion_tokens
    # the client's own streaming helper accumulates the same answer
    with srv.client.responses.stream(model="raw", input="Name a colour.", max_output_tokens=8,
                                     temperature=1.0, extra_body={"seed": SEED}) as stream:
        final = stream.get_final_response()
    assert final.output_text == want.text


def test_text_format_json_schema_is_structured_output(srv):
    schema = {"type": "object", "properties": {"colour": {"type": "string", "enum": ["red", "blue"]}},
              "required": ["colour"], "additionalProperties": False}
    r = srv.client.responses.create(model="raw", input="Pick a colour.", max_output_tokens=24, temperature=1.0, extra_body={"seed": SEED},
                                    text={"format": {"type": "json_schema", "name": "pick", "schema": schema,
                                                     "strict": True}})
    assert json.loads(r.output_text)["colour"] in ("red", "blue")
    assert r.text.format.type == "json_schema"


@pytest.mark.parametrize("body, words", [
    ({"input": "Hi", "previous_response_id": "resp_x"}, ["previous_response_id", "whole conversation"]),
    ({"input": "Hi", "tools": [{"type": "function", "name": "f", "parameters": {}}]}, ["tools"]),
    ({"input": [{"role": "user", "content": [{"type": "input_image", "image_url": "x"}]}]}, ["input_image"]),
    ({"input": [{"type": "function_call_output", "call_id": "c", "output": "1"}]}, ["function_call_output"]),
    ({"input": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hey"}]},
     ["end with a user message"]),
    ({"input": ""}, ["input"]),
    ({"input": "Hi", "max_output_tokens": 0}, ["max_output_tokens"]),
    ({"input": "Hi", "text": {"format": {"type": "json_schema"}}}, ["schema"]),
    ({"input": "Hi", "text": {"format": {"type": "yaml"}}}, ["text.format"]),
])
def test_what_is_not_offered_is_a_clear_400(srv, body, words):
    r = httpx.post(f"{srv.url}/responses", json=body, timeout=30)
    assert r.status_code in (400, 404), r.text
    msg = r.json()["error"]["message"]
    for w in words:
        assert w in msg, msg
