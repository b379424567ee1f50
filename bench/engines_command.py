"""Whole commands, side by side: `alignkit generate` on 16 URIAL instructions (the embedded Gemma-3-270m, K=3,
greedy, no repetition penalty, at most 128 new tokens) with each local engine, timed from process start to the
output file written (interpreter start, imports, model load, the URIAL preamble, generation, writing):

* ``hf``: the transformers backend, batch 16;
* ``llamacpp``: the llamacpp backend, 16 rows in one llama.cpp batch (--batch-size 16 --n-seq 16);
* ``llamacpp_one_at_a_time``: the llamacpp backend, one request at a time (--batch-size 1 --n-seq 1);
* ``llama_cpp_python_direct``: a script that calls llama-cpp-python's own ``create_completion`` on the same
  rendered prompts with the same stop strings (greedy, no ``logits_all``; flash attention on, as in alignkit's
  context), one at a time -- its own prefix reuse keeps the preamble between calls.

Prints seconds, tokens and tokens/s of each, the ratios the issue asks for (llamacpp vs hf, llamacpp one at a
time vs the direct script, batched vs one at a time) and how many answers are token-identical between alignkit
one at a time and the direct script.

    python bench/engines_command.py [--n 16] [--max-new-tokens 128]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _results import write_result  # bench/_results.py: docs/results/NAME.json
from engines import INSTRUCTIONS

DIRECT = r'''
import json, sys
from llama_cpp import Llama
spec = json.load(open(sys.argv[1]))
llm = Llama(model_path=spec["gguf"], n_ctx=2048, logits_all=False, flash_attn=True, swa_full=True, verbose=False,
            n_threads=spec["threads"])
with open(sys.argv[2], "w") as out:
    for item in spec["prompts"]:
        r = llm.create_completion(item["prompt"], max_tokens=spec["max_new_tokens"], temperature=0.0, top_k=1,
                                  repeat_penalty=1.0, stop=item["stop"], logprobs=None)
        out.write(json.dumps({"id": item["id"], "output": r["choices"][0]["text"],
                              "completion_tokens": r["usage"]["completion_tokens"]}) + "\n")
'''


def timed(cmd: list[str], env: dict[str, str]) -> float:
    t = time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    secs = time.perf_counter() - t
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{proc.stderr[-3000:]}")
    return secs


def read(path: Path) -> dict[str, dict]:
    return {r["id"]: r for r in map(json.loads, path.read_text().splitlines())}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=16)
    ap.add_argument("--max-new-tokens", type=int, default=128)
    args = ap.parse_args(argv)

    from alignkit import GenerationConfig, Message, load_model
    from alignkit.methods import MethodOptions, apply_method
    from alignkit.models import catalog

    qs = INSTRUCTIONS[: args.n]
    tmp = Path(tempfile.mkdtemp(prefix="engines-command-"))
    inp = tmp / "in.jsonl"
    inp.write_text("".join(json.dumps({"id": f"q{i}", "messages": [{"role": "user", "content": q}]}) + "\n"
                           for i, q in enumerate(qs)))
    threads = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    py = sys.executable
    common = ["--input", str(inp), "--method", "urial", "--max-new-tokens", str(args.max_new_tokens),
              "--repetition-penalty", "1.0", "--quiet"]
    runs = {
        "hf": ["--model", "gemma-3-270m", "--batch-size", "16"],
        "llamacpp": ["--model", "llamacpp:gemma-3-270m", "--batch-size", "16", "--n-seq", "16"],
        "llamacpp_one_at_a_time": ["--model", "llamacpp:gemma-3-270m", "--batch-size", "1", "--n-seq", "1"],
    }
    # the direct script gets the prompts and stop strings alignkit renders (llama.cpp's own tokenizer)
    cpp = load_model("llamacpp:gemma-3-270m", n_seq=1)
    urial = apply_method(cpp, MethodOptions(method="urial"))
    prepared = [urial.prepare([Message("user", q)], GenerationConfig()) for q in qs]
    spec = tmp / "direct.json"
    spec.write_text(json.dumps({"gguf": str(catalog.gguf_path("gemma-3-270m")), "threads": threads,
                                "max_new_tokens": args.max_new_tokens,
                                "prompts": [{"id": f"q{i}", "prompt": p.prompt, "stop": list(p.stop)}
                                            for i, p in enumerate(prepared)]}))
    script = tmp / "direct.py"
    script.write_text(DIRECT)
    cpp.close()  # (kept loaded only for urial.clean below: the direct script's raw text, cleaned the same way)

    out: dict = {"instructions": len(qs), "max_new_tokens": args.max_new_tokens, "cores": threads, "commands": {}}
    outputs: dict[str, dict[str, dict]] = {}
    for label, extra in [*runs.items(), ("llama_cpp_python_direct", None)]:
        dest = tmp / f"{label}.jsonl"
        if extra is None:
            secs = timed([py, str(script), str(spec), str(dest)], env)
        else:
            secs = timed([py, "-m", "alignkit", "generate", *common, *extra, "--output", str(dest)], env)
        outputs[label] = read(dest)
        toks = sum(r.get("completion_tokens") or r.get("usage", {}).get("completion_tokens", 0)
                   for r in outputs[label].values())
        out["commands"][label] = {"seconds": round(secs, 2), "tokens": toks, "tokens_per_s": round(toks / secs, 1)}
        print(label, json.dumps(out["commands"][label]), file=sys.stderr, flush=True)
    c = out["commands"]
    out["ratios"] = {
        "llamacpp_vs_hf": round(c["llamacpp"]["tokens_per_s"] / c["hf"]["tokens_per_s"], 2),
        "llamacpp_one_at_a_time_vs_direct": round(c["llamacpp_one_at_a_time"]["tokens_per_s"]
                                                  / c["llama_cpp_python_direct"]["tokens_per_s"], 3),
        "llamacpp_batched_vs_one_at_a_time": round(c["llamacpp"]["tokens_per_s"]
                                                   / c["llamacpp_one_at_a_time"]["tokens_per_s"], 2),
    }
    one, direct = outputs["llamacpp_one_at_a_time"], outputs["llama_cpp_python_direct"]
    out["answers_identical_one_at_a_time_vs_direct"] = (
        f"{sum(one[k]['output'] == urial.clean(direct[k]['output']) for k in direct)}/{len(direct)}")
    print(json.dumps(out, indent=2))
    write_result("engines_command", out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
