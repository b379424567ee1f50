"""Does the embedded base model under URIAL call a tool when it should, and not when it should not?
(`tool_choice: "auto"` on `alignkit serve`; alignkit.server.tools.)

A labelled set written for alignkit: 24 requests, with three tools offered every time (weather now, currency
conversion, a timer). 12 need a tool (4 per tool), 12 do not -- among them 4 that mention a tool's topic without
needing it ("What causes rain?"). Each request goes through the server's chat endpoint with the official openai
client (in-process), greedy, at most 64 new tokens, `tool_choice` unset (auto). Counted: calls on the 12 that need
one (and whether the right tool), calls on the 12 that do not, calls cut off by the token limit.

    python bench/tool_choice.py [--model gemma-3-270m] [--method urial]

Writes docs/results/tool_choice.json.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from _results import write_result  # noqa: E402

TOOLS = [
    {"type": "function", "function": {"name": "get_weather", "description": "The weather in a city right now.",
                                      "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                                                     "required": ["city"]}}},
    {"type": "function", "function": {"name": "convert_currency", "description": "Convert an amount of money.",
                                      "parameters": {"type": "object", "properties": {
                                          "amount": {"type": "number"}, "from": {"type": "string"},
                                          "to": {"type": "string"}}, "required": ["amount", "from", "to"]}}},
    {"type": "function", "function": {"name": "set_timer", "description": "Start a countdown timer.",
                                      "parameters": {"type": "object", "properties": {"minutes": {"type": "number"}},
                                                     "required": ["minutes"]}}},
]
# (request, the tool it needs or None, kind)
REQUESTS = [
    ("What's the weather like in Oslo right now?", "get_weather", "call"),
    ("Is it raining in Tokyo at the moment?", "get_weather", "call"),
    ("What's the temperature in Cairo now?", "get_weather", "call"),
    ("Do I need an umbrella in London right now?", "get_weather", "call"),
    ("How many dollars is 50 euros?", "convert_currency", "call"),
    ("Convert 100 pounds to yen.", "convert_currency", "call"),
    ("How much is 30 Swiss francs in euros?", "convert_currency", "call"),
    ("What is 200 US dollars in Indian rupees?", "convert_currency", "call"),
    ("Set a timer for 10 minutes.", "set_timer", "call"),
    ("Start a 25-minute timer for my study session.", "set_timer", "call"),
    ("Please set a 3 minute timer for my tea.", "set_timer", "call"),
    ("Count down 15 minutes for me.", "set_timer", "call"),
    ("Write a haiku about autumn.", None, "plain"),
    ("What is the capital of Italy?", None, "plain"),
    ("Explain what photosynthesis is.", None, "plain"),
    ("Give me three tips for better sleep.", None, "plain"),
    ("Translate 'good morning' into French.", None, "plain"),
    ("Tell me a short joke about cats.", None, "plain"),
    ("Suggest a name for a pet turtle.", None, "plain"),
    ("How do I boil an egg?", None, "plain"),
    ("What causes rain?", None, "near-miss"),
    ("Why do exchange rates change?", None, "near-miss"),
    ("What is a good way to manage my time?", None, "near-miss"),
    ("Why is the weather hard to predict?", None, "near-miss"),
]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="gemma-3-270m")
    ap.add_argument("--method", default="urial")
    ap.add_argument("--max-tokens", type=int, default=64)
    args = ap.parse_args(argv)

    import openai
    from fastapi.testclient import TestClient

    from alignkit import load_model
    from alignkit.methods import MethodOptions, apply_method
    from alignkit.server.app import build_app
    from alignkit.server.service import Service

    model = apply_method(load_model(args.model), MethodOptions(method=args.method))
    app = build_app(Service(model, "route", max_batch=8))
    rows = []
    t0 = time.perf_counter()
    with TestClient(app) as http:
        client = openai.OpenAI(base_url="http://testserver/v1", api_key="none", http_client=http, max_retries=0)
        for text, need, kind in REQUESTS:
            r = client.chat.completions.create(model="route", messages=[{"role": "user", "content": text}],
                                               tools=TOOLS, max_tokens=args.max_tokens, temperature=0)
            ch = r.choices[0]
            call = ch.message.tool_calls[0].function if ch.message.tool_calls else None
            content = ch.message.content or ""
            rows.append({"request": text, "needs": need, "kind": kind, "called": call.name if call else None,
                         "arguments": json.loads(call.arguments) if call else None,
                         "cut_call": call is None and content.lstrip().startswith("{"),
                         "answer": content[:300], "finish_reason": ch.finish_reason})
            print(f"[{kind:9}] {text[:44]:46} -> {call.name if call else repr(content[:60])}", file=sys.stderr)
    model.close()
    need = [r for r in rows if r["needs"]]
    plain = [r for r in rows if not r["needs"]]
    result = {
        "model": args.model, "method": args.method, "max_tokens": args.max_tokens, "requests": len(rows),
        "needs_tool": len(need), "called_when_needed": sum(r["called"] is not None for r in need),
        "right_tool": sum(r["called"] == r["needs"] for r in need),
        "no_tool_needed": len(plain), "called_when_not_needed": sum(r["called"] is not None for r in plain),
        "near_miss": sum(r["kind"] == "near-miss" for r in rows),
        "called_on_near_miss": sum(r["called"] is not None for r in plain if r["kind"] == "near-miss"),
        "cut_calls": sum(r["cut_call"] for r in rows), "seconds": round(time.perf_counter() - t0, 1), "rows": rows,
    }
    print(json.dumps({k: v for k, v in result.items() if k != "rows"}, indent=2))
    write_result("tool_choice", result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
