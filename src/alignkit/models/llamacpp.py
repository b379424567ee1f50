"""The ``llamacpp`` backend: GGUF models through llama-cpp-python, several times faster than transformers
on a CPU.

alignkit drives llama.cpp's own decode call (``llama_decode``) on a context of its own:

* **Batched**: up to ``n_seq`` rows (prompts) decode together, each in its own sequence of one key/value cache
  (llama.cpp's unified cache), one llama.cpp batch per step; rows beyond that join as others finish
  (continuous batching, also for the server).
* **Logits only where they are used**: generation asks llama.cpp for the last position of each prompt and
  the newest token of each row; scoring asks for the continuation's positions only. No ``n_ctx x vocab``
  buffer is kept (Gemma's vocabulary is 262k: that was 1 GiB per 1,024 tokens of context).
* **Prefix reuse**: sequence 0 holds the most recent prompt; a new batch keeps the longest prefix it shares
  with it and copies that into each row's sequence (the cells are shared, not recomputed) -- so a constant
  in-context preamble is computed once across requests and once per batch (the cache keeps full
  sliding-window layers, ``swa_full``, so a sequence can be cut back to any prefix).
* **Sampling, stop strings, streaming** are alignkit's token loop (:class:`~alignkit.models.hf_decode.TokenLoop`:
  the same sampling, answer-only repetition penalty and stop strings as the transformers backend).
* **Scoring** is exact over the full vocabulary, so the shift analysis runs in exact mode.
* **Stepping** (:class:`LlamaStepper`) lets DeRa mix two llama.cpp models, batched.
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

from alignkit.errors import (
    BackendUnavailableError,
    CapabilityError,
    ContextLengthError,
    ModelLoadError,
    ModelSpecError,
)
from alignkit.models import catalog, tool_formats
from alignkit.models.base import (
    Capabilities,
    LogprobChunk,
    PositionReducer,
    TokenMemo,
    common_prefix_length,
    configs_for,
    logprob_blocks,
    run_stream_to_completions,
)
from alignkit.models.lora_gguf import convert_peft_adapter
from alignkit.models.token_loop import queued_admit
from alignkit.types import Completion, GenerationConfig, Prompt, StreamEvent, TokenScores
from alignkit.version import __version__

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


class _Sequences:
    """A llama.cpp context of alignkit's own: ``n_seq`` row sequences plus sequence 0 (the prefix kept for reuse)
    in one key/value cache of ``n_ctx x (n_seq + 1)`` cells, so no sequence can run out of room; logits are
    asked for only where they are used."""

    def __init__(self, llm: Any, *, n_ctx: int, n_seq: int, n_batch: int, threads: int) -> None:
        import ctypes

        import llama_cpp
        from llama_cpp import _internals

        params = type(llm.context_params).from_buffer_copy(llm.context_params)
        params.n_ctx = n_ctx * (n_seq + 1)
        params.n_batch = params.n_ubatch = n_batch
        params.n_seq_max = n_seq + 1
        params.kv_unified = True  # the sequences share cells: a copied prefix is stored once
        params.swa_full = True  # sliding-window layers keep every position, so a sequence can be cut anywhere
        params.embeddings = False
        params.n_threads = params.n_threads_batch = threads
        params.flash_attn_type = llama_cpp.LLAMA_FLASH_ATTN_TYPE_AUTO
        try:
            self._ctx = _internals.LlamaContext(model=llm._model, params=params, verbose=False)
        except ValueError as e:
            raise ModelLoadError(f"llama.cpp could not make a context of {params.n_ctx} tokens: {e}") from e
        self.ctx, self.mem = self._ctx.ctx, self._ctx.memory
        if llm._lora_adapter is not None:
            adapters = (llama_cpp.llama_adapter_lora_p_ctypes * 1)(llm._lora_adapter)
            scales = (ctypes.c_float * 1)(llm.lora_scale)
            if llama_cpp.llama_set_adapters_lora(self.ctx, adapters, 1, scales):
                raise ModelLoadError("llama.cpp could not apply the LoRA adapter")
        self._batch = _internals.LlamaBatch(n_tokens=n_batch, embd=0, n_seq_max=1, verbose=False)
        b = self._batch.batch
        self._token = np.ctypeslib.as_array(b.token, shape=(n_batch,))
        self._pos = np.ctypeslib.as_array(b.pos, shape=(n_batch,))
        self._nseq = np.ctypeslib.as_array(b.n_seq_id, shape=(n_batch,))
        self._out = np.ctypeslib.as_array(b.logits, shape=(n_batch,))
        self._nseq[:] = 1
        self._lib = llama_cpp
        self.n_ctx, self.n_seq, self.n_batch, self.n_vocab = n_ctx, n_seq, n_batch, int(llm.n_vocab())
        self.free = list(range(n_seq, 0, -1))  # row sequences not in use (pop() takes 1 first)
        self.held: list[int] = []  # the tokens sequence 0 holds
        self.last_reused = 0  # prompt tokens the last start() took from sequence 0 instead of evaluating

    def decode(self, tokens: Sequence[int], positions: Sequence[int], seqs: Sequence[int], outputs: Sequence[int]
               ) -> Iterator[np.ndarray]:
        """Evaluate tokens (each at its position in its sequence), ``n_batch`` at a time; yields, for every
        batch that has some, the logits of the tokens flagged in ``outputs`` (a copy, in order)."""
        b = self._batch.batch
        for s in range(0, len(tokens), self.n_batch):
            n = min(self.n_batch, len(tokens) - s)
            self._token[:n] = tokens[s : s + n]
            self._pos[:n] = positions[s : s + n]
            self._out[:n] = outputs[s : s + n]
            for i in range(n):
                b.seq_id[i][0] = seqs[s + i]
            b.n_tokens = n
            rc = self._lib.llama_decode(self.ctx, b)
            if rc != 0:
                if rc == 1:
                    raise ContextLengthError("llama.cpp found no room in its key/value cache for this batch")
                raise RuntimeError(f"llama_decode failed (code {rc})")
            nout = int(self._out[:n].sum())
            if nout:
                ptr = self._lib.llama_get_logits(self.ctx)
                yield np.ctypeslib.as_array(ptr, shape=(nout, self.n_vocab)).copy()

    def _cut(self, seq: int, keep: int) -> int:
        """Keep the first ``keep`` positions of a sequence; returns how many it kept (0 if it could not cut)."""
        if not self._lib.llama_memory_seq_rm(self.mem, seq, keep, -1):
            self._lib.llama_memory_seq_rm(self.mem, seq, 0, -1)  # removing a whole sequence never fails
            return 0
        return keep

    def hold(self, ids: Sequence[int], upto: int, outputs_from: int | None = None) -> Iterator[np.ndarray]:
        """Make sequence 0 hold ``ids``, keeping the prefix it shares with what it holds (at most ``upto``
        tokens of it); yields the logits of positions ``outputs_from ..`` (all but the last), if asked."""
        keep = self._cut(0, min(common_prefix_length(self.held, ids), upto))
        self.held = list(ids[:keep])
        self.last_reused = keep
        rest = list(range(keep, len(ids)))
        out = [int(outputs_from is not None and outputs_from <= i < len(ids) - 1) for i in rest]
        try:
            yield from self.decode(ids[keep:], rest, [0] * len(rest), out)
        except BaseException:
            self._cut(0, 0)
            self.held = []
            raise
        self.held = list(ids)

    def start(self, prompts: Sequence[Sequence[int]], reuse: bool = True) -> tuple[list[int], np.ndarray]:
        """Put each prompt in a free row sequence: the prefix the prompts share (one prompt: what sequence 0
        holds of it) is kept or evaluated in sequence 0 and copied into each row's sequence; each prompt's own
        tokens are then evaluated, all in one batch; sequence 0 then holds the first prompt, for the next
        requests. Returns the sequences and each prompt's last-position logits."""
        if len(prompts) > len(self.free):
            raise RuntimeError(f"{len(prompts)} rows but {len(self.free)} free sequences")
        if not reuse:
            self._cut(0, 0)
            self.held = []
        first = list(prompts[0])
        if len(prompts) == 1:  # what sequence 0 holds of it (the rest is evaluated in one batch, in the row)
            common = min(common_prefix_length(self.held, first), len(first) - 1)
        else:
            common = min(common_prefix_length(first, p) for p in prompts[1:])
        common = min(common, min(len(p) for p in prompts) - 1)  # each row evaluates >= 1 token of its own
        for _ in self.hold(first[:common], common):
            pass
        seqs = [self.free.pop() for _ in prompts]
        toks: list[int] = []
        pos: list[int] = []
        sq: list[int] = []
        out: list[int] = []
        for seq, p in zip(seqs, prompts):
            self._lib.llama_memory_seq_rm(self.mem, seq, 0, -1)
            if common:
                self._lib.llama_memory_seq_cp(self.mem, 0, seq, 0, common)
            n = len(p) - common
            toks += p[common:]
            pos += range(common, len(p))
            sq += [seq] * n
            out += [0] * (n - 1) + [1]
        try:
            logits = np.concatenate(list(self.decode(toks, pos, sq, out)))
        except BaseException:
            for seq in seqs:
                self.release(seq)
            raise
        if len(first) > common:  # sequence 0 shares the first prompt's cells: kept when its row is freed
            self._lib.llama_memory_seq_cp(self.mem, seqs[0], 0, common, len(first))
            self.held = first
        return seqs, logits

    def step(self, tokens: Sequence[int], positions: Sequence[int], seqs: Sequence[int]) -> np.ndarray:
        """One token for each row; the next-token logits of every row."""
        return np.concatenate(list(self.decode(tokens, positions, seqs, [1] * len(tokens))))

    def release(self, seq: int) -> None:
        self._lib.llama_memory_seq_rm(self.mem, seq, 0, -1)
        if seq not in self.free:
            self.free.append(seq)

    def reclaim(self) -> None:
        """Free every row sequence (nothing is decoding)."""
        for seq in range(1, self.n_seq + 1):
            self.release(seq)

    def clear(self) -> None:
        self._lib.llama_memory_clear(self.mem, True)
        self.free = list(range(self.n_seq, 0, -1))
        self.held = []

    def close(self) -> None:
        self._batch.close()
        self._ctx.close()


