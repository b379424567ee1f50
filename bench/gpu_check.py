"""The transformers backend on one GPU, in bf16, at 7B scale: generation with prefix reuse and the exact token-shift
pass against its floor, on a randomly initialised Llama-shaped base/aligned pair built on the GPU (no download).

* the pair: a Llama-2-7B-shaped model (32 layers, hidden 4096, MLP 11008, 32 heads, vocabulary 32,000, ~6.7B
  parameters) initialised at random on the GPU in bf16, and its "aligned sibling": the same weights plus seeded
  noise (``--noise``: 2% of each matrix's spread), so the two disagree at some positions and agree at most; a byte-level BPE
  tokenizer of the same vocabulary trained in memory on generated text;
* generation (the shape of ``bench/prefix_cache.py``): 16 requests sharing a ~1,000-token prefix, 32 new tokens
  each, greedy, end-of-sequence off -- the prefix's keys/values reused (cold: computed once for the batch; warm:
  taken from the store), recomputed in one left-padded batch, the queries alone (the floor reuse should come close
  to), and transformers' own ``generate`` over the same left-padded batch; tokens compared with the recomputed run;
* shift (the shape of ``bench/shift_floor.py``): the sibling's own greedy answers (``--answers`` of ``--tokens``
  tokens) read by the base, the exact analysis
  (``ShiftAnalyzer``: both full-vocabulary distributions per position) against its floor, the two models' bare
  forward passes over the same batches; base ranks compared with the plain computation.

It needs only torch, transformers and peft on the machine (alignkit itself from ``src/``); ``--tiny`` runs the
same steps on a small shape, on a CPU, in seconds (tests/test_bench_gpu_check.py runs it so).

    python bench/gpu_check.py [--device cuda] [--json FILE]
    python bench/gpu_check.py --tiny --device cpu --json /tmp/gpu_check.json
"""

from __future__ import annotations

import argparse
import copy
import json
import random
import sys
import time
import traceback
from typing import Any

from _results import write_result  # bench/_results.py: docs/results/NAME.json
from prefix_cache import EXAMPLES, QUERIES, build_prefix, four_ways
from shift_floor import floor_pass, reference
from shift_speed import TEXT

SHAPES = {
    # Llama-2-7B's shape
    "7b": dict(num_hidden_layers=32, hidden_size=4096, intermediate_size=11008, num_attention_heads=32,
               num_key_value_heads=32, vocab_size=32000, max_position_embeddings=4096),
    # the same steps in seconds on a CPU
    "tiny": dict(num_hidden_layers=2, hidden_size=64, intermediate_size=128, num_attention_heads=4,
                 num_key_value_heads=2, vocab_size=2000, max_position_embeddings=4096),
}
SYLLABLES = [c + v for c in "bcdfghjklmnprstvwz" for v in ("a", "e", "i", "o", "u", "ai", "ou", "ea")]


def build_tokenizer(vocab_size: int, seed: int = 0):
    """A byte-level BPE tokenizer of exactly ``vocab_size`` entries, trained in memory on English (the
    benchmarks' own texts) and generated words, so that every id the model can emit decodes."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    rng = random.Random(seed)
    english = [TEXT] + [f"# Question\n{q}\n\n# Answer\n{a}\n\n" for q, a in EXAMPLES] + QUERIES
    words = [" ".join("".join(rng.choice(SYLLABLES) for _ in range(rng.randint(1, 4))) for _ in range(50))
             for _ in range(vocab_size // 4)]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<pad>", "</s>", "<s>", "<unk>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(english * 50 + words, trainer=trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>",
                                   unk_token="<unk>")
    short = vocab_size - len(fast)
    if short > 0:  # the generated text ran out of merges: fill the vocabulary with reserved tokens
        fast.add_tokens([f"<reserved_{i}>" for i in range(short)])
    assert len(fast) == vocab_size, (len(fast), vocab_size)
    return fast


def build_pair(shape: dict[str, Any], tokenizer, device: str, dtype: str, noise: float):
    """The random base model on ``device`` and its sibling (same weights plus seeded noise)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch_dtype = {"bfloat16": torch.bfloat16, "float32": torch.float32}[dtype]
    cfg = LlamaConfig(**shape, pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id,
                      eos_token_id=tokenizer.eos_token_id, tie_word_embeddings=False)
    torch.manual_seed(0)
    before = torch.get_default_dtype()
    torch.set_default_dtype(torch_dtype)
    try:
        with torch.device(device):
            base = LlamaForCausalLM(cfg).eval()
    finally:
        torch.set_default_dtype(before)
    aligned = copy.deepcopy(base)
    gen = torch.Generator(device=device).manual_seed(1)
    with torch.no_grad():
        for p in aligned.parameters():
            if p.dim() == 2:
                p.add_(torch.randn(p.shape, generator=gen, device=p.device, dtype=p.dtype) * (noise * p.float().std()))
    return base, aligned


