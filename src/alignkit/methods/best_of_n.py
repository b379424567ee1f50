"""Best-of-N: sample N answers from a model (under any method, any route), rate them with a scorer, return the
best. It is a model like every other, so generate, chat, eval and the server take it.

The N samples of a prompt are N rows of one batch, adjacent, so a backend with prefix reuse computes the shared
prompt once (the transformers backend keeps one copy of the common prefix's key/values for all rows). With a
seed, candidate ``j`` samples with ``seed + j`` (reproducible, and the candidates differ); greedy requests
(temperature 0) sample at the method's own ``sample_temperature`` -- N greedy answers would all be the same.

Every completion records all N candidates with their scores (``meta["best_of_n"]``) and a ``select`` stage in
``meta["route"]``; ``meta["usage"]`` counts the tokens of all N. A candidate the scorer cannot rate is never
chosen over one it can; if none can be rated the first usable candidate is returned and the record says so.
Streaming shows the chosen answer once it is chosen. Scoring (the shift analysis) sees the wrapped model's
distribution: best-of-N changes which sample is kept, not the model's next-token probabilities.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import replace
from typing import Any

from alignkit.errors import AlignkitError, InputError
from alignkit.methods.base import MethodModel, Prepared
from alignkit.methods.routes import inner_prompts, own_usage, total_usage, usage, user_text
from alignkit.models.base import configs_for
from alignkit.scoring import score_records
from alignkit.types import Completion, GenerationConfig, Prompt, StreamEvent

DEFAULT_SAMPLE_TEMPERATURE = 0.8


def candidate_configs(config: GenerationConfig, n: int, sample_temperature: float) -> list[GenerationConfig]:
    """The N sampling configs of one request: its own temperature (or ``sample_temperature`` if it asked for
    greedy decoding), seeds ``seed .. seed + n - 1`` when it has a seed."""
    temp = sample_temperature if config.greedy else config.temperature
    return [replace(config, temperature=temp, seed=None if config.seed is None else config.seed + j)
            for j in range(n)]


def sample(model: Any, prompts: Sequence[Prompt], configs: Sequence[GenerationConfig], n: int,
           sample_temperature: float = DEFAULT_SAMPLE_TEMPERATURE, **kwargs: Any) -> list[list[Completion]]:
    """N sampled completions per prompt, all in one call (the N rows of a prompt adjacent)."""
    rows: list[Prompt] = []
    row_cfgs: list[GenerationConfig] = []
    for p, c in zip(prompts, configs):
        rows += [p] * n
        row_cfgs += candidate_configs(c, n, sample_temperature)
    comps = model.generate(rows, row_cfgs, **kwargs) if rows else []
    return [comps[i * n : (i + 1) * n] for i in range(len(prompts))]


def usable(comp: Completion) -> bool:
    return bool(comp.text.strip())


class BestOfN(MethodModel):
    """The best of ``n`` samples of ``base`` by ``scorer``."""

    backend = "best-of-n"
    method = "best-of-n"

    def __init__(self, base: Any, scorer: Any, n: int, sample_temperature: float = DEFAULT_SAMPLE_TEMPERATURE) -> None:
        if not isinstance(n, int) or n < 1:
            raise InputError(f"--n must be a positive integer, got {n!r}")
        if not sample_temperature > 0:
            raise InputError(f"best-of-n: the sampling temperature must be > 0, got {sample_temperature!r}")
        super().__init__(base)
        self.scorer, self.n, self.sample_temperature = scorer, n, sample_temperature

    def prepare(self, prompt: Prompt, config: GenerationConfig) -> Prepared:
        return Prepared(prompt)

    def children(self) -> list[tuple[str, Any]]:
        return [("model", self.base), ("scorer", self.scorer)]

    # the wrapped model (a method) cleans its own answers; best-of-N only chooses among them
    def generate(self, prompts: Sequence[Prompt], config=None, **kwargs: Any) -> list[Completion]:
        out = dict(self._run(prompts, config, **kwargs))
        return [out[i] for i in range(len(prompts))]

    def _run(self, prompts: Sequence[Prompt], config=None, *, should_stop=None, admit=None, **kwargs: Any
             ) -> Iterator[tuple[int, Completion]]:
        """``(index, chosen completion)`` per prompt. The N rows of all prompts run in one stream of the wrapped
        model; a prompt ``should_stop`` answers True for (its client went away) is dropped, with no result.
        With ``admit`` (continuous batching) requests join as N rows each, and each is rated and answered as
        soon as its N candidates are in; otherwise all are rated together at the end."""
        n = self.n
        prompts = list(prompts)
        rows: list[Prompt] = []
        row_cfgs: list[GenerationConfig] = []

        def expand(ps: Sequence[Prompt], cs: Sequence[GenerationConfig]) -> list[tuple[Prompt, GenerationConfig]]:
            out = []
            for p, c in zip(ps, cs):
                out += [(p, rc) for rc in candidate_configs(c, n, self.sample_temperature)]
            return out

        for p, c in expand(prompts, configs_for(len(prompts), config)):
            rows.append(p)
            row_cfgs.append(c)
        if should_stop is not None:
            kwargs["should_stop"] = lambda r: should_stop(r // n)
        finals: list[Completion | None] = [None] * len(rows)
        if admit is not None:
            def admit_rows(running: int, room: int | None) -> list[tuple[Prompt, GenerationConfig]]:
                # the caller counts requests, the model rows
                joining = list(admit(-(-running // n), None if room is None else room // n))
                prompts.extend(p for p, _ in joining)
                more = expand([p for p, _ in joining], [c for _, c in joining])
                finals.extend([None] * len(more))
                return more

            kwargs["admit"] = admit_rows
        for ev in self.base.stream(rows, row_cfgs, **kwargs) if rows else ():
            if ev.completion is None:
                continue
            finals[ev.index] = ev.completion
            i = ev.index // n
            if admit is not None and all(finals[i * n + j] is not None for j in range(n)):
                group = finals[i * n : (i + 1) * n]
                scores = score_records(self.scorer, [(prompts[i], c.text) for c in group])  # type: ignore[union-attr]
                yield i, self._choose(prompts[i], group, scores)  # type: ignore[arg-type]
        if admit is not None:
            return
        done = [i for i in range(len(prompts)) if all(finals[i * self.n + j] is not None for j in range(self.n))]
        groups = {i: [finals[i * self.n + j] for j in range(self.n)] for i in done}
        items = [(prompts[i], c.text) for i in done for c in groups[i]]  # type: ignore[union-attr]
        flat = score_records(self.scorer, items)
        for k, i in enumerate(done):
            yield i, self._choose(prompts[i], groups[i], flat[k * self.n : (k + 1) * self.n])  # type: ignore[arg-type]

    def _choose(self, prompt: Prompt, group: list[Completion], scores: list[Any]) -> Completion:
        rated = [j for j, (c, s) in enumerate(zip(group, scores)) if usable(c) and s.value is not None]
        note = None
        if rated:
            best = max(rated, key=lambda j: (scores[j].value, -j))  # ties: the earliest sample
        else:
            best = next((j for j, c in enumerate(group) if usable(c)), 0)
            note = "no candidate could be rated: the first usable one was returned"
        candidates = [{"text": c.text, **s.to_dict(), "finish_reason": c.finish_reason,
                       "completion_tokens": c.completion_tokens} for c, s in zip(group, scores)]
        chosen = group[best]
        inner = list((chosen.meta or {}).get("route") or [])
        if not any(r["stage"] == "answer" for r in inner):
            inner.append({"stage": "answer", "model": self.base.spec, "method": getattr(self.base, "method", None),
                          "input": user_text(prompt), "output": chosen.text, "usage": own_usage(chosen)})
        # the tokens of all N candidates (each candidate's whole route, if it has one)
        all_usage = {k: sum(usage(c)[k] for c in group) for k in ("prompt_tokens", "completion_tokens")}
        others = {k: all_usage[k] - usage(chosen)[k] for k in all_usage}
        record = {"stage": "select", "method": "best-of-n", "model": self.scorer.spec, "n": self.n,
                  "chosen": best, "scores": [s["score"] for s in candidates], "usage": others}
        if note:
            record["fallback"] = note
        route = [*inner, record]
        info = {"n": self.n, "scorer": self.scorer.spec, "chosen": best, "candidates": candidates,
                "sample_temperature": self.sample_temperature}
        if note:
            info["note"] = note
        meta = {**(chosen.meta or {}), "best_of_n": info, "route": route, "usage": total_usage(route)}
        return replace(chosen, meta=meta)

    def stream(self, prompts: Sequence[Prompt], config=None, **kwargs: Any) -> Iterator[StreamEvent]:
        """The chosen answer of each prompt, in one piece once the N candidates are in and rated."""
        for i, comp in self._run(prompts, config, **kwargs):
            yield StreamEvent(i, comp.text, comp.finish_reason, comp)

    def render(self, prompt: Prompt) -> str:
        return self.base.render(prompt)

    def clean(self, text: str) -> str:
        return self.base.clean(text) if isinstance(self.base, MethodModel) else text

    def method_info(self) -> dict[str, Any]:
        return {"best_of_n": {"n": self.n, "scorer": self.scorer.info(), "sample_temperature": self.sample_temperature}}

    def info(self) -> dict[str, Any]:
        inner = self.base.info()
        return {**inner, "method": f"best-of-n({self.n}) > {inner.get('method', self.base.backend)}",
                **self.method_info()}

    def stage_prompts(self, prompt: Prompt, config: GenerationConfig) -> list[tuple[str, str]]:
        return inner_prompts(self.base, prompt, config)

    def close(self) -> None:
        self.base.close()
        self.scorer.close()


def build_node(options: Any, children: dict[str, Any], resources: Any, node: Any) -> BestOfN:
    """The ``best-of-n`` node: ``n`` samples of its model, rated by the scorer its options name (opened through
    the caller's resources)."""
    try:
        scorer = resources.scorer(options.scorer)
    except AlignkitError as e:
        raise type(e)(f"route stage 'best-of-n' (scorer {options.scorer}): {e}") from e
    return BestOfN(children["model"], scorer, options.n, options.sample_temperature)
