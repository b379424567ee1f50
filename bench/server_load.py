"""Load on the OpenAI-compatible server with the embedded Gemma-3-270m under in-context alignment.

N concurrent clients (official openai client, real sockets) each send R chat requests. The same load runs
twice in one process, side by side: with batching (--max-batch 8) and one request at a time (--max-batch 1).
Prints, for both: requests answered, cleanly refused (503), 5xx other than 503 (must be 0), wall time,
throughput, and the ratio batched/unbatched.

    python bench/server_load.py [--clients 16] [--requests 10] [--max-tokens 24]
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
import time

from _results import write_result  # bench/_results.py: docs/results/NAME.json


def run_load(url: str, clients: int, requests: int, max_tokens: int) -> dict:
    import openai
    from urial_selfstop import INSTRUCTIONS

    counts = {"ok": 0, "refused_503": 0, "server_error": 0, "other_error": 0, "completion_tokens": 0}
    lock = threading.Lock()

    def client(c: int) -> None:
        api = openai.OpenAI(base_url=url, api_key="none", max_retries=0, timeout=600)
        for r in range(requests):
            q = INSTRUCTIONS[(c * requests + r) % len(INSTRUCTIONS)][1]
            try:
                resp = api.chat.completions.create(model="m", messages=[{"role": "user", "content": q}],
                                                   max_tokens=max_tokens, temperature=0)
                with lock:
                    counts["ok"] += 1
                    counts["completion_tokens"] += resp.usage.completion_tokens
            except openai.APIStatusError as e:
                with lock:
                    key = "refused_503" if e.status_code == 503 else "server_error" if e.status_code >= 500 else "other_error"
                    counts[key] += 1
                if e.status_code == 503:
                    time.sleep(float(e.response.headers.get("retry-after", "1")))

    t = time.perf_counter()
    threads = [threading.Thread(target=client, args=(c,)) for c in range(clients)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    wall = time.perf_counter() - t
    return {**counts, "seconds": round(wall, 1), "requests_per_s": round(counts["ok"] / wall, 3),
            "tokens_per_s": round(counts["completion_tokens"] / wall, 1)}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--clients", type=int, default=16)
    ap.add_argument("--requests", type=int, default=10)
    ap.add_argument("--max-tokens", type=int, default=24)
    ap.add_argument("--max-queue", type=int, default=64)
    args = ap.parse_args(argv)

    sys.path.insert(0, __file__.rsplit("/", 1)[0])
    from alignkit import load_model
    from alignkit.methods import MethodOptions, apply_method
    from alignkit.server.app import build_app
    from alignkit.server.service import Service

    sys.path.insert(0, __file__.rsplit("/", 2)[0])
    from tests.support.openai_server import ServerThread

    model = apply_method(load_model("gemma-3-270m"), MethodOptions(method="urial"))
    out = {}
    for label, max_batch in (("batched", 8), ("one_at_a_time", 1)):
        service = Service(model, "m", max_batch=max_batch, max_queue=args.max_queue)
        with ServerThread(build_app(service)) as srv:
            out[label] = run_load(srv.url, args.clients, args.requests, args.max_tokens)
            out[label]["largest_batch"] = service.stats.max_batch_rows
    out["throughput_ratio_batched_vs_one_at_a_time"] = round(
        out["batched"]["requests_per_s"] / out["one_at_a_time"]["requests_per_s"], 2)
    out["zero_5xx_besides_503"] = out["batched"]["server_error"] == 0 and out["one_at_a_time"]["server_error"] == 0
    result = {"clients": args.clients, "requests_each": args.requests, "max_tokens": args.max_tokens, **out}
    print(json.dumps(result, indent=2))
    write_result("server_load", result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
