"""Probability-weighted judging: G-Eval scores and AlpacaEval-style weighted pairwise preferences.

A parsed score is the digit the judge wrote; a **weighted** score is the expectation of the judge's own
distribution over "1".."5" at the score's slot. A local judge's slot is read by teacher forcing (the model
interface's ``score`` with top-k log-probabilities): the judge's conversation, then its own reply up to the slot
where the reply has it readable, else its verdict rewritten in the rubric's canonical JSON shape up to the slot --
every earlier aspect with the judge's own reason and its value (the parsed one, or, where that was unreadable, the
most likely one at its own slot), this aspect's reason, then ``"score": `` -- and the top-k at the slot. So a
judge that can emit a digit always yields a weighted score, even when what it wrote could not be read; a model
that gives no log-probabilities yields none (``None``, never a made-up number). A judge served over an API is
read from the log-probabilities its server returns with the reply (:func:`reply_weights`): the same slots, in the
same context, so the same numbers.

Reading a label from a top-k list: the slot's token is found by forcing a stand-in label (``3``, ``A``) as the last
character of the continuation. A top-k entry counts for label L when it is the slot token with its label part
replaced by L, or by a prefix of L ("t" for "tie"), or by L followed by punctuation (``4,`` where the tokenizer
merges). Other tokenisations of the same label are not counted (their mass is small: the judge was asked for the
canonical shape). Probabilities are renormalised over the labels found; when the labels hold less than
``alignkit.scoring.GEVAL_MIN_MASS`` of the judge's probability the slot gives no number (as ``geval:`` scorers).

Pairwise: the weighted preference for answer X is P(X) + P(tie)/2 at each aspect's slot, averaged over the two
orders (position bias cancels); the win rate is its mean over instructions. The length-controlled win rate
(AlpacaEval 2's idea, for one pair of systems) fits a logistic GLM of the preference on
``tanh(length difference / its standard deviation)`` with statsmodels and reports the predicted preference at
zero length difference.
"""

from __future__ import annotations

import bisect
import json
import math
import re
from collections.abc import Sequence
from typing import Any

from alignkit import scoring  # GEVAL_MIN_MASS read at call time (a test lowers it)
from alignkit.errors import AlignkitError
from alignkit.models.base import served_over_api

DIGITS = ("1", "2", "3", "4", "5")
VERDICTS = ("A", "B", "tie")
_PUNCT = re.compile(r"^[\s\"',.}\]]*$")


def label_distribution(top: Sequence[tuple[str, float]], chosen: str, stand_in: str,
                       labels: Sequence[str]) -> tuple[dict[str, float] | None, float]:
    """``(P(label), mass)`` at one slot from its top-k ``(token, logprob)`` list; ``chosen`` is the slot's token,
    which ends with ``stand_in``; ``mass`` is the judge's total probability on the labels. The distribution is
    None when the slot token is not that shape or the mass is below ``alignkit.scoring.GEVAL_MIN_MASS`` (the judge is not
    answering with a label there: not a judgment)."""
    if not chosen.endswith(stand_in):
        return None, 0.0
    return label_mass(top, chosen[: len(chosen) - len(stand_in)], labels)


def label_mass(top: Sequence[tuple[str, float]], lead: str,
               labels: Sequence[str]) -> tuple[dict[str, float] | None, float]:
    """``(P(label), mass)`` at a slot whose token starts with ``lead`` (the text before the label inside that
    token: ``" "`` for a token " 4", ``""`` for "4"): the top-k entries that are ``lead`` + a label (or a prefix of
    one, or one followed by punctuation), renormalised over the labels."""
    mass = dict.fromkeys(labels, 0.0)
    for tok, lp in top:
        if not tok.startswith(lead) or len(tok) == len(lead):
            continue
        rest = tok[len(lead):]
        hits = [lab for lab in labels if lab.startswith(rest) or (rest.startswith(lab) and _PUNCT.match(rest[len(lab):]))]
        if len(hits) == 1 and math.isfinite(lp):
            mass[hits[0]] += math.exp(lp)
    total = sum(mass.values())
    if not total >= scoring.GEVAL_MIN_MASS:
        return None, total
    return {lab: v / total for lab, v in mass.items()}, total


