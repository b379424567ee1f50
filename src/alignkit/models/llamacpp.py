"""The ``llamacpp`` backend: GGUF models through llama-cpp-python, several times faster than transformers
on a CPU.

* **Generation** runs alignkit's own token loop (:class:`~alignkit.models.hf_decode.TokenLoop`: the same
  sampling, answer-only repetition penalty, stop strings and streaming as the transformers backend) over
  llama.cpp's evaluation, one request at a time (a llama.cpp context holds one sequence).
* **Prefix reuse**: before each prompt, the longest prefix it shares with what the context already holds
  stays in the key/value cache and only the rest is evaluated -- so a constant in-context preamble is
  computed once across requests (the cache keeps full sliding-window layers, ``swa_full``, so it can be cut
  back to any prefix).
* **Scoring** is exact over the full vocabulary: with ``logits_all`` llama.cpp keeps every position's
  logits (it reserves ``n_ctx x vocab`` floats: 1 GiB per 1,024 tokens of context for Gemma's 262k
  vocabulary), so the shift analysis runs in exact mode.
* **Stepping** token by token (:class:`LlamaStepper`) lets DeRa mix two llama.cpp models.
* **LoRA**: a GGUF LoRA file (``--adapter file.gguf``); a PEFT adapter folder made by ``alignkit train`` is
  converted to one with the ``gguf`` package (cached beside it).

The same GGUF through transformers and llama.cpp is not bit-identical (quantised kernels): never mix the two
backends inside one comparison (DeRa and the shift analysis refuse to, by vocabulary fingerprint).
"""

from __future__ import annotations

import hashlib
import os
import threading
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from alignkit.errors import CapabilityError, ContextLengthError, ModelLoadError
from alignkit.models.base import (
    Capabilities,
    LogprobChunk,
    PositionReducer,
    configs_for,
    logprob_blocks,
    run_stream_to_completions,
)
from alignkit.types import Completion, GenerationConfig, Message, Prompt, StreamEvent, TokenScores

GGUF_MAGIC = b"GGUF"


def check_gguf(path: str | Path, what: str) -> Path:
    """A GGUF file, checked by its magic bytes (llama.cpp crashes on other files instead of failing)."""
    p = Path(path).expanduser()
    if not p.is_file():
        raise ModelLoadError(f"{what} {str(path)!r} does not exist")
    with p.open("rb") as f:
        magic = f.read(4)
    if magic != GGUF_MAGIC:
        raise ModelLoadError(f"{what} {str(path)!r} is not a GGUF file (it starts with {magic!r}, not b'GGUF'); "
                             "llama.cpp takes GGUF models and GGUF LoRA adapters only")
    return p


class _Tokenizer:
    """The small part of a tokenizer the analysis and scoring code use, on llama.cpp's vocabulary."""

    def __init__(self, model: LlamaCppModel) -> None:
        self._m = model

    def convert_ids_to_tokens(self, ids: Sequence[int]) -> list[str]:
        return [self._m.token_text(int(i)) for i in ids]

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = False) -> str:
        return self._m.decode(list(ids), special=not skip_special_tokens)


