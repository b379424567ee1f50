from __future__ import annotations

import json

import pytest

from alignkit import ModelSpecError, load_model
from alignkit.errors import ModelLoadError
from alignkit.models.registry import resolve


def test_resolves_every_spec_form(tiny_dir, tmp_path):
    gguf = tmp_path / "m.gguf"
    gguf.write_bytes(b"GGUF")
    assert resolve("gemma-3-270m").kind == "alias"
    assert resolve(str(tiny_dir["base"])).kind == "folder"
    assert resolve(f"hf:{tiny_dir['base']}").kind == "folder"
    assert resolve(str(tiny_dir["adapter"])).kind == "adapter"
    assert resolve(str(gguf)).kind == "gguf"
    assert resolve("google/gemma-3-270m") == resolve("hf:google/gemma-3-270m")
    assert resolve("hf:google/gemma-3-270m").kind == "hub"
    r = resolve("openai:gpt-4o-mini@http://localhost:8000/v1")
    assert (r.backend, r.target) == ("openai", "gpt-4o-mini@http://localhost:8000/v1")


@pytest.mark.parametrize(
    "spec, message",
    [
        ("", "empty model spec"),
        ("./no/such/folder", "does not exist"),
        ("nosuch:thing", "unknown backend 'nosuch'"),
        ("just-a-word", "cannot resolve model spec"),
        ("hf:", "no model after the colon"),
    ],
)
def test_bad_specs_name_what_was_tried(spec, message):
    with pytest.raises(ModelSpecError, match=message):
        resolve(spec)


def test_folder_without_a_model(tmp_path):
    (tmp_path / "x.txt").write_text("hi")
    with pytest.raises(ModelSpecError, match="neither a model"):
        resolve(str(tmp_path))
    with pytest.raises(ModelSpecError, match="not a .gguf model"):
        resolve(str(tmp_path / "x.txt"))


def test_missing_or_broken_adapter(tiny_dir, tmp_path):
    with pytest.raises(ModelLoadError, match="does not exist"):
        load_model(str(tiny_dir["base"]), adapter=str(tmp_path / "nope"))
    with pytest.raises(ModelLoadError, match="not a PEFT adapter"):
        load_model(str(tiny_dir["base"]), adapter=str(tmp_path))
    bad = tmp_path / "orphan"
    bad.mkdir()
    (bad / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": str(tmp_path / "gone")}))
    with pytest.raises(ModelSpecError, match="does not exist"):
        load_model(str(bad))


def test_hub_id_offline_says_what_was_tried(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelLoadError, match="tried 'no-such-org/no-such-model' as a Hugging Face hub id"):
        load_model("no-such-org/no-such-model")


def test_corrupt_gguf_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("ALIGNKIT_CACHE", str(tmp_path / "cache"))
    bad = tmp_path / "broken.gguf"
    bad.write_bytes(b"not a gguf file at all")
    with pytest.raises(ModelLoadError, match="could not read GGUF file"):
        load_model(str(bad))


def test_openai_spec_errors(monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    with pytest.raises(ModelSpecError, match="no API key"):
        load_model("openai:gpt-4o-mini@https://api.example.com/v1")
    with pytest.raises(ModelSpecError, match="bad server URL"):
        load_model("openai:m@http://")
    from alignkit.errors import ModelConnectionError

    with pytest.raises(ModelConnectionError, match="cannot reach the OpenAI-compatible server at http://127.0.0.1:9/v1"):
        load_model("openai:m@http://127.0.0.1:9/v1", max_retries=0, timeout=5)


def test_hub_ids_load_through_the_real_hub_code_path(tiny_dir, tmp_path):
    """A hub id resolves through huggingface_hub's cache, here filled from local files (offline)."""
    import shutil
    import subprocess
    import sys

    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "hub" / "models--tiny-org--tiny-model"
    shutil.copytree(tiny_dir["base"], repo / "snapshots" / commit)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    code = (
        "from alignkit import load_model, GenerationConfig\n"
        "m = load_model('tiny-org/tiny-model')\n"
        "print(m.source['kind'], m.generate(['The quick'], GenerationConfig(max_new_tokens=4))[0].completion_tokens)"
    )
    env = {**__import__("os").environ, "HF_HUB_CACHE": str(tmp_path / "hub"), "HF_HUB_OFFLINE": "1"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().splitlines()[-1] == "hub 4"