def expected_score(dist: dict[str, float] | None) -> float | None:
    return None if dist is None else sum(int(k) * p for k, p in dist.items())


def _score_prefix(aspects: Sequence[str], reasons: Sequence[str | None], values: Sequence[Any], slot: int) -> str:
    """The canonical ``{"aspect": {"reason": ..., "score": N}, ...}`` shape up to ``"score": `` of ``slot``."""
    done = [f'{json.dumps(a)}: {{"reason": {json.dumps(reasons[i] or "", ensure_ascii=False)}, "score": {values[i]}}}'
            for i, a in enumerate(aspects[:slot])]
    here = (f'{json.dumps(aspects[slot])}: {{"reason": '
            f'{json.dumps(reasons[slot] or "", ensure_ascii=False)}, "score": ')
    return "{" + "".join(d + ", " for d in done) + here


def _pairwise_prefix(aspects: Sequence[str], values: Sequence[Any], slot: int) -> str:
    """The canonical ``{"aspect": "A", ...`` shape up to the opening quote of ``slot``'s verdict."""
    done = [f"{json.dumps(a)}: {json.dumps(values[i])}" for i, a in enumerate(aspects[:slot])]
    return "{" + "".join(d + ", " for d in done) + f'{json.dumps(aspects[slot])}: "'


def weights_available(model: Any, top_k: int) -> str | None:
    """Why ``model`` cannot give weighted scores (None: it can)."""
    caps = getattr(model, "capabilities", None)
    if caps is None or not (caps.full_vocab_logits or caps.topk_logprobs >= 1):
        return f"judge {getattr(model, 'spec', model)!r} gives no token log-probabilities"
    if not caps.full_vocab_logits and caps.topk_logprobs < top_k:
        return f"judge {getattr(model, 'spec', model)!r} gives a top-{caps.topk_logprobs} only (asked {top_k})"
    return None


def _slot_offsets(text: str, rubric: Any) -> list[int | None]:
    """Where each aspect's label starts in a reply (character offsets; None where the reply has no such slot):
    the score digit after the aspect's ``"score":`` (score rubrics), the verdict after its opening quote
    (pairwise), the first digit (digit rubrics). Keys inside a reason are escaped (``\\"``), so never matched."""
    if rubric.reply == "digit":
        m = re.search(r"[1-5]", text)
        return [m.start() if m else None]
    out: list[int | None] = []
    pos = 0
    for aspect in rubric.aspects:
        key = re.compile(r'(?<!\\)' + re.escape(json.dumps(aspect)) + r'\s*:\s*' + ('"' if rubric.kind == "pairwise" else r'\{'))
        m = key.search(text, pos) or key.search(text)
        if m and rubric.kind != "pairwise":
            m = re.compile(r'(?<!\\)"score"\s*:\s*').search(text, m.end())
        if m is None:
            out.append(None)
            continue
        out.append(m.end())
        pos = m.end()
    return out


def reply_weights(logprobs: Sequence[tuple[str, float, Sequence[tuple[str, float]]]] | None,
                  rubric: Any) -> dict[str, Any] | None:
    """Weighted scores (or pairwise probabilities) read from a generated reply's own per-token top
    log-probabilities (an API judge's ``logprobs``/``top_logprobs``): at each aspect's slot in the reply, the
    top-k of the token that holds the label's first character, read as :func:`label_mass` reads a teacher-forced
    slot. Same shape as one item of :meth:`Weigher.weigh`; None when the reply came without log-probabilities."""
    if not logprobs:
        return None
    tokens = [t for t, _, _ in logprobs]
    starts, pos = [], 0
    for t in tokens:
        starts.append(pos)
        pos += len(t)
    text = "".join(tokens)
    pairwise = rubric.kind == "pairwise"
    labels = VERDICTS if pairwise else DIGITS
    out: dict[str, Any] = {}
    for aspect, off in zip(rubric.aspects, _slot_offsets(text, rubric)):
        dist, mass = None, 0.0
        if off is not None and off < len(text):
            i = bisect.bisect_right(starts, off) - 1  # the token holding the label's first character
            dist, mass = label_mass(logprobs[i][2], tokens[i][: off - starts[i]], labels)
        out[aspect] = {"p": dist, "mass": mass} if pairwise else {"weighted": expected_score(dist), "p": dist,
                                                                    "mass": mass}
    return out


