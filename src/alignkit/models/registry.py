"""Model specs: one string names a model; this module turns it into a :class:`LanguageModel`.

Spec forms (tried in this order):

==========================================  =================================================
``gemma-3-270m``                            an embedded model (see ``alignkit models``)
``hf:ORG/NAME`` / ``hf:./folder``           transformers, from the hub or a folder
``openai:NAME@http://host:port/v1``         any OpenAI-compatible server (``openai:NAME`` uses
                                            ``$OPENAI_BASE_URL`` or api.openai.com)
``./folder`` ``/abs/folder``                a transformers folder, or a PEFT adapter folder
                                            (its base model is read from adapter_config.json)
``./model.gguf``                            a GGUF file, through transformers' GGUF loading
``llamacpp:./model.gguf``                   a GGUF file through llama.cpp (``llamacpp:ALIAS``:
                                            an embedded model's GGUF)
``vllm:ORG/NAME`` / ``vllm:./folder``        vLLM's offline engine (``vllm:ALIAS``: the embedded
                                            model's converted folder)
``ORG/NAME``                                a Hugging Face hub id
==========================================  =================================================

Adapters and options are given separately (:class:`ModelOptions`, CLI flags), never inside the spec.
Backends are plugins: one loader per backend in :data:`BACKENDS`, imported only when used.
"""

from __future__ import annotations

import importlib
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from alignkit.errors import BackendUnavailableError, InputError, ModelSpecError
from alignkit.models import catalog


@dataclass(frozen=True)
class ModelOptions:
    """How to load a model (everything but its name)."""

    adapter: str | None = field(default=None, metadata={"help": "PEFT LoRA adapter folder to apply on the model"})
    merge_adapter: bool = field(
        default=False, metadata={"help": "merge the adapter into the weights after loading (faster decoding)"}
    )
    dtype: str = field(
        default="float32", metadata={"help": "weights dtype: float32, bfloat16, float16, float64 or auto"}
    )
    device: str = field(default="cpu", metadata={"help": "device: cpu, cuda, cuda:N or auto"})
    revision: str | None = field(default=None, metadata={"help": "hub revision (branch, tag or commit)"})
    min_prefix_tokens: int = field(
        default=32, metadata={"min": 1, "help": "shortest shared prompt prefix whose key/value cache is reused"}
    )
    api_key_env: str = field(
        default="OPENAI_API_KEY", metadata={"help": "environment variable holding the API key (openai backend)"}
    )
    concurrency: int = field(default=8, metadata={"min": 1, "help": "parallel requests to a remote server"})
    timeout: float = field(default=120.0, metadata={"gt": 0, "help": "seconds before a remote request times out"})
    max_retries: int = field(
        default=4, metadata={"min": 0, "help": "retries (with exponential backoff) on 429/5xx and connection errors"}
    )
    max_logprobs: int = field(default=20, metadata={"min": 0,
        "help": "vllm backend: the largest top-k of log-probabilities the engine returns (vLLM's default is 20)"})
    tensor_parallel_size: int = field(default=1, metadata={"min": 1, "help": "vllm backend: GPUs to split each layer over"})
    pipeline_parallel_size: int = field(default=1, metadata={"min": 1,
        "help": "vllm backend: pipeline stages (e.g. one per node)"})
    distributed_executor: str | None = field(default=None, metadata={
        "help": "vllm backend: ray (a Ray cluster, for several nodes) or mp (processes on one node)",
        "choices": ["ray", "mp"]})
    vllm_engine: str | None = field(default=None, metadata={
        "choices": ["offline", "async"],
        "help": "vllm backend: offline (vLLM's batch engine in this process; the default of batch commands) or async "
                "(vLLM's AsyncLLM: token streaming, continuous batching, cancellation; the default of alignkit serve)"})
    max_lora_rank: int = field(default=0, metadata={"min": 0,
        "help": "vllm backend: take LoRA adapters up to this rank on the engine (alignkit serve sets it for adapter "
                "routes that share a base model's engine)"})
    n_ctx: int = field(default=2048, metadata={"min": 16,
        "help": "llamacpp backend: tokens one sequence (prompt + answer) can hold"})
    n_seq: int = field(default=8, metadata={"min": 1,
        "help": "llamacpp backend: rows decoded together in one llama.cpp batch (the key/value cache holds "
                "n_ctx x (n_seq + 1) tokens)"})