class LlamaCppModel:
    """A GGUF model run by llama.cpp, behind the LanguageModel interface."""

    backend = "llamacpp"

    def __init__(self, path: str | Path, *, spec: str, n_ctx: int = 2048, n_threads: int | None = None,
                 lora: str | None = None, logits_all: bool = True, source: dict[str, Any] | None = None,
                 score_chunk: int = 64) -> None:
        try:
            from llama_cpp import Llama
        except ImportError:
            from alignkit.errors import BackendUnavailableError

            raise BackendUnavailableError("llamacpp", "llamacpp", "llama_cpp") from None
        path = check_gguf(path, "model file")
        if lora:
            check_gguf(lora, "LoRA adapter")
        try:
            self.llm = Llama(model_path=str(path), n_ctx=n_ctx, logits_all=logits_all, lora_path=lora,
                             n_threads=n_threads or _threads(), n_batch=min(512, n_ctx),
                             swa_full=True, verbose=False)
        except (ValueError, RuntimeError, OSError) as e:
            raise ModelLoadError(f"llama.cpp could not load {str(path)!r}: {str(e).splitlines()[0]}") from e
        self.spec = spec
        self.path = str(path)
        self.logits_all = logits_all
        self.score_chunk = score_chunk
        self.score_batch_size = 1
        self.source = {"gguf": str(path), "lora": lora, "n_ctx": n_ctx, **(source or {})}
        self.vocab_size = int(self.llm.n_vocab())
        self._lock = threading.RLock()
        self._template = self.llm.metadata.get("tokenizer.chat_template")
        self.tokenizer = _Tokenizer(self)
        self.trained_format = None
        self.capabilities = Capabilities(
            full_vocab_logits=logits_all, topk_logprobs=self.vocab_size if logits_all else 0,
            chat_template=bool(self._template), streaming=True, adapters=True, prefix_reuse=True, token_ids=True,
            stepping=True,
        )
        from alignkit.models.hf_decode import TokenLoop

        eos = {int(self.llm.token_eos())}
        eot = self._special_id("<end_of_turn>")
        if eot is not None:
            eos.add(eot)
        self.engine = TokenLoop(eos_ids=eos, decode=self.decode, context_length=n_ctx)
        self.engine.grammar_vocab = self.vocab_size
        self.engine.grammar_tokenizer = self._ll_tokenizer
        self._lltok: Any = None
        self._fingerprint: str | None = None

    def _ll_tokenizer(self) -> Any:
        """llguidance's view of this model's vocabulary, read from llama.cpp itself (built once)."""
        if self._lltok is None:
            import llama_cpp
            from llguidance.llamacpp import lltokenizer_from_vocab

            vocab = llama_cpp.llama_model_get_vocab(self.llm.model)
            self._lltok = lltokenizer_from_vocab(vocab, n_vocab=self.vocab_size, eos_token=sorted(self.engine.eos_ids))
        return self._lltok

    # ------------------------------------------------------------------ tokens
    def _special_id(self, text: str) -> int | None:
        ids = self.llm.tokenize(text.encode("utf-8"), add_bos=False, special=True)
        return int(ids[0]) if len(ids) == 1 else None

    @property
    def context_length(self) -> int | None:
        return int(self.llm.n_ctx())

    def render(self, prompt: Prompt) -> str:
        if isinstance(prompt, str):
            return prompt
        if not self._template:
            raise CapabilityError(
                f"model {self.spec!r} has no chat template, so it cannot take a list of messages; "
                "give it raw text, or align it in context (--method urial)")
        from jinja2.sandbox import ImmutableSandboxedEnvironment

        env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
        msgs = [m.to_dict() if isinstance(m, Message) else dict(m) for m in prompt]
        bos = self.decode([int(self.llm.token_bos())], special=True)
        eos = self.decode([int(self.llm.token_eos())], special=True)
        return env.from_string(self._template).render(messages=msgs, add_generation_prompt=True, bos_token=bos,
                                                      eos_token=eos)

    def encode_prompt(self, prompt: Prompt) -> list[int]:
        """Raw text gets the BOS token; a rendered chat template carries its own special tokens."""
        text = self.render(prompt)
        raw = isinstance(prompt, str)
        return [int(t) for t in self.llm.tokenize(text.encode("utf-8"), add_bos=raw, special=not raw)]

    def encode(self, text: str) -> list[int]:
        return [int(t) for t in self.llm.tokenize(text.encode("utf-8"), add_bos=False, special=False)]

    def decode(self, ids: Sequence[int], special: bool = False) -> str:
        return self.llm.detokenize(list(ids), special=special).decode("utf-8", errors="replace")

    def count_tokens(self, prompt: Prompt) -> int:
        return len(self.encode_prompt(prompt))

    def token_text(self, token_id: int) -> str:
        return self.llm.detokenize([int(token_id)], special=True).decode("utf-8", errors="replace")

    def vocab_fingerprint(self) -> str:
        """A hash of the vocabulary as llama.cpp reads it (differs from the transformers backend's hash on
        purpose: the two backends must not be mixed in one comparison)."""
        if self._fingerprint is None:
            h = hashlib.sha256(b"llamacpp\n")
            for i in range(self.vocab_size):
                h.update(self.llm.detokenize([i], special=True))
                h.update(b"\x00")
            self._fingerprint = h.hexdigest()[:16]
        return self._fingerprint

    # ------------------------------------------------------------------ evaluation
    def _logits_at(self, row: int) -> np.ndarray:
        if self.logits_all:
            return np.array(self.llm.scores[row], dtype=np.float32)
        import llama_cpp

        ptr = llama_cpp.llama_get_logits_ith(self.llm._ctx.ctx, -1)
        return np.ctypeslib.as_array(ptr, shape=(self.vocab_size,)).astype(np.float32, copy=True)

    def _prefill(self, ids: Sequence[int]) -> np.ndarray:
        """Evaluate ``ids`` reusing the longest prefix already in the context; the last position's logits."""
        ids = [int(t) for t in ids]
        if not ids:
            raise ContextLengthError("empty prompt")
        if len(ids) >= self.llm.n_ctx():
            raise ContextLengthError(f"the prompt has {len(ids)} tokens; the model's context holds {self.llm.n_ctx()}")
        llm = self.llm
        held = llm.input_ids[: llm.n_tokens].tolist()
        keep = 0
        for a, b in zip(held, ids):
            if a != b:
                break
            keep += 1
        keep = min(keep, len(ids) - 1)  # re-evaluate at least the last token, for fresh logits
        if not llm._ctx.kv_cache_seq_rm(-1, keep, -1):
            keep = 0
            llm.reset()
            llm._ctx.kv_cache_seq_rm(-1, 0, -1)
        llm.n_tokens = keep
        self.last_reused = keep
        llm.eval(ids[keep:])
        return self._logits_at(llm.n_tokens - 1)

    def _feed(self, token: int) -> np.ndarray:
        if self.llm.n_tokens >= self.llm.n_ctx():
            raise ContextLengthError(f"the context of {self.llm.n_ctx()} tokens is full")
        self.llm.eval([int(token)])
        return self._logits_at(self.llm.n_tokens - 1)

    # ------------------------------------------------------------------ the public stepper protocol
    max_stepper_rows: int | None = 1  # one llama.cpp context holds one sequence

    @property
    def token_loop(self) -> Any:
        return self.engine

    def exclusive(self) -> Any:
        return self._lock

    def stepper(self, prompt_ids: Sequence[Sequence[int]], *, extra: int = 0, reuse: bool = True) -> LlamaStepper:
        """A stepper over one prompt (see :class:`~alignkit.models.base.SteppingModel`). With ``reuse`` the
        longest common prefix with the previous sequence stays in the context; without, it starts afresh."""
        if len(prompt_ids) != 1:
            raise ValueError(f"a llama.cpp stepper holds one prompt (max_stepper_rows = 1), got {len(prompt_ids)}")
        if not reuse:
            self.llm.reset()
        return LlamaStepper(self, prompt_ids[0])

    # ------------------------------------------------------------------ generation
    def stream(self, prompts: Sequence[Prompt], config: GenerationConfig | Sequence[GenerationConfig] | None = None,
               *, reuse_prefix: bool = True, should_stop: Callable[[int], bool] | None = None) -> Iterator[StreamEvent]:
        configs = configs_for(len(prompts), config)
        if not prompts:
            return
        ids = [self.encode_prompt(p) for p in prompts]
        rows = self.engine.new_rows(ids, configs)
        with self._lock:
            for row in rows:
                stepper = self.stepper([row.prompt_ids], reuse=reuse_prefix)
                yield from self.engine.loop([row], [stepper], lambda ls: ls[0], should_stop)

    def generate(self, prompts: Sequence[Prompt], config: GenerationConfig | Sequence[GenerationConfig] | None = None,
                 *, reuse_prefix: bool = True) -> list[Completion]:
        if not prompts:
            return []
        return run_stream_to_completions(self.stream(prompts, config, reuse_prefix=reuse_prefix), len(prompts))

    # ------------------------------------------------------------------ scoring
    def _require_all_logits(self, purpose: str) -> None:
        if not self.logits_all:
            raise CapabilityError(f"{purpose} needs every position's logits; load the model with logits_all on")

    def iter_logprobs(self, prompts: Sequence[Prompt], continuations: Sequence[str | Sequence[int]], *,
                      batch_size: int | None = None) -> Iterator[LogprobChunk]:
        """Full-vocabulary next-token log-probabilities at every continuation position, in input order, a
        chunk of positions at a time (one evaluation of prompt + continuation per sequence)."""
        self._require_all_logits("teacher-forced scoring")
        if len(prompts) != len(continuations):
            raise ValueError(f"got {len(prompts)} prompts but {len(continuations)} continuations")
        for index, (p, c) in enumerate(zip(prompts, continuations)):
            cont = self.encode(c) if isinstance(c, str) else [int(t) for t in c]
            pids = self.encode_prompt(p)
            if not cont:
                yield LogprobChunk(index, 0, torch.zeros((0, self.vocab_size)), torch.zeros(0, dtype=torch.long), True)
                continue
            with self._lock:
                full = pids + cont
                if len(full) > self.llm.n_ctx():
                    raise ContextLengthError(f"prompt + continuation {index} take {len(full)} tokens; the context "
                                             f"holds {self.llm.n_ctx()}")
                self._prefill(full)
                first = len(pids) - 1  # the row whose logits predict the first continuation token
                rows = np.array(self.llm.scores[first : first + len(cont)], dtype=np.float32)
            targets = torch.tensor(cont, dtype=torch.long)
            for start in range(0, len(cont), self.score_chunk):
                block = torch.from_numpy(rows[start : start + self.score_chunk])
                yield from logprob_blocks(block, index, start, targets[start : start + len(block)], len(cont))

    def score(self, prompts: Sequence[Prompt], continuations: Sequence[str | Sequence[int]], *, top_k: int = 0,
              reduce: PositionReducer | None = None) -> list[TokenScores]:
        from alignkit.models.hf import scores_from_chunks

        conts = [self.encode(c) if isinstance(c, str) else [int(t) for t in c] for c in continuations]
        return scores_from_chunks(self.iter_logprobs(prompts, conts), conts, self.tokenizer, top_k, reduce)

    # ------------------------------------------------------------------ provenance
    def info(self) -> dict[str, Any]:
        import llama_cpp

        import alignkit

        return {"spec": self.spec, "backend": self.backend, **self.source, "alignkit": alignkit.__version__,
                "llama_cpp_python": llama_cpp.__version__}

    def close(self) -> None:
        with self._lock:
            self.llm.reset()