class Weigher:
    """Reads the judge's distribution at each slot of a rubric's canonical answer (see the module doc). A judge
    served over an API is read from its replies instead (``mode == "reply"``: :func:`reply_weights` on the chat
    log-probabilities the judge asks for with each reply; :meth:`weigh` is not used)."""

    def __init__(self, model: Any, rubric: Any, *, top_k: int = 20) -> None:
        self.model, self.rubric, self.top_k = model, rubric, top_k
        self.mode = "reply" if served_over_api(model) else "forced"
        self.unavailable = weights_available(model, top_k)
        if self.mode == "reply" and self.unavailable is None and getattr(model, "backend", "") != "openai":
            self.unavailable = (f"judge {getattr(model, 'spec', model)!r} is a route over an API model: its replies' "
                                "log-probabilities are not passed through")

    def weigh(self, fields: list[dict[str, str]], parsed: list[dict[str, Any]],
              replies: Sequence[str] | None = None) -> list[dict[str, Any]]:
        """Per item ``{aspect: {"weighted": float | None, "p": {label: prob} | None, "mass"}}`` (scores) or
        ``{aspect: {"p": {"A", "B", "tie"} | None, "mass"}}`` (pairwise); ``{}`` per item if the judge gives no
        log-probabilities. ``parsed``: the judge's parsed results for the same items (their reasons and values
        fill the earlier slots). ``replies``: the judge's replies those values were read from; where a reply
        has the aspect's slot and gave the parsed value, the judge's own text up to the slot is forced instead of
        the canonical rewrite (the two differ where the judge escaped or spaced its JSON otherwise), so the slot
        is read in exactly the context the judge wrote it in -- as an API judge's reply log-probabilities are."""
        if self.unavailable or not fields:
            return [{} for _ in fields]
        aspects = list(self.rubric.aspects)
        pairwise = self.rubric.kind == "pairwise"
        labels, stand_in = (VERDICTS, "A") if pairwise else (DIGITS, "3")
        convs = [self.rubric.messages(**f) for f in fields]
        out: list[dict[str, Any]] = [{} for _ in fields]
        values: list[list[Any]] = [[None] * len(aspects) for _ in fields]
        own = [self._own_slots(r, p) for r, p in zip(replies, parsed)] if replies is not None else None
        for slot, aspect in enumerate(aspects):
            conts = []
            for i, res in enumerate(parsed):
                if own is not None and own[i].get(aspect) is not None:
                    conts.append(own[i][aspect] + stand_in)
                elif pairwise:
                    conts.append(_pairwise_prefix(aspects, values[i], slot) + stand_in)
                else:
                    reasons = [(res.get(a) or {}).get("reason") for a in aspects]
                    conts.append(_score_prefix(aspects, reasons, values[i], slot) + stand_in)
            scored = self._score(convs, conts)
            for i, ts in enumerate(scored):
                dist, mass = None, 0.0
                if ts is not None and ts.top_logprobs and ts.tokens:
                    dist, mass = label_distribution(ts.top_logprobs[-1], ts.tokens[-1], stand_in, labels)
                got = parsed[i].get(aspect)
                if pairwise:
                    out[i][aspect] = {"p": dist, "mass": mass}
                    values[i][slot] = got if got is not None else (max(dist, key=dist.get) if dist else "tie")
                else:
                    out[i][aspect] = {"weighted": expected_score(dist), "p": dist, "mass": mass}
                    given = got.get("score") if isinstance(got, dict) else None
                    values[i][slot] = given if given is not None else (
                        int(max(dist, key=dist.get)) if dist else 3)
        return out

    def _own_slots(self, reply: str, parsed: dict[str, Any]) -> dict[str, str | None]:
        """Per aspect, the reply's text up to its label slot, where the reply has that slot and its label there
        is the parsed value (else None: the canonical rewrite is forced)."""
        out: dict[str, str | None] = {}
        for aspect, off in zip(self.rubric.aspects, _slot_offsets(reply, self.rubric)):
            got = parsed.get(aspect)
            value = got.get("score") if isinstance(got, dict) else got
            ok = off is not None and value is not None and reply[off:].startswith(str(value))
            out[aspect] = reply[:off] if ok else None
        return out

    def _score(self, convs: list, conts: list[str]) -> list[Any]:
        """The batch's scores; an item the judge cannot take (too long, ...) gets None -- its slots give no number,
        and the rest of the batch is unaffected."""
        try:
            return self.model.score(convs, conts, top_k=self.top_k)
        except AlignkitError:
            out = []
            for conv, cont in zip(convs, conts):
                try:
                    out.append(self.model.score([conv], [cont], top_k=self.top_k)[0])
                except AlignkitError:
                    out.append(None)
            return out