def sync() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.synchronize()


def best_of(fn, repeats: int) -> tuple[float, Any]:
    best, out = float("inf"), None
    for _ in range(repeats):
        sync()
        t = time.perf_counter()
        out = fn()
        sync()
        best = min(best, time.perf_counter() - t)
    return best, out


def generation(model, args) -> dict[str, Any]:
    """Prefix reuse on the GPU, side by side (bench/prefix_cache.py's comparison, plus transformers' generate)."""
    import torch

    from alignkit import GenerationConfig

    prefix = build_prefix(args.prefix_tokens, model.count_tokens)
    queries = [f"# Question\n{q}\n\n# Answer\n" for q in (QUERIES * 4)[: args.requests]]
    with_prefix = [prefix + q for q in queries]
    cfg = GenerationConfig(max_new_tokens=args.new_tokens)
    model.engine.eos_ids = set()  # every request makes exactly new_tokens tokens
    model.generate(with_prefix[:2], GenerationConfig(max_new_tokens=4), reuse_prefix=False)  # warm-up
    model.generate(queries[:2], GenerationConfig(max_new_tokens=4), reuse_prefix=False)

    (t_cold, reused), (t_warm, warm), (t_recompute, recomputed), (t_none, _) = four_ways(
        model, with_prefix, queries, cfg, lambda fn: best_of(fn, args.repeats))

    # transformers' own generate over the same left-padded batch (its own cache, no prefix reuse)
    tok = model.tokenizer
    ids = [model.encode_prompt(p) for p in with_prefix]
    width = max(map(len, ids))
    input_ids = torch.tensor([[tok.pad_token_id] * (width - len(s)) + s for s in ids], device=model.device)
    mask = torch.tensor([[0] * (width - len(s)) + [1] * len(s) for s in ids], device=model.device)

    def hf_generate():
        with torch.no_grad():
            out = model.model.generate(input_ids=input_ids, attention_mask=mask, max_new_tokens=args.new_tokens,
                                       min_new_tokens=args.new_tokens, do_sample=False, eos_token_id=None,
                                       pad_token_id=tok.pad_token_id)
        return out[:, width:].tolist()

    t_hf, hf_tokens = best_of(hf_generate, args.repeats)
    same = sum(a.token_ids == b.token_ids for a, b in zip(reused, recomputed))
    same_warm = sum(a.token_ids == b.token_ids for a, b in zip(warm, recomputed))
    same_hf = sum(list(a.token_ids) == b for a, b in zip(recomputed, hf_tokens))
    n = len(queries)
    made = n * args.new_tokens

    def agree(xs, ys) -> float:  # mean tokens before the first difference
        return round(sum(next((i for i, (a, b) in enumerate(zip(x, y)) if a != b), len(x)) for x, y in zip(xs, ys))
                     / n, 2)

    rec = [list(c.token_ids) for c in recomputed]
    seconds = {"reuse_cold": t_cold, "reuse_warm": t_warm, "recompute": t_recompute, "no_prefix": t_none,
               "transformers_generate": t_hf}
    return {
        "requests": n, "prefix_tokens": model.count_tokens(prefix),
        "query_tokens_mean": round(sum(model.count_tokens(q) for q in queries) / n, 1),
        "new_tokens": args.new_tokens,
        "seconds": {k: round(v, 4) for k, v in seconds.items()},
        "new_tokens_per_second": {k: round(made / v, 1) for k, v in seconds.items()},
        "ratio_to_no_prefix": {k: round(v / t_none, 3) for k, v in seconds.items() if k != "no_prefix"},
        "speedup_reuse_cold_vs_recompute": round(t_recompute / t_cold, 3),
        "speedup_reuse_warm_vs_transformers_generate": round(t_hf / t_warm, 3),
        "token_identical_to_recompute": {"cold": f"{same}/{n}", "warm": f"{same_warm}/{n}",
                                         "transformers_generate": f"{same_hf}/{n}"},
        "mean_tokens_before_first_difference": {
            "cold": agree([list(c.token_ids) for c in reused], rec), "warm": agree([list(c.token_ids) for c in warm], rec),
            "transformers_generate": agree(hf_tokens, rec)},
    }