class LlamaStepper:
    """One llama.cpp model's side of a decode (a single row): next-token logits, fed one token at a time."""

    def __init__(self, model: LlamaCppModel, ids: Sequence[int]) -> None:
        self.model = model
        self.logits = torch.from_numpy(model._prefill(ids)).unsqueeze(0)

    def step(self, tokens: list[int], keep: list[int]) -> None:
        if keep:
            self.logits = torch.from_numpy(self.model._feed(tokens[0])).unsqueeze(0)


def load(resolved: Any, *, spec: str, options: Any) -> LlamaCppModel:
    """Loader of the ``llamacpp`` backend: an embedded alias (its GGUF), or a .gguf file; ``--adapter`` a
    GGUF LoRA or an alignkit/PEFT adapter folder (converted once)."""
    from alignkit.errors import ModelSpecError
    from alignkit.models import catalog

    if resolved.kind == "alias":
        path = catalog.gguf_path(resolved.target)
    elif resolved.kind == "gguf":
        path = Path(resolved.target)
    elif resolved.kind == "adapter":
        raise ModelSpecError(f"{spec!r}: for llama.cpp give the base GGUF model and the adapter with --adapter")
    else:
        raise ModelSpecError(f"the llamacpp backend loads GGUF files or embedded aliases; {spec!r} is a "
                             f"{resolved.kind} (use the hf backend for transformers folders and hub ids)")
    lora = options.adapter
    if lora and Path(lora).is_dir():
        from alignkit.models.lora_gguf import convert_peft_adapter

        lora = str(convert_peft_adapter(Path(lora), path))
    return LlamaCppModel(path, spec=spec, n_ctx=options.n_ctx, lora=lora,
                         source={"alias": resolved.target} if resolved.kind == "alias" else None)


def _threads() -> int:
    """OMP_NUM_THREADS when set (as `alignkit shards` sets it for each shard), else every core."""
    try:
        return max(1, int(os.environ.get("OMP_NUM_THREADS", "")))
    except ValueError:
        return max(1, os.cpu_count() or 1)
