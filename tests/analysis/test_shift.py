"""Token-shift analysis: metrics by hand, invariants on tiny models, exact vs approximate, guards, CLI."""

from __future__ import annotations

import json
import logging
import math

import pytest
import torch

from alignkit import GenerationConfig, load_model
from alignkit.analysis.aggregate import summarize
from alignkit.analysis.metrics import approx_position, category, exact_positions
from alignkit.analysis.shift import Item, ShiftAnalyzer, ShiftOptions, answer_ids
from alignkit.errors import CapabilityError, InputError
from alignkit.methods import MethodOptions, apply_method
from alignkit.methods.templates import parse_template

INSTRUCTIONS = ["The quick brown", "Thank you for asking!", "def add(a, b):", "Photosynthesis turns light"]


def _greedy_items(model, n_tokens=10):
    comps = model.generate(INSTRUCTIONS, GenerationConfig(max_new_tokens=n_tokens))
    return [Item(str(i), q, c.text, {"category": "cat" + str(i % 2)}, answer_ids(model, c))
            for i, (q, c) in enumerate(zip(INSTRUCTIONS, comps))]


def test_categories():
    assert [category(r) for r in (0, 1, 2, 3, 100)] == ["unshifted", "marginal", "marginal", "shifted", "shifted"]


def test_exact_metrics_by_hand():
    pa = torch.tensor([[0.5, 0.2, 0.2, 0.1, 0.0 + 1e-30], [0.25, 0.25, 0.25, 0.25, 1e-30]], dtype=torch.float64)
    pb = torch.tensor([[0.1, 0.6, 0.2, 0.05, 0.05], [0.7, 0.1, 0.1, 0.05, 0.05]], dtype=torch.float64)
    pa, pb = pa / pa.sum(1, keepdim=True), pb / pb.sum(1, keepdim=True)
    tgt = torch.tensor([0, 3])
    out = exact_positions(pa.log(), pb.log(), tgt, top_k=2, token_text=lambda i: "abcde"[i], start=7)
    p0, p1 = out
    assert (p0["t"], p0["token"], p0["base_rank"], p0["aligned_rank"]) == (7, "a", 2, 0)
    assert p0["category"] == "marginal" and p1["base_rank"] == 3 and p1["category"] == "shifted"
    assert p0["p_base"] == pytest.approx(0.1) and p0["p_aligned"] == pytest.approx(0.5)
    kl0 = sum(a * math.log(a / b) for a, b in zip(pa[0].tolist(), pb[0].tolist()) if a > 0)
    assert p0["kl"] == pytest.approx(kl0)
    kl0_rev = sum(b * math.log(b / a) for a, b in zip(pa[0].tolist(), pb[0].tolist()) if b > 0)
    assert p0["kl_base_aligned"] == pytest.approx(kl0_rev) and abs(kl0_rev - kl0) > 0.1  # the other direction
    assert p0["h_base"] == pytest.approx(-sum(b * math.log(b) for b in pb[0].tolist()))
    assert p1["h_aligned"] == pytest.approx(math.log(4), abs=1e-6)
    assert p0["top_base"] == [["b", pytest.approx(0.6)], ["c", pytest.approx(0.2)]]
    assert p0["top_aligned"][0] == ["a", pytest.approx(0.5)]


def _guarded_reference(lp_a, lp_b, targets):
    """The metrics written the plain way (masks, one full-vocabulary temporary per term)."""
    tgt = targets.unsqueeze(1)
    la_t, lb_t = lp_a.gather(1, tgt), lp_b.gather(1, tgt)
    pa, pb = lp_a.exp(), lp_b.exp()
    zero = torch.zeros_like(pa)
    return ((lp_b > lb_t).sum(1), (lp_a > la_t).sum(1),
            torch.where(pa > 0, pa * (lp_a - lp_b), zero).sum(1).clamp(min=0),
            torch.where(pb > 0, pb * (lp_b - lp_a), zero).sum(1).clamp(min=0),
            -torch.where(pa > 0, pa * lp_a, zero).sum(1), -torch.where(pb > 0, pb * lp_b, zero).sum(1))


