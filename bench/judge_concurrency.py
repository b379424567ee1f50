"""Judging throughput against a remote-like judge: a local OpenAI-compatible server that answers every chat
request after a fixed latency (as a hosted API does), called through alignkit's openai backend by the
evaluation Judge at concurrency 1 and 8, side by side. Target: >= 6x.

    python bench/judge_concurrency.py [--items 32] [--latency 0.5]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time

from _results import write_result  # bench/_results.py: docs/results/NAME.json
from fastapi import FastAPI, Request  # at module level: the route annotations are resolved from here


def app_with_latency(latency: float):
    app = FastAPI()
    verdict = json.dumps({a: {"reason": "fine", "score": 4}
                          for a in ("helpfulness", "clarity", "factuality", "depth", "engagement")})

    @app.get("/v1/models")
    async def models():
        return {"object": "list", "data": [{"id": "judge", "object": "model", "owned_by": "bench"}]}

    @app.post("/v1/chat/completions")
    async def chat(request: Request):
        await request.json()
        await asyncio.sleep(latency)
        return {"id": "x", "object": "chat.completion", "created": 0, "model": "judge",
                "choices": [{"index": 0, "message": {"role": "assistant", "content": verdict}, "finish_reason": "stop"}],
                "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}}

    return app


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--items", type=int, default=32)
    ap.add_argument("--latency", type=float, default=0.5)
    args = ap.parse_args(argv)
    sys.path.insert(0, __file__.rsplit("/", 2)[0])
    from tests.support.openai_server import ServerThread

    from alignkit import load_model
    from alignkit.evaluation.judge import Judge, load_rubric
    from alignkit.methods import MethodOptions, apply_method

    items = [{"instruction": f"Question {i}?", "answer": f"Answer {i}."} for i in range(args.items)]
    out = {"items": args.items, "latency_s": args.latency}
    with ServerThread(app_with_latency(args.latency)) as srv:
        for conc in (1, 8):
            model = apply_method(load_model(f"openai:judge@{srv.url}", concurrency=conc), MethodOptions(method="template"))
            judge = Judge(model, load_rubric("multi-aspect"), batch_size=max(8, conc))
            t = time.perf_counter()
            res = judge.judge(items)
            dt = time.perf_counter() - t
            assert all(not r["missing"] for r in res), res[0]
            out[f"concurrency_{conc}"] = {"seconds": round(dt, 2), "judgments_per_s": round(len(items) / dt, 2)}
    out["speedup"] = round(out["concurrency_8"]["judgments_per_s"] / out["concurrency_1"]["judgments_per_s"], 2)
    print(json.dumps(out, indent=2))
    write_result("judge_concurrency", out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
