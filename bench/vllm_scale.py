"""vLLM's scale-out on its CPU build, side by side in one run (run in vLLM's environment: `make vllm-env`): the
embedded Gemma-3-270m under URIAL answers 16 instructions (greedy, at most 96 new tokens) on one engine process,
then with tensor parallel 2 (two worker processes, one core each). Load and generation are timed apart; tokens
are compared request by request; prefix-cache hits are counted.

    VLLM_ENABLE_V1_MULTIPROCESSING=0 VLLM_CPU_KVCACHE_SPACE=2 .venv-vllm/bin/python bench/vllm_scale.py
"""

from __future__ import annotations

import argparse
import gc
import os
import sys
import time

from _results import write_result  # bench/_results.py: docs/results/NAME.json
from engines import INSTRUCTIONS


def run(label: str, **options):
    from alignkit import GenerationConfig, load_model
    from alignkit.methods import MethodOptions, apply_method

    t0 = time.perf_counter()
    model = load_model("vllm:gemma-3-270m", **options)
    load = time.perf_counter() - t0
    urial = apply_method(model, MethodOptions(method="urial"))
    cfg = GenerationConfig(max_new_tokens=ARGS.max_new_tokens, repetition_penalty=1.0)
    t0 = time.perf_counter()
    comps = urial.generate(INSTRUCTIONS[: ARGS.n], cfg)
    gen = time.perf_counter() - t0
    cached = int(model.last_stats["cached_prompt_tokens"])
    model.close()
    gc.collect()
    tokens = sum(c.completion_tokens for c in comps)
    print(f"{label}: load {load:.1f} s, generate {gen:.1f} s ({tokens / gen:.1f} tokens/s), {cached} prompt tokens "
          "from the prefix cache", file=sys.stderr)
    return {"load_seconds": round(load, 1), "generate_seconds": round(gen, 2), "tokens": tokens,
            "tokens_per_second": round(tokens / gen, 1), "cached_prompt_tokens": cached}, [c.token_ids for c in comps]


def main(argv=None) -> int:
    global ARGS
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=16)
    ap.add_argument("--max-new-tokens", type=int, default=96)
    ap.add_argument("--json")
    ARGS = ap.parse_args(argv)
    import vllm

    one, tok1 = run("1 process")
    two, tok2 = run("tensor parallel 2 (mp)", tensor_parallel_size=2, distributed_executor="mp")
    two["identical_requests"] = sum(a == b for a, b in zip(tok1, tok2))
    two["speedup"] = round(one["generate_seconds"] / two["generate_seconds"], 2)
    cores = len(os.sched_getaffinity(0))
    result = {"vllm": vllm.__version__, "instructions": ARGS.n, "max_new_tokens": ARGS.max_new_tokens,
              "cores": cores, "runs": {"1 process": one, "tensor parallel 2": two},
              "not_runnable_here": {
                  "distributed_executor ray": "vLLM refuses: current platform cpu does not support ray",
                  "pipeline_parallel_size 2": "loads, then the first step fails in a worker (AssertionError in "
                                              "sync_and_gather_intermediate_tensors)"}}
    print(f"tensor parallel 2 vs 1 process ({cores} cores): {two['speedup']}x generation, "
          f"{two['identical_requests']}/{ARGS.n} requests token-identical")
    write_result("vllm_scale", result, path=ARGS.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
