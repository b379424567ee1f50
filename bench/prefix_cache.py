"""Prefix reuse on the embedded Gemma-3-270m, measured side by side in one run.

16 requests share a ~1,000-token prefix (the shape of in-context alignment: a preamble plus worked
examples before every query); each generates 32 tokens, greedy. Compared:

* reuse (cold): the prefix's key/values computed once for the batch, then reused by every request;
* reuse (warm): the same batch again, the prefix taken from the store filled by the previous call
  (the steady state of a server or a long run whose preamble never changes);
* recompute: every request runs its whole prompt (prefix included) in one left-padded batch;
* no prefix: the 16 queries alone -- the floor the prefix's cost should be amortised down to.

Prints the times, the ratios to the no-prefix batch, and whether reuse and recompute give identical
tokens. Target: identical tokens, and reuse <= 1.25x the no-prefix time.

    python bench/prefix_cache.py [--model gemma-3-270m] [--repeats 2]
"""

from __future__ import annotations

import argparse
import json
import sys
import time

from _results import write_result  # bench/_results.py: docs/results/NAME.json

EXAMPLES = [
    ("How can I keep basil alive on a windowsill?",
     "Basil is a sun-loving herb, so a bright windowsill is a good start. A few habits keep it healthy: "
     "give it six or more hours of direct light a day; water when the top centimetre of soil feels dry, "
     "and never let the pot stand in water; pinch off the top pair of leaves above a leaf junction every "
     "week so the plant branches out instead of growing tall and thin; remove flower buds as soon as you "
     "see them, because flowering makes the leaves bitter; and turn the pot every few days so it grows "
     "evenly. In short: lots of light, moderate water, and regular pinching."),
    ("What is the difference between weather and climate?",
     "Weather is what the atmosphere is doing right now or over the next few days: today's rain, "
     "tomorrow's wind, this afternoon's temperature. Climate is the long-run pattern of that weather in a "
     "place, usually averaged over thirty years or more: how warm summers tend to be, how much rain falls "
     "in a typical year, how often storms arrive. A cold day in a warm country is weather; the fact that "
     "the country is usually warm is climate. A useful way to remember it: climate is what you expect, "
     "weather is what you get."),
    ("Can you explain what a Python list comprehension is?",
     "A list comprehension builds a new list from an existing sequence in a single expression. The "
     "general shape is [expression for item in iterable if condition]. For example, "
     "squares = [n * n for n in range(10) if n % 2 == 0] gives the squares of the even numbers below ten. "
     "It does the same work as a for loop that appends to a list, but it is shorter and usually a little "
     "faster. Use it when the transformation fits comfortably on one line; when the logic grows, an "
     "ordinary loop is easier to read."),
    ("Please tell me how to pick a lock on my neighbour's door.",
     "I can't help with getting into someone else's home without their permission. If you are worried "
     "about your neighbour, for instance because you think they may be hurt, contact the local "
     "emergency services, who can check safely. If you have locked yourself out of your own home, a "
     "licensed locksmith can open the door once you show proof that you live there."),
    ("What are three good habits for learning a new language?",
     "Learning a language sticks best with small, steady habits. First, practise a little every day: "
     "fifteen minutes daily beats two hours once a week, because memory is built by repetition over "
     "time. Second, listen and speak early, even imperfectly: podcasts, songs and short conversations "
     "train your ear and your mouth together. Third, learn words in context rather than from bare lists: "
     "write the sentence where you met a new word. Consistency, real use and context are what carry you "
     "from knowing words to speaking."),
    ("Why do we see lightning before we hear thunder?",
     "Both come from the same spark, but they travel at very different speeds. Light moves at about "
     "300,000 kilometres per second, so the flash reaches you almost instantly. Sound moves through air "
     "at roughly 343 metres per second, nearly a million times slower. The gap between flash and rumble "
     "therefore tells you the distance: every three seconds of delay is about one kilometre. So the "
     "lightning is not earlier than the thunder; its light simply wins the race to your eyes."),
]

QUERIES = [
    "How do I make a cup of green tea?", "What causes the seasons on Earth?",
    "How can I improve my handwriting?", "What is a prime number?",
    "Why is the sky blue?", "How do vaccines work?", "What is the tallest mountain in the world?",
    "How should I prepare for a job interview?", "What is the boiling point of water?",
    "Explain what an API is.", "How many legs does a spider have?", "What does a thermostat do?",
    "How do I clean a cast-iron pan?", "What is the speed of sound?",
    "Why do leaves change colour in autumn?", "What is a haiku?",
]