def test_released_kl_renormalises_each_top_k_and_sums_the_shared_tokens():
    pa = torch.tensor([[0.4, 0.3, 0.2, 0.06, 0.04]], dtype=torch.float64)
    pb = torch.tensor([[0.1, 0.5, 0.05, 0.3, 0.05]], dtype=torch.float64)
    out = exact_positions(pa.log(), pb.log(), torch.tensor([0]), top_k=2, token_text=str, released_k=3)
    # top-3: aligned {0, 1, 2} -> 0.4, 0.3, 0.2 over 0.9; base {1, 3, 0} -> 0.5, 0.3, 0.1 over 0.9; shared 0 and 1
    wa = {0: 0.4 / 0.9, 1: 0.3 / 0.9}
    wb = {0: 0.1 / 0.9, 1: 0.5 / 0.9}
    assert out[0]["kl_released"] == pytest.approx(sum(wb[t] * math.log(wb[t] / wa[t]) for t in (0, 1)))
    assert "kl_released" not in exact_positions(pa.log(), pb.log(), torch.tensor([0]), top_k=2, token_text=str)[0]


def test_rank_curves_with_the_papers_cap_and_medians():
    from alignkit.analysis.aggregate import summarize

    def pos(t, rank):
        return {"t": t, "base_rank": rank, "kl": 0.1, "kl_base_aligned": 0.2, "p_base": 0.5,
                "category": category(rank), "token": "x", "aligned_rank": 0}

    recs = [{"aligned": "m", "mode": "exact", "positions": [pos(0, r), pos(1, 0)]} for r in (0, 2, 100, 5000)]
    s = summarize(recs, min_count=1)["m"]
    c = s["curves"]
    assert c["mean_base_rank_cap50"][0] == pytest.approx((0 + 2 + 50 + 50) / 4)
    assert c["mean_base_rank"][0] == pytest.approx((0 + 2 + 100 + 1000) / 4)
    assert c["median_base_rank"] == [51, 0]  # median of 0, 2, 100, 5000
    assert s["mean_kl"] == pytest.approx(0.1) and s["mean_kl_base_aligned"] == pytest.approx(0.2)


def test_fused_metrics_equal_the_plain_form_and_survive_masked_tokens():
    g = torch.Generator().manual_seed(0)
    lp_a = (torch.randn(6, 5000, generator=g) * 4).log_softmax(-1)
    lp_b = (torch.randn(6, 5000, generator=g) * 4).log_softmax(-1)
    lp_a[2, :100] = float("-inf")  # a masked vocabulary in one row of each model
    lp_b[4, 7] = float("-inf")
    lp_a, lp_b = lp_a.log_softmax(-1), lp_b.log_softmax(-1)
    tgt = torch.randint(100, 5000, (6,), generator=g)
    tgt[0], tgt[1] = lp_b[0].argmax(), lp_b[1].topk(9).indices[-1]  # near the top: ranked from the top-k pass
    tgt[3] = lp_a[3].topk(20).indices[-1]  # just past the top-k window for the aligned rank
    out = exact_positions(lp_a, lp_b, tgt, top_k=3, token_text=str)
    assert out[0]["base_rank"] == 0 and out[1]["base_rank"] == 8 and out[3]["aligned_rank"] == 19
    rb, ra, kl, klr, ha, hb = _guarded_reference(lp_a, lp_b, tgt)
    assert [p["base_rank"] for p in out] == rb.tolist() and [p["aligned_rank"] for p in out] == ra.tolist()
    for p, r in zip(out, klr.tolist()):
        assert not math.isnan(p["kl_base_aligned"])
        assert p["kl_base_aligned"] == r if math.isinf(r) else p["kl_base_aligned"] == pytest.approx(r, rel=1e-6)
    for p, k, x, y in zip(out, kl.tolist(), ha.tolist(), hb.tolist()):
        assert not math.isnan(p["kl"])  # infinite where the base gives an aligned token no mass, as it should
        assert p["kl"] == k if math.isinf(k) else p["kl"] == pytest.approx(k, rel=1e-6, abs=1e-9)
        assert p["h_aligned"] == pytest.approx(x, rel=1e-6) and p["h_base"] == pytest.approx(y, rel=1e-6)