def shift(base, aligned, args) -> dict[str, Any]:
    """The exact shift analysis against its floor (bench/shift_floor.py's comparison), in the models' dtype."""
    import torch

    from alignkit import GenerationConfig
    from alignkit.analysis.shift import Item, ShiftAnalyzer, ShiftOptions, base_prompt

    # the aligned sibling's own greedy answers (as the analysis is run on a real pair), each `tokens` long
    questions = [f"Question {i}: {q}" for i, q in enumerate((QUERIES * 4)[: args.answers])]
    aligned.engine.eos_ids = set()
    made = aligned.generate(questions, GenerationConfig(max_new_tokens=args.tokens))
    items = [Item(str(i), q, c.text, {}, list(c.token_ids)) for i, (q, c) in enumerate(zip(questions, made))]
    assert all(len(it.answer_ids or []) == args.tokens for it in items)
    # the base reads each answer after the same prompt as the sibling (context "raw"): what differs is the weights
    an = ShiftAnalyzer(base, aligned, label="gpu-check", options=ShiftOptions(context="raw", batch_size=args.batch))
    bprompts = [base_prompt("raw", it.instruction) for it in items]
    aprompts = [it.instruction for it in items]
    answers = [it.answer_ids for it in items]
    floor_pass(base, bprompts[:1], answers[:1], args.batch)  # warm-up
    list(an.analyse(items[:1]))
    floors, exacts, recs = [], [], []
    for _ in range(args.repeats):
        sync()
        t = time.perf_counter()
        floor_pass(base, bprompts, answers, args.batch)
        floor_pass(aligned, aprompts, answers, args.batch)
        sync()
        floors.append(time.perf_counter() - t)
        t = time.perf_counter()
        with torch.no_grad():
            recs = list(an.analyse(items))
        sync()
        exacts.append(time.perf_counter() - t)
    floor, exact = min(floors), min(exacts)
    if args.profile:  # where the exact pass' time goes beyond the floor (printed, not kept)
        import cProfile
        import pstats

        prof = cProfile.Profile()
        with torch.no_grad():
            prof.runcall(lambda: list(an.analyse(items)))
        pstats.Stats(prof, stream=sys.stdout).sort_stats("tottime").print_stats(14)
    ranks = [[p["base_rank"] for p in r["positions"]] for r in recs]
    ref_ranks, ref_kls = reference(base, aligned, bprompts, aprompts, answers, args.batch)
    kls = [[p["kl"] for p in r["positions"]] for r in recs]
    kl_err = max(abs(x - y) / max(y, 1e-6) for a, b in zip(kls, ref_kls) for x, y in zip(a, b))
    flat = [r for row in ranks for r in row]
    positions = len(flat)
    return {
        "answers": args.answers, "tokens": args.tokens, "batch_size": args.batch, "positions": positions,
        "seconds": {"floor": round(floor, 4), "exact": round(exact, 4)},
        "positions_per_second": {"floor": round(positions / floor), "exact": round(positions / exact)},
        "ratio_exact_to_floor": round(exact / floor, 3), "target": 1.3,
        "identical_base_ranks": ranks == ref_ranks, "kl_max_relative_difference": float(f"{kl_err:.3g}"),
        "shares": {"unshifted": round(sum(r == 0 for r in flat) / positions, 4),
                   "marginal": round(sum(1 <= r <= 2 for r in flat) / positions, 4),
                   "shifted": round(sum(r >= 3 for r in flat) / positions, 4)},
    }


