"""The ``vllm`` backend on vLLM's **async engine** (``AsyncLLM``): what ``alignkit serve`` runs a ``vllm:`` model on.

vLLM's own server drives the same engine; alignkit keeps none of its own token loop here:

* every request is added to the engine as it arrives and joins the running batch (vLLM's continuous batching and
  automatic prefix caching -- the constant preamble of in-context alignment is computed once);
* tokens stream back as the engine makes them (``RequestOutputKind.DELTA``);
* a request whose client went away is aborted in the engine (its task is cancelled, and ``AsyncLLM`` aborts it);
* structured output (``GenerationConfig.constraint``) is handed to vLLM's guided decoding with llguidance -- the
  same grammar alignkit's own token loop enforces on the other backends;
* LoRA adapters (written by ``alignkit train``) are vLLM LoRA requests: several adapter routes share one engine
  (:meth:`AsyncVLLMModel.adapter_view`).

The engine runs on an event loop of its own, in a daemon thread; the model's methods are the ordinary blocking
:class:`~alignkit.models.base.LanguageModel` ones (``stream`` with ``admit``/``should_stop`` -- continuous
batching -- for the server's scheduler), so every method and route tree runs on it unchanged. ``AsyncLLM`` starts
its engine core in a process of its own (as ``vllm serve`` does): the HTTP side and the model's compute overlap.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import itertools
import queue
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from alignkit.errors import BackendUnavailableError, InputError, ModelLoadError
from alignkit.models import tool_formats
from alignkit.models.base import Capabilities, PositionReducer, TokenMemo, configs_for
from alignkit.models.vllm_common import VLLMTokens, engine_kwargs, lora_capacity, sampling_params, scores_from
from alignkit.types import Completion, FinishReason, GenerationConfig, Prompt, StreamEvent, TokenScores
from alignkit.version import __version__

Admit = Callable[[int, int | None], Sequence[tuple[Prompt, GenerationConfig]]]
_IDS = itertools.count()


@dataclass
class _Row:
    future: Any
    prompt_tokens: int
    text: str = ""
    ids: tuple[int, ...] = ()
    cached: int = 0


class AsyncVLLMModel(VLLMTokens):
    backend = "vllm"
    guided_decoding = True
    """Structured output is enforced inside the engine (vLLM's guided decoding), not in alignkit's token loop."""
    concurrent_streams = True
    """``stream`` may run in several threads at once (one per route): the engine batches them all."""

    def __init__(self, source: str, *, spec: str, max_logprobs: int = 20, max_model_len: int | None = 4096,
                 enforce_eager: bool = True, dtype: str = "auto", tensor_parallel_size: int = 1,
                 lora: str | None = None, max_lora_rank: int = 0, provenance: dict[str, Any] | None = None) -> None:
        try:
            from vllm.engine.arg_utils import AsyncEngineArgs
            from vllm.v1.engine.async_llm import AsyncLLM
        except ImportError:
            raise BackendUnavailableError("vllm", "vllm", "vllm") from None
        kwargs = engine_kwargs(source, max_logprobs=max_logprobs, enforce_eager=enforce_eager, dtype=dtype,
                               tensor_parallel_size=tensor_parallel_size, max_model_len=max_model_len,
                               max_lora_rank=max_lora_rank)
        self._memo = TokenMemo()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="alignkit-vllm-engine", daemon=True)
        self._thread.start()

        async def make() -> Any:  # made on the engine's loop, so its output handler runs there
            return AsyncLLM.from_engine_args(AsyncEngineArgs(**kwargs))

        try:
            self.engine = asyncio.run_coroutine_threadsafe(make(), self._loop).result()
        except Exception as e:  # noqa: BLE001 - vLLM raises many kinds; report the first line
            self._loop.call_soon_threadsafe(self._loop.stop)
            raise ModelLoadError(f"vLLM's async engine could not load {source!r}: {type(e).__name__}: "
                                 f"{str(e).splitlines()[0] if str(e) else ''}") from e
        self.spec = spec
        self.source = {"source": source, "vllm_options": kwargs, "vllm_engine": "async", **(provenance or {})}
        self.tokenizer = self.engine.get_tokenizer()
        self.max_logprobs = max_logprobs
        self.trained_format = None
        self._context = int(self.engine.model_config.max_model_len)
        self.max_num_seqs = int(self.engine.vllm_config.scheduler_config.max_num_seqs)
        atexit.register(self.close)  # the engine's processes never outlive this one
        self.lora_enabled = bool(max_lora_rank)
        self.lora_request = self._lora(lora) if lora else None
        self.capabilities = Capabilities(
            full_vocab_logits=False, topk_logprobs=max_logprobs,
            chat_template=bool(getattr(self.tokenizer, "chat_template", None)),
            tool_format=tool_formats.detect(getattr(self.tokenizer, "chat_template", None)), streaming=True, adapters=True,
            prefix_reuse=True, token_ids=True, constraints=True, continuous_batching=True)

    # ------------------------------------------------------------------ adapters
    _lora_ids = itertools.count(1)

    def _lora(self, path: str) -> Any:
        from vllm.lora.request import LoRARequest

        if not self.lora_enabled:
            raise InputError(f"model {self.spec!r} was loaded without LoRA support; load it with the adapter "
                             "(--adapter) or serve the adapter folder as its own route")
        return LoRARequest(lora_name=path, lora_int_id=next(self._lora_ids), lora_path=path)

    def adapter_view(self, adapter: str, *, spec: str) -> _AdapterView:
        """The same engine with a LoRA adapter on for this view's requests: several adapter routes, one engine."""
        return _AdapterView(self, self._lora(adapter), spec)

    # ------------------------------------------------------------------ generation
    async def _consume(self, index: int, rid: str, ids: list[int], params: Any, lora: Any,
                       out: queue.SimpleQueue) -> None:
        try:
            async for o in self.engine.generate({"prompt_token_ids": ids}, params, rid, lora_request=lora):
                c = o.outputs[0]
                out.put((index, c.text, tuple(c.token_ids), c.finish_reason if o.finished else None,
                         c.stop_reason, int(o.num_cached_tokens or 0)))
        except asyncio.CancelledError:
            raise  # the caller cancelled (its client went away): AsyncLLM aborts the request
        except Exception as e:  # noqa: BLE001 - reported to the caller, which raises it
            out.put((index, e))

    def stream(self, prompts: Sequence[Prompt], config: GenerationConfig | Sequence[GenerationConfig] | None = None,
               *, should_stop: Callable[[int], bool] | None = None, admit: Admit | None = None,
               whole: Callable[[int], bool] | None = None, lora: Any = None, **_: Any) -> Iterator[StreamEvent]:
        """Each request goes to the engine at once; its tokens come back as they are made. ``admit`` (the server's
        continuous scheduler) is asked for more requests whenever the engine reports, and every 10 ms meanwhile;
        ``should_stop(i)`` true aborts request ``i`` in the engine (no final event); ``whole(i)`` true: nobody
        reads request ``i`` as it is made, so the engine sends it once, finished (vLLM's ``FINAL_ONLY``: no work
        per token here -- what vLLM's own server does for a request that does not stream)."""
        from vllm.sampling_params import RequestOutputKind

        lora = lora if lora is not None else self.lora_request
        configs = configs_for(len(prompts), config)
        out: queue.SimpleQueue = queue.SimpleQueue()
        rows: dict[int, _Row] = {}
        count = 0

        def start(batch: Sequence[tuple[Prompt, GenerationConfig]]) -> None:
            nonlocal count
            encoded = zip(self.encode_all([p for p, _ in batch], count), [c for _, c in batch])
            for ids, c in encoded:
                kind = RequestOutputKind.FINAL_ONLY if whole is not None and whole(count) else RequestOutputKind.DELTA
                params = sampling_params(c, output_kind=kind)
                rid = f"alignkit-{next(_IDS)}"
                fut = asyncio.run_coroutine_threadsafe(self._consume(count, rid, ids, params, lora, out), self._loop)
                rows[count] = _Row(fut, len(ids))
                count += 1

        try:
            start(list(zip(prompts, configs)))
            while rows or admit is not None:
                if admit is not None:
                    joining = list(admit(len(rows), None))
                    if joining:
                        start(joining)
                    elif not rows:
                        return
                if should_stop is not None:
                    for i in [i for i in rows if should_stop(i)]:
                        rows.pop(i).future.cancel()
                try:
                    item = out.get(timeout=0.01 if admit is not None or should_stop is not None else None)
                except queue.Empty:
                    continue
                i = item[0]
                row = rows.get(i)
                if row is None:  # aborted meanwhile
                    continue
                if isinstance(item[1], BaseException):
                    raise item[1]
                _, text, ids, finish, stop, cached = item
                row.text += text
                row.ids += ids
                row.cached = max(row.cached, cached)
                if finish is None:
                    if text:
                        yield StreamEvent(i, text)
                    continue
                del rows[i]
                reason: FinishReason = "stop" if finish == "stop" else "length"
                comp = Completion(text=row.text, finish_reason=reason, prompt_tokens=row.prompt_tokens,
                                  completion_tokens=len(row.ids), token_ids=row.ids,
                                  stop=stop if isinstance(stop, str) else None,
                                  meta={"cached_prompt_tokens": row.cached})
                yield StreamEvent(i, text, reason, comp)
        finally:  # closed early, or failed: nothing keeps running in the engine
            for row in rows.values():
                row.future.cancel()

    def generate(self, prompts: Sequence[Prompt], config: GenerationConfig | Sequence[GenerationConfig] | None = None,
                 **kwargs: Any) -> list[Completion]:
        done: dict[int, Completion] = {}
        for ev in self.stream(prompts, config, **kwargs):
            if ev.completion is not None:
                done[ev.index] = ev.completion
        comps = [done[i] for i in range(len(prompts))]
        self.last_stats = {"prompt_tokens": sum(c.prompt_tokens for c in comps),
                           "cached_prompt_tokens": sum((c.meta or {}).get("cached_prompt_tokens", 0) for c in comps)}
        return comps

    # ------------------------------------------------------------------ scoring (top-k)
    def score(self, prompts: Sequence[Prompt], continuations: Sequence[str | Sequence[int]], *, top_k: int = 0,
              reduce: PositionReducer | None = None, lora: Any = None) -> list[TokenScores]:
        from vllm.sampling_params import RequestOutputKind

        rows, spans = self.score_rows(prompts, continuations, top_k=top_k, reduce=reduce)
        params = sampling_params(GenerationConfig(max_new_tokens=1), prompt_logprobs=max(1, top_k),
                                 output_kind=RequestOutputKind.FINAL_ONLY)
        lora = lora if lora is not None else self.lora_request

        async def one(ids: list[int]) -> Any:
            final = None
            async for o in self.engine.generate({"prompt_token_ids": ids}, params, f"alignkit-{next(_IDS)}",
                                                lora_request=lora):
                final = o
            return final

        async def every() -> list[Any]:
            return list(await asyncio.gather(*(one(r) for r in rows)))

        outs = asyncio.run_coroutine_threadsafe(every(), self._loop).result()
        return scores_from(self, spans, outs, top_k)

    # ------------------------------------------------------------------ provenance
    def info(self) -> dict[str, Any]:
        import vllm

        return {"spec": self.spec, "backend": self.backend, **self.source, "alignkit": __version__,
                "vllm": vllm.__version__}

    def unfinished(self) -> int:
        """Requests the engine still holds (0 once every stream has ended or been aborted)."""
        return int(self.engine.get_num_unfinished_requests())

    def close(self) -> None:
        """Shut the engine down (its core process exits) and stop its loop."""
        engine = getattr(self, "engine", None)
        if engine is None:
            return
        self.engine = None
        engine.shutdown()

        async def cancel_the_rest() -> None:  # the engine's own tasks end here, not as "destroyed but pending"
            rest = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for t in rest:
                t.cancel()
            await asyncio.gather(*rest, return_exceptions=True)

        with contextlib.suppress(Exception):
            asyncio.run_coroutine_threadsafe(cancel_the_rest(), self._loop).result(5)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)


