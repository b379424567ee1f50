"""The token-shift runner: the base model over an aligned model's answers.

Exact mode (both models give full-vocabulary log-probabilities): one teacher-forced pass per model per
batch of answers; the two models' chunks of positions are zipped and reduced to per-position metrics at
once, so memory holds one chunk of ``[positions, vocabulary]`` per model, whatever the number of answers.
Approximate mode (an API model): top-k log-probabilities from both, clearly labelled.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from alignkit.analysis.layers import FIRST, choose_positions, lens_values, parse_layers, top_tokens
from alignkit.analysis.metrics import CATEGORIES, approx_position, exact_reduce, exact_rows
from alignkit.errors import CapabilityError, InputError
from alignkit.methods.templates import load_template
from alignkit.methods.urial import render_conversation
from alignkit.models.base import lockstep
from alignkit.types import Message

log = logging.getLogger("alignkit")

CONTEXTS = ("plain", "raw", "urial")


@dataclass(frozen=True)
class ShiftOptions:
    context: str = field(default="plain", metadata={
        "help": "what the base model sees before each answer: plain (a query/answer wrapper), raw (the instruction "
                "alone) or urial (the in-context alignment preamble and examples)", "choices": list(CONTEXTS)})
    top_k: int = field(default=5, metadata={"min": 0, "help": "top-k tokens of each model kept per position"})
    mode: str = field(default="auto", metadata={
        "help": "exact (full vocabulary), approx (top-k log-probabilities, for API models) or auto",
        "choices": ["auto", "exact", "approx"]})
    batch_size: int = field(default=4, metadata={"min": 1, "help": "answers per teacher-forced pass"})
    released_kl_k: int = field(default=0, metadata={"min": 0, "help":
        "also report kl_released: KL(base || aligned) the way the Re-Align authors' released code computes it "
        "(each model's top-k renormalised, summed over the tokens both top-k lists share; they keep k = 30, read "
        "up to 50) -- comparable with their figures, unlike the full-vocabulary KLs; exact mode; 0 = off"})
    layers: str = field(default="", metadata={
        "help": "also read the layers (the logit lens of both models, and the difference of their residual streams "
                "read through the head) at every shifted and marginal position, the first positions and an equal "
                "seeded sample of unshifted ones: all, every:N (every N-th layer and the last; every:4 is a good "
                "start), or a list such as 6,12,18; transformers backend, exact mode; empty = off"})
    layers_seed: int = field(default=0, metadata={"min": 0, "help": "seed of --layers' control sample of unshifted "
                                                                    "positions"})


def base_prompt(context: str, instruction: str, template: Any = None) -> str:
    """The text the base model sees before the answer."""
    if context == "raw":  # exactly what a model under --method none sees
        return instruction
    if context == "plain":
        return f"# Query:\n{instruction.strip()}\n\n# Answer:\n"
    if context == "urial":
        t = template or load_template()
        return render_conversation(t.preamble, t.examples, [Message("user", instruction)], t.min_fence)[0]
    raise InputError(f"unknown base context {context!r}; choose one of {', '.join(CONTEXTS)}")


@dataclass
class Item:
    id: str
    instruction: str
    answer: str
    extra: dict[str, Any] = field(default_factory=dict)
    answer_ids: list[int] | None = None
    """The aligned model's own tokens for the answer, when it generated it (else the text is tokenised)."""
    base_prompt: Any = None
    """What the base model sees before the answer, when it is given rather than made from the base context (the
    server's comparison page: a reference route that takes text reads the conversation as text)."""


def answer_ids(model: Any, completion: Any) -> list[int] | None:
    """The generated token ids that spell the completion's clean text (dropping a stop string's or the
    end-of-answer tokens after it), or None if no prefix of them does."""
    ids = list(completion.token_ids)
    target = completion.text.strip()
    decode = getattr(model, "tokenizer", None)
    if not ids or decode is None:
        return None
    for n in range(len(ids), 0, -1):
        if model.tokenizer.decode(ids[:n], skip_special_tokens=True).strip() == target:
            return ids[:n]
        if len(ids) - n > 16:  # the clean text is never far from the end of what was generated
            break
    return None