def preference(p: dict[str, float] | None, side: str) -> float | None:
    """The weighted preference for ``side`` ("A" or "B") from one slot's P(A), P(B), P(tie)."""
    if p is None:
        return None
    return p[side] + 0.5 * p["tie"]


def agreement(pairs: list[tuple[int, float]]) -> dict[str, Any]:
    """How parsed and weighted scores agree over the items that have both: Pearson and Spearman correlation
    (scipy), mean absolute difference, and the share whose rounded weighted score equals the parsed one."""
    n = len(pairs)
    out: dict[str, Any] = {"n": n, "pearson": None, "spearman": None, "mean_abs_diff": None, "rounded_equal": None}
    if n == 0:
        return out
    xs, ys = [float(a) for a, _ in pairs], [float(b) for _, b in pairs]
    out["mean_abs_diff"] = sum(abs(a - b) for a, b in zip(xs, ys)) / n
    out["rounded_equal"] = sum(int(a) == int(math.floor(b + 0.5)) for a, b in zip(xs, ys)) / n
    if n >= 3 and len(set(xs)) > 1 and len(set(ys)) > 1:
        from scipy import stats

        out["pearson"] = float(stats.pearsonr(xs, ys).statistic)
        out["spearman"] = float(stats.spearmanr(xs, ys).statistic)
    return out


def length_controlled(prefs: list[float], len_a: list[int], len_b: list[int]) -> dict[str, Any]:
    """Length-controlled win rate of A over B: a logistic GLM (statsmodels, binomial family, fractional
    outcomes) of the preference on an intercept and ``tanh((len_a - len_b) / sd)``; the LC win rate is the model's
    preference at zero length difference, ``sigmoid(intercept)``. With fewer than 3 items or no spread in length
    there is nothing to control for: the plain mean is returned, marked."""
    n = len(prefs)
    out: dict[str, Any] = {"n": n, "win_rate": (sum(prefs) / n) if n else None, "lc_win_rate": None,
                           "length_coef": None, "fit": None}
    if n == 0:
        return out
    diffs = [a - b for a, b in zip(len_a, len_b)]
    mean = sum(diffs) / n
    sd = math.sqrt(sum((d - mean) ** 2 for d in diffs) / max(1, n - 1))
    if n < 3 or sd == 0:
        out.update(lc_win_rate=out["win_rate"], fit="no length spread: plain mean")
        return out
    if all(p >= 1.0 for p in prefs) or all(p <= 0.0 for p in prefs):
        out.update(lc_win_rate=out["win_rate"], fit="every preference at the same bound: plain mean")
        return out
    import numpy as np
    import statsmodels.api as sm

    x = np.column_stack([np.ones(n), np.tanh(np.asarray(diffs, dtype=float) / sd)])
    y = np.clip(np.asarray(prefs, dtype=float), 0.0, 1.0)
    try:
        res = sm.GLM(y, x, family=sm.families.Binomial()).fit()
    except Exception as e:  # perfect separation and other failures of the fit: report them, no number
        out["fit"] = f"failed: {type(e).__name__}: {e}"
        return out
    intercept, slope = (float(v) for v in res.params)
    out.update(lc_win_rate=1.0 / (1.0 + math.exp(-intercept)), length_coef=slope, fit="glm-binomial")
    return out


__all__ = ["Weigher", "agreement", "expected_score", "label_distribution", "label_mass", "length_controlled",
           "preference", "reply_weights", "weights_available"]
