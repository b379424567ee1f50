"""The scorer protocol: one interface for everything that rates an answer -- ``score(prompts, answers) -> [Score]``,
batched. Only the protocol and pure helpers live here (below the methods that use scorers, e.g. best-of-N); the
implementations live with what they are -- reward models in :mod:`alignkit.training.reward_model`, LLM judges in
:mod:`alignkit.evaluation.scorers` -- and :func:`alignkit.api.scorer` opens the one a spec names.

Four kinds, chosen by a spec string (``--scorer SPEC`` on every command that ranks answers):

* ``reward:PATH_OR_HUB_ID`` -- a reward model: a sequence-classification model with one output (a Bradley-Terry
  score). A folder written by ``alignkit train reward`` (a LoRA adapter with its head, or full weights; the
  layout it was trained on is read from its ``alignkit.json``), or any ``AutoModelForSequenceClassification``
  reward model on the hub or on disk (prompted with its tokenizer's chat template, else as a text pair).
* ``judge:MODEL_SPEC`` (``judge+RUBRIC:MODEL_SPEC``) -- an LLM judge with a rubric (default ``multi-aspect``):
  the score is the mean of the rubric's aspects; a judgment that cannot be read after the retries is
  *missing* (``value is None``, with the reason), never guessed.
* ``debate:MODEL_SPEC`` (``debate+RUBRIC:MODEL_SPEC``) -- a debate of judge personas (three personas, two rounds,
  :mod:`alignkit.evaluation.debate`), then the mean of their verdicts' aspects, as ``judge:``.
* ``geval:MODEL_SPEC`` -- G-Eval-style expected score: the judge is asked for one digit 1-5 and the score is
  ``sum_s s * p(s)`` over the digit probabilities it gives (one forward pass, no sampling). When the judge puts
  almost no probability on any digit the score is missing.

Higher is better for every kind. A scorer never changes the answers; it only rates them.
"""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from alignkit.errors import AlignkitError, InputError
from alignkit.types import Message, Prompt, as_messages

KINDS = ("reward", "judge", "geval", "debate")
#: least total probability a G-Eval judge must put on the score digits for its score to count
GEVAL_MIN_MASS = 0.01


@dataclass(frozen=True)
class Score:
    """One rating: ``value`` (higher is better) or None when it could not be had, with ``reason`` saying why."""

    value: float | None
    reason: str | None = None
    detail: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"score": None if self.value is None else round(float(self.value), 6)}
        if self.reason:
            d["reason"] = self.reason
        if self.detail:
            d["detail"] = self.detail
        return d


class Scorer(ABC):
    """Rates answers to prompts. ``spec`` names it (as given on the command line); ``info()`` is its provenance."""

    kind = "scorer"
    spec = ""

    @abstractmethod
    def score(self, prompts: Sequence[Prompt], answers: Sequence[str]) -> list[Score]:
        """One :class:`Score` per (prompt, answer), in order."""

    def info(self) -> dict[str, Any]:
        return {"kind": self.kind, "spec": self.spec}

    def close(self) -> None:  # noqa: B027 -- most scorers hold nothing to release
        pass


def messages_of(prompt: Prompt) -> list[dict[str, str]]:
    if isinstance(prompt, str):
        return [{"role": "user", "content": prompt}]
    return [{"role": m.role, "content": m.content} for m in as_messages(prompt)]


def request_text(prompt: Prompt) -> str:
    msgs = messages_of(prompt)
    if len(msgs) == 1:
        return msgs[0]["content"]
    return "\n\n".join(f"{m['role'].upper()}: {m['content']}" for m in msgs)


def check_lengths(prompts: Sequence[Any], answers: Sequence[Any]) -> None:
    if len(prompts) != len(answers):
        raise ValueError(f"got {len(prompts)} prompts for {len(answers)} answers")


# ----------------------------------------------------------------------------- specs
def parse_spec(spec: str) -> tuple[str, str | None, str]:
    """``(kind, rubric or None, target)`` of a scorer spec."""
    if not isinstance(spec, str) or ":" not in spec:
        raise InputError(f"scorer {spec!r}: write KIND:TARGET with KIND one of {', '.join(KINDS)} (e.g. "
                         "reward:runs/rm, judge:gemma-3-270m, geval:llamacpp:judge.gguf)")
    head, target = spec.split(":", 1)
    kind, _, rubric = head.partition("+")
    if kind not in KINDS:
        raise InputError(f"scorer {spec!r}: unknown kind {kind!r}; choose one of {', '.join(KINDS)}")
    if not target.strip():
        raise InputError(f"scorer {spec!r}: nothing after {head + ':'!r}")
    if rubric and kind == "reward":
        raise InputError(f"scorer {spec!r}: a reward model takes no rubric")
    return kind, rubric or None, target


def score_records(scorer: Scorer, items: Sequence[tuple[Prompt, str]]) -> list[Score]:
    """Score (prompt, answer) pairs; a batch the scorer cannot take at once is retried one by one, and an
    item that still fails becomes a missing score with the error (one bad item does not stop a run)."""
    if not items:
        return []
    try:
        return scorer.score([p for p, _ in items], [a for _, a in items])
    except AlignkitError:
        out = []
        for p, a in items:
            try:
                out.append(scorer.score([p], [a])[0])
            except AlignkitError as e:
                out.append(Score(None, f"scorer error: {e}"))
        return out


def as_prompt(rec: dict[str, Any]) -> Prompt:
    """The prompt of a data record ({prompt} or {messages ending with a user turn})."""
    if "prompt" in rec and isinstance(rec["prompt"], str):
        return rec["prompt"]
    msgs = rec.get("prompt") if isinstance(rec.get("prompt"), list) else rec["messages"]
    return [Message(m["role"], m["content"]) if isinstance(m, dict) else m for m in msgs]


def dumps(scores: Sequence[Score]) -> str:
    return json.dumps([s.to_dict() for s in scores])