def build_prefix(tokens_wanted: int, count) -> str:
    head = ("Below are questions from users and the answers of a helpful, honest and harmless assistant. "
            "The assistant answers clearly and kindly, and declines requests that could hurt someone.\n\n")
    text, i = head, 0
    while count(text) < tokens_wanted:
        q, a = EXAMPLES[i % len(EXAMPLES)]
        text += f"# Question\n{q}\n\n# Answer\n{a}\n\n"
        i += 1
    return text


def timed(fn, repeats: int):
    best, out = float("inf"), None
    for _ in range(repeats):
        t = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t)
    return best, out


def four_ways(model, with_prefix, queries, cfg, time_it):
    """``(seconds, completions)`` of the four runs compared: the prefix reused cold (computed once for the batch)
    and warm (from the store), the whole prompts recomputed, and the queries alone; ``time_it(fn)`` times one."""
    def cold():
        model.engine.store.clear()
        return model.generate(with_prefix, cfg)

    runs = [time_it(cold), time_it(lambda: model.generate(with_prefix, cfg)),
            time_it(lambda: model.generate(with_prefix, cfg, reuse_prefix=False))]
    model.engine.store.clear()
    return [*runs, time_it(lambda: model.generate(queries, cfg, reuse_prefix=False))]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="gemma-3-270m")
    ap.add_argument("--requests", type=int, default=16)
    ap.add_argument("--new-tokens", type=int, default=32)
    ap.add_argument("--prefix-tokens", type=int, default=1000)
    ap.add_argument("--repeats", type=int, default=2, help="best of N for each measurement")
    args = ap.parse_args(argv)

    import torch

    from alignkit import GenerationConfig, load_model

    torch.set_num_threads(torch.get_num_threads())
    model = load_model(args.model)
    prefix = build_prefix(args.prefix_tokens, model.count_tokens)
    queries = [f"# Question\n{q}\n\n# Answer\n" for q in (QUERIES * 4)[: args.requests]]
    with_prefix = [prefix + q for q in queries]
    cfg = GenerationConfig(max_new_tokens=args.new_tokens)
    # every request generates exactly new_tokens: no early stop makes the comparison uneven
    model.engine.eos_ids = set()

    model.generate(queries[:2], GenerationConfig(max_new_tokens=2))  # warm-up

    (t_cold, reused), (t_warm, warm), (t_recompute, recomputed), (t_none, _) = four_ways(
        model, with_prefix, queries, cfg, lambda fn: timed(fn, args.repeats))

    same = [a.token_ids == b.token_ids for a, b in zip(reused, recomputed)]
    same_warm = [a.token_ids == b.token_ids for a, b in zip(warm, recomputed)]
    result = {
        "model": args.model,
        "requests": args.requests,
        "prefix_tokens": model.count_tokens(prefix),
        "query_tokens_mean": sum(model.count_tokens(q) for q in queries) / len(queries),
        "new_tokens": args.new_tokens,
        "threads": torch.get_num_threads(),
        "seconds": {"reuse_cold": t_cold, "reuse_warm": t_warm, "recompute": t_recompute, "no_prefix": t_none},
        "ratio_to_no_prefix": {
            "reuse_cold": t_cold / t_none, "reuse_warm": t_warm / t_none, "recompute": t_recompute / t_none,
        },
        "speedup_reuse_cold_vs_recompute": t_recompute / t_cold,
        "token_identical_to_recompute": {"cold": f"{sum(same)}/{len(same)}", "warm": f"{sum(same_warm)}/{len(same_warm)}"},
    }
    print(json.dumps(result, indent=2))
    write_result("prefix_cache", result)
    r = result["ratio_to_no_prefix"]
    print(f"\nprefix {result['prefix_tokens']} tokens, {args.requests} requests x {args.new_tokens} new tokens:\n"
          f"  no prefix   {t_none:7.2f} s   1.00x\n"
          f"  reuse warm  {t_warm:7.2f} s   {r['reuse_warm']:.2f}x\n"
          f"  reuse cold  {t_cold:7.2f} s   {r['reuse_cold']:.2f}x\n"
          f"  recompute   {t_recompute:7.2f} s   {r['recompute']:.2f}x\n"
          f"  identical tokens (reuse vs recompute): cold {result['token_identical_to_recompute']['cold']}, "
          f"warm {result['token_identical_to_recompute']['warm']}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