#: backend name -> "module:function" of its loader ``(target, *, spec, options) -> LanguageModel``.
BACKENDS: dict[str, str] = {
    "hf": "alignkit.models.hf_loader:load",
    "openai": "alignkit.models.openai:load",
    "llamacpp": "alignkit.models.llamacpp:load",
    "vllm": "alignkit.models.vllm:load",
}

_EXTRAS = {"hf": ("hf", "transformers"), "openai": ("openai", "openai"), "llamacpp": ("llamacpp", "llama-cpp-python"),
           "vllm": ("vllm", "vllm")}
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.\-]*/[\w.\-]+$")


@dataclass(frozen=True)
class ResolvedSpec:
    backend: str
    target: str
    """What the backend loads: a hub id, a path, ``NAME@URL``, or an alias."""
    kind: str
    """``alias``, ``hub``, ``folder``, ``adapter``, ``gguf`` or ``remote``."""


def resolve(spec: str) -> ResolvedSpec:
    """Work out which backend and target a spec names, without loading anything."""
    if not isinstance(spec, str) or not spec.strip():
        raise ModelSpecError("empty model spec; give an alias (see `alignkit models`), a path, a hub id or openai:NAME@URL")
    spec = spec.strip()
    prefix, sep, rest = spec.partition(":")
    if sep and prefix in BACKENDS and not re.match(r"^[A-Za-z]:[\\/]", spec):
        if not rest:
            raise ModelSpecError(f"model spec {spec!r} names the {prefix!r} backend but no model after the colon")
        if prefix == "openai":
            return ResolvedSpec("openai", rest, "remote")
        if rest in catalog.CATALOG:
            return ResolvedSpec(prefix, rest, "alias")
        return _resolve_local_or_hub(rest, spec, backend=prefix)
    if spec in catalog.CATALOG:
        return ResolvedSpec("hf", spec, "alias")
    if sep and "/" not in prefix and not Path(spec).exists() and not spec.startswith(("http://", "https://")):
        raise ModelSpecError(
            f"unknown backend {prefix!r} in model spec {spec!r}; known backends: {', '.join(BACKENDS)}"
        )
    return _resolve_local_or_hub(spec, spec, backend="hf")


def _resolve_local_or_hub(target: str, spec: str, backend: str) -> ResolvedSpec:
    path = Path(target).expanduser()
    looks_like_path = target.startswith((".", "/", "~")) or path.suffix == ".gguf" or path.exists()
    if path.is_file():
        if path.suffix == ".gguf":
            return ResolvedSpec(backend, str(path), "gguf")
        raise ModelSpecError(f"{target!r} is a file but not a .gguf model; give a model folder, a .gguf file or a hub id")
    if path.is_dir():
        if (path / "config.json").is_file():
            return ResolvedSpec(backend, str(path), "folder")
        if (path / "adapter_config.json").is_file():
            return ResolvedSpec(backend, str(path), "adapter")
        raise ModelSpecError(
            f"folder {target!r} holds neither a model (config.json) nor a LoRA adapter (adapter_config.json)"
        )
    if looks_like_path:
        raise ModelSpecError(f"model path {target!r} does not exist (model spec {spec!r})")
    if _HUB_ID.match(target):
        return ResolvedSpec(backend, target, "hub")
    raise ModelSpecError(
        f"cannot resolve model spec {spec!r}: it is not an embedded alias ({', '.join(catalog.CATALOG)}), "
        "not an existing path, not a hub id (ORG/NAME) and has no backend prefix (hf:, openai:NAME@URL)"
    )


