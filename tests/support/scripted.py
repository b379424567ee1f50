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
        if '{"safety":' in user:  # a safety rubric (alignkit's or just-eval's)
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


class ScriptedLogprobJudge(ScriptedJudge):
    """A scripted judge that also gives top-k log-probabilities, scripted per slot: ``slots[aspect]`` is the
    top-k list at that aspect's slot, as ``(token, probability)``. Its ``score`` splits each continuation so that
    the last token is the slot's stand-in with its leading space (`` 3`` / ``A`` as the tokenizer would give it)
    and records every continuation it was asked to score."""

    capabilities = Capabilities(chat_template=True, topk_logprobs=20)

    def __init__(self, slots, answer=None, verdicts=None) -> None:
        """``verdicts``: the top-k at every pairwise verdict slot (continuations ending in the stand-in ``A``)."""
        super().__init__()
        self.slots, self.answer, self.verdicts, self.scored = slots, answer, verdicts, []

    def _answer(self, msgs) -> str:
        return self.answer if self.answer is not None else super()._answer(msgs)

    def score(self, prompts, continuations, *, top_k=0, reduce=None):
        import math
        import re

        from alignkit.types import TokenScores

        out = []
        for c in continuations:
            self.scored.append(c)
            aspect = [k for k in re.findall(r'"([a-z]+)": [{"]', c) if k not in ("reason", "score")][-1]
            cut = len(c) - 2 if c.endswith(" 3") else len(c) - 1
            tokens = (c[:cut], c[cut:])
            table = self.verdicts if (self.verdicts is not None and c.endswith("A")) else self.slots[aspect]
            top = tuple((t, math.log(p)) for t, p in table)[:top_k]
            out.append(TokenScores(token_ids=(), tokens=tokens, logprobs=(0.0, 0.0), top_logprobs=((), top)))
        return out
