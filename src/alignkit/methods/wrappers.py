"""The other ways to talk to a model, behind the same interface so comparisons are fair:

* ``template``: an aligned model through its own chat template (from its tokenizer, or the server's);
* ``none``: raw completion -- the text goes to the model as it is.
"""

from __future__ import annotations

from typing import Any

from alignkit.methods.base import MethodModel, Prepared, StreamCleaner
from alignkit.models.base import LanguageModel, require
from alignkit.types import GenerationConfig, Message, Prompt


class ChatTemplate(MethodModel):
    backend = "template"
    method = "template"

    def __init__(self, base: LanguageModel) -> None:
        require(base, "chat_template", purpose="--method template")
        super().__init__(base)

    def prepare(self, prompt: Prompt, config: GenerationConfig) -> Prepared:
        msgs = [Message("user", prompt)] if isinstance(prompt, str) else list(prompt)
        return Prepared(msgs)

    def clean(self, text: str) -> str:
        return text.strip()

    def stream_cleaner(self) -> StreamCleaner:
        return StreamCleaner(self.clean, hold=lambda t: len(t.rstrip()), lstrip=True)


class RawCompletion(MethodModel):
    backend = "none"
    method = "none"

    def prepare(self, prompt: Prompt, config: GenerationConfig) -> Prepared:
        if isinstance(prompt, str):
            return Prepared(prompt)
        return Prepared("\n\n".join(m.content for m in prompt))

    def method_info(self) -> dict[str, Any]:
        return {}
