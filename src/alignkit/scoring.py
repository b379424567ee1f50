"""Scorers: one interface for everything that rates an answer -- ``score(prompts, answers) -> [Score]``, batched.

Three kinds, chosen by a spec string (``--scorer SPEC`` on every command that ranks answers):

* ``reward:PATH_OR_HUB_ID`` -- a reward model: a sequence-classification model with one output (a Bradley-Terry
  score). A folder written by ``alignkit train reward`` (a LoRA adapter with its head, or full weights; the
  layout it was trained on is read from its ``alignkit.json``), or any ``AutoModelForSequenceClassification``
  reward model on the hub or on disk (prompted with its tokenizer's chat template, else as a text pair).
* ``judge:MODEL_SPEC`` (``judge+RUBRIC:MODEL_SPEC``) -- an LLM judge with a rubric (default ``multi-aspect``):
  the score is the mean of the rubric's aspects; a judgment that cannot be read after the retries is
  *missing* (``value is None``, with the reason), never guessed.
* ``geval:MODEL_SPEC`` -- G-Eval-style expected score: the judge is asked for one digit 1-5 and the score is
  ``sum_s s * p(s)`` over the digit probabilities it gives (one forward pass, no sampling). When the judge puts
  almost no probability on any digit the score is missing.

Higher is better for every kind. A scorer never changes the answers; it only rates them.
"""

from __future__ import annotations

import json
import math
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from alignkit.errors import InputError, ModelLoadError
from alignkit.types import Message, Prompt, as_messages

KINDS = ("reward", "judge", "geval")
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


def _messages(prompt: Prompt) -> list[dict[str, str]]:
    if isinstance(prompt, str):
        return [{"role": "user", "content": prompt}]
    return [{"role": m.role, "content": m.content} for m in as_messages(prompt)]


def _request_text(prompt: Prompt) -> str:
    msgs = _messages(prompt)
    if len(msgs) == 1:
        return msgs[0]["content"]
    return "\n\n".join(f"{m['role'].upper()}: {m['content']}" for m in msgs)


def _check_lengths(prompts: Sequence[Any], answers: Sequence[Any]) -> None:
    if len(prompts) != len(answers):
        raise ValueError(f"got {len(prompts)} prompts for {len(answers)} answers")


# ----------------------------------------------------------------------------- reward models
@dataclass(frozen=True)
class RewardLayout:
    """How (conversation, answer) is laid out for a reward model: ``urial`` (the in-context layout of a K=0
    template, for base models), ``chat-template`` (the tokenizer's), or ``pair`` (question and answer as a
    text pair, the classic cross-encoder reward models)."""

    name: str
    template: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "template": self.template}


def reward_layout_for(tokenizer: Any, requested: str = "auto", template: str | None = None) -> RewardLayout:
    if requested not in ("auto", "urial", "chat-template", "pair"):
        raise InputError(f"unknown reward layout {requested!r}; choose auto, urial, chat-template or pair")
    if requested == "auto":
        requested = "chat-template" if getattr(tokenizer, "chat_template", None) else "urial"
    if requested == "chat-template" and not getattr(tokenizer, "chat_template", None):
        raise InputError("layout chat-template: the reward model's tokenizer has no chat template (use urial or pair)")
    return RewardLayout(requested, (template or "urial-k0") if requested == "urial" else None)


def reward_ids(messages: Sequence[dict[str, str]], answer: str, layout: RewardLayout, tokenizer: Any) -> list[int]:
    """The token ids a reward model reads for one answer -- the same in training and in scoring: the
    conversation with the answer as the last assistant turn, then the end-of-sequence token (the model's
    score is read at that last token)."""
    msgs = [dict(m) for m in messages] + [{"role": "assistant", "content": answer.strip()}]
    if layout.name == "pair":
        question = "\n\n".join(m["content"] for m in messages if m["role"] != "system")
        ids = list(tokenizer(question, answer.strip())["input_ids"])
    elif layout.name == "urial":
        from alignkit.training.format import _urial_preamble, render_urial

        text = render_urial(msgs, _urial_preamble(layout.template))[0].text
        ids = list(tokenizer(text)["input_ids"])
    else:
        text = tokenizer.apply_chat_template(msgs, tokenize=False)
        ids = list(tokenizer(text, add_special_tokens=False)["input_ids"])
    eos = tokenizer.eos_token_id
    if layout.name != "pair" and eos is not None and (not ids or ids[-1] != eos):
        ids.append(eos)
    return ids


