"""Chunk-level weak-to-strong search (Zhou et al., 2024): a (large) model writes its answer a chunk at a time, and a
small tuned/untuned pair chooses which chunks to keep. Each round every kept partial answer (a *beam*) gets
``candidates`` sampled continuations of at most ``chunk`` tokens from the model; every candidate is valued by how
much more the small tuned model likes the whole answer so far than its untuned self,

    value(answer) = log p_tuned(answer | prompt) - log p_untuned(answer | prompt),

and the ``beams`` best candidates (finished answers stay in the pool) go on. The search ends when the best beams
have all finished (an end-of-text token or a stop string) or the token budget is spent, and returns the finished
answer of highest value (or, out of budget, the partial one).

The model steps token by token from token ids (a local model under any method: its prompt is prepared once, each
beam continues from exactly its own tokens, the shared prompt prefix reused); the pair reads text, each through its
own method (typically the tuned model under its chat template, the untuned one raw, as proxy-tuning prompts them), so
it need not share the model's tokenizer. **Cost**: per ``chunk`` tokens of answer, ``beams x candidates`` sampled
chunks from the model and as many scoring passes of each small model over the whole answer so far (no cache):
about ``beams x candidates`` times the model's generated tokens, plus the pair's passes. Greedy requests sample the
candidates at ``sample_temperature`` (greedy candidates would all be the same). Scoring (the shift analysis) sees
the model's own distribution: the search chooses among its samples.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from typing import Any

from alignkit.errors import AlignkitError, InputError
from alignkit.methods.base import MethodModel, Prepared, prepared_for_backend
from alignkit.methods.mix import stepping_backend
from alignkit.models.base import configs_for, find_stop, run_stream_to_completions
from alignkit.types import Completion, GenerationConfig, Prompt, StreamEvent


@dataclass(eq=False)
class _Beam:
    ids: list[int]
    text: str = ""
    value: float = 0.0
    ended: bool = False  # an end-of-text token or a stop string
    done: bool = False  # ended, or out of budget
    stop: str | None = None


class ChunkSearch(MethodModel):
    """The model's answer built chunk by chunk, each round's chunks chosen by a small pair's log-probability ratio."""

    backend = "chunk-search"
    method = "chunk-search"
    what = "chunk-level search"

    def __init__(self, model: Any, tuned: Any, untuned: Any, *, chunk: int = 5, beams: int = 2, candidates: int = 3,
                 sample_temperature: float = 0.7) -> None:
        for name, v in (("chunk", chunk), ("beams", beams), ("candidates", candidates)):
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise InputError(f"{self.what}: {name} must be a positive integer, got {v!r}")
        if not (isinstance(sample_temperature, (int, float)) and math.isfinite(sample_temperature)
                and sample_temperature > 0):
            raise InputError(f"{self.what}: the sampling temperature must be > 0, got {sample_temperature!r}")
        super().__init__(model)
        self.inner = stepping_backend(model, "model", self.what)
        for role, m in (("tuned", tuned), ("untuned", untuned)):
            if not hasattr(m, "score"):
                raise InputError(f"{self.what}: the {role} model {m.spec!r} cannot score text")
        self.tuned, self.untuned = tuned, untuned
        self.chunk, self.beams, self.candidates = chunk, beams, candidates
        self.sample_temperature = float(sample_temperature)
        self.capabilities = replace(model.capabilities, continuous_batching=False, constraints=False, stepping=False)

    def prepare(self, prompt: Prompt, config: GenerationConfig) -> Prepared:
        return Prepared(prompt)

    def children(self) -> list[tuple[str, Any]]:
        return [("model", self.base), ("tuned", self.tuned), ("untuned", self.untuned)]

    def method_info(self) -> dict[str, Any]:
        return {"chunk_search": {"chunk": self.chunk, "beams": self.beams, "candidates": self.candidates,
                                 "sample_temperature": self.sample_temperature, "tuned": self.tuned.info(),
                                 "untuned": self.untuned.info()}}

    def info(self) -> dict[str, Any]:
        inner = self.base.info()
        return {**inner, "method": f"chunk-search > {inner.get('method', self.base.backend)}", **self.method_info()}

    def clean(self, text: str) -> str:
        return self.base.clean(text) if isinstance(self.base, MethodModel) else text

    def close(self) -> None:
        for m in (self.base, self.tuned, self.untuned):
            m.close()

    # ------------------------------------------------------------------ the search
    def _sample(self, rows: list[tuple[list[int], GenerationConfig]]) -> list[Completion]:
        """One chunk for each row (prompt ids + a beam's ids), in steppers as wide as the model allows."""
        loop, width = self.inner.token_loop, self.inner.max_stepper_rows or len(rows)
        out: list[Completion] = []
        with self.inner.exclusive():
            for start in range(0, len(rows), width):
                part = rows[start : start + width]
                stepper = self.inner.stepper([ids for ids, _ in part], extra=max(c.max_new_tokens for _, c in part))
                try:
                    events = loop.loop(loop.new_rows([ids for ids, _ in part], [c for _, c in part]), [stepper],
                                       lambda ls: ls[0])
                    out += run_stream_to_completions(events, len(part))
                finally:
                    close = getattr(stepper, "close", None)
                    if close is not None:
                        close()
        return out

    def _values(self, prompts: list[Prompt], texts: list[str]) -> list[float]:
        """log p_tuned(text | prompt) - log p_untuned(text | prompt) for each pair (0 for an empty text)."""
        idx = [i for i, t in enumerate(texts) if t]
        out = [0.0] * len(texts)
        if not idx:
            return out
        try:
            hi = self.tuned.score([prompts[i] for i in idx], [texts[i] for i in idx])
            lo = self.untuned.score([prompts[i] for i in idx], [texts[i] for i in idx])
        except AlignkitError as e:
            raise type(e)(f"{self.what}: scoring the candidates with the small pair failed: {e}") from e
        for i, a, b in zip(idx, hi, lo):
            out[i] = float(sum(a.logprobs)) - float(sum(b.logprobs))
        return out

    def _search(self, prompts: Sequence[Prompt], configs: Sequence[GenerationConfig], should_stop=None
                ) -> Iterator[tuple[int, Completion]]:
        loop = self.inner.token_loop
        prompt_ids, stops = [], []
        for p, c in zip(prompts, configs):
            backend, shown, extra_stops, _ = prepared_for_backend(self.base, p, c)
            prompt_ids.append(backend.encode_prompt(shown))
            stops.append(tuple(dict.fromkeys(c.stop + extra_stops)))
        loop.check_fits(prompt_ids)
        pools: dict[int, list[_Beam]] = {i: [_Beam([])] for i in range(len(prompts))}
        stats = {i: {"rounds": 0, "generated_tokens": 0, "scored_candidates": 0} for i in pools}
        live = set(pools)
        rnd = 0
        while live:
            if should_stop is not None:
                for i in [i for i in live if should_stop(i)]:
                    live.discard(i)
            rows: list[tuple[list[int], GenerationConfig]] = []
            owners: list[tuple[int, _Beam]] = []
            for i in sorted(live):
                cfg = configs[i]
                temp = self.sample_temperature if cfg.greedy else cfg.temperature
                for j, beam in enumerate(x for x in pools[i] if not x.done):
                    room = cfg.max_new_tokens - len(beam.ids)
                    if self.inner.context_length:
                        room = min(room, self.inner.context_length - len(prompt_ids[i]) - len(beam.ids))
                    for k in range(self.candidates):
                        seed = None if cfg.seed is None else cfg.seed + (rnd * self.beams + j) * self.candidates + k
                        rows.append((prompt_ids[i] + beam.ids, replace(
                            cfg, max_new_tokens=max(1, min(self.chunk, room)), temperature=temp, seed=seed, stop=(),
                            constraint=None)))
                        owners.append((i, beam))
            comps = self._sample(rows) if rows else []
            grown: dict[int, list[_Beam]] = {i: [b for b in pools[i] if b.done] for i in live}
            fresh: list[tuple[int, _Beam]] = []
            seen: set[tuple[int, tuple[int, ...]]] = set()
            for (i, beam), comp in zip(owners, comps):
                stats[i]["generated_tokens"] += len(comp.token_ids or ())
                ids = beam.ids + list(comp.token_ids or ())
                if (i, tuple(ids)) in seen:  # the same continuation sampled twice: one candidate
                    continue
                seen.add((i, tuple(ids)))
                eos = bool(comp.token_ids) and comp.token_ids[-1] in loop.eos_ids
                text = loop.decode(ids[:-1] if eos else ids)
                hit = find_stop(text, stops[i])
                ended = eos or hit is not None
                new = _Beam(ids, text[: hit[0]] if hit else text, ended=ended, stop=hit[1] if hit else None,
                            done=ended or len(ids) >= configs[i].max_new_tokens)
                grown[i].append(new)
                fresh.append((i, new))
            values = self._values([prompts[i] for i, _ in fresh], [b.text for _, b in fresh])
            for (i, b), v in zip(fresh, values):
                b.value = v
                stats[i]["scored_candidates"] += 1
            rnd += 1
            for i in list(live):
                stats[i]["rounds"] = rnd
                pools[i] = sorted(grown[i], key=lambda b: -b.value)[: self.beams]
                if all(b.done for b in pools[i]):
                    live.discard(i)
                    yield i, self._answer(pools[i], configs[i], stats[i], len(prompt_ids[i]))
        # prompts whose client went away get no answer

    def _answer(self, pool: list[_Beam], cfg: GenerationConfig, stats: dict[str, int], prompt_tokens: int
                ) -> Completion:
        ended = [b for b in pool if b.ended]
        best = max(ended or pool, key=lambda b: b.value)
        info = {"chunk": self.chunk, "beams": self.beams, "candidates": self.candidates, "value": round(best.value, 6),
                "values": [round(b.value, 6) for b in pool], **stats}
        return Completion(text=self.clean(best.text), finish_reason="stop" if best.ended else "length",
                          prompt_tokens=prompt_tokens, completion_tokens=len(best.ids), token_ids=tuple(best.ids),
                          stop=best.stop, meta={"chunk_search": info})

    def generate(self, prompts: Sequence[Prompt], config=None, **kwargs: Any) -> list[Completion]:
        out = dict(self._search(list(prompts), configs_for(len(prompts), config)))
        return [out[i] for i in range(len(prompts))]

    def stream(self, prompts: Sequence[Prompt], config=None, *, should_stop=None, **kwargs: Any
               ) -> Iterator[StreamEvent]:
        """Each answer in one piece, once its search has ended."""
        for i, comp in self._search(list(prompts), configs_for(len(prompts), config), should_stop):
            yield StreamEvent(i, comp.text, comp.finish_reason, comp)


def build_node(options: Any, children: dict[str, Any], resources: Any, node: Any) -> ChunkSearch:
    """The ``chunk-search`` node: its model's chunks chosen by the tuned/untuned pair's log-probability ratio."""
    return ChunkSearch(children["model"], children["tuned"], children["untuned"], chunk=options.chunk,
                       beams=options.beams, candidates=options.candidates,
                       sample_temperature=options.sample_temperature)