def test_approximate_metrics_by_hand():
    top_a = [("x", math.log(0.6)), ("y", math.log(0.3))]
    top_b = [("y", math.log(0.5)), ("z", math.log(0.2)), ("w", math.log(0.1))]
    p = approx_position(0, "x", math.log(0.6), math.log(0.01), top_a, top_b)
    assert p["base_rank"] == 3 and not p["rank_exact"] and p["category"] == "shifted"
    # shared token y, then one tail bucket: A's tail 0.7, B's tail 0.5
    assert p["kl"] == pytest.approx(0.3 * math.log(0.3 / 0.5) + 0.7 * math.log(0.7 / 0.5))
    assert p["kl_base_aligned"] == pytest.approx(0.5 * math.log(0.5 / 0.3) + 0.5 * math.log(0.5 / 0.7))
    q = approx_position(1, "z", math.log(0.2), math.log(0.2), top_a, top_b)
    assert q["base_rank"] == 1 and q["rank_exact"] and q["category"] == "marginal"


def test_a_model_against_itself_has_no_shift(tiny_base):
    same = apply_method(tiny_base, MethodOptions(method="none"))
    an = ShiftAnalyzer(tiny_base, same, label="self", options=ShiftOptions(context="raw"))
    recs = list(an.analyse(_greedy_items(same)))
    s = summarize(recs)["self"]
    assert s["positions"] > 20
    assert s["shifted"] == 0 and s["marginal"] == 0 and s["unshifted"] == 1
    assert s["mean_kl"] == pytest.approx(0, abs=1e-9)


def test_in_context_alignment_against_its_own_context_has_no_shift(tiny_base):
    t = parse_template({"id": "short", "preamble": "Be kind.", "examples": [{"query": "Hi", "answer": "Hello!"}]})
    from alignkit.methods.urial import InContextAligned

    urial = InContextAligned(tiny_base, t)
    items = _greedy_items(urial, 6)
    same = ShiftAnalyzer(tiny_base, urial, label="u", options=ShiftOptions(context="urial"), template=t)
    assert summarize(same.analyse(items))["u"]["mean_kl"] == pytest.approx(0, abs=1e-9)
    plain = ShiftAnalyzer(tiny_base, urial, label="u", options=ShiftOptions(context="plain"))
    assert summarize(plain.analyse(items))["u"]["mean_kl"] > 1e-3


def test_exact_and_approximate_agree_when_k_covers_the_vocabulary(tiny_base, tiny_aligned):
    aligned = apply_method(tiny_aligned, MethodOptions(method="none"))
    items = [Item(it.id, it.instruction, it.answer) for it in _greedy_items(aligned)]
    vocab = tiny_base.vocab_size
    ex = list(ShiftAnalyzer(tiny_base, aligned, label="a", options=ShiftOptions(context="raw")).analyse(items))
    ap = list(ShiftAnalyzer(tiny_base, aligned, label="a",
                            options=ShiftOptions(context="raw", mode="approx", top_k=vocab)).analyse(items))
    assert [r["mode"] for r in ex + ap] == ["exact"] * len(ex) + ["approx"] * len(ap)
    for e, a in zip(ex, ap):
        assert [p["base_rank"] for p in e["positions"]] == [p["base_rank"] for p in a["positions"]]
        for pe, pa in zip(e["positions"], a["positions"]):
            assert pa["kl"] == pytest.approx(pe["kl"], abs=1e-6)
            assert pa["kl_base_aligned"] == pytest.approx(pe["kl_base_aligned"], abs=1e-6)  # the other direction
            assert pa["p_base"] == pytest.approx(pe["p_base"], rel=1e-6)
    # the released code's KL, with k covering the vocabulary, is the full KL(base || aligned)
    rel = list(ShiftAnalyzer(tiny_base, aligned, label="a", options=ShiftOptions(context="raw",
                                                                             released_kl_k=vocab)).analyse(items))
    for e, r in zip(ex, rel):
        for pe, pr in zip(e["positions"], r["positions"]):
            assert pr["kl_released"] == pytest.approx(pe["kl_base_aligned"], abs=1e-5)
    with pytest.raises(CapabilityError, match="needs exact mode"):
        ShiftAnalyzer(tiny_base, aligned, label="a", options=ShiftOptions(mode="approx", released_kl_k=30))
    # with a small k the approximate KL is a lower bound and ranks beyond k are flagged
    small = list(ShiftAnalyzer(tiny_base, aligned, label="a",
                               options=ShiftOptions(context="raw", mode="approx", top_k=3)).analyse(items))
    for e, a in zip(ex, small):
        for pe, pa in zip(e["positions"], a["positions"]):
            assert pa["kl"] <= pe["kl"] + 1e-9
            assert pa["category"] == pe["category"]


