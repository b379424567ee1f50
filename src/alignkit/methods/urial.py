"""In-context alignment (URIAL-style): a base model becomes an assistant through a preamble and K
restyled example conversations, with no tuning at all.

The rendered prompt::

    {preamble}

    # Query:
    ````
    {example query}
    ````

    # Answer:
    ````
    {example answer}
    ````

    ... (K examples, then the conversation's earlier turns the same way) ...

    # Query:
    ````
    {user message}
    ````

    # Answer:
    ````

The base model writes the answer and closes the fence; generation stops at the fence or at a new header,
and the text comes back clean. **Injection safety**: every text goes inside a fence made of more
backticks than the longest run of backticks in any text of the conversation or the examples, so no user
text can close its block, forge a turn or inject an answer, whatever headers or fences it contains. The
usual fence (four backticks) leaves room for ordinary ``` code blocks inside answers.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from typing import Any

from alignkit.errors import ContextLengthError, InputError
from alignkit.methods.base import MethodModel, Prepared, StreamCleaner
from alignkit.methods.retrieval import SimilarExamples
from alignkit.methods.templates import DEFAULT_TEMPLATE, Example, Template, load_template, shipped_templates
from alignkit.models.base import LanguageModel
from alignkit.types import GenerationConfig, Message, Prompt

log = logging.getLogger("alignkit")

QUERY_HEADER = "# Query:"
ANSWER_HEADER = "# Answer:"
SYSTEM_HEADER = "# Additional instructions"
MIN_FENCE = 4
_TICKS = re.compile(r"`+")


def fence_for(texts: Sequence[str], min_fence: int = MIN_FENCE) -> str:
    """A fence no text contains: more backticks than the longest backtick run in any of them."""
    longest = max((len(m.group()) for t in texts for m in _TICKS.finditer(t)), default=0)
    return "`" * max(min_fence, longest + 1)


def block(header: str, text: str, fence: str) -> str:
    return f"{header}\n{fence}\n{text}\n{fence}"


def render_conversation(preamble: str, examples: Sequence[Example], messages: Sequence[Message],
                        min_fence: int = MIN_FENCE) -> tuple[str, str]:
    """The prompt for a conversation that ends with a user message, and its fence."""
    system = [m.content for m in messages if m.role == "system"]
    turns = [m for m in messages if m.role != "system"]
    texts = [preamble, *system, *(e.query for e in examples), *(e.answer for e in examples), *(m.content for m in turns)]
    fence = fence_for(texts, min_fence)
    parts = [preamble.strip()]
    if system:
        parts.append(block(SYSTEM_HEADER, "\n\n".join(s.strip() for s in system), fence))
    for e in examples:
        parts.append(block(QUERY_HEADER, e.query, fence))
        parts.append(block(ANSWER_HEADER, e.answer, fence))
    for m in turns:
        parts.append(block(QUERY_HEADER if m.role == "user" else ANSWER_HEADER, m.content.strip(), fence))
    parts.append(f"{ANSWER_HEADER}\n{fence}\n")
    return "\n\n".join(parts), fence


def stop_strings(fence: str) -> tuple[str, ...]:
    """Where the base model's answer ends: its closing fence, or a new header if it forgets the fence."""
    return (fence, "\n" + QUERY_HEADER, "\n" + ANSWER_HEADER)


def clean_answer(text: str) -> str:
    """The answer without surrounding blank space or a dangling fence line."""
    text = text.strip()
    while text:
        head, _, last = text.rpartition("\n")
        if last.strip() and set(last.strip()) == {"`"}:
            text = head.rstrip()
        else:
            break
    return text


def _safe_to_show(text: str) -> int:
    """Streaming: the length of ``text`` that cleaning cannot change any more."""
    end = len(text.rstrip())
    start = text.rfind("\n", 0, end) + 1
    last = text[start:end].strip()
    if last and set(last) == {"`"}:
        end = len(text[:start].rstrip())
    return end


def as_conversation(prompt: Prompt) -> list[Message]:
    """A raw string is one user message; a conversation must end with a user message."""
    if isinstance(prompt, str):
        msgs = [Message("user", prompt)]
    else:
        msgs = [m if isinstance(m, Message) else Message.from_dict(m) for m in prompt]
    turns = [m for m in msgs if m.role != "system"]
    if not turns or turns[-1].role != "user":
        raise InputError("a conversation must end with a user message")
    return msgs


