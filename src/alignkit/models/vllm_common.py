"""What the two engines of the ``vllm`` backend share (:mod:`alignkit.models.vllm`, the offline one, and
:mod:`alignkit.models.vllm_async`, the async one): the tokenizer side, vLLM's sampling parameters for a
:class:`~alignkit.types.GenerationConfig` (structured output included), top-k scores from prompt log-probabilities,
and the LoRA rank an engine is built for. Nothing here imports vLLM until it is called."""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from typing import Any

from alignkit.errors import CapabilityError, ContextLengthError, InputError
from alignkit.models import tool_formats
from alignkit.models.base import Capabilities, PositionReducer, TokenMemo
from alignkit.models.registry import lora_rank
from alignkit.types import GenerationConfig, Prompt, TokenScores

#: vLLM's guided decoding as alignkit's own token loop does it: llguidance, JSON without free whitespace (the
#: engine-wide setting; vLLM reads no per-request one)
GUIDED = {"backend": "guidance", "disable_any_whitespace": True}


class VLLMTokens:
    """What both vLLM engines share: the tokenizer side (chat rendering, token ids) and the context length."""

    spec: str
    tokenizer: Any
    capabilities: Capabilities
    max_logprobs: int
    _context: int
    _memo: TokenMemo  # the prompts' token ids, by text (set by the engine's __init__)

    @property
    def context_length(self) -> int | None:
        return self._context

    def render(self, prompt: Prompt) -> str:
        if isinstance(prompt, str):
            return prompt
        if not self.capabilities.chat_template:
            raise CapabilityError(f"model {self.spec!r} has no chat template, so it cannot take a list of messages; "
                                  "give it raw text, or align it in context (--method urial)")
        msgs, tools, prefill = tool_formats.render_messages(prompt)
        return self.tokenizer.apply_chat_template(msgs, tools=tools, tokenize=False, add_generation_prompt=True) \
            + prefill

    def encode_prompt(self, prompt: Prompt) -> list[int]:
        text, raw = self.render(prompt), isinstance(prompt, str)
        return self._memo.get(text, raw, lambda: self.tokenizer(text, add_special_tokens=raw).input_ids)

    def encode(self, text: str) -> list[int]:
        return list(self.tokenizer(text, add_special_tokens=False).input_ids)

    def count_tokens(self, prompt: Prompt) -> int:
        return len(self.encode_prompt(prompt))

    def token_text(self, token_id: int) -> str:
        return self.tokenizer.decode([token_id])

    def encode_all(self, prompts: Sequence[Prompt], first: int = 0) -> list[list[int]]:
        """Every prompt's token ids, each checked against the context before any is sent (numbered from
        ``first`` in the error)."""
        ids = [self.encode_prompt(p) for p in prompts]
        for i, row in enumerate(ids):
            if len(row) >= self._context:
                raise ContextLengthError(f"prompt {first + i} has {len(row)} tokens; the model's context holds "
                                         f"{self._context}")
        return ids

    def score_rows(self, prompts: Sequence[Prompt], continuations: Sequence[str | Sequence[int]], *, top_k: int,
                   reduce: PositionReducer | None) -> tuple[list[list[int]], list[tuple[int, list[int]]]]:
        """The token rows to score (prompt + continuation) and where each continuation starts."""
        if reduce is not None:
            raise CapabilityError(f"model {self.spec!r} (vllm) returns top-k log-probabilities only, not full "
                                  "distributions; use the hf or llamacpp backend for exact scoring")
        if top_k > self.max_logprobs:
            raise CapabilityError(f"asked for top-{top_k} log-probabilities; this vLLM engine allows at most "
                                  f"{self.max_logprobs} (raise it with --max-logprobs)")
        if len(prompts) != len(continuations):
            raise ValueError(f"got {len(prompts)} prompts but {len(continuations)} continuations")
        rows, spans = [], []
        for p, c in zip(prompts, continuations):
            pids = self.encode_prompt(p)
            cont = self.encode(c) if isinstance(c, str) else [int(t) for t in c]
            rows.append(pids + cont)
            spans.append((len(pids), cont))
        return rows, spans


