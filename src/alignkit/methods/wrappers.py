"""The other ways to talk to a model, behind the same interface so comparisons are fair:

* ``template``: an aligned model through its own chat template (from its tokenizer, or the server's);
* ``none``: raw completion -- the text goes to the model as it is.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from alignkit.errors import InputError
from alignkit.methods.base import MethodModel, Prepared, StreamCleaner
from alignkit.methods.nodes import UrialOptions
from alignkit.methods.urial import build_node as build_urial
from alignkit.models.base import LanguageModel, require
from alignkit.types import GenerationConfig, Message, Prompt, ToolChat


class ChatTemplate(MethodModel):
    backend = "template"
    method = "template"
    passes_tools = True

    def __init__(self, base: LanguageModel) -> None:
        require(base, "chat_template", purpose="--method template")
        super().__init__(base)

    def prepare(self, prompt: Prompt, config: GenerationConfig) -> Prepared:
        if isinstance(prompt, ToolChat):  # rendered by the model's own template, tools and all
            return Prepared(prompt)
        msgs = [Message("user", prompt)] if isinstance(prompt, str) else list(prompt)
        return Prepared(msgs)

    def clean(self, text: str) -> str:
        return text.strip()

    def stream_cleaner(self) -> StreamCleaner:
        return StreamCleaner(self.clean, hold=lambda t: len(t.rstrip()), lstrip=True)


def joined(messages: Sequence[Message]) -> str:
    """A conversation as one text, for a model that reads text only: every message's text in order, a blank line
    apart (what ``method none`` gives its model)."""
    return "\n\n".join(m.content for m in messages)


class RawCompletion(MethodModel):
    backend = "none"
    method = "none"

    def prepare(self, prompt: Prompt, config: GenerationConfig) -> Prepared:
        if isinstance(prompt, str):
            return Prepared(prompt)
        return Prepared(joined(prompt))

    def method_info(self) -> dict[str, Any]:
        return {}


def build_template(options: Any, children: dict[str, Any], resources: Any, node: Any) -> ChatTemplate:
    return ChatTemplate(children["model"])


def build_none(options: Any, children: dict[str, Any], resources: Any, node: Any) -> RawCompletion:
    return RawCompletion(children["model"])


def auto_method(model: Any, fallback: str = "urial") -> str:
    """The method ``auto`` picks for a model: the one alignkit trained it with (its ``alignkit.json``), else its
    chat template if it has one, else ``fallback`` (a model alignkit trained in another layout gets urial)."""
    trained = getattr(model, "trained_format", None)
    if trained and trained.get("method") in ("urial", "template"):
        return str(trained["method"])
    if model.capabilities.chat_template:
        return "template"
    return "urial" if trained else fallback


def build_auto(options: Any, children: dict[str, Any], resources: Any, node: Any) -> Any:
    """The ``auto`` node: the model under :func:`auto_method`'s choice; a model alignkit trained in context gets
    the template it was trained with unless the options choose the examples."""
    from dataclasses import replace


    model = children["model"]
    method = auto_method(model, options.fallback)
    if method == "urial":
        urial = UrialOptions(template=options.template, k=options.k, select=options.select)
        trained = getattr(model, "trained_format", None)
        if trained and trained.get("method") == "urial" and urial == UrialOptions():
            urial = replace(urial, template=trained.get("template") or "urial-k0")
        return build_urial(urial, children, resources, node)
    if options.template or options.k is not None or options.select != "fixed":
        raise InputError("--template, --k and --select apply to --method urial only (with dera: --aligned-method urial)")
    return ChatTemplate(model) if method == "template" else RawCompletion(model)
