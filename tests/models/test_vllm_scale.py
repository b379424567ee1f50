"""vLLM's scale-out modes, run for real on its CPU build with the embedded Gemma (`make test-vllm`): tensor
parallel over two worker processes gives the single-process tokens; the modes the CPU build cannot run fail
with vLLM's own error, shown once here (and in the README). Ray runs batch jobs here as one vLLM engine per
task: `alignkit shards --ray` (tests/test_sharding.py drives it on a two-node cluster)."""

from __future__ import annotations

import gc
import json
import os
import subprocess
import sys

import pytest

from alignkit import GenerationConfig, load_model
from alignkit.errors import ModelLoadError
from alignkit.methods import MethodOptions, apply_method

pytestmark = [pytest.mark.vllm_env, pytest.mark.gemma]

PROMPTS = ["How do I boil an egg?", "Name a primary colour.", "Write a haiku about rain.", "What is 12 times 7?"]
CFG = GenerationConfig(max_new_tokens=24)


def _urial_tokens(model) -> tuple[list[tuple[int, ...]], int]:
    urial = apply_method(model, MethodOptions(method="urial"))
    first = urial.generate(PROMPTS[:1], CFG)
    rest = urial.generate(PROMPTS[1:], CFG)
    return [c.token_ids for c in first + rest], int(model.last_stats["cached_prompt_tokens"])


@pytest.fixture(scope="module")
def single_tokens():
    m = load_model("vllm:gemma-3-270m")
    try:
        return _urial_tokens(m)
    finally:
        m.close()
        gc.collect()


def test_tensor_parallel_two_workers_gives_the_single_process_tokens(single_tokens):
    tokens, _ = single_tokens
    m = load_model("vllm:gemma-3-270m", tensor_parallel_size=2, distributed_executor="mp")
    try:
        assert m.source["vllm_options"]["tensor_parallel_size"] == 2
        got, cached = _urial_tokens(m)
    finally:
        m.close()
        gc.collect()
    assert got == tokens and all(len(t) > 0 for t in got)
    assert cached >= 3 * 768  # the URIAL preamble came from the prefix cache for the 3 later requests


def test_the_ray_executor_is_refused_by_vllms_cpu_build():
    """vLLM's CPU platform has no Ray device key: its Ray executor cannot place workers (exact error below)."""
    code = ("import os; os.environ['VLLM_ENABLE_V1_MULTIPROCESSING']='0'\n"
            "from alignkit import load_model\nfrom alignkit.errors import ModelLoadError\n"
            "try:\n    load_model('vllm:gemma-3-270m', tensor_parallel_size=2, distributed_executor='ray')\n"
            "except ModelLoadError as e:\n    print('ERROR', e)\nelse:\n    print('LOADED')\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600,
                       env={**os.environ, "RAY_USAGE_STATS_ENABLED": "0"})
    line = next((x for x in r.stdout.splitlines() if x.startswith(("ERROR", "LOADED"))), r.stderr[-2000:])
    assert line.startswith("ERROR") and "current platform cpu does not support ray" in line, line


def test_pipeline_parallel_fails_inside_vllms_cpu_worker():
    """Pipeline parallel 2 loads, then the first step fails in a worker (vLLM's CPU build, Gemma 3)."""
    m = load_model("vllm:gemma-3-270m", pipeline_parallel_size=2, distributed_executor="mp")
    try:
        with pytest.raises(Exception) as err:  # noqa: PT011 - vLLM raises a bare KeyError from its scheduler
            m.generate(["The capital of France is"], GenerationConfig(max_new_tokens=4))
        print(json.dumps({"pipeline_parallel_2": f"{type(err.value).__name__}: {err.value}"}))
    finally:
        try:
            m.close()
        except Exception:  # noqa: BLE001 - the engine is already dead
            pass
        gc.collect()


def test_a_rank_count_beyond_the_cores_is_one_clear_error():
    with pytest.raises(ModelLoadError, match="need at least 64 CPU cores"):
        load_model("vllm:gemma-3-270m", tensor_parallel_size=64, distributed_executor="mp")


def test_ray_tasks_run_one_vllm_engine_each_and_merge_to_the_single_run(tmp_path):
    """Data-parallel vLLM through Ray: `alignkit shards --ray local` on a private Ray cluster, one engine per task."""
    inp = tmp_path / "in.jsonl"
    inp.write_text("".join(json.dumps({"id": f"i{k}", "prompt": q}) + "\n" for k, q in enumerate(PROMPTS)))
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0"}
    job = ["generate", "--model", "vllm:gemma-3-270m", "--method", "urial", "--input", str(inp), "--max-new-tokens",
           "24", "--quiet"]
    single = subprocess.run([sys.executable, "-m", "alignkit", *job, "--output", str(tmp_path / "one.jsonl")],
                            capture_output=True, text=True, env=env, timeout=600)
    assert single.returncode == 0, single.stderr[-2000:]
    r = subprocess.run([sys.executable, "-m", "alignkit", "shards", "--workers", "2", "--ray", "local", *job,
                        "--output", str(tmp_path / "ray.jsonl")], capture_output=True, text=True, env=env, timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]

    def texts(name):
        return [(x["id"], x["output"]) for x in map(json.loads, (tmp_path / name).read_text().splitlines())]

    assert texts("ray.jsonl") == texts("one.jsonl")
    record = json.loads((tmp_path / "ray.shards.json").read_text())
    assert [s["returncode"] for s in record["shards"]] == [0, 0] and all(s["node"] for s in record["shards"])
