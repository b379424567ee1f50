"""One URIAL batch on every engine alignkit has: 16 instructions, the embedded Gemma-3-270m aligned in
context (K=3, greedy, no repetition penalty), at most 128 new tokens each.

* tokens/s of the hf (transformers) and llamacpp backends, and of the vllm backend when its CPU build is
  installed (see docs/guides/engines.md: it lives in its own environment), and their ratios;
* the llamacpp backend (all rows in one llama.cpp batch) against calling llama-cpp-python directly
  (``create_completion``, same prompts, greedy, same stop strings, one at a time -- it has no batched
  completion); whole commands, one request at a time against the same direct calls: bench/engines_command.py;
* exact-mode shift agreement: the llamacpp and hf backends score the same answers (llama.cpp's own) over the
  full vocabulary; mean KL(hf || llamacpp) per position and top-1 agreement measure the quantisation noise
  between the engines (never mix engines inside one comparison).

    python bench/engines.py [--n 16] [--max-new-tokens 128] [--engines hf,llamacpp,vllm] [--json FILE]

vLLM lives in its own environment (``make vllm-env``), which has no llama.cpp: run it there with
``--engines hf,vllm`` (hf is the common reference for the ratios).
"""

from __future__ import annotations

import argparse
import json
import sys
import time

from _results import write_result  # bench/_results.py: docs/results/NAME.json

INSTRUCTIONS = [
    "How do I keep basil alive on a windowsill?", "What causes thunder?", "Give me three tips for a cover letter.",
    "How does a refrigerator keep food cold?", "What is a haiku?", "How can I fall asleep faster?",
    "Why do leaves change colour in autumn?", "How do I calculate the area of a triangle?",
    "What are the primary colours?", "How do I politely end a phone call?", "How do bees make honey?",
    "What is a prime number?", "How do I remove a splinter safely?", "Why do we need sleep?",
    "How do I say good morning in French?", "What is the main job of the heart?",
]


def run_backend(model, prompts, cfg):
    t0 = time.perf_counter()
    comps = model.generate(prompts, cfg)
    return comps, time.perf_counter() - t0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=16)
    ap.add_argument("--max-new-tokens", type=int, default=128)
    ap.add_argument("--engines", default="hf,llamacpp,vllm")
    ap.add_argument("--json")
    args = ap.parse_args(argv)
    engines = set(args.engines.split(","))

    from alignkit import GenerationConfig, load_model
    from alignkit.methods import MethodOptions, apply_method

    qs = INSTRUCTIONS[: args.n]
    cfg = GenerationConfig(max_new_tokens=args.max_new_tokens, repetition_penalty=1.0)
    out: dict = {"instructions": len(qs), "max_new_tokens": args.max_new_tokens, "engines": {}}

    comps = prepared = cpp = None
    if "llamacpp" in engines:
        comps, prepared, cpp = _llamacpp(out, qs, cfg, args)

    # transformers
    hf = load_model("gemma-3-270m")
    hf_urial = apply_method(hf, MethodOptions(method="urial"))
    hf_urial.generate(qs[:1], GenerationConfig(max_new_tokens=4))
    hcomps, hsecs = run_backend(hf_urial, qs, cfg)
    htoks = sum(c.completion_tokens for c in hcomps)
    out["engines"]["hf"] = {"seconds": hsecs, "tokens": htoks, "tokens_per_second": htoks / hsecs}

    # vLLM (CPU build), if this environment has it
    if "vllm" in engines:
        try:
            v = load_model("vllm:gemma-3-270m")
        except Exception as e:  # noqa: BLE001 - report why it did not run
            out["engines"]["vllm"] = {"not_run": f"{type(e).__name__}: {str(e).splitlines()[0][:200]}"}
        else:
            v_urial = apply_method(v, MethodOptions(method="urial"))
            v_urial.generate(qs[:1], GenerationConfig(max_new_tokens=4))
            vcomps, vsecs = run_backend(v_urial, qs, cfg)
            vtoks = sum(c.completion_tokens for c in vcomps)
            out["engines"]["vllm"] = {"seconds": vsecs, "tokens": vtoks, "tokens_per_second": vtoks / vsecs,
                                      **getattr(v, "last_stats", {})}
    base = out["engines"]["hf"]["tokens_per_second"]
    out["ratios_vs_hf"] = {k: e["tokens_per_second"] / base for k, e in out["engines"].items() if "tokens_per_second" in e}

    if cpp is not None:  # exact-mode shift agreement between the engines on llama.cpp's answers
        out["shift_agreement"] = _agreement(cpp, hf, comps, prepared)
    print(json.dumps(out, indent=2))
    e = out["engines"]
    line = f"tokens/s: hf {e['hf']['tokens_per_second']:.1f}"
    for k in ("llamacpp", "vllm"):
        if k in e and "tokens_per_second" in e[k]:
            line += f", {k} {e[k]['tokens_per_second']:.1f} ({out['ratios_vs_hf'][k]:.2f}x hf)"
    if cpp is not None:
        line += (f"; llamacpp vs llama-cpp-python direct {out['llamacpp_vs_direct']:.3f} (batched vs one at a time); shift "
                 f"KL(hf||llamacpp) {out['shift_agreement']['mean_kl_hf_vs_llamacpp']:.3f}, top-1 agreement "
                 f"{out['shift_agreement']['top1_agreement']:.1%}")
    print(line, file=sys.stderr)
    write_result("engines" if "llamacpp" in out["engines"] else "engines-vllm", out, path=args.json)
    return 0