def adapter_base(adapter_dir: str) -> str:
    """The base model an adapter folder was trained on."""
    cfg_path = Path(adapter_dir) / "adapter_config.json"
    try:
        cfg = json.loads(cfg_path.read_text())
        base = cfg["base_model_name_or_path"]
    except (OSError, ValueError, KeyError) as e:
        raise ModelSpecError(f"cannot read the base model of adapter {adapter_dir!r} from {cfg_path}: {e}") from e
    if not base:
        raise ModelSpecError(f"adapter {adapter_dir!r} does not name its base model; load the base with --adapter")
    return str(base)


def load_model(spec: str, options: ModelOptions | None = None, **overrides: Any) -> Any:
    """Load the model a spec names. ``overrides`` replace fields of ``options``."""
    options = options or ModelOptions()
    if overrides:
        options = ModelOptions(**{**options.__dict__, **overrides})
    resolved = resolve(spec)
    module_name, _, func = BACKENDS[resolved.backend].partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as e:
        extra, pkg = _EXTRAS.get(resolved.backend, (resolved.backend, e.name or "?"))
        raise BackendUnavailableError(resolved.backend, extra, e.name or pkg) from e
    return getattr(module, func)(resolved, spec=spec, options=options)


def lora_rank(adapter: str) -> int:
    """The largest LoRA rank of an adapter folder (``r`` and its ``rank_pattern``)."""
    path = Path(adapter) / "adapter_config.json"
    try:
        cfg = json.loads(path.read_text())
        return max([int(cfg["r"]), *map(int, (cfg.get("rank_pattern") or {}).values())])
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise InputError(f"adapter {adapter!r}: cannot read its LoRA rank from {path}: {e}") from e



class ModelPool:
    """Loads each spec once, with one set of options: one copy of each model in memory however many roles it
    plays (a DeRa reference that is also a contestant, a base that is also the aligned model under URIAL).
    Call it with a spec; it is the ``loader`` that methods take to load the other models they need."""

    def __init__(self, options: ModelOptions | None = None) -> None:
        self.options = options or ModelOptions()
        self.models: dict[str, Any] = {}

    def __call__(self, spec: str) -> Any:
        if spec not in self.models:
            self.models[spec] = load_model(spec, self.options)
        return self.models[spec]

    def close(self) -> None:
        for m in self.models.values():
            m.close()
        self.models.clear()


class SharedPool(ModelPool):
    """A :class:`ModelPool` in which an adapter folder does not load its base again: it becomes a view of the base
    already in the pool (or loaded now), with its LoRA adapter switched on for its own calls (PEFT multi-adapter on
    the transformers backend; LoRA requests on vLLM's async engine). One copy of the weights serves the base and
    all its adapters -- what a server with several routes wants (``alignkit serve --route``)."""

    def __call__(self, spec: str) -> Any:
        if spec in self.models:
            return self.models[spec]
        resolved = resolve(spec)
        if (resolved.backend in ("hf", "vllm") and resolved.kind == "adapter" and not self.options.adapter
                and not self.options.merge_adapter):
            base_spec = adapter_base(resolved.target)
            base = self(base_spec if resolved.backend == "hf" else "vllm:" + base_spec)
            if hasattr(base, "adapter_view") and getattr(base, "lora_enabled", True):
                self.models[spec] = base.adapter_view(resolved.target, spec=spec)
                return self.models[spec]
        return super().__call__(spec)

    def prepare(self, specs: list[str]) -> None:
        """Before loading ``specs``: a vLLM base model that adapter folders among them run on is loaded with LoRA
        support for their largest rank, so the adapters share its engine."""
        ranks = [lora_rank(r.target) for r in map(resolve, specs) if r.backend == "vllm" and r.kind == "adapter"]
        if ranks and not self.options.max_lora_rank:
            self.options = ModelOptions(**{**self.options.__dict__, "max_lora_rank": max(ranks)})