class ShiftAnalyzer:
    """Compares ``aligned``'s answers against ``base`` position by position."""

    def __init__(self, base: Any, aligned: Any, *, label: str, options: ShiftOptions = ShiftOptions(),
                 template: Any = None) -> None:
        self.base, self.aligned, self.label, self.options = base, aligned, label, options
        self.template = template
        if options.top_k < 1:
            raise InputError("--top-k must be at least 1")
        self.mode = self._mode()
        if options.released_kl_k and self.mode != "exact":
            raise CapabilityError("--released-kl-k needs exact mode (each model's own top-k of the full vocabulary); "
                                  "API models give approximate mode")
        self.layers: tuple[int, ...] = ()
        if options.layers:
            self.layers = self._layers(options.layers)
        if self.mode == "exact":
            fb, fa = base.vocab_fingerprint(), aligned.vocab_fingerprint()
            if fb != fa:
                raise InputError(
                    f"the base model {base.spec!r} and the aligned model {aligned.spec!r} have different tokenizers "
                    f"(vocabulary {fb} vs {fa}); the analysis compares the two distributions token by token, so "
                    "both must share one vocabulary (e.g. a base model and its own tuned or in-context-aligned version)"
                )

    def _layers(self, spec: str) -> tuple[int, ...]:
        if self.mode != "exact":
            raise CapabilityError("--layers needs exact mode (both models local, full vocabulary)")
        for m in (self.base, self.aligned):
            if not m.capabilities.layer_lens:
                raise CapabilityError(f"--layers reads a model's residual stream, which {m.spec!r} (backend "
                                      f"{m.backend!r}) does not give: load it on the transformers backend (hf:...)")
        nb, na = self.base.num_layers, self.aligned.num_layers
        if nb != na:
            raise InputError(f"--layers compares the two models layer by layer, but the base has {nb} layers and "
                             f"the aligned model {na}")
        return tuple(parse_layers(spec, nb))

    def _mode(self) -> str:
        def full(m: Any) -> bool:
            return bool(m.capabilities.full_vocab_logits) and hasattr(m, "iter_logprobs")

        want = self.options.mode
        if want in ("exact", "auto") and full(self.base) and full(self.aligned):
            return "exact"
        if want == "exact":
            raise CapabilityError("exact mode needs full-vocabulary log-probabilities from both models; use "
                                  "local models, or --mode approx for API models")
        k = max(3, self.options.top_k)
        for m in (self.base, self.aligned):
            if m.capabilities.topk_logprobs < k:
                raise CapabilityError(f"approximate mode needs top-{k} log-probabilities; {m.spec!r} offers "
                                      f"{m.capabilities.topk_logprobs}")
        return "approx"

    def provenance(self) -> dict[str, Any]:
        prov = {"mode": self.mode, "base_context": self.options.context, "top_k": self.options.top_k,
                "released_kl_k": self.options.released_kl_k,
                **({"layers": list(self.layers), "layers_seed": self.options.layers_seed} if self.layers else {}),
                "base": self.base.info(), "aligned": self.aligned.info()}
        tree = getattr(self.aligned, "tree", None)
        if tree is not None:  # the aligned route as it ran
            prov["aligned_tree"] = tree.to_dict()
        return prov

    # ------------------------------------------------------------------ running
    @functools.cached_property
    def token_text(self) -> Any:
        """The base's ``token_text``, each token decoded once per analysis (a position shows ~11: its own and both
        top-k lists); exact mode only (an API model has no token ids)."""
        return functools.lru_cache(maxsize=None)(self.base.token_text)

    def analyse(self, items: Sequence[Item]) -> Iterator[dict[str, Any]]:
        """One record per item, in order."""
        bs = self.options.batch_size
        for start in range(0, len(items), bs):
            batch = list(items[start : start + bs])
            if self.mode == "exact":
                yield from self._exact(batch)
            else:
                yield from self._approx(batch)

    def _record(self, item: Item, positions: list[dict[str, Any]], truncated: bool) -> dict[str, Any]:
        n = len(positions)
        summary = {c: (sum(p["category"] == c for p in positions) / n if n else 0.0) for c in CATEGORIES}
        summary["mean_kl"] = sum(p["kl"] for p in positions) / n if n else 0.0
        return {
            "id": item.id, "aligned": self.label, **{k: v for k, v in item.extra.items() if k not in ("positions",)},
            "instruction": item.instruction, "answer": item.answer, "mode": self.mode,
            "base_context": self.options.context, "truncated": truncated, "empty": n == 0,
            "summary": summary, "positions": positions,
        }

    def _fit(self, item: Item, ids: list[int], prompt_tokens: int) -> tuple[list[int], bool]:
        limits = [m.context_length for m in (self.base, self.aligned) if m.context_length]
        if not limits:
            return ids, False
        room = min(limits) - prompt_tokens - 1
        if len(ids) <= room:
            return ids, False
        log.warning("answer %r has %d tokens; only %d fit the context after the prompt: truncated",
                    item.id, len(ids), max(room, 0))
        return ids[: max(room, 0)], True

    def _base_prompts(self, batch: list[Item]) -> list[Any]:
        return [it.base_prompt if it.base_prompt is not None else
                base_prompt(self.options.context, it.instruction, self.template) for it in batch]

    def _exact(self, batch: list[Item]) -> Iterator[dict[str, Any]]:
        bprompts = self._base_prompts(batch)
        aprompts = [it.instruction for it in batch]
        answers, truncated = [], []
        for it, bp, ap in zip(batch, bprompts, aprompts):
            longest = max(self.base.count_tokens(bp), self.aligned.count_tokens(self.aligned.render(ap)))
            ids, cut = self._fit(it, it.answer_ids if it.answer_ids is not None else self.base.encode(it.answer),
                                 longest)
            answers.append(ids)
            truncated.append(cut)
        positions: list[list[dict[str, Any]]] = [[] for _ in batch]
        records: list[dict[str, Any]] = []
        pairs = lockstep(self.base.iter_logprobs(bprompts, answers, batch_size=len(batch)),
                         self.aligned.iter_logprobs(aprompts, answers, batch_size=len(batch)))

        def settle(done: Any, reduced: Any) -> Iterator[dict[str, Any]]:
            if reduced is not None:
                positions[done.index].extend(exact_rows(reduced, self.token_text, done.start))
            if done.last:
                i = done.index
                if not answers[i]:
                    log.warning("answer %r is empty: nothing to analyse", batch[i].id)
                record = self._record(batch[i], positions[i], truncated[i])
                positions[i] = []
                if not self.layers:
                    yield record
                records.append(record)

        # one chunk behind: a chunk's reductions are queued before the previous chunk is read back into rows, so
        # on a GPU the device works on the next chunk while Python builds the records of the last
        behind: tuple[Any, Any] | None = None
        for cb, ca in pairs:
            reduced = exact_reduce(ca.logprobs, cb.logprobs, cb.targets, top_k=self.options.top_k,
                                   released_k=self.options.released_kl_k) if len(cb.targets) else None
            if behind is not None:
                yield from settle(*behind)
            behind = (cb, reduced)
        if behind is not None:
            yield from settle(*behind)
        if self.layers:  # a second pass of both models, reading the chosen positions layer by layer
            self._read_layers(records, bprompts, aprompts, answers)
            yield from records

    def _read_layers(self, records: list[dict[str, Any]], bprompts: list[str], aprompts: list[str],
                     answers: list[list[int]]) -> None:
        chosen = [choose_positions(r["positions"], str(r["id"]), self.options.layers_seed) for r in records]
        diff: list[dict[str, dict[str, Any]]] = [{"first": {}, "shifted": {}} for _ in records]
        pairs = lockstep(self.base.iter_lens(bprompts, answers, chosen, layers=self.layers, batch_size=len(records)),
                         self.aligned.iter_lens(aprompts, answers, chosen, layers=self.layers,
                                                batch_size=len(records)))
        for lb, la in pairs:
            r = records[lb.index]
            for t, values in zip(lb.positions, lens_values(la.logprobs, lb.logprobs, lb.targets, self.layers)):
                r["positions"][t]["lens"] = values
            delta = la.hidden - lb.hidden  # [n, L, d]: aligned minus base residual stream, same position and layer
            for j, t in enumerate(lb.positions):
                groups = (["first"] if t < FIRST else []) + (
                    ["shifted"] if r["positions"][t]["category"] == "shifted" else [])
                for g in groups:
                    acc = diff[lb.index][g]
                    acc["n"] = acc.get("n", 0) + 1
                    acc["sum"] = delta[j] if "sum" not in acc else acc["sum"] + delta[j]
        for r, acc in zip(records, diff):  # the activation-difference lens of this answer, per layer
            r["difference_lens"] = {
                g: {str(layer): top_tokens(self.base.read_out(a["sum"][k:k + 1] / a["n"], layer)[0],
                                           self.token_text)
                    for k, layer in enumerate(self.layers)}
                for g, a in acc.items() if a.get("n")}

    def _approx(self, batch: list[Item]) -> Iterator[dict[str, Any]]:
        k = max(3, self.options.top_k)
        bprompts = self._base_prompts(batch)
        sb = self.base.score(bprompts, [it.answer for it in batch], top_k=k)
        sa = self.aligned.score([it.instruction for it in batch], [it.answer for it in batch], top_k=k)
        for it, b, a in zip(batch, sb, sa):
            if list(a.tokens) != list(b.tokens):
                raise InputError(
                    f"answer {it.id!r} is split into different tokens by the two models ({len(a.tokens)} vs "
                    f"{len(b.tokens)}): they do not share a tokenizer, and the analysis is per token")
            pos = [approx_position(t, tok, a.logprobs[t], b.logprobs[t], a.top_logprobs[t], b.top_logprobs[t])
                   for t, tok in enumerate(b.tokens)]
            if not pos:
                log.warning("answer %r is empty: nothing to analyse", it.id)
            yield self._record(it, pos, False)