def _llamacpp(out, qs, cfg, args):
    """llama.cpp through alignkit, then llama-cpp-python directly (same prompts, stops, greedy)."""
    from alignkit import GenerationConfig, load_model
    from alignkit.methods import MethodOptions, apply_method

    cpp = load_model("llamacpp:gemma-3-270m", n_ctx=2048, n_seq=len(qs))  # all rows in one llama.cpp batch
    cpp_urial = apply_method(cpp, MethodOptions(method="urial"))
    cpp_urial.generate(qs[:1], GenerationConfig(max_new_tokens=4))  # warm: load pages, fill the preamble cache
    comps, secs = run_backend(cpp_urial, qs, cfg)
    toks = sum(c.completion_tokens for c in comps)
    out["engines"]["llamacpp"] = {"seconds": secs, "tokens": toks, "tokens_per_second": toks / secs}
    prepared = [cpp_urial.prepare(q, cfg) for q in qs]
    from llama_cpp import Llama

    llm = Llama(model_path=cpp.path, n_ctx=2048, logits_all=False, flash_attn=True, swa_full=True, verbose=False,
                n_threads=cpp.llm.n_threads)  # (its default is half the cores)
    llm.create_completion(prepared[0].prompt, max_tokens=4)  # warm, as alignkit was: the preamble is cached
    t0 = time.perf_counter()
    direct_tokens = 0
    for p in prepared:
        r = llm.create_completion(p.prompt, max_tokens=args.max_new_tokens, temperature=0.0, top_k=1,
                                  repeat_penalty=1.0, stop=list(p.stop))
        direct_tokens += r["usage"]["completion_tokens"]
    dsecs = time.perf_counter() - t0
    out["engines"]["llama_cpp_python_direct"] = {"seconds": dsecs, "tokens": direct_tokens,
                                                 "tokens_per_second": direct_tokens / dsecs}
    out["llamacpp_vs_direct"] = out["engines"]["llamacpp"]["tokens_per_second"] / (direct_tokens / dsecs)
    llm.close()

    return comps, prepared, cpp


def _agreement(cpp, hf, comps, prepared):
    kls, agree, n = 0.0, 0, 0
    answers = [list(c.token_ids) for c in comps if c.token_ids]
    prompts = [p.prompt for p, c in zip(prepared, comps) if c.token_ids]
    for ch_c, ch_h in zip(cpp.iter_logprobs(prompts, answers), hf.iter_logprobs(prompts, answers, batch_size=1)):
        assert ch_c.index == ch_h.index and ch_c.start == ch_h.start
        lc, lh = ch_c.logprobs.float(), ch_h.logprobs.float()
        kls += float((lh.exp() * (lh - lc)).sum())
        agree += int((lc.argmax(-1) == lh.argmax(-1)).sum())
        n += lc.shape[0]
    return {"positions": n, "mean_kl_hf_vs_llamacpp": kls / n, "top1_agreement": agree / n}


if __name__ == "__main__":
    sys.exit(main())
