"""Reward-guided decoding (ARGS, Khanov et al., 2024): at every step the model's ``top_k`` next tokens are
re-scored by ``log p(token | prefix) + weight * r(prompt, prefix + token)`` with a scorer ``r`` (a reward model,
any scorer), and decoding picks from those scores -- greedily (ARGS-greedy) or, when the request samples, by
sampling over them at its temperature (ARGS-stochastic). The model's weights are never touched: the reward
steers the search, token by token.

The policy is any model that steps token by token (a base model under URIAL, a tuned sibling under its chat
template) or a logit mix of such models (proxy-tuning, DeRa: the reward re-scores the mixed distribution); it keeps its prompt, key/value cache and prefix reuse. The scorer reads text, so it need
not share the policy's tokenizer: each candidate is the decoded answer so far plus one token (an end-of-text
token: the answer so far, as it would end). **Cost**: ``top_k`` scorer calls per generated token on the whole
prompt and partial answer, without a cache -- with a reward model as large as the policy that is about ``top_k``
full forward passes per token against the policy's one incremental step, which is why ARGS is slow;
``bench/logit_arithmetic.py --part args`` measures it against best-of-N with as many candidates.

A candidate the scorer cannot rate gets the lowest reward of its row's rated candidates (never preferred for its
reward); when none of a row's candidates can be rated the step falls back to the model's own log-probabilities.
Scoring (the shift analysis) sees the policy's distribution: the reward changes which token is chosen.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import replace
from typing import Any

import torch

from alignkit.errors import AlignkitError, CapabilityError, InputError
from alignkit.methods.mix import LogitMix
from alignkit.models.base import configs_for
from alignkit.scoring import score_records
from alignkit.types import Prompt, StreamEvent


class _Prefixes:
    """A stepper without a model: it follows each running row's user prompt and chosen tokens."""

    room = None
    logits = torch.empty(0)

    def __init__(self, prompts: list[Prompt]) -> None:
        self.rows: list[tuple[Prompt, list[int]]] = [(p, []) for p in prompts]

    def step(self, tokens: list[int], keep: list[int]) -> None:
        self.rows = [(self.rows[j][0], self.rows[j][1] + [t]) for j, t in zip(keep, tokens)]

    def join(self, prompts: list[Prompt], *, extra: int) -> None:
        self.rows += [(p, []) for p in prompts]


class RewardGuided(LogitMix):
    """ARGS: the model's top-k next tokens re-scored by ``log p + weight * reward``."""

    backend = "args"
    method = "args"
    what = "reward-guided decoding"
    min_sides = 1
    trackers = 1
    scores_its_decoding = False

    def __init__(self, model: Any, scorer: Any, *, top_k: int = 10, weight: float = 1.0) -> None:
        if isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1:
            raise InputError(f"{self.what}: top_k must be a positive integer, got {top_k!r}")
        if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not math.isfinite(weight):
            raise InputError(f"{self.what}: weight must be a finite number, got {weight!r}")
        # over a logit mix (proxy-tuning, DeRa ...), its sides step here with its weights: the reward re-scores the
        # mixed distribution's top k
        self.policy = model
        mixed = isinstance(model, LogitMix) and not isinstance(model, RewardGuided)
        super().__init__(list(zip(model.roles, model.models, model.weights)) if mixed else [("model", model, 1.0)])
        self.spec = model.spec
        self.scorer, self.top_k, self.weight = scorer, top_k, float(weight)
        # the reward is read from decoded text; structured output would have to mask the re-scored candidates,
        # which this node does not do: it is refused rather than ignored
        self.capabilities = replace(self.capabilities, constraints=False)
        self._decode = self.inners[0].token_loop.decode
        self._eos = self.inners[0].token_loop.eos_ids

    def knobs(self) -> dict[str, float]:
        return {"weight": self.weight}

    def _set_knobs(self, knobs: dict[str, float]) -> None:
        self.weight = knobs["weight"]

    def children(self) -> list[tuple[str, Any]]:
        return [("model", self.policy), ("scorer", self.scorer)]

    def info(self) -> dict[str, Any]:
        return {**self.policy.info(), "method": "args",
                "args": {"top_k": self.top_k, "weight": self.weight, "scorer": self.scorer.info()}}

    def close(self) -> None:
        super().close()
        self.scorer.close()

    def stream(self, prompts: Sequence[Prompt], config=None, **kwargs: Any) -> Iterator[StreamEvent]:
        if any(c.constraint is not None for c in configs_for(len(prompts), config)):
            raise CapabilityError(f"{self.what} cannot enforce structured output (it would have to mask the "
                                  "re-scored candidates); use best-of-n or the model without a scorer")
        yield from super().stream(prompts, config, **kwargs)

    def _guided(self, prompts: list[Prompt]) -> tuple[Any, list[Any]]:
        rows = _Prefixes(prompts)

        def combine(ls: list[torch.Tensor]) -> torch.Tensor:
            logp = torch.log_softmax(self.combine(ls[: len(self.models)]).float(), dim=-1)
            k = min(self.top_k, logp.shape[-1])
            top_v, top_i = logp.topk(k, dim=-1)
            items: list[tuple[Prompt, str]] = []
            for (prompt, gen), cands in zip(rows.rows, top_i.tolist()):
                items += [(prompt, self._decode(gen if t in self._eos else gen + [t])) for t in cands]
            try:
                scores = [s.value for s in score_records(self.scorer, items)]
            except AlignkitError as e:
                raise type(e)(f"{self.what}: the scorer {self.scorer.spec} failed: {e}") from e
            out = torch.full_like(logp, float("-inf"))
            for r in range(logp.shape[0]):
                got = scores[r * k : (r + 1) * k]
                rated = [v for v in got if v is not None]
                if rated:
                    low = min(rated)
                    reward = torch.tensor([low if v is None else v for v in got], dtype=logp.dtype)
                    out[r, top_i[r]] = top_v[r] + self.weight * reward
                else:
                    out[r, top_i[r]] = top_v[r]
            return out

        return combine, [rows]


def build_node(options: Any, children: dict[str, Any], resources: Any, node: Any) -> RewardGuided:
    """The ``args`` node: its model's top-k tokens re-scored by the scorer its options name."""
    try:
        scorer = resources.scorer(options.scorer)
    except AlignkitError as e:
        raise type(e)(f"route stage 'args' (scorer {options.scorer}): {e}") from e
    return RewardGuided(children["model"], scorer, top_k=options.top_k, weight=options.weight)