class _AdapterView:
    """An :class:`AsyncVLLMModel` seen through one LoRA adapter: the same engine, its requests carry the adapter."""

    backend = "vllm"
    guided_decoding = True
    """Structured output is enforced inside the engine (vLLM's guided decoding), not in alignkit's token loop."""
    concurrent_streams = True

    def __init__(self, base: AsyncVLLMModel, lora: Any, spec: str) -> None:
        self.base, self.lora_request, self.spec = base, lora, spec
        self.capabilities = base.capabilities
        self.trained_format = None

    def stream(self, prompts, config=None, **kwargs):
        return self.base.stream(prompts, config, lora=self.lora_request, **kwargs)

    def generate(self, prompts, config=None, **kwargs):
        return self.base.generate(prompts, config, lora=self.lora_request, **kwargs)

    def score(self, prompts, continuations, *, top_k: int = 0, reduce=None):
        return self.base.score(prompts, continuations, top_k=top_k, reduce=reduce, lora=self.lora_request)

    def info(self) -> dict[str, Any]:
        return {**self.base.info(), "spec": self.spec, "adapter": self.lora_request.lora_path}

    def close(self) -> None:
        """The engine belongs to the base model; closing a view leaves it running."""

    def __getattr__(self, name: str) -> Any:  # tokenizer-level helpers and the context length
        return getattr(self.base, name)


def load(source: str, *, spec: str, options: Any, provenance: dict[str, Any], adapter: str | None) -> AsyncVLLMModel:
    """The async engine for ``source``, with LoRA support for ``adapter`` and adapters up to
    ``options.max_lora_rank`` (other routes' adapters that will share it)."""
    return AsyncVLLMModel(source, spec=spec, max_logprobs=options.max_logprobs,
                          tensor_parallel_size=options.tensor_parallel_size, lora=adapter,
                          max_lora_rank=lora_capacity(adapter, options.max_lora_rank),
                          dtype="float32" if options.dtype == "float32" else options.dtype, provenance=provenance)
