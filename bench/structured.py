"""Structured output on the embedded Gemma-3-270m, measured side by side in one run: N requests with a JSON schema
(raw completion prompts asking for a JSON record; greedy; batches of 8) -- how many return JSON that parses and
matches the schema -- and the cost per generated token against the same requests unconstrained (target <= 1.3x).

    python bench/structured.py [--requests 100] [--new-tokens 48]
"""

from __future__ import annotations

import argparse
import json
import sys
import time

from _results import write_result  # bench/_results.py: docs/results/NAME.json

SCHEMA = {"type": "object", "additionalProperties": False, "required": ["name", "age", "city"],
          "properties": {"name": {"type": "string", "maxLength": 24}, "age": {"type": "integer", "minimum": 0,
                                                                               "maximum": 120},
                         "city": {"type": "string", "maxLength": 24}}}
PEOPLE = ["a retired sailor", "a young painter", "a baker who loves jazz", "a chess champion", "a beekeeper",
          "a night-shift nurse", "a marathon runner", "a lighthouse keeper", "a potter", "a street musician"]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--requests", type=int, default=100)
    ap.add_argument("--new-tokens", type=int, default=48)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--model", default="gemma-3-270m")
    args = ap.parse_args(argv)

    import jsonschema

    from alignkit import GenerationConfig, load_model
    from alignkit.methods import MethodOptions, apply_method
    from alignkit.structured import Constraint

    model = apply_method(load_model(args.model), MethodOptions(method="none"))
    prompts = [f"Here is a JSON record (name, age, city) describing {PEOPLE[i % len(PEOPLE)]}, person number {i}:\n"
               for i in range(args.requests)]
    constraint = Constraint.json_schema(SCHEMA)
    model.generate(prompts[:1], GenerationConfig(max_new_tokens=4, constraint=constraint))  # warm-up (tokenizer map)

    def run(cfg):
        t0, out = time.perf_counter(), []
        for i in range(0, len(prompts), args.batch):
            out += model.generate(prompts[i : i + args.batch], cfg)
        return time.perf_counter() - t0, out

    t_c, constrained = run(GenerationConfig(max_new_tokens=args.new_tokens, constraint=constraint))
    t_u, free = run(GenerationConfig(max_new_tokens=args.new_tokens))
    valid = 0
    for c in constrained:
        try:
            jsonschema.validate(json.loads(c.text), SCHEMA)
            valid += 1
        except (ValueError, jsonschema.ValidationError):
            pass
    free_valid = 0
    for c in free:
        try:
            jsonschema.validate(json.loads(c.text.strip()), SCHEMA)
            free_valid += 1
        except (ValueError, jsonschema.ValidationError):
            pass
    tok_c, tok_u = sum(c.completion_tokens for c in constrained), sum(c.completion_tokens for c in free)
    per_c, per_u = t_c / tok_c, t_u / tok_u
    result = {
        "model": args.model, "requests": len(prompts), "max_new_tokens": args.new_tokens, "batch": args.batch,
        "library": "llguidance", "schema": SCHEMA,
        "valid_json_matching_schema": valid, "stopped_by_grammar": sum(c.finish_reason == "stop" for c in constrained),
        "unconstrained_valid": free_valid,
        "constrained_seconds": round(t_c, 2), "constrained_tokens": tok_c,
        "unconstrained_seconds": round(t_u, 2), "unconstrained_tokens": tok_u,
        "seconds_per_token_constrained": round(per_c, 5), "seconds_per_token_unconstrained": round(per_u, 5),
        "cost_ratio_per_token": round(per_c / per_u, 3),
        "examples": [c.text for c in constrained[:3]],
    }
    print(f"{valid}/{len(prompts)} constrained answers are JSON matching the schema (unconstrained: {free_valid}); "
          f"per token {per_c * 1000:.1f} ms constrained vs {per_u * 1000:.1f} ms free -> {per_c / per_u:.2f}x")
    write_result("structured", result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