def engine_kwargs(source: str, *, max_logprobs: int, enforce_eager: bool, dtype: str, tensor_parallel_size: int,
                  max_model_len: int | None, max_lora_rank: int) -> dict[str, Any]:
    """vLLM's engine arguments both engines share: prefix caching on, the top-k cap, guided decoding as
    :data:`GUIDED`, LoRA support up to ``max_lora_rank`` (0: none)."""
    kwargs: dict[str, Any] = dict(model=source, enable_prefix_caching=True, max_logprobs=max_logprobs,
                                  enforce_eager=enforce_eager, dtype=dtype, tensor_parallel_size=tensor_parallel_size,
                                  structured_outputs_config=GUIDED)
    if max_model_len:
        kwargs["max_model_len"] = max_model_len
    if max_lora_rank:
        kwargs.update(enable_lora=True, max_lora_rank=max_lora_rank, max_loras=4)
    return kwargs


def sampling_params(cfg: GenerationConfig, **extra: Any) -> Any:
    """vLLM's sampling parameters for one request; a constraint becomes guided decoding on llguidance's grammar
    of it (the one alignkit's own token loop enforces)."""
    from vllm import SamplingParams

    if cfg.constraint is not None:
        extra["structured_outputs"] = structured_outputs(cfg.constraint)
    return SamplingParams(
        max_tokens=cfg.max_new_tokens, temperature=0.0 if cfg.greedy else cfg.temperature,
        top_p=cfg.top_p, top_k=cfg.top_k if cfg.top_k > 0 else -1, repetition_penalty=cfg.repetition_penalty,
        seed=cfg.seed, stop=list(cfg.stop) or None, **extra)


def structured_outputs(constraint: Any) -> Any:
    """vLLM's guided decoding for a constraint, on its llguidance backend: the grammar alignkit's own token loop
    builds (JSON without free whitespace -- the engine's :data:`GUIDED` setting --, choices as an alternation of
    literals). Checked here first, so vLLM never
    sees a constraint that would fail inside its engine."""
    from vllm.sampling_params import StructuredOutputsParams

    constraint.grammar()  # an invalid schema, regex or grammar is an InputError now
    kind, spec = constraint.kind, constraint.spec
    if kind == "json_schema":
        return StructuredOutputsParams(json=json.loads(spec))
    if kind == "json_object":
        return StructuredOutputsParams(json_object=True)
    if kind == "regex":
        return StructuredOutputsParams(regex=spec)
    if kind == "choice":
        return StructuredOutputsParams(regex="|".join(re.escape(o) for o in json.loads(spec)))
    return StructuredOutputsParams(grammar=spec)


def scores_from(model: VLLMTokens, spans: Sequence[tuple[int, list[int]]], outs: Sequence[Any],
                top_k: int) -> list[TokenScores]:
    """:class:`TokenScores` from vLLM's prompt log-probabilities of the scored rows."""
    result = []
    for (start, cont), out in zip(spans, outs):
        plp = out.prompt_logprobs or []
        lps, tops = [], []
        for j, tok in enumerate(cont):
            pos = plp[start + j] or {}
            entry = pos.get(tok)
            lps.append(float(entry.logprob) if entry is not None else float("-inf"))
            if top_k:
                best = sorted(((lp.rank or 0, t, lp) for t, lp in pos.items()), key=lambda x: x[0])
                tops.append(tuple((model.token_text(t), float(lp.logprob)) for r, t, lp in best
                                  if r and r <= top_k))
        result.append(TokenScores(token_ids=tuple(cont), tokens=tuple(model.token_text(t) for t in cont),
                                  logprobs=tuple(lps), top_logprobs=tuple(tops) if top_k else None))
    return result


_LORA_RANKS = (8, 16, 32, 64, 128, 256, 320, 512)  # the ranks vLLM's LoRA kernels are built for


def lora_capacity(adapter: str | None, max_lora_rank: int) -> int:
    """vLLM's ``max_lora_rank`` for an engine that runs ``adapter`` and adapters up to ``max_lora_rank``
    (0: no LoRA), rounded up to a rank vLLM supports."""
    need = max(lora_rank(adapter) if adapter else 0, max_lora_rank)
    if not need:
        return 0
    fit = [r for r in _LORA_RANKS if r >= need]
    if not fit:
        raise InputError(f"a LoRA rank of {need} is more than vLLM supports ({_LORA_RANKS[-1]})")
    return fit[0]
