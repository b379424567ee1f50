"""LLM judges as scorers (the :class:`~alignkit.scoring.Scorer` protocol):

* ``judge:MODEL_SPEC`` (``judge+RUBRIC:MODEL_SPEC``) -- :class:`JudgeScorer`, an LLM judge with a rubric (default
  ``multi-aspect``): the score is the mean of the rubric's aspects; a judgment that cannot be read after the
  retries is *missing* (``value is None``, with the reason), never guessed.
* ``geval:MODEL_SPEC`` -- :class:`ExpectedScoreJudge`, the G-Eval-style expected score: the judge is asked for one
  digit 1-5 and the score is ``sum_s s * p(s)`` over the digit probabilities it gives (one forward pass, no
  sampling). When the judge puts almost no probability on any digit (below ``alignkit.scoring.GEVAL_MIN_MASS``)
  the score is missing.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from alignkit import scoring
from alignkit.errors import InputError
from alignkit.models.base import require
from alignkit.scoring import Score, Scorer, check_lengths, request_text
from alignkit.types import Prompt


class JudgeScorer(Scorer):
    """An LLM judge with a score rubric; the score is the mean of its aspects (all must be readable)."""

    kind = "judge"

    def __init__(self, judge: Any, *, spec: str = "") -> None:
        self.judge = judge
        self.spec = spec or f"judge:{judge.spec}"

    def children(self) -> list[tuple[str, Any]]:
        return [("judge", self.judge.model)]

    def info(self) -> dict[str, Any]:
        return {**super().info(), **self.judge.provenance()}

    def score(self, prompts: Sequence[Prompt], answers: Sequence[str]) -> list[Score]:
        check_lengths(prompts, answers)
        results = self.judge.judge([{"instruction": request_text(p), "answer": a} for p, a in zip(prompts, answers)])
        out = []
        for res in results:
            aspects = {a: v["score"] for a, v in res["result"].items()}
            if res["missing"]:
                out.append(Score(None, f"unreadable judgment (no score for {', '.join(res['missing'])} after "
                                       f"{len(res['raw'])} attempt(s))", {"aspects": aspects}))
            else:
                out.append(Score(sum(aspects.values()) / len(aspects), None, {"aspects": aspects}))
        return out

    def close(self) -> None:
        self.judge.model.close()


class ExpectedScoreJudge(Scorer):
    """G-Eval-style: the judge is asked for one digit 1-5; the score is the expected digit under the judge's
    next-token distribution (probabilities renormalised over the five digits)."""

    kind = "geval"

    def __init__(self, model: Any, rubric: Any, *, spec: str = "") -> None:
        self.model, self.rubric = model, rubric
        self.spec = spec or f"geval:{model.spec}"
        require(model, "full_vocab_logits", purpose="G-Eval scoring (it reads the judge's next-token probabilities)")
        digits = [model.encode(str(d)) for d in range(1, 6)]
        # a leading space or a BOS may come with encode(); the digit is the last token of each
        self.digit_ids = [d[-1] for d in digits]
        if len(set(self.digit_ids)) != 5:
            raise InputError(f"judge {model.spec!r}: the digits 1-5 are not five distinct tokens; G-Eval scoring "
                             "needs one token per score")

    def children(self) -> list[tuple[str, Any]]:
        return [("judge", self.model)]

    def info(self) -> dict[str, Any]:
        return {**super().info(), "judge": self.model.spec, "rubric": self.rubric.id, "rubric_hash": self.rubric.hash}

    def score(self, prompts: Sequence[Prompt], answers: Sequence[str]) -> list[Score]:
        import torch

        check_lengths(prompts, answers)
        convs = [self.rubric.messages(instruction=request_text(p), answer=a) for p, a in zip(prompts, answers)]
        idx = torch.tensor(self.digit_ids, dtype=torch.long)

        def reduce(logprobs, targets):
            return [logprobs[0, idx].double().exp().tolist()]

        out = []
        # the continuation is one digit token: its position's distribution is the judge's first answer token
        for ts in self.model.score(convs, [[self.digit_ids[0]]] * len(convs), reduce=reduce):
            probs = ts.reduced[0]
            mass = float(sum(probs))
            detail = {"digit_probs": [round(p / mass, 4) if mass > 0 else 0.0 for p in probs], "mass": round(mass, 4)}
            if not (mass >= scoring.GEVAL_MIN_MASS):
                out.append(Score(None, f"the judge puts {mass:.1%} probability on a score digit (below "
                                       f"{scoring.GEVAL_MIN_MASS:.0%}): not a judgment", detail))
                continue
            out.append(Score(sum((i + 1) * p for i, p in enumerate(probs)) / mass, None, detail))
        return out

    def close(self) -> None:
        self.model.close()
