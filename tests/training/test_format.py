"""The training layout is the inference layout, and the loss mask covers exactly the assistant turns."""

from __future__ import annotations

import pytest

from alignkit.errors import InputError
from alignkit.training.format import PromptFormat, check_format, render, tokenize

CONV = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "Hi there"},
    {"role": "assistant", "content": "Hello! How can I help?"},
    {"role": "user", "content": "Show a fence: ```` in text"},
    {"role": "assistant", "content": "Here: ``` and done."},
]


@pytest.fixture(scope="module")
def tok(tiny_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(tiny_dir["aligned"]))  # has the tiny chat template


@pytest.mark.parametrize("fmt", [PromptFormat("urial", "urial-k0"), PromptFormat("urial", "tuned-k0"),
                                 PromptFormat("chat-template")])
def test_mask_covers_exactly_the_assistant_turns(tok, fmt):
    rendered = render(CONV, fmt, tok)
    enc = tokenize(rendered, tok)
    trained = tok.decode([i for i, m in zip(enc["input_ids"], enc["assistant_masks"]) if m])
    spans = "".join(rendered.text[s:e] for s, e in rendered.spans)
    assert trained == spans
    for turn in ("Hello! How can I help?", "Here: ``` and done."):
        assert turn in trained
    for not_trained in ("Hi there", "Be brief.", "Show a fence"):
        assert not_trained not in trained


def test_urial_layout_matches_what_inference_sends(tiny_base, tok):
    """Train on exactly the prompt InContextAligned builds: the text before each answer equals its prompt."""
    from alignkit.methods.templates import load_template
    from alignkit.methods.urial import InContextAligned
    from alignkit.types import GenerationConfig, Message

    for template in ("urial-k0", "tuned-k0"):
        rendered = render(CONV, PromptFormat("urial", template), tok)
        aligned = InContextAligned(tiny_base, load_template(template))
        msgs = [Message(m["role"], m["content"]) for m in CONV[:-1]]
        prepared = aligned.prepare(msgs, GenerationConfig(max_new_tokens=8))
        start, end = rendered.spans[-1]
        assert rendered.text[:start] == prepared.prompt
        assert rendered.text[start:end].endswith("\n" + prepared.stop[0])  # the answer ends with the closing fence


def test_format_errors_are_clear(tiny_dir, tok):
    from transformers import AutoTokenizer

    base_tok = AutoTokenizer.from_pretrained(str(tiny_dir["base"]))
    with pytest.raises(InputError, match="no chat template"):
        check_format(PromptFormat("chat-template"), base_tok)
    with pytest.raises(InputError, match="has 3 examples"):
        check_format(PromptFormat("urial", "urial-k3"), base_tok)
    with pytest.raises(InputError, match="unknown --format"):
        PromptFormat("alpaca")
    tok2 = AutoTokenizer.from_pretrained(str(tiny_dir["aligned"]))
    tok2.chat_template = "{% for m in messages|reverse %}{{ m['content'] }}{% endfor %}"  # not incremental
    with pytest.raises(InputError, match="incrementally"):
        render(CONV[1:], PromptFormat("chat-template"), tok2)