def test_different_tokenizers_are_refused(tiny_base, tmp_path):
    from tests.support import tiny

    other = tiny.build_tokenizer(vocab_size=300)
    path = tiny.save_model(tmp_path / "other", tiny.build_model(other, seed=9), other)
    with pytest.raises(InputError, match="different tokenizers"):
        ShiftAnalyzer(tiny_base, apply_method(load_model(str(path)), MethodOptions(method="none")), label="x")


def test_empty_and_too_long_answers(tiny_base, caplog):
    same = apply_method(tiny_base, MethodOptions(method="none"))
    an = ShiftAnalyzer(tiny_base, same, label="s", options=ShiftOptions(context="raw"))
    with caplog.at_level(logging.WARNING, logger="alignkit"):
        recs = list(an.analyse([Item("e", "Hi", ""), Item("long", "Hi", "The quick brown fox. " * 120)]))
    assert recs[0]["empty"] and recs[0]["positions"] == []
    assert recs[1]["truncated"] and len(recs[1]["positions"]) < 510
    assert "is empty" in caplog.text and "truncated" in caplog.text


def test_memory_is_one_chunk_per_model(tiny_base):
    """The analysis never holds more than one [chunk, V] block per model: chunks stream through."""
    seen = []
    real = tiny_base.iter_logprobs

    def spy(*a, **k):
        for ch in real(*a, **k):
            seen.append(ch.logprobs.shape[0])
            yield ch

    tiny_base.iter_logprobs = spy
    try:
        tiny_base.score_chunk = 4
        same = apply_method(tiny_base, MethodOptions(method="none"))
        list(ShiftAnalyzer(tiny_base, same, label="s", options=ShiftOptions(context="raw")).analyse(_greedy_items(same)))
    finally:
        del tiny_base.iter_logprobs
        tiny_base.score_chunk = 64
    assert seen and max(seen) <= 4


def test_cli_writes_records_summary_and_report(tiny_dir, tmp_path, capsys):
    from alignkit.cli.main import main

    inp = tmp_path / "in.jsonl"
    inp.write_text("".join(json.dumps({"id": i, "instruction": q, "category": ["a", "b"][i % 2]}) + "\n"
                           for i, q in enumerate(INSTRUCTIONS)))
    out, rep = tmp_path / "shift.jsonl", tmp_path / "report" / "shift.html"
    args = ["shift", "--base", str(tiny_dir["base"]), "--aligned", str(tiny_dir["aligned"]), "--aligned-method",
            "template", "--input", str(inp), "--output", str(out), "--report", str(rep), "--json",
            "--max-new-tokens", "8", "--batch-size", "3"]
    assert main(args) == 0
    summary = json.loads(capsys.readouterr().out)
    s = summary[f"template:{tiny_dir['aligned']}"]
    assert {"unshifted", "marginal", "shifted", "mean_kl"} <= set(s)
    assert s["unshifted"] + s["marginal"] + s["shifted"] == pytest.approx(1)
    assert set(s["by_category"]) == {"a", "b"}
    recs = [json.loads(x) for x in out.read_text().splitlines()]
    assert len(recs) == 4 and recs[0]["provenance"]["mode"] == "exact" and recs[0]["generated"]
    html = rep.read_text()
    assert "<script src" not in html and "http://" not in html.replace("http://www.w3.org", "")
    assert (tmp_path / "report" / "shift_figures" / "shares.png").stat().st_size > 1000
    assert main(args + ["--resume"]) == 0  # nothing new: no duplicates
    assert len(out.read_text().splitlines()) == 4
    assert main(args) == 2  # existing output without --resume is refused