class LlamaCppModel:
    """A GGUF model run by llama.cpp, behind the LanguageModel interface."""

    backend = "llamacpp"

    def __init__(self, path: str | Path, *, spec: str, n_ctx: int = 2048, n_seq: int = 8, n_threads: int | None = None,
                 lora: str | None = None, source: dict[str, Any] | None = None, score_chunk: int = 64,
                 n_batch: int = 512) -> None:
        try:
            from llama_cpp import Llama
        except ImportError:
            raise BackendUnavailableError("llamacpp", "llamacpp", "llama_cpp") from None
        path = check_gguf(path, "model file")
        if lora:
            check_gguf(lora, "LoRA adapter")
        threads = n_threads or _threads()
        try:
            # the Llama object holds the weights, the vocabulary and the LoRA adapter; its own context is kept
            # small (alignkit decodes on a context of its own, _Sequences)
            self.llm = Llama(model_path=str(path), n_ctx=256, n_batch=32, n_ubatch=32, logits_all=False,
                             lora_path=lora, n_threads=threads, verbose=False)
        except (ValueError, RuntimeError, OSError) as e:
            raise ModelLoadError(f"llama.cpp could not load {str(path)!r}: {str(e).splitlines()[0]}") from e
        self.seqs = _Sequences(self.llm, n_ctx=n_ctx, n_seq=n_seq, n_batch=min(n_batch, n_ctx), threads=threads)
        self.spec = spec
        self.path = str(path)
        self.n_ctx, self.n_seq = n_ctx, n_seq
        self.score_chunk = score_chunk
        self.score_batch_size = 1
        self.source = {"gguf": str(path), "lora": lora, "n_ctx": n_ctx, "n_seq": n_seq, **(source or {})}
        self.vocab_size = int(self.llm.n_vocab())
        self._lock = threading.RLock()
        self._memo = TokenMemo()
        self._live = 0  # steppers decoding now
        self._template = self.llm.metadata.get("tokenizer.chat_template")
        self.tokenizer = _Tokenizer(self)
        self.trained_format = None
        self.capabilities = Capabilities(
            full_vocab_logits=True, topk_logprobs=self.vocab_size, chat_template=bool(self._template),
            tool_format=tool_formats.detect(self._template),
            streaming=True, adapters=True, prefix_reuse=True, token_ids=True, stepping=True, constraints=True,
            continuous_batching=True,
        )
        from alignkit.models.token_loop import TokenLoop

        eos = {int(self.llm.token_eos())}
        eot = self._special_id("<end_of_turn>")
        if eot is not None:
            eos.add(eot)
        self.engine = TokenLoop(eos_ids=eos, decode=self.decode, context_length=n_ctx)
        self.engine.context_option = " (--n-ctx)"
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
        """Tokens one sequence (prompt + answer) can hold."""
        return self.n_ctx

    def render(self, prompt: Prompt) -> str:
        if isinstance(prompt, str):
            return prompt
        if not self._template:
            raise CapabilityError(
                f"model {self.spec!r} has no chat template, so it cannot take a list of messages; "
                "give it raw text, or align it in context (--method urial)")
        from jinja2.sandbox import ImmutableSandboxedEnvironment

        env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
        msgs, tools, prefill = tool_formats.render_messages(prompt)
        bos = self.decode([int(self.llm.token_bos())], special=True)
        eos = self.decode([int(self.llm.token_eos())], special=True)
        return env.from_string(self._template).render(messages=msgs, tools=tools, add_generation_prompt=True,
                                                      bos_token=bos, eos_token=eos) + prefill

    def encode_prompt(self, prompt: Prompt) -> list[int]:
        """Raw text gets the BOS token; a rendered chat template carries its own special tokens."""
        text, raw = self.render(prompt), isinstance(prompt, str)
        return self._memo.get(text, raw, lambda: self.llm.tokenize(text.encode("utf-8"), add_bos=raw, special=not raw))

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

    @property
    def last_reused(self) -> int:
        """Prompt tokens the last batch took from the kept prefix instead of evaluating them."""
        return self.seqs.last_reused

    # ------------------------------------------------------------------ the public stepper protocol
    @property
    def max_stepper_rows(self) -> int:
        """Rows one stepper can hold: the sequences of the context (``n_seq``)."""
        return self.n_seq

    @property
    def token_loop(self) -> Any:
        return self.engine

    def exclusive(self) -> Any:
        return self._lock

    def stepper(self, prompt_ids: Sequence[Sequence[int]], *, extra: int = 0, reuse: bool = True) -> LlamaStepper:
        """A batched stepper over up to ``n_seq`` prompts (see :class:`~alignkit.models.base.SteppingModel`).
        With ``reuse`` the longest prefix shared with the previous prompt is not evaluated again. Close it when
        done (``close()``) to free its sequences."""
        if len(prompt_ids) > self.n_seq:
            raise ValueError(f"a llama.cpp stepper holds up to {self.n_seq} prompts (--n-seq), got {len(prompt_ids)}")
        return LlamaStepper(self, prompt_ids, reuse=reuse)

    # ------------------------------------------------------------------ generation
    def stream(self, prompts: Sequence[Prompt], config: GenerationConfig | Sequence[GenerationConfig] | None = None,
               *, reuse_prefix: bool = True, should_stop: Callable[[int], bool] | None = None,
               admit: Callable[[int, int | None], Sequence[tuple[Prompt, GenerationConfig]]] | None = None,
               ) -> Iterator[StreamEvent]:
        """Batched generation: the first ``n_seq`` prompts start together, the others join as rows finish;
        ``admit`` takes further requests in (continuous batching, once the given prompts are all in)."""
        configs = configs_for(len(prompts), config)
        if not prompts:
            return
        ids = [self.encode_prompt(p) for p in prompts]
        self.engine.check_fits(ids)
        first = min(len(ids), self.n_seq)

        def convert(p: Prompt, c: GenerationConfig) -> tuple[list[int], GenerationConfig, list[list[int]]]:
            pid = self.encode_prompt(p)
            self.engine.check_fits([pid])
            return pid, c, [pid]

        joining = queued_admit([(ids[k], configs[k], [ids[k]]) for k in range(first, len(ids))], admit, convert)

        with self._lock:
            stepper = self.stepper(ids[:first], reuse=reuse_prefix)
            try:
                rows = self.engine.new_rows(ids[:first], configs[:first])
                yield from self.engine.loop(rows, [stepper], lambda ls: ls[0], should_stop, joining)
            finally:
                stepper.close()

    def generate(self, prompts: Sequence[Prompt], config: GenerationConfig | Sequence[GenerationConfig] | None = None,
                 *, reuse_prefix: bool = True) -> list[Completion]:
        if not prompts:
            return []
        return run_stream_to_completions(self.stream(prompts, config, reuse_prefix=reuse_prefix), len(prompts))

    # ------------------------------------------------------------------ scoring
    def iter_logprobs(self, prompts: Sequence[Prompt], continuations: Sequence[str | Sequence[int]], *,
                      batch_size: int | None = None) -> Iterator[LogprobChunk]:
        """Full-vocabulary next-token log-probabilities at every continuation position, in input order, a
        chunk of positions at a time (one evaluation of prompt + continuation per sequence, reusing the prefix
        it shares with the previous one; llama.cpp returns logits for the continuation's positions only)."""
        if len(prompts) != len(continuations):
            raise ValueError(f"got {len(prompts)} prompts but {len(continuations)} continuations")
        for index, (p, c) in enumerate(zip(prompts, continuations)):
            cont = self.encode(c) if isinstance(c, str) else [int(t) for t in c]
            pids = self.encode_prompt(p)
            if not cont:
                yield LogprobChunk(index, 0, torch.zeros((0, self.vocab_size)), torch.zeros(0, dtype=torch.long), True)
                continue
            full = pids + cont
            if len(full) > self.n_ctx:
                raise ContextLengthError(f"prompt + continuation {index} take {len(full)} tokens; the context "
                                         f"holds {self.n_ctx} (--n-ctx)")
            first = len(pids) - 1  # the position whose logits predict the first continuation token
            with self._lock:  # the rows are taken out before they are yielded: another caller may use the context
                rows = np.concatenate(list(self.seqs.hold(full, first, outputs_from=first)))
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


        return {"spec": self.spec, "backend": self.backend, **self.source, "alignkit": __version__,
                "llama_cpp_python": llama_cpp.__version__}

    def close(self) -> None:
        """Forget what the context holds (the model stays usable)."""
        with self._lock:
            self.seqs.clear()


