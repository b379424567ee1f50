"""The transformers backend: a hub id, a local folder, a .gguf file or a PEFT LoRA adapter.

Exact everywhere: full-vocabulary scoring (one teacher-forced pass per batch of sequences, the output
head applied a chunk of positions at a time), batched generation with prefix reuse, streaming.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import torch

from alignkit.errors import (
    BackendUnavailableError,
    CapabilityError,
    ContextLengthError,
    InputError,
    ModelLoadError,
)
from alignkit.models import tool_formats
from alignkit.models.base import (
    Capabilities,
    LensChunk,
    LogprobChunk,
    PositionReducer,
    TokenMemo,
    configs_for,
    logprob_blocks,
    run_stream_to_completions,
)
from alignkit.models.hf_decode import DecodeEngine, Stepper
from alignkit.structured import ll_tokenizer
from alignkit.types import Completion, GenerationConfig, Prompt, StreamEvent, TokenScores
from alignkit.version import __version__

_DTYPES = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "float16": torch.float16,
    "fp16": torch.float16,
    "float64": torch.float64,
}


def resolve_dtype(name: str) -> torch.dtype | str:
    if name == "auto":
        return "auto"
    try:
        return _DTYPES[name]
    except KeyError:
        raise ModelLoadError(f"unknown dtype {name!r}; use one of auto, {', '.join(_DTYPES)}") from None


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ModelLoadError(f"device {name!r} asked for, but CUDA is not available on this machine")
    return torch.device(name)


class HFModel:
    """A causal LM from transformers (optionally with a PEFT adapter) behind the LanguageModel interface."""

    backend = "hf"

    def __init__(
        self,
        model: Any,  # a transformers PreTrainedModel (or a PEFT model around one)
        tokenizer: Any,
        *,
        spec: str,
        source: dict[str, Any] | None = None,
        min_prefix_tokens: int = 32,
        score_batch_size: int = 8,
        score_chunk: int = 64,
    ) -> None:
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.spec = spec
        self.source = dict(source or {})
        self.score_batch_size = score_batch_size
        self.score_chunk = score_chunk
        self._lock = threading.RLock()
        self._memo = TokenMemo()
        self.trained_format: dict[str, Any] | None = None
        """Set for models trained by alignkit: the method and template they were trained to be prompted with."""
        # a transformers PreTrainedModel (a PEFT model's base): its methods are not in torch.nn.Module's type
        self._causal_lm: Any = model.get_base_model() if hasattr(model, "get_base_model") else model
        cfg = self._causal_lm.config
        self._softcap = getattr(cfg.get_text_config(), "final_logit_softcapping", None)
        self.capabilities = Capabilities(
            full_vocab_logits=True,
            topk_logprobs=self.vocab_size,
            chat_template=bool(getattr(tokenizer, "chat_template", None)),
            tool_format=tool_formats.detect(getattr(tokenizer, "chat_template", None)),
            streaming=True,
            adapters=True,
            prefix_reuse=True,
            token_ids=True,
            stepping=True,
            constraints=True,
            continuous_batching=True,
            layer_lens=True,
        )
        eos: set[int] = set()
        for src in (getattr(model, "generation_config", None), tokenizer):
            e = getattr(src, "eos_token_id", None)
            eos.update(e if isinstance(e, (list, tuple)) else ([e] if e is not None else []))
        pad = tokenizer.pad_token_id
        if pad is None:
            pad = next(iter(eos)) if eos else 0
        self.engine = DecodeEngine(
            model,
            eos_ids=eos,
            pad_id=pad,
            decode=lambda ids: tokenizer.decode(ids, skip_special_tokens=True),
            context_length=self.context_length,
            decoder=self._causal_lm.get_decoder(),
            head=self._head,
            min_prefix=min_prefix_tokens,
        )

        self.engine.grammar_vocab = self.vocab_size
        self.engine.grammar_tokenizer = lambda: ll_tokenizer(tokenizer, self.vocab_size)

    # ------------------------------------------------------------------ LoRA adapters sharing these weights
    _peft: Any = None  # the PeftModel holding every adapter attached to these weights (shared by the views)
    _adapter_name: str | None = None  # the adapter this view switches on (None: none, the base itself)

    def adapter_view(self, folder: str, *, spec: str | None = None) -> HFModel:
        """Another model on these same weights, with the LoRA adapter in ``folder`` switched on for its calls
        (PEFT multi-adapter): no second copy of the weights. Every view of these weights (and this model itself)
        switches its adapter on -- or all adapters off -- before each forward pass, under one lock, so routes can
        interleave, even step by step (DeRa between two adapters); each view keeps its own prefix store."""
        path = check_adapter_folder(folder)
        tok_source = adapter_tokenizer_source(folder)
        tokenizer = self.tokenizer
        if tok_source:
            from transformers import AutoTokenizer

            tokenizer = AutoTokenizer.from_pretrained(tok_source)
            if len(tokenizer) != len(self.tokenizer) or tokenizer.get_vocab() != self.tokenizer.get_vocab():
                raise ModelLoadError(f"adapter {folder!r} brings another vocabulary; it cannot share the weights of "
                                     f"{self.spec!r} (load it on its own)")
        from peft import PeftModel

        with self._lock:
            if self._peft is None and hasattr(self.model, "peft_config"):
                raise ModelLoadError(f"{self.spec!r} already carries an adapter; views go on a plain base model")
            count = len(self._peft.peft_config) if self._peft is not None else 0
            name = f"view{count}"
            try:
                if self._peft is None:
                    self._peft = PeftModel.from_pretrained(self.model, str(path), adapter_name=name)
                    self._peft.eval()
                    self.engine.activate = self._activate
                else:
                    self._peft.load_adapter(str(path), adapter_name=name)
            except (OSError, ValueError, KeyError, RuntimeError) as e:
                raise ModelLoadError(f"could not attach adapter {folder!r}: {str(e).splitlines()[0]}") from e
            view = HFModel(self.model, tokenizer, spec=spec or folder,
                           source={**self.source, "adapter": str(folder), "shared_with": self.spec},
                           min_prefix_tokens=self.engine.min_prefix, score_batch_size=self.score_batch_size,
                           score_chunk=self.score_chunk)
            view._lock, view._peft, view._adapter_name = self._lock, self._peft, name
            view.engine.activate = view._activate
            view.trained_format = trained_format(folder)
            self._activate()
            return view

    def _activate(self) -> None:
        """Switch this view's adapter on (or every adapter off, for the base); called before each forward."""
        lora = self._peft.base_model
        if self._adapter_name is None:
            lora.disable_adapter_layers()
        else:
            lora.enable_adapter_layers()
            if lora.active_adapters != [self._adapter_name]:
                lora.set_adapter(self._adapter_name)

    # ------------------------------------------------------------------ the public stepper protocol
    max_stepper_rows: int | None = None  # batched: one stepper holds any number of rows

    @property
    def token_loop(self) -> DecodeEngine:
        return self.engine

    def exclusive(self) -> Any:
        return self._lock

    def stepper(self, prompt_ids: Sequence[Sequence[int]], *, extra: int, reuse: bool = True) -> Stepper:
        """A batched stepper over ``prompt_ids`` (see :class:`~alignkit.models.base.SteppingModel`)."""
        return Stepper(self.engine, prompt_ids, extra=extra, reuse=reuse)

    # ------------------------------------------------------------------ properties
    @property
    def context_length(self) -> int | None:
        cfg = self._causal_lm.config.get_text_config()
        n = getattr(cfg, "max_position_embeddings", None)
        return int(n) if n else None

    @property
    def vocab_size(self) -> int:
        return int(self._causal_lm.get_output_embeddings().weight.shape[0])

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype

    def info(self) -> dict[str, Any]:
        import transformers


        return {
            "spec": self.spec,
            "backend": self.backend,
            **self.source,
            "dtype": str(self.dtype).removeprefix("torch."),
            "device": str(self.device),
            "alignkit": __version__,
            "transformers": transformers.__version__,
            "torch": torch.__version__,
        }

    def close(self) -> None:
        self.engine.store.clear()

    # ------------------------------------------------------------------ tokens
    def render(self, prompt: Prompt) -> str:
        if isinstance(prompt, str):
            return prompt
        if not self.capabilities.chat_template:
            raise CapabilityError(
                f"model {self.spec!r} has no chat template, so it cannot take a list of messages; "
                "give it raw text, or align it in context (--method urial)"
            )
        msgs, tools, prefill = tool_formats.render_messages(prompt)
        return self.tokenizer.apply_chat_template(msgs, tools=tools, tokenize=False, add_generation_prompt=True) \
            + prefill

    def encode_prompt(self, prompt: Prompt) -> list[int]:
        """Token ids of a prompt: raw text gets the tokenizer's special tokens (BOS); a rendered chat template
        already contains them."""
        text, raw = self.render(prompt), isinstance(prompt, str)
        return self._memo.get(text, raw, lambda: self.tokenizer(text, add_special_tokens=raw).input_ids)

    def encode(self, text: str) -> list[int]:
        """Token ids of a piece of text, without special tokens."""
        return list(self.tokenizer(text, add_special_tokens=False).input_ids)

    def count_tokens(self, prompt: Prompt) -> int:
        return len(self.encode_prompt(prompt))

    # ------------------------------------------------------------------ generation
    def stream(
        self,
        prompts: Sequence[Prompt],
        config: GenerationConfig | Sequence[GenerationConfig] | None = None,
        *,
        reuse_prefix: bool = True,
        should_stop: Callable[[int], bool] | None = None,
        admit: Callable[[int, int | None], Sequence[tuple[Prompt, GenerationConfig]]] | None = None,
    ) -> Iterator[StreamEvent]:
        """Batched generation; ``admit`` makes it continuous (see ``Capabilities.continuous_batching``)."""
        configs = configs_for(len(prompts), config)
        if not prompts:
            return
        ids = [self.encode_prompt(p) for p in prompts]
        engine_admit = None
        if admit is not None:
            def engine_admit(running: int, room: int | None):
                joining = []
                for p, c in admit(running, room):
                    pid = self.encode_prompt(p)
                    joining.append((pid, c, [pid]))
                return joining
        with self._lock:
            yield from self.engine.run(ids, configs, reuse=reuse_prefix, should_stop=should_stop, admit=engine_admit)

    def generate(
        self,
        prompts: Sequence[Prompt],
        config: GenerationConfig | Sequence[GenerationConfig] | None = None,
        *,
        reuse_prefix: bool = True,
    ) -> list[Completion]:
        if not prompts:
            return []
        return run_stream_to_completions(self.stream(prompts, config, reuse_prefix=reuse_prefix), len(prompts))

    # ------------------------------------------------------------------ scoring
    def _hidden(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return self._decoder_pass(ids, mask).last_hidden_state

    def _decoder_pass(self, ids: torch.Tensor, mask: torch.Tensor, **kwargs: Any) -> Any:
        """One pass of the decoder (this view's adapter switched on first), without a cache."""
        if self.engine.activate is not None:
            self.engine.activate()
        return self.engine.decoder(input_ids=ids.to(self.device), attention_mask=mask.to(self.device), use_cache=False,
                                   **kwargs)

    def _head(self, hidden: torch.Tensor) -> torch.Tensor:
        logits = self._causal_lm.get_output_embeddings()(hidden)
        if logits.dtype in (torch.float16, torch.bfloat16):
            logits = logits.float()
        if self._softcap:
            logits = torch.tanh(logits / self._softcap) * self._softcap
        return logits

    def _pairs(self, prompts, continuations) -> list[tuple[list[int], list[int]]]:
        if len(prompts) != len(continuations):
            raise ValueError(f"got {len(prompts)} prompts but {len(continuations)} continuations")
        pairs = []
        for p, c in zip(prompts, continuations):
            cont = self.encode(c) if isinstance(c, str) else [int(t) for t in c]
            pairs.append((self.encode_prompt(p), cont))
        return pairs

    @torch.no_grad()
    def iter_logprobs(
        self,
        prompts: Sequence[Prompt],
        continuations: Sequence[str | Sequence[int]],
        *,
        batch_size: int | None = None,
    ) -> Iterator[LogprobChunk]:
        """Full-vocabulary log-probabilities at every continuation position, a chunk at a time, in input
        order: one teacher-forced pass of the decoder per batch, the output head applied per chunk."""
        pairs = self._pairs(prompts, continuations)
        bs = batch_size or self.score_batch_size
        # no torch.no_grad() *context* around the yields: a generator suspended (or abandoned) inside it would
        # leave gradients switched off for its caller; the decorator below toggles it per step instead
        with self._lock:
            for start in range(0, len(pairs), bs):
                batch = pairs[start : start + bs]
                # every row's targets in one copy to the device per batch (a copy from the host waits for the
                # device's queue to drain: one per chunk or row would stall a GPU between them)
                every = torch.tensor([t for _, c in batch for t in c], dtype=torch.long).to(self.device)
                hidden = self._batch_hidden(batch)
                at = 0
                for row, (p, c) in enumerate(batch):
                    if not c:
                        empty = torch.empty((0, self.vocab_size))
                        yield LogprobChunk(start + row, 0, empty, torch.empty(0, dtype=torch.long), True)
                        continue
                    targets, at = every[at : at + len(c)], at + len(c)
                    for a in range(0, len(c), self.score_chunk):
                        b = min(a + self.score_chunk, len(c))
                        logits = self._head(hidden[row, len(p) - 1 + a : len(p) - 1 + b])
                        # (a model split over devices: its head may sit on another than its first weights)
                        tgt = targets[a:b] if targets.device == logits.device else targets[a:b].to(logits.device)
                        yield from logprob_blocks(logits, start + row, a, tgt, len(c))

    @property
    def num_layers(self) -> int:
        """The decoder's layers (the logit lens reads layers 1 .. num_layers)."""
        decoder: Any = self.engine.decoder  # a transformers decoder (its layers, its final norm)
        return len(decoder.layers)

    def read_out(self, hidden: torch.Tensor, layer: int) -> torch.Tensor:
        """Log-probabilities ``[n, V]`` of the output head over residual-stream vectors ``[n, d]`` of ``layer``:
        through the final norm first, except at the last layer, whose states are already normed (as
        :meth:`iter_lens` returns them). Also reads differences of two models' states (the activation-difference
        lens)."""
        with torch.no_grad():
            h = hidden.to(self.device)
            if layer < self.num_layers:
                decoder: Any = self.engine.decoder
                h = decoder.norm(h)
            return torch.log_softmax(self._head(h), dim=-1)

    @torch.no_grad()
    def iter_lens(self, prompts: Sequence[Prompt], continuations: Sequence[str | Sequence[int]],
                  positions: Sequence[Sequence[int]], *, layers: Sequence[int] | None = None,
                  batch_size: int | None = None) -> Iterator[LensChunk]:
        """The logit lens (see :class:`LensChunk`) at ``positions[i]`` of continuation ``i``, for ``layers``
        (1-based; default all): one teacher-forced pass per batch with the hidden states kept, the head applied
        to the chosen positions only, a few positions at a time (never a full-vocabulary tensor per layer for a
        whole sequence)."""
        n_layers = self.num_layers
        chosen = tuple(sorted(set(layers))) if layers else tuple(range(1, n_layers + 1))
        bad = [x for x in chosen if not 1 <= x <= n_layers]
        if bad:
            raise InputError(f"layer {bad[0]} does not exist: {self.spec!r} has layers 1..{n_layers}")
        pairs = self._pairs(prompts, continuations)
        if len(positions) != len(pairs):
            raise ValueError(f"got {len(positions)} position lists for {len(pairs)} continuations")
        bs = batch_size or self.score_batch_size
        # positions per chunk: one head call over all their layers at once (the head's weights are read once per
        # call, which is what costs on a large vocabulary), [n * L, V] kept to ~128 rows (~130 MB at 262k rows)
        per_chunk = max(1, 128 // len(chosen))
        inner = [j for j, x in enumerate(chosen) if x != n_layers]
        decoder: Any = self.engine.decoder
        with self._lock:
            for start in range(0, len(pairs), bs):
                batch = pairs[start: start + bs]
                states = self._batch_states(batch)  # [layers + 1] x [B, T, d]; the last one normed
                for row, (p, c) in enumerate(batch):
                    want = sorted({int(t) for t in positions[start + row] if 0 <= int(t) < len(c)})
                    if not want:
                        yield LensChunk(start + row, [], torch.empty(0, dtype=torch.long), chosen,
                                        torch.empty((0, len(chosen), self.vocab_size)),
                                        torch.empty((0, len(chosen), 0)), True)
                        continue
                    for a in range(0, len(want), per_chunk):
                        ts = want[a: a + per_chunk]
                        at = torch.tensor([len(p) - 1 + t for t in ts], dtype=torch.long)
                        hid = torch.stack([states[x][row, at] for x in chosen], dim=1)  # [n, L, d]
                        normed = hid.clone()
                        if inner:  # the last layer's states are normed already; the others go through the norm
                            normed[:, inner] = decoder.norm(hid[:, inner])
                        logits = self._head(normed.reshape(-1, normed.shape[-1]))
                        lp = torch.log_softmax(logits, dim=-1).reshape(len(ts), len(chosen), -1)
                        yield LensChunk(start + row, ts, torch.tensor([c[t] for t in ts], dtype=torch.long),
                                        chosen, lp, hid.cpu(), a + per_chunk >= len(want))

    def _batch_states(self, pairs) -> tuple[torch.Tensor, ...]:
        out = self._decoder_pass(*self._batch_inputs(pairs), output_hidden_states=True)
        # transformers returns the embeddings, then each layer's output; the last entry is the final-normed state
        return (*out.hidden_states[:-1], out.last_hidden_state)

    def _batch_hidden(self, pairs) -> torch.Tensor:
        return self._hidden(*self._batch_inputs(pairs))

    def _batch_inputs(self, pairs) -> tuple[torch.Tensor, torch.Tensor]:
        """Token ids and attention mask of a batch of prompt + continuation pairs (right-padded; the last
        continuation token is never an input)."""
        seqs = [(p + c)[:-1] if c else p for p, c in pairs]
        width = max(len(s) for s in seqs)
        if self.context_length and width >= self.context_length:
            raise ContextLengthError(
                f"a prompt + continuation has {width + 1} tokens; the context holds {self.context_length}"
            )
        ids = torch.full((len(seqs), width), self.engine.pad_id, dtype=torch.long)
        mask = torch.zeros((len(seqs), width), dtype=torch.long)
        for i, s in enumerate(seqs):
            ids[i, : len(s)] = torch.tensor(s, dtype=torch.long)
            mask[i, : len(s)] = 1
        return ids, mask

    def score(
        self,
        prompts: Sequence[Prompt],
        continuations: Sequence[str | Sequence[int]],
        *,
        top_k: int = 0,
        reduce: PositionReducer | None = None,
    ) -> list[TokenScores]:
        pairs = self._pairs(prompts, continuations)
        chunks = self.iter_logprobs(prompts, [c for _, c in pairs])
        return scores_from_chunks(chunks, [c for _, c in pairs], self.tokenizer, top_k, reduce)

    def token_text(self, token_id: int) -> str:
        """How one token reads on its own (for displays)."""
        return self.tokenizer.decode([token_id])

    def vocab_fingerprint(self) -> str:
        """A hash of the tokenizer's vocabulary: two models can be compared token by token only if equal."""
        import hashlib

        items = sorted(self.tokenizer.get_vocab().items(), key=lambda kv: kv[1])
        return hashlib.sha256("\n".join(f"{i}\t{t}" for t, i in items).encode()).hexdigest()[:16]


def scores_from_chunks(chunks, continuations: list[list[int]], tokenizer: Any, top_k: int,
                       reduce: PositionReducer | None) -> list[TokenScores]:
    """Turn a stream of :class:`LogprobChunk` into per-continuation :class:`TokenScores`."""
    acc: list[dict[str, list]] = [{"lp": [], "top": [], "red": []} for _ in continuations]
    for ch in chunks:
        a = acc[ch.index]
        if not len(ch.targets):
            continue
        a["lp"].extend(ch.logprobs.gather(1, ch.targets.unsqueeze(1)).squeeze(1).tolist())
        if top_k:
            vals, idx = ch.logprobs.topk(min(top_k, ch.logprobs.shape[-1]), dim=-1)
            for vrow, irow in zip(vals.tolist(), idx.tolist()):
                a["top"].append(tuple(zip(tokenizer.convert_ids_to_tokens(irow), vrow)))
        if reduce is not None:
            part = list(reduce(ch.logprobs, ch.targets))
            if len(part) != len(ch.targets):
                raise ValueError(f"reduce returned {len(part)} results for {len(ch.targets)} positions")
            a["red"].extend(part)
    return [
        TokenScores(
            token_ids=tuple(c),
            tokens=tuple(tokenizer.convert_ids_to_tokens(c)),
            logprobs=tuple(a["lp"]),
            top_logprobs=tuple(a["top"]) if top_k else None,
            reduced=tuple(a["red"]) if reduce is not None else None,
        )
        for c, a in zip(continuations, acc)
    ]


# ---------------------------------------------------------------------------- loading


def load_hf(
    source: str,
    *,
    spec: str,
    gguf_file: str | None = None,
    adapter: str | None = None,
    merge_adapter: bool = False,
    dtype: str = "auto",
    device: str = "cpu",
    revision: str | None = None,
    min_prefix_tokens: int = 32,
) -> HFModel:
    """Load a transformers model from a hub id or local folder (with ``gguf_file`` for a GGUF inside it)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch_dtype = resolve_dtype(dtype)
    dev = resolve_device(device)
    kwargs: dict[str, Any] = {"revision": revision} if revision else {}
    if gguf_file:
        kwargs["gguf_file"] = gguf_file
    try:
        tok_source = adapter_tokenizer_source(adapter)
        tokenizer = (AutoTokenizer.from_pretrained(tok_source) if tok_source
                     else AutoTokenizer.from_pretrained(source, **kwargs))
        model: Any = AutoModelForCausalLM.from_pretrained(source, dtype=torch_dtype, **kwargs)
    except (OSError, ValueError, KeyError, RuntimeError) as e:
        where = f"{source}/{gguf_file}" if gguf_file else source
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ModelLoadError(f"could not load a causal LM from {where!r}: {first}") from e
    model.to(dev)
    src: dict[str, Any] = {"source": source, "gguf_file": gguf_file, "revision": revision}
    if adapter:
        model = attach_adapter(model, adapter, merge=merge_adapter)
        src.update(adapter=str(adapter), adapter_merged=merge_adapter)
    hf_model = HFModel(model, tokenizer, spec=spec, source=src, min_prefix_tokens=min_prefix_tokens)
    hf_model.trained_format = trained_format(adapter or source)
    return hf_model


def trained_format(folder: str) -> dict[str, Any] | None:
    """How a model trained by ``alignkit train`` expects to be prompted (from its ``alignkit.json``), so
    ``--method auto`` picks the layout it was trained on."""
    import json

    p = Path(folder) / "alignkit.json"
    try:
        info = json.loads(p.read_text()) if p.is_file() else None
    except (OSError, ValueError):
        return None
    return info.get("inference") if isinstance(info, dict) and isinstance(info.get("inference"), dict) else None


def check_adapter_folder(adapter: str) -> Path:
    path = Path(adapter)
    if not path.is_dir():
        raise ModelLoadError(f"adapter folder {adapter!r} does not exist")
    if not (path / "adapter_config.json").is_file():
        raise ModelLoadError(f"{adapter!r} is not a PEFT adapter folder (no adapter_config.json in it)")
    return path


def adapter_tokenizer_source(adapter: str | None) -> str | None:
    """An adapter folder that carries its own tokenizer (e.g. one trained with a chat template added)."""
    if adapter and (Path(adapter) / "tokenizer_config.json").is_file():
        return str(adapter)
    return None


def attach_adapter(model: torch.nn.Module, adapter: str, *, merge: bool = False) -> torch.nn.Module:
    """Wrap ``model`` with a PEFT adapter from a folder, checking the folder first."""
    path = check_adapter_folder(adapter)
    try:
        from peft import PeftModel
    except ImportError:
        raise BackendUnavailableError("hf", "hf", "peft") from None
    try:
        peft_model = PeftModel.from_pretrained(model, str(path))
    except (OSError, ValueError, KeyError, RuntimeError) as e:
        raise ModelLoadError(f"could not attach adapter {adapter!r}: {str(e).splitlines()[0]}") from e
    peft_model.eval()
    return peft_model.merge_and_unload() if merge else peft_model
