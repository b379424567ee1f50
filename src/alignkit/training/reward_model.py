"""Reward models as scorers: a sequence-classification model with one output (a Bradley-Terry score) rates each
(prompt, answer) -- a folder written by ``alignkit train reward`` (a LoRA adapter with its head, or full weights;
the layout it was trained on is read from its ``alignkit.json``), or any ``AutoModelForSequenceClassification``
reward model on the hub or on disk (prompted with its tokenizer's chat template, else as a text pair). Training
(:mod:`alignkit.training.reward`) and scoring lay answers out with the same :func:`reward_ids`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from alignkit.errors import InputError, ModelLoadError
from alignkit.scoring import Score, Scorer, check_lengths, messages_of
from alignkit.training import common
from alignkit.training.format import render_urial, urial_preamble
from alignkit.types import Prompt


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
        text = render_urial(msgs, urial_preamble(layout.template))[0].text
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
        return reward_ids(messages_of(prompt), answer, self.layout, self.tokenizer)

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
        check_lengths(prompts, answers)
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