def environment(device: str) -> dict[str, Any]:
    import torch
    import transformers

    import alignkit

    env = {"torch": torch.__version__, "transformers": transformers.__version__, "alignkit": alignkit.__version__,
           "device": device}
    try:
        import peft

        env["peft"] = peft.__version__
    except ImportError:
        env["peft"] = None
    if device.startswith("cuda"):
        props = torch.cuda.get_device_properties(0)
        env.update(gpu=props.name, gpu_memory_gib=round(props.total_memory / 2**30, 1),
                   cuda=torch.version.cuda)
    return env


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float32"])
    ap.add_argument("--tiny", action="store_true", help="a small shape (2 layers, hidden 64): the steps on a CPU")
    ap.add_argument("--requests", type=int, default=16)
    ap.add_argument("--new-tokens", type=int, default=32)
    ap.add_argument("--prefix-tokens", type=int, default=1000)
    ap.add_argument("--answers", type=int, default=16)
    ap.add_argument("--tokens", type=int, default=512)
    ap.add_argument("--batch", type=int, default=8, help="answers per teacher-forced pass")
    ap.add_argument("--repeats", type=int, default=3, help="best of N for each measurement")
    ap.add_argument("--profile", action="store_true", help="print a cProfile of one exact shift pass")
    ap.add_argument("--noise", type=float, default=0.02, help="the sibling's noise, relative to each matrix's spread")
    ap.add_argument("--parts", default="generation,shift", help="which measurements, comma-separated")
    ap.add_argument("--json")
    args = ap.parse_args(argv)
    import torch

    from alignkit.models.hf import HFModel

    shape = SHAPES["tiny" if args.tiny else "7b"]
    result: dict[str, Any] = {"environment": environment(args.device), "dtype": args.dtype,
                              "shape": {k: v for k, v in shape.items()}, "errors": {}}
    t = time.perf_counter()
    tokenizer = build_tokenizer(shape["vocab_size"])
    t_tok = time.perf_counter() - t
    t = time.perf_counter()
    base_lm, aligned_lm = build_pair(shape, tokenizer, args.device, args.dtype, noise=args.noise)
    sync()
    t_build = time.perf_counter() - t
    params = sum(p.numel() for p in base_lm.parameters())
    result["build"] = {"parameters": params, "tokenizer_seconds": round(t_tok, 1),
                       "pair_seconds": round(t_build, 1)}
    if args.device.startswith("cuda"):
        result["build"]["gpu_memory_allocated_gib"] = round(torch.cuda.memory_allocated() / 2**30, 1)
    print(json.dumps(result, indent=2), flush=True)
    base = HFModel(base_lm, tokenizer, spec="random-llama-7b" if not args.tiny else "random-llama-tiny",
                   source={"random_init": True, "shape": result["shape"]})
    aligned = HFModel(aligned_lm, tokenizer, spec="random-llama-7b-sibling" if not args.tiny else "random-llama-tiny-sibling",
                      source={"random_init": True, "noise": args.noise})
    parts = {"generation": lambda: generation(base, args), "shift": lambda: shift(base, aligned, args)}
    for name, part in ((n, parts[n]) for n in args.parts.split(",")):
        t = time.perf_counter()
        try:
            result[name] = part()
        except Exception as e:  # noqa: BLE001 - one part's failure must not lose the other's numbers
            traceback.print_exc()
            result["errors"][name] = f"{type(e).__name__}: {e}"
        print(f"{name}: {time.perf_counter() - t:.1f} s\n" + json.dumps(result.get(name), indent=2), flush=True)
        if args.device.startswith("cuda"):
            result.setdefault("peak_gpu_memory_gib", {})[name] = round(torch.cuda.max_memory_allocated() / 2**30, 1)
    write_result("gpu_check", result, path=args.json)
    return 1 if result["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
