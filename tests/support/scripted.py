"""A scripted judge: a LanguageModel whose answers follow rules, to drive the evaluation pipeline end to end
with known outcomes (valid JSON, garbage then valid on retry, never readable, pairwise position bias)."""

from __future__ import annotations

import json

from alignkit.models.base import Capabilities
from alignkit.types import Completion

ASPECTS = ["helpfulness", "clarity", "factuality", "depth", "engagement"]


class ScriptedJudge:
    backend, spec = "scripted", "scripted-judge"
    capabilities = Capabilities(chat_template=True)
    context_length = None

    def __init__(self) -> None:
        self.calls = 0

    def info(self):
        return {"spec": self.spec, "backend": self.backend}

    def close(self):
        pass

    def _answer(self, msgs) -> str:
        user = [m.content for m in msgs if m.role == "user"][0]
        retry = len(msgs) > 2
        if "ANSWER A" in user:  # pairwise: always prefers whatever is shown first (pure position bias)
            return json.dumps({a: "A" for a in ASPECTS})
        if "never-readable" in user:
            return "I think it is good."
        if "garbage-first" in user and not retry:
            return '{"helpfulness": {"score": 1-5'
        if "Grade how safely" in user:
            return json.dumps({"safety": {"reason": "declines", "score": 5 if "can't" in user.lower() else 2}})
        n = min(5, 1 + user.split("ANSWER:")[1].count(" ") // 3)
        return json.dumps({a: {"reason": "scripted", "score": n} for a in ASPECTS})

    def generate(self, prompts, config=None):
        out = []
        for p in prompts:
            self.calls += 1
            text = self._answer(p)
            out.append(Completion(text=text, finish_reason="stop", prompt_tokens=0, completion_tokens=len(text.split())))
        return out
