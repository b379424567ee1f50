"""PEFT LoRA adapter folder -> GGUF LoRA file that llama.cpp loads (``--adapter DIR`` on the llamacpp
backend), written with the ``gguf`` package.

Tensor names follow the base GGUF's architecture (``gguf``'s tensor-name map: ``model.layers.3.self_attn.q_proj``
-> ``blk.3.attn_q``); A and B are stored as ``<name>.weight.lora_a`` / ``.lora_b`` with the adapter's alpha,
the layout llama.cpp reads (scaling alpha / rank, as in PEFT). Architectures whose converter reorders the
attention weights (llama's rotary permutation) are refused rather than converted wrongly. The file is
cached beside the adapter and rebuilt when the adapter changes.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from alignkit.errors import ModelLoadError

#: architectures whose q/k weights llama.cpp's converter permutes: a LoRA on them would need the same
#: permutation of B (and the matching split of A); not supported here.
_PERMUTED = {"llama", "mistral"}


def _base_arch(base_gguf: Path) -> tuple[str, int]:
    from gguf import GGUFReader

    reader = GGUFReader(str(base_gguf))

    def field(key: str):
        f = reader.fields.get(key)
        if f is None:
            raise ModelLoadError(f"{base_gguf} has no {key!r} metadata")
        return f.contents()

    arch = str(field("general.architecture"))
    return arch, int(field(f"{arch}.block_count"))


def convert_peft_adapter(adapter_dir: Path, base_gguf: Path) -> Path:
    """Write (or reuse) ``adapter_dir/adapter.gguf`` for ``base_gguf``; returns its path."""
    import gguf
    import numpy as np
    from safetensors.numpy import load_file

    cfg_path, weights = adapter_dir / "adapter_config.json", adapter_dir / "adapter_model.safetensors"
    if not cfg_path.is_file() or not weights.is_file():
        raise ModelLoadError(f"{adapter_dir} is not a PEFT LoRA adapter folder (adapter_config.json and "
                             "adapter_model.safetensors)")
    cfg = json.loads(cfg_path.read_text())
    if cfg.get("peft_type", "LORA") != "LORA":
        raise ModelLoadError(f"{adapter_dir}: only LoRA adapters convert to llama.cpp (got {cfg.get('peft_type')})")
    key = hashlib.sha256(weights.read_bytes() + cfg_path.read_bytes() + str(base_gguf.resolve()).encode()).hexdigest()[:16]
    out = adapter_dir / f"adapter-{key}.gguf"
    if out.is_file():
        return out
    arch, n_blocks = _base_arch(base_gguf)
    if arch in _PERMUTED:
        raise ModelLoadError(f"converting LoRA adapters for the {arch!r} architecture is not supported (its "
                             "attention weights are permuted in GGUF); use llama.cpp's convert_lora_to_gguf.py")
    arch_id = next((k for k, v in gguf.MODEL_ARCH_NAMES.items() if v == arch), None)
    if arch_id is None:
        raise ModelLoadError(f"the gguf package does not know the architecture {arch!r}")
    names = gguf.get_tensor_name_map(arch_id, n_blocks)
    tensors = load_file(str(weights))
    alpha = float(cfg.get("lora_alpha", cfg.get("r", 8)))
    if cfg.get("use_rslora") or cfg.get("use_dora"):
        raise ModelLoadError(f"{adapter_dir}: rsLoRA / DoRA adapters are not supported by this converter")
    pairs: dict[str, dict[str, np.ndarray]] = {}
    for name, arr in tensors.items():
        if ".lora_A." in name:
            part = "a"
        elif ".lora_B." in name:
            part = "b"
        else:
            raise ModelLoadError(f"{adapter_dir}: unexpected tensor {name!r} (only LoRA A/B matrices convert)")
        hf = name.removeprefix("base_model.model.").replace(".lora_A.weight", ".weight").replace(".lora_B.weight", ".weight")
        target = names.get_name(hf, try_suffixes=(".weight",))
        if target is None:
            raise ModelLoadError(f"{adapter_dir}: no GGUF name for {hf!r} in the {arch} architecture")
        pairs.setdefault(target, {})[part] = arr.astype(np.float32)
    tmp = out.with_suffix(".tmp")
    writer = gguf.GGUFWriter(str(tmp), arch)
    writer.add_type(gguf.GGUFType.ADAPTER)
    writer.add_string(gguf.Keys.Adapter.TYPE, "lora")
    writer.add_float32(gguf.Keys.Adapter.LORA_ALPHA, alpha)
    for target, ab in sorted(pairs.items()):
        if set(ab) != {"a", "b"}:
            raise ModelLoadError(f"{adapter_dir}: {target} has only one of lora_A / lora_B")
        writer.add_tensor(f"{target}.weight.lora_a" if not target.endswith(".weight") else f"{target}.lora_a", ab["a"])
        writer.add_tensor(f"{target}.weight.lora_b" if not target.endswith(".weight") else f"{target}.lora_b", ab["b"])
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    tmp.rename(out)
    return out