class LlamaStepper:
    """One llama.cpp model's side of a batched decode: each row in its own sequence; next-token logits of the
    running rows, fed one token each per step. Rows can join (continuous batching) while sequences are free."""

    def __init__(self, model: LlamaCppModel, prompts: Sequence[Sequence[int]], *, reuse: bool = True) -> None:
        self.model, self.reuse = model, reuse
        if model._live == 0:
            model.seqs.reclaim()  # sequences a stream left behind (e.g. a client went away mid-stream)
        model._live += 1
        self.closed = False
        self.seqs: list[int] = []
        self.pos: list[int] = []
        self.logits = torch.empty((0, model.vocab_size))
        try:
            self.join(prompts)
        except BaseException:
            self.close()
            raise

    @property
    def room(self) -> int:
        return len(self.model.seqs.free)

    def join(self, prompts: Sequence[Sequence[int]], *, extra: int = 0) -> None:
        self.model.engine.check_fits(prompts)
        seqs, logits = self.model.seqs.start([list(p) for p in prompts], reuse=self.reuse)
        self.seqs += seqs
        self.pos += [len(p) for p in prompts]
        self.logits = torch.cat([self.logits, torch.from_numpy(logits)])

    def step(self, tokens: list[int], keep: list[int]) -> None:
        kept = set(keep)
        for j, seq in enumerate(self.seqs):
            if j not in kept:
                self.model.seqs.release(seq)
        self.seqs = [self.seqs[j] for j in keep]
        self.pos = [self.pos[j] for j in keep]
        if not keep:
            self.logits = self.logits[:0]
            return
        if max(self.pos) >= self.model.n_ctx:
            raise ContextLengthError(f"the context of {self.model.n_ctx} tokens is full")
        self.logits = torch.from_numpy(self.model.seqs.step(tokens, self.pos, self.seqs))
        self.pos = [p + 1 for p in self.pos]

    def close(self) -> None:
        """Free the rows' sequences."""
        if not self.closed:
            self.closed = True
            for seq in self.seqs:
                self.model.seqs.release(seq)
            self.seqs = []
            self.model._live -= 1


def load(resolved: Any, *, spec: str, options: Any) -> LlamaCppModel:
    """Loader of the ``llamacpp`` backend: an embedded alias (its GGUF), or a .gguf file; ``--adapter`` a
    GGUF LoRA or an alignkit/PEFT adapter folder (converted once)."""
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
        lora = str(convert_peft_adapter(Path(lora), path))
    return LlamaCppModel(path, spec=spec, n_ctx=options.n_ctx, n_seq=options.n_seq, lora=lora,
                         source={"alias": resolved.target} if resolved.kind == "alias" else None)


def _threads() -> int:
    """OMP_NUM_THREADS when set (as `alignkit shards` sets it for each shard), else every core."""
    try:
        return max(1, int(os.environ.get("OMP_NUM_THREADS", "")))
    except ValueError:
        return max(1, os.cpu_count() or 1)