class InContextAligned(MethodModel):
    """A base model aligned in context by a template (and optionally examples chosen per query)."""

    backend = "urial"
    method = "urial"
    #: decoding that measured best on the embedded 270M base (bench/urial_selfstop.py): a mild penalty on
    #: repeating the answer's own tokens breaks the loops small base models fall into
    recommended = {"repetition_penalty": 1.15}  # its own, not its base's (overrides MethodModel.recommended)

    def __init__(self, base: LanguageModel, template: Template, *, selector: Any = None) -> None:
        super().__init__(base)
        self.template = template
        self.selector = selector
        caps = base.capabilities
        from dataclasses import replace

        self.capabilities = replace(caps, chat_template=True)

    def method_info(self) -> dict[str, Any]:
        info: dict[str, Any] = {"template": self.template.provenance()}
        if self.selector is not None:
            # the fixed template's examples are not the ones used: each completion names its own (meta.examples)
            info["template"]["examples"] = "chosen per query: see each record's meta.examples"
            info["selection"] = self.selector.info()
        return info

    def examples_for(self, messages: Sequence[Message]) -> tuple[Example, ...]:
        if self.selector is None:
            return self.template.examples
        last_user = [m for m in messages if m.role == "user"][-1].content
        return self.selector.select(last_user)

    def prepare(self, prompt: Prompt, config: GenerationConfig) -> Prepared:
        msgs = as_conversation(prompt)
        examples = self.examples_for(msgs)
        text, fence = self._fit(msgs, examples, config.max_new_tokens)
        meta = {"examples": [e.id for e in examples]} if self.selector is not None else None
        return Prepared(text, stop_strings(fence), meta)

    def _fit(self, msgs: list[Message], examples, max_new_tokens: int) -> tuple[str, str]:
        """Render; drop the oldest turns (never the preamble or examples) while it does not fit."""
        text, fence = render_conversation(self.template.preamble, examples, msgs, self.template.min_fence)
        limit = self.context_length
        count = getattr(self.base, "count_tokens", None)
        if not limit or count is None:
            return text, fence
        budget = limit - max_new_tokens
        dropped = 0
        while count(text) > budget:
            system = [m for m in msgs if m.role == "system"]
            turns = [m for m in msgs if m.role != "system"]
            if len(turns) <= 1:
                raise ContextLengthError(
                    f"the preamble, {len(examples)} examples and the last message take {count(text)} tokens; with "
                    f"{max_new_tokens} new tokens that exceeds the model's context of {limit}"
                )
            cut = 2 if len(turns) > 2 and turns[0].role == "user" and turns[1].role == "assistant" else 1
            msgs = system + turns[cut:]
            dropped += cut
            text, fence = render_conversation(self.template.preamble, examples, msgs, self.template.min_fence)
        if dropped:
            log.warning("conversation too long for the context: dropped the %d oldest turn(s)", dropped)
        return text, fence

    def clean(self, text: str) -> str:
        return clean_answer(text)

    def stream_cleaner(self) -> StreamCleaner:
        return StreamCleaner(clean_answer, _safe_to_show)


def build_node(options: Any, children: dict[str, Any], resources: Any, node: Any) -> InContextAligned:
    """The ``urial`` node: its model aligned in context by the template its options name (a shipped template,
    the shipped ``urial-kK`` for ``k``, or examples chosen per query with ``select``)."""
    model, name = children["model"], options.template
    if options.select in ("similar", "similar-any"):
        template = load_template(name or DEFAULT_TEMPLATE)
        k = 3 if options.k is None else options.k
        decline = "one" if options.select == "similar" else "similar"
        return InContextAligned(model, template, selector=SimilarExamples.from_template(template, k, decline=decline))
    if options.k is not None:
        wanted = f"urial-k{options.k}"
        if name is None:
            if wanted not in shipped_templates():
                raise InputError(f"no shipped template with K={options.k} (shipped: K=0, 1, 3, 8); pass --select "
                                 "similar to choose any K examples from the pool, or --template FILE")
            name = wanted
        else:
            t = load_template(name)
            if t.k != options.k:
                raise InputError(f"template {name!r} has {t.k} examples but --k {options.k} was given")
    return InContextAligned(model, load_template(name or DEFAULT_TEMPLATE))
