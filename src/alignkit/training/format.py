"""How a conversation is laid out for training, with the loss on the assistant turns only.

Two formats, each identical to what the toolkit sends the tuned model at inference:

* ``urial`` -- the in-context alignment layout of a template with no examples (``urial-k0`` by default):
  the preamble, then ``# Query:`` / ``# Answer:`` blocks in fences. The assistant's tokens are its answer
  and the closing fence (so the model learns to stop). Serve the tuned model with ``--method urial
  --template urial-k0`` (``--method auto`` picks it up from the adapter folder). Works for base models
  without a chat template.
* ``chat-template`` -- the tokenizer's own chat template (or one given as a file). Each assistant span is
  found by rendering the conversation up to that turn with and without it, so any template that renders
  incrementally works; one that does not is reported.

The urial layout's fence is longer than any backtick run in the whole conversation, answers included, as
the inference prompt of a later turn would have it; only an answer that itself contains a run of four or
more backticks is laid out with a longer fence than its own turn's prompt had at inference.

Tokens are marked trainable when they start inside an assistant span (character offsets from the fast
tokenizer), so the masks follow the exact tokenisation of the whole text, as at inference.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from alignkit.errors import InputError
from alignkit.methods.templates import DEFAULT_FENCE, load_template
from alignkit.methods.urial import ANSWER_HEADER, QUERY_HEADER, SYSTEM_HEADER, block, fence_for

FORMATS = ("urial", "chat-template")


@dataclass(frozen=True)
class Rendered:
    text: str
    spans: tuple[tuple[int, int], ...]
    """Character spans of the assistant turns (what the loss falls on)."""
    add_special_tokens: bool


@dataclass(frozen=True)
class PromptFormat:
    """A training/inference layout: ``urial`` with a template, or ``chat-template``."""

    name: str
    template: str | None = None
    """urial: the template id or file whose preamble is used (its examples are not)."""

    def __post_init__(self) -> None:
        if self.name not in FORMATS:
            raise InputError(f"unknown --format {self.name!r}; choose one of {', '.join(FORMATS)}")

    def method_options(self) -> dict[str, Any]:
        """The inference settings that reproduce this layout (stored in the output folder)."""
        if self.name == "urial":
            return {"method": "urial", "template": self.template}
        return {"method": "template"}


def urial_preamble(template: str | None) -> str:
    t = load_template(template or "urial-k0")
    if t.examples:
        raise InputError(f"--format urial uses a template's preamble only; {t.id!r} has {len(t.examples)} examples "
                         "(pick a K=0 template such as urial-k0, so training and inference prompts are the same)")

    if t.min_fence != DEFAULT_FENCE:
        raise InputError(f"--format urial trains on fences of {DEFAULT_FENCE}+ backticks; template {t.id!r} asks for "
                         f"{t.min_fence} (inference would then prompt differently from training)")
    return t.preamble


def render_urial(messages: Sequence[dict[str, str]], preamble: str, *, also_fence: Sequence[str] = (),
                 open_answer: bool = False) -> tuple[Rendered, str]:
    """The in-context layout with the assistant spans, and its fence (longer than any backtick run in the
    conversation and in ``also_fence``). ``open_answer`` ends the text with an opened answer block, as a
    prompt."""
    system = [m["content"] for m in messages if m["role"] == "system"]
    turns = [m for m in messages if m["role"] != "system"]
    fence = fence_for([preamble, *system, *(m["content"] for m in turns), *also_fence])
    text = preamble.strip()
    if system:
        text += "\n\n" + block(SYSTEM_HEADER, "\n\n".join(s.strip() for s in system), fence)
    spans = []
    for m in turns:
        if m["role"] == "user":
            text += "\n\n" + block(QUERY_HEADER, m["content"].strip(), fence)
        else:
            text += f"\n\n{ANSWER_HEADER}\n{fence}\n"
            start = len(text)
            text += m["content"].strip() + "\n" + fence
            spans.append((start, len(text)))
    if open_answer:
        text += f"\n\n{ANSWER_HEADER}\n{fence}\n"
    return Rendered(text, tuple(spans), add_special_tokens=True), fence


def render_chat_template(messages: Sequence[dict[str, str]], tokenizer: Any) -> Rendered:
    full = tokenizer.apply_chat_template(list(messages), tokenize=False)
    spans = []
    for i, m in enumerate(messages):
        if m["role"] != "assistant":
            continue
        before = tokenizer.apply_chat_template(list(messages[:i]), tokenize=False, add_generation_prompt=True)
        upto = tokenizer.apply_chat_template(list(messages[: i + 1]), tokenize=False)
        if not upto.startswith(before) or not full.startswith(upto):
            raise InputError("the chat template does not render conversations incrementally (the text up to an "
                             "assistant turn is not a prefix of the whole), so the assistant turns cannot be "
                             "located; use --format urial or another --chat-template")
        spans.append((len(before), len(upto)))
    return Rendered(full, tuple(spans), add_special_tokens=False)


def render(messages: Sequence[dict[str, str]], fmt: PromptFormat, tokenizer: Any) -> Rendered:
    if fmt.name == "urial":
        return render_urial(messages, urial_preamble(fmt.template))[0]
    return render_chat_template(messages, tokenizer)


def tokenize(rendered: Rendered, tokenizer: Any) -> dict[str, list[int]]:
    """``input_ids`` and ``assistant_masks`` (1 where the token starts inside an assistant span)."""
    enc = tokenizer(rendered.text, add_special_tokens=rendered.add_special_tokens, return_offsets_mapping=True)
    ids, offsets = list(enc["input_ids"]), enc["offset_mapping"]
    mask = []
    for start, end in offsets:
        inside = end > start and any(s <= start < e for s, e in rendered.spans)
        mask.append(1 if inside else 0)
    return {"input_ids": ids, "assistant_masks": mask}


def check_format(fmt: PromptFormat, tokenizer: Any) -> None:
    """Fail early, with a clear message, when a format cannot be used with this tokenizer."""
    if not getattr(tokenizer, "is_fast", False):
        raise InputError("training needs a fast tokenizer (character offsets locate the assistant turns)")
    if fmt.name == "chat-template" and not getattr(tokenizer, "chat_template", None):
        raise InputError("--format chat-template: the model's tokenizer has no chat template; use --format urial "
                         "(the in-context layout, works for base models) or give one with --chat-template FILE")
    if fmt.name == "urial":
        urial_preamble(fmt.template)
