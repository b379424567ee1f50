"""Which structured-generation library alignkit uses, chosen by measurement: llguidance and xgrammar side by side
in one run, on the embedded Gemma's tokenizer (262k tokens) and the JSON schema of bench/structured.py. For each
library: the one-off cost (tokenizer and grammar compilation) and the cost per token of what the token loop does
at every step -- compute the allowed-token mask, apply it to a [V] logits row, accept the chosen token --
replayed over the token sequences of valid records (the texts the constrained bench produced).

    python bench/grammar_libs.py          (xgrammar must be importable: pip install xgrammar)
"""

from __future__ import annotations

import json
import sys
import time

from _results import write_result  # bench/_results.py: docs/results/NAME.json
from structured import SCHEMA

RECORDS = ['{"age":100,"city":"New York","name":"John"}', '{"age":20,"city":"New York","name":"Paul"}',
           '{"age":35,"city":"Lisbon","name":"Maria Silva"}', '{"age":7,"city":"Oslo","name":"Ida"}'] * 5


def main(argv=None) -> int:
    import torch

    from alignkit import load_model

    tok = load_model("gemma-3-270m").tokenizer
    vocab = len(tok)
    seqs = [tok(r, add_special_tokens=False)["input_ids"] for r in RECORDS]
    steps = sum(len(s) for s in seqs)
    logits = torch.zeros(vocab)
    result = {"vocab": vocab, "tokens_replayed": steps}

    # llguidance
    import llguidance
    import llguidance.hf
    import llguidance.torch as lt

    t0 = time.perf_counter()
    lltok = llguidance.hf.from_tokenizer(tok, n_vocab=vocab)
    schema = json.loads(json.dumps(SCHEMA, sort_keys=True))  # as alignkit passes it (its records: keys sorted)
    grammar = llguidance.LLMatcher.grammar_from_json_schema(schema, defaults={"whitespace_flexible": False})
    setup = time.perf_counter() - t0
    mask = lt.allocate_token_bitmask(1, vocab)
    warm = llguidance.LLMatcher(lltok, grammar)  # the first masks of a grammar build its caches: not per-token cost
    for t in seqs[0]:
        lt.fill_next_token_bitmask(warm, mask, 0)
        warm.consume_token(t)
    t0 = time.perf_counter()
    for seq in seqs:
        m = llguidance.LLMatcher(lltok, grammar)
        for t in seq:
            lt.fill_next_token_bitmask(m, mask, 0)
            row = logits.unsqueeze(0).clone()
            lt.apply_token_bitmask_inplace(row, mask)
            assert row[0, t] > -1e30 and m.consume_token(t)
    per = (time.perf_counter() - t0) / steps
    result["llguidance"] = {"version": llguidance.get_version() if hasattr(llguidance, "get_version") else None,
                            "setup_seconds": round(setup, 3), "ms_per_token": round(per * 1000, 4)}

    # xgrammar
    try:
        import xgrammar as xgr
    except ImportError as e:
        print(f"xgrammar is not importable ({e}); only llguidance measured", file=sys.stderr)
        result["xgrammar"] = None
    else:
        t0 = time.perf_counter()
        info = xgr.TokenizerInfo.from_huggingface(tok, vocab_size=vocab)
        compiled = xgr.GrammarCompiler(info).compile_json_schema(json.dumps(schema), any_whitespace=False)
        setup = time.perf_counter() - t0
        bitmask = xgr.allocate_token_bitmask(1, vocab)
        done, refused = 0, None
        t0 = time.perf_counter()
        for seq in seqs:
            m = xgr.GrammarMatcher(compiled)
            for k, t in enumerate(seq):
                m.fill_next_token_bitmask(bitmask)
                row = logits.unsqueeze(0).clone()
                xgr.apply_token_bitmask_inplace(row, bitmask)
                if not (row[0, t] > -1e30 and m.accept_token(t)):
                    refused = refused or f"token {tok.decode([t])!r} after {tok.decode(seq[:k])!r}"
                    break
                done += 1
        per_x = (time.perf_counter() - t0) / max(done, 1)
        result["xgrammar"] = {"version": getattr(xgr, "__version__", None), "setup_seconds": round(setup, 3),
                              "ms_per_token": round(per_x * 1000, 4), "tokens_accepted": done,
                              "refused_valid_json": refused}
    for name in ("llguidance", "xgrammar"):
        r = result.get(name)
        if r:
            print(f"{name}: setup {r['setup_seconds']:.2f} s, {r['ms_per_token']:.3f} ms per token (mask + apply + "
                  "accept)" + (f"; REFUSED valid JSON: {r['refused_valid_json']}" if r.get("refused_valid_json") else ""))
    write_result("grammar_libs", result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
