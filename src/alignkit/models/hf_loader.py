"""Loader of the ``hf`` backend: maps a resolved spec (alias, hub id, folder, adapter, GGUF) to load_hf."""

from __future__ import annotations

from pathlib import Path

from alignkit.errors import ModelLoadError, ModelSpecError
from alignkit.models import catalog
from alignkit.models.hf import HFModel, load_hf
from alignkit.models.registry import ModelOptions, ResolvedSpec, adapter_base, resolve


def weights_source(resolved: ResolvedSpec, progress: bool = True) -> tuple[str, str | None, dict]:
    """(folder or hub id, gguf file name or None, provenance) for a non-adapter spec."""
    if resolved.kind == "alias":
        return str(catalog.locate(resolved.target, progress=progress)), None, {"alias": resolved.target}
    if resolved.kind == "gguf":
        path = Path(resolved.target)
        conv = catalog.gguf_conversion_dir(path)
        if not (conv / "config.json").is_file():
            catalog.say(progress, f"converting {path.name} to a transformers folder (cached at {conv}) ...")
            catalog.convert_gguf(path, conv)
        return str(conv), None, {"gguf": str(path.resolve())}
    return resolved.target, None, {}


def load(resolved: ResolvedSpec, *, spec: str, options: ModelOptions) -> HFModel:
    adapter = options.adapter
    extra: dict = {}
    if resolved.kind == "adapter":
        if adapter:
            raise ModelSpecError(f"{spec!r} is already an adapter folder; do not also pass --adapter")
        adapter = resolved.target
        base_spec = adapter_base(adapter)
        base = resolve(base_spec)
        if base.kind == "adapter":
            raise ModelSpecError(f"adapter {adapter!r} names another adapter as its base ({base_spec!r})")
        resolved = base
        extra["base_spec"] = base_spec
    source, gguf, prov = weights_source(resolved)
    try:
        model = load_hf(
            source,
            spec=spec,
            gguf_file=gguf,
            adapter=adapter,
            merge_adapter=options.merge_adapter,
            dtype=options.dtype,
            device=options.device,
            revision=options.revision,
            min_prefix_tokens=options.min_prefix_tokens,
        )
    except ModelLoadError as e:
        if resolved.kind == "hub":
            raise ModelLoadError(
                f"{e} (tried {spec!r} as a Hugging Face hub id: no local folder of that name exists, and the hub "
                "could not provide it -- offline? set HF_HUB_OFFLINE=0 and check the name, or give a local path)"
            ) from e
        raise
    model.source.update(prov, kind=resolved.kind, **extra)
    return model
