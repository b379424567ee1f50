"""The server side of the comparison page (``/ui``): the shift of one answer under a reference route
(``/v1/shift``), a weighted route's per-request variant (``mix_weights``), what a route's completion says about how
it was made, and the page's content security policy."""

from __future__ import annotations

import contextlib
import json
from typing import Any

from alignkit.analysis.shift import Item, ShiftAnalyzer, ShiftOptions
from alignkit.errors import AlignkitError
from alignkit.methods.wrappers import joined
from alignkit.server.limits import APIError, Limits, count_tokens
from alignkit.server.service import Service

#: the page runs its own inline script and style only; it talks to this server alone
UI_CSP = ("default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; connect-src 'self'; "
           "img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'")


def weighted_variant(model: Any, weights: dict[str, float]) -> Any:
    """The route's model with other weights for one request (a weighted route only)."""
    if not hasattr(model, "with_knobs"):
        raise APIError(400, f"mix_weights: this route ({getattr(model, 'method', '?')}) has no weights to set; only a "
                       "weighted route (dera, proxy, eft, dexperts, mix) does", param="mix_weights")
    try:
        return model.with_knobs(weights)
    except AlignkitError as e:
        raise APIError(400, f"mix_weights: {e}", param="mix_weights") from None


def takes_chat(model: Any) -> bool:
    return bool(getattr(model.capabilities, "chat_template", False))


def route_extras(comp: Any) -> dict[str, Any] | None:
    """What a route's completion says about how it was made (its stages, best-of-N's candidates), for clients that
    want it (the comparison page shows it); OpenAI clients ignore the extra field."""
    meta = comp.meta or {}
    out = {k: meta[k] for k in ("route", "best_of_n") if meta.get(k)}
    return json.loads(json.dumps(out, default=str)) if out else None


def shift_one(reference: Service, service: Service, model: Any, prompt: Any, req: Any, limits: Limits
               ) -> dict[str, Any]:
    """The shift analysis of one answer (runs in a worker thread, with the turn of every route whose weights it
    uses, so no batch of those routes runs meanwhile)."""
    gates = {id(g): g for g in (reference.gate, service.gate)}
    with contextlib.ExitStack() as held:
        for _, gate in sorted(gates.items()):
            held.enter_context(gate.turn())
        try:
            analyzer = ShiftAnalyzer(reference.model, model, label=service.name,
                                     options=ShiftOptions(context="raw", top_k=req.top_k, batch_size=1))
            forms = [prompt if isinstance(prompt, str) or takes_chat(m) else joined(prompt)
                     for m in (model, reference.model)]  # what each side reads
            encode = getattr(reference.model, "encode", None)
            n = len(encode(req.answer)) if encode else None
            if n is not None and n > limits.max_tokens:
                raise APIError(400, f"the answer has {n} tokens; this server analyses at most {limits.max_tokens}",
                               param="answer")
            for m, seen in zip((model, reference.model), forms):
                ctx, used = m.context_length, count_tokens(m, seen, max(n or 1, 1))
                if ctx and used is not None and n is not None and used + n + 1 > ctx:
                    raise APIError(400, f"the prompt ({used} tokens) and the answer ({n} tokens) exceed the context of "
                                   f"{ctx} tokens of {m.spec!r}", param="answer", code="context_length_exceeded")
            (record,) = list(analyzer.analyse([Item("ui", forms[0], req.answer, base_prompt=forms[1])]))
        except AlignkitError as e:
            raise APIError(400, str(e)) from None
    positions = record["positions"]
    ids = [p.get("id") for p in positions]
    tok = getattr(reference.model, "tokenizer", None)
    texts = pieces(tok, ids) if tok is not None and None not in ids else [p["token"] for p in positions]
    tokens = [{"t": p["t"], "token": p["token"], "text": text, "category": p["category"], "ref_rank": p["base_rank"],
               "rank_exact": p.get("rank_exact", True), "ref_p": p["p_base"], "p": p["p_aligned"],
               "kl": p["kl"], "ref_top": p["top_base"]} for p, text in zip(positions, texts)]
    return {"mode": record["mode"],
            "approximation": None if record["mode"] == "exact" else (
                "from each route's top-k log-probabilities: a token outside the reference's top-k gets rank k (a "
                "lower bound, rank_exact false); the KL is over the tokens both lists share, the rest of each "
                "distribution counted as one outcome"),
            "summary": record["summary"], "tokens": tokens}


def pieces(tokenizer: Any, ids: list[int]) -> list[str]:
    """The text each token adds to the answer, so that the pieces join to the decoded answer: a token that ends
    inside a character (a byte of a multi-byte character) adds nothing, the token that completes the character adds
    all of it -- decoded incrementally over a short window, as streaming detokenisers do."""
    out: list[str] = []
    prefix, read = 0, 0
    for i in range(len(ids)):
        before = tokenizer.decode(ids[prefix:read], skip_special_tokens=False)
        now = tokenizer.decode(ids[prefix:i + 1], skip_special_tokens=False)
        if len(now) > len(before) and (not now.endswith("\ufffd") or i == len(ids) - 1):
            out.append(now[len(before):])
            prefix, read = read, i + 1
        else:
            out.append("")
    return out