def test_api_models_get_the_labelled_approximate_mode(tiny_base, tiny_aligned):
    import fastapi  # noqa: F401 - installed by make; missing is an error
    import openai  # noqa: F401 - installed by make; missing is an error

    from tests.support.openai_server import ServerThread, build_app

    local = apply_method(tiny_aligned, MethodOptions(method="none"))
    items = [Item(it.id, it.instruction, it.answer) for it in _greedy_items(local, 8)]
    exact = list(ShiftAnalyzer(tiny_base, local, label="a", options=ShiftOptions(context="raw")).analyse(items))
    with ServerThread(build_app(tiny_base, "base")) as sb, ServerThread(build_app(tiny_aligned, "aligned")) as sa:
        api_base = load_model(f"openai:base@{sb.url}")
        api_aligned = apply_method(load_model(f"openai:aligned@{sa.url}"), MethodOptions(method="none"))
        an = ShiftAnalyzer(api_base, api_aligned, label="a", options=ShiftOptions(context="raw", top_k=5))
        assert an.mode == "approx"
        approx = list(an.analyse(items))
    for e, a in zip(exact, approx):
        assert a["mode"] == "approx"
        assert [p["category"] for p in a["positions"]] == [p["category"] for p in e["positions"]]
        for pe, pa in zip(e["positions"], a["positions"]):
            assert pa["p_base"] == pytest.approx(pe["p_base"], rel=1e-5)  # the answer token's own log-prob is exact
            if pe["base_rank"] < 5:
                assert pa["rank_exact"] and pa["base_rank"] == pe["base_rank"]

    with pytest.raises(CapabilityError, match="exact mode needs"):
        ShiftAnalyzer(tiny_base, api_aligned, label="a", options=ShiftOptions(mode="exact"))


def test_generated_answers_are_the_aligned_models_greedy_tokens(tiny_dir, tmp_path, capsys):
    """The CLI generates plain greedy answers, so every answer token is the aligned model's own top choice."""
    from alignkit.cli.main import main

    inp = tmp_path / "in.jsonl"
    inp.write_text("".join(json.dumps({"id": i, "instruction": q}) + "\n" for i, q in enumerate(INSTRUCTIONS)))
    assert main(["shift", "--base", str(tiny_dir["base"]), "--aligned", str(tiny_dir["base"]), "--aligned-method",
                 "none", "--context", "raw", "--input", str(inp), "--output", str(tmp_path / "o.jsonl"), "--json",
                 "--max-new-tokens", "10"]) == 0
    s = next(iter(json.loads(capsys.readouterr().out).values()))
    assert s["aligned_top1"] == 1.0 and s["shifted"] == 0.0 and s["mean_kl"] == pytest.approx(0, abs=1e-6)


def test_several_aligned_models_in_one_report(tiny_dir, tmp_path, capsys):
    from alignkit.cli.main import main

    inp = tmp_path / "in.jsonl"
    inp.write_text("".join(json.dumps({"id": i, "instruction": q}) + "\n" for i, q in enumerate(INSTRUCTIONS[:2])))
    out, rep = tmp_path / "s.jsonl", tmp_path / "s.html"
    assert main(["shift", "--base", str(tiny_dir["base"]), "--aligned", str(tiny_dir["aligned"]), "--aligned",
                 str(tiny_dir["base"]), "--aligned-method", "none", "--aligned-method", "dera", "--ref",
                 str(tiny_dir["base"]), "--lam", "0.5", "--context", "raw", "--input", str(inp), "--output", str(out),
                 "--report", str(rep), "--json", "--max-new-tokens", "6"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert set(summary) == {f"none:{tiny_dir['aligned']}", f"dera:{tiny_dir['base']}@lam=0.5"}
    html = rep.read_text()
    assert all(f"<option value='{lab}'>" in html for lab in summary)
    assert (tmp_path / "s_figures" / "mean_base_rank_by_position.png").is_file()
