"""bench/gpu_check.py, the GPU check, run here on its tiny shape on the CPU in float32 -- where every comparison it
makes must come out exact -- and its 7B shape counted on the meta device (no memory)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_gpu_check_steps_on_a_cpu(tmp_path):
    out = tmp_path / "gpu_check.json"
    cmd = [sys.executable, str(ROOT / "bench" / "gpu_check.py"), "--tiny", "--device", "cpu", "--dtype", "float32",
           "--requests", "4", "--new-tokens", "8", "--prefix-tokens", "200", "--answers", "4", "--tokens", "64",
           "--batch", "2", "--repeats", "1", "--json", str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-4000:]
    r = json.loads(out.read_text())
    assert r["errors"] == {}
    assert r["build"]["parameters"] > 0 and r["environment"]["device"] == "cpu"
    gen = r["generation"]
    assert gen["prefix_tokens"] >= 200 and gen["requests"] == 4
    # float32 on one CPU: reuse (cold and warm), recomputation and transformers' own generate agree token for token
    assert gen["token_identical_to_recompute"] == {"cold": "4/4", "warm": "4/4", "transformers_generate": "4/4"}
    assert set(gen["seconds"]) == {"reuse_cold", "reuse_warm", "recompute", "no_prefix", "transformers_generate"}
    assert all(v > 0 for v in gen["seconds"].values())
    sh = r["shift"]
    assert sh["positions"] == 4 * 64 and sh["identical_base_ranks"] is True
    assert sh["kl_max_relative_difference"] < 1e-3
    assert abs(sum(sh["shares"].values()) - 1) < 1e-3
    # the noisy sibling disagrees with its base somewhere, and agrees somewhere
    assert 0 < sh["shares"]["unshifted"] < 1


def test_the_7b_shape_is_llama_2_7b():
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    sys.path.insert(0, str(ROOT / "bench"))
    try:
        from gpu_check import SHAPES
    finally:
        sys.path.remove(str(ROOT / "bench"))
    with torch.device("meta"):
        model = LlamaForCausalLM(LlamaConfig(**SHAPES["7b"], tie_word_embeddings=False))
    assert sum(p.numel() for p in model.parameters()) == 6_738_415_616  # Llama-2-7B's parameter count