def load_reward_model(path_or_id: str, *, dtype: str = "float32") -> tuple[Any, Any, RewardLayout, dict[str, Any]]:
    """(model in eval mode, tokenizer, layout, provenance) of a reward model folder or hub id."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from alignkit.training import common

    folder = Path(path_or_id)
    info = common.read_info(folder) if folder.is_dir() else None
    torch_dtype = getattr(torch, dtype)
    try:
        if folder.is_dir() and (folder / "adapter_config.json").is_file():
            if not info or info.get("kind") != "reward":
                raise InputError(f"{path_or_id!r} is a LoRA adapter folder but not a reward model written by "
                                 "`alignkit train reward` (its alignkit.json does not say kind: reward)")
            from peft import PeftModel

            source = common.source_of(info["base_model"])
            base = AutoModelForSequenceClassification.from_pretrained(source, num_labels=1, dtype=torch_dtype)
            model = PeftModel.from_pretrained(base, str(folder))
        else:
            if not folder.is_dir() and (folder.suffix or path_or_id.startswith((".", "/"))):
                raise InputError(f"reward model {path_or_id!r}: no such folder")
            model = AutoModelForSequenceClassification.from_pretrained(path_or_id, dtype=torch_dtype)
        tokenizer = AutoTokenizer.from_pretrained(path_or_id)
    except (OSError, ValueError) as e:
        raise ModelLoadError(f"cannot load reward model {path_or_id!r}: {str(e).splitlines()[0]}") from e
    labels = getattr(model.config, "num_labels", None)
    if labels != 1:
        raise InputError(f"{path_or_id!r} is a sequence classifier with {labels} outputs; a reward model has one "
                         "(a scalar score)")
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    if getattr(model.config, "pad_token_id", None) is None:
        model.config.pad_token_id = tokenizer.pad_token_id
    if info and isinstance(info.get("layout"), dict):
        layout = RewardLayout(info["layout"]["name"], info["layout"].get("template"))
    else:
        layout = reward_layout_for(tokenizer, "chat-template" if getattr(tokenizer, "chat_template", None) else "pair")
    model.eval()
    prov = {"path": path_or_id, "layout": layout.to_dict(),
            "trained_by_alignkit": bool(info and info.get("kind") == "reward")}
    if info and info.get("result", {}).get("eval_accuracy") is not None:
        prov["eval_accuracy"] = info["result"]["eval_accuracy"]
    return model, tokenizer, layout, prov


class RewardModelScorer(Scorer):
    """A reward model's scalar output for each (prompt, answer), batched with right padding (the model reads
    its score at the last real token)."""

    kind = "reward"

    def __init__(self, model: Any, tokenizer: Any, layout: RewardLayout, *, spec: str = "",
                 provenance: dict[str, Any] | None = None, batch_size: int = 8, max_length: int | None = None) -> None:
        self.model, self.tokenizer, self.layout = model, tokenizer, layout
        self.spec = spec or f"reward:{provenance.get('path') if provenance else '?'}"
        self.provenance = provenance or {}
        self.batch_size = batch_size
        limit = getattr(model.config, "max_position_embeddings", None)
        self.max_length = max_length or (int(limit) if isinstance(limit, int) and limit > 0 else None)

    @classmethod
    def load(cls, path_or_id: str, **kwargs: Any) -> RewardModelScorer:
        model, tok, layout, prov = load_reward_model(path_or_id)
        return cls(model, tok, layout, spec=f"reward:{path_or_id}", provenance=prov, **kwargs)

    def info(self) -> dict[str, Any]:
        return {**super().info(), **self.provenance}

    def ids(self, prompt: Prompt, answer: str) -> list[int]:
        return reward_ids(_messages(prompt), answer, self.layout, self.tokenizer)

    def score_ids(self, rows: Sequence[Sequence[int]]) -> list[float]:
        """Scores of already-tokenised rows (what training and held-out accuracy use)."""
        import torch

        pad = self.model.config.pad_token_id
        out: list[float] = []
        device = next(self.model.parameters()).device
        with torch.no_grad():
            for start in range(0, len(rows), self.batch_size):
                chunk = rows[start : start + self.batch_size]
                width = max(len(r) for r in chunk)
                ids = torch.full((len(chunk), width), pad, dtype=torch.long)
                mask = torch.zeros((len(chunk), width), dtype=torch.long)
                for i, r in enumerate(chunk):
                    ids[i, : len(r)] = torch.tensor(list(r), dtype=torch.long)
                    mask[i, : len(r)] = 1
                logits = self.model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits
                out.extend(float(x) for x in logits[:, 0].float().cpu())
        return out

    def score(self, prompts: Sequence[Prompt], answers: Sequence[str]) -> list[Score]:
        _check_lengths(prompts, answers)
        rows = [self.ids(p, a) for p, a in zip(prompts, answers)]
        scores: list[Score | None] = [None] * len(rows)
        fit = []
        for i, r in enumerate(rows):
            if self.max_length and len(r) > self.max_length:
                scores[i] = Score(None, f"{len(r)} tokens: longer than the reward model's context "
                                        f"({self.max_length})")
            else:
                fit.append(i)
        for i, v in zip(fit, self.score_ids([rows[i] for i in fit])):
            scores[i] = Score(v) if math.isfinite(v) else Score(None, "the reward model gave a non-finite score")
        return [s for s in scores if s is not None]

    def close(self) -> None:
        self.model = None


# ----------------------------------------------------------------------------- LLM judges
class JudgeScorer(Scorer):
    """An LLM judge with a score rubric; the score is the mean of its aspects (all must be readable)."""

    kind = "judge"

    def __init__(self, judge: Any, *, spec: str = "") -> None:
        self.judge = judge
        self.spec = spec or f"judge:{judge.spec}"

    def info(self) -> dict[str, Any]:
        return {**super().info(), **self.judge.provenance()}

    def score(self, prompts: Sequence[Prompt], answers: Sequence[str]) -> list[Score]:
        _check_lengths(prompts, answers)
        results = self.judge.judge([{"instruction": _request_text(p), "answer": a} for p, a in zip(prompts, answers)])
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
        from alignkit.models.base import require

        self.model, self.rubric = model, rubric
        self.spec = spec or f"geval:{model.spec}"
        require(model, "full_vocab_logits", purpose="G-Eval scoring (it reads the judge's next-token probabilities)")
        digits = [model.encode(str(d)) for d in range(1, 6)]
        # a leading space or a BOS may come with encode(); the digit is the last token of each
        self.digit_ids = [d[-1] for d in digits]
        if len(set(self.digit_ids)) != 5:
            raise InputError(f"judge {model.spec!r}: the digits 1-5 are not five distinct tokens; G-Eval scoring "
                             "needs one token per score")

    def info(self) -> dict[str, Any]:
        return {**super().info(), "judge": self.model.spec, "rubric": self.rubric.id, "rubric_hash": self.rubric.hash}

    def score(self, prompts: Sequence[Prompt], answers: Sequence[str]) -> list[Score]:
        import torch

        _check_lengths(prompts, answers)
        convs = [self.rubric.messages(instruction=_request_text(p), answer=a) for p, a in zip(prompts, answers)]
        idx = torch.tensor(self.digit_ids, dtype=torch.long)

        def reduce(logprobs, targets):
            return [logprobs[0, idx].double().exp().tolist()]

        out = []
        # the continuation is one digit token: its position's distribution is the judge's first answer token
        for ts in self.model.score(convs, [[self.digit_ids[0]]] * len(convs), reduce=reduce):
            probs = ts.reduced[0]
            mass = float(sum(probs))
            detail = {"digit_probs": [round(p / mass, 4) if mass > 0 else 0.0 for p in probs], "mass": round(mass, 4)}
            if not (mass >= GEVAL_MIN_MASS):
                out.append(Score(None, f"the judge puts {mass:.1%} probability on a score digit (below "
                                       f"{GEVAL_MIN_MASS:.0%}): not a judgment", detail))
                continue
            out.append(Score(sum((i + 1) * p for i, p in enumerate(probs)) / mass, None, detail))
        return out

    def close(self) -> None:
        self.model.close()


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


def open_scorer(spec: str, loader: Callable[[str], Any] | None = None, *, cache: str | Path | None = None,
                batch_size: int = 8) -> Scorer:
    """The scorer a spec names. ``loader(spec)`` loads judge models (a :class:`ModelPool` shares them with the
    rest of the command); ``cache`` is a JSONL file that keeps judge answers across runs."""
    kind, rubric_name, target = parse_spec(spec)
    if kind == "reward":
        return RewardModelScorer.load(target, batch_size=batch_size)
    from alignkit.evaluation.judge import Judge, JudgeCache, load_rubric
    from alignkit.methods import MethodOptions, apply_method

    if loader is None:
        from alignkit.models.registry import ModelPool

        loader = ModelPool()
    model = apply_method(loader(target), MethodOptions(method="auto"))
    if kind == "judge":
        rubric = load_rubric(rubric_name or "multi-aspect")
        if rubric.kind != "score":
            raise InputError(f"scorer {spec!r}: rubric {rubric.id!r} is a {rubric.kind} rubric; a scorer needs a "
                             "score rubric")
        return JudgeScorer(Judge(model, rubric, cache=JudgeCache(cache), batch_size=batch_size), spec=spec)
    rubric = load_rubric(rubric_name or "overall")
    if rubric.kind != "score":
        raise InputError(f"scorer {spec!r}: rubric {rubric.id!r} is not a score rubric")
    return ExpectedScoreJudge(model, rubric, spec=spec)


def score_records(scorer: Scorer, items: Sequence[tuple[Prompt, str]]) -> list[Score]:
    """Score (prompt, answer) pairs; a batch the scorer cannot take at once is retried one by one, and an
    item that still fails becomes a missing score with the error (one bad item does not stop a run)."""
    from alignkit.errors import AlignkitError

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
