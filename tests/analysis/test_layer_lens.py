"""Layer-resolved shift (shift --layers): the logit lens of both models at the chosen positions, on tiny models.

Checked against the models themselves: the last layer's lens is each model's own next-token distribution; every
layer's values equal a direct computation from forward hooks on the decoder layers; the control sample is
seeded and does not depend on batching; what cannot be read is refused with a clear error."""

from __future__ import annotations

import json

import pytest
import torch

from alignkit import GenerationConfig
from alignkit.analysis.aggregate import summarize
from alignkit.analysis.layers import choose_positions, parse_layers
from alignkit.analysis.shift import Item, ShiftAnalyzer, ShiftOptions, answer_ids, base_prompt
from alignkit.errors import CapabilityError, InputError

INSTRUCTIONS = ["The quick brown", "Thank you for asking!", "def add(a, b):", "Photosynthesis turns light"]


def _items(model, n_tokens=12):
    comps = model.generate(INSTRUCTIONS, GenerationConfig(max_new_tokens=n_tokens))
    return [Item(str(i), q, c.text, {}, answer_ids(model, c)) for i, (q, c) in enumerate(zip(INSTRUCTIONS, comps))]


@pytest.fixture(scope="module")
def records(tiny_base, tiny_aligned):
    items = _items(tiny_aligned)
    an = ShiftAnalyzer(tiny_base, tiny_aligned, label="tiny", options=ShiftOptions(layers="all", batch_size=4))
    return items, list(an.analyse(items))


def test_the_last_layer_lens_is_the_models_own_distribution(records, tiny_base):
    _, recs = records
    read = [p for r in recs for p in r["positions"] if "lens" in p]
    assert len(read) >= 8
    for p in read:
        lens = p["lens"]
        assert lens["layers"] == list(range(1, tiny_base.num_layers + 1))
        assert lens["base_rank"][-1] == p["base_rank"] and lens["aligned_rank"][-1] == p["aligned_rank"]
        assert lens["p_base"][-1] == pytest.approx(p["p_base"], abs=1e-5)
        assert lens["p_aligned"][-1] == pytest.approx(p["p_aligned"], abs=1e-5)
        assert lens["kl"][-1] == pytest.approx(p["kl"], abs=1e-4)


def test_every_layer_equals_a_direct_computation_with_forward_hooks(records, tiny_base):
    items, recs = records
    r, item = recs[0], items[0]
    decoder = tiny_base.engine.decoder
    captured: dict[int, torch.Tensor] = {}
    hooks = [layer.register_forward_hook(lambda _m, _i, out, k=k: captured.__setitem__(k, out[0] if isinstance(
        out, tuple) else out)) for k, layer in enumerate(decoder.layers, start=1)]
    try:
        prompt = tiny_base.encode_prompt(base_prompt("plain", item.instruction))
        ids = torch.tensor([prompt + item.answer_ids[:-1]])
        with torch.no_grad():
            decoder(input_ids=ids, attention_mask=torch.ones_like(ids), use_cache=False)
    finally:
        for h in hooks:
            h.remove()
    head = tiny_base.model.get_output_embeddings() if hasattr(tiny_base.model, "get_output_embeddings") else None
    assert head is not None
    for p in (p for p in r["positions"] if "lens" in p):
        at = len(prompt) - 1 + p["t"]
        target = item.answer_ids[p["t"]]
        for j, layer in enumerate(p["lens"]["layers"]):
            with torch.no_grad():
                lp = torch.log_softmax(head(decoder.norm(captured[layer][0, at])).float(), -1)
            assert int((lp > lp[target]).sum()) == p["lens"]["base_rank"][j]
            assert float(lp[target].exp()) == pytest.approx(p["lens"]["p_base"][j], abs=1e-5)


def test_the_control_sample_is_seeded_and_independent_of_batching(records, tiny_base, tiny_aligned):
    items, recs = records
    again = list(ShiftAnalyzer(tiny_base, tiny_aligned, label="tiny",
                               options=ShiftOptions(layers="all", batch_size=1)).analyse(items))
    assert [[p.get("lens") for p in r["positions"]] for r in again] == \
           [[p.get("lens") for p in r["positions"]] for r in recs]
    positions = [{"t": t, "category": "shifted" if t in (7, 9) else "unshifted"} for t in range(40)]
    a, b = choose_positions(positions, "x", 0), choose_positions(positions, "x", 0)
    assert a == b and {0, 1, 2, 3, 4, 7, 9} <= set(a) and len(a) == 7 + 2
    assert choose_positions(positions, "x", 1) != a or choose_positions(positions, "y", 0) != a


def test_the_summary_and_the_difference_lens(records):
    _, recs = records
    s = summarize(recs)["tiny"]["layers"]
    assert s["layers"] == recs[0]["positions"][0]["lens"]["layers"]
    assert s["all"]["positions"] == sum("lens" in p for r in recs for p in r["positions"])
    assert len(s["all"]["mean_kl"]) == len(s["layers"]) and set(s["by_token_class"]) <= {"markup", "function",
                                                                                             "content"}
    assert all(0 <= x <= 1 for v in s["by_shift_class"].values() for x in v["base_top1"])
    first = recs[0]["difference_lens"]["first"]
    assert set(first) == {str(x) for x in s["layers"]} and all(len(v) == 8 for v in first.values())
    assert s["difference_lens"]["first"]


def test_layer_specs_and_refusals(tiny_base, tiny_aligned, tiny_gguf):
    assert parse_layers("all", 4) == [1, 2, 3, 4]
    assert parse_layers("every:3", 7) == [3, 6, 7]
    assert parse_layers("2, 1", 4) == [1, 2]
    for bad, msg in (("every:0", "every:N"), ("0,2", "does not exist"), ("x", "comma list"), ("9", "1..4")):
        with pytest.raises(InputError, match=msg):
            parse_layers(bad, 4)
    with pytest.raises(CapabilityError, match="transformers backend"):
        from alignkit import load_model

        ShiftAnalyzer(load_model(f"llamacpp:{tiny_gguf['llama']}"), load_model(f"llamacpp:{tiny_gguf['llama']}"),
                      label="x", options=ShiftOptions(layers="all"))
    with pytest.raises(CapabilityError, match="exact mode"):
        ShiftAnalyzer(tiny_base, tiny_aligned, label="x", options=ShiftOptions(layers="all", mode="approx"))


def test_in_context_alignment_reads_the_same_weights_with_and_without_the_preamble(tiny_base):
    """Same weights, different context: with the preamble in the base's context too, both lenses agree at every
    layer (KL 0); with the plain context they differ, and only the context made the difference."""
    from alignkit.methods.templates import parse_template
    from alignkit.methods.urial import InContextAligned

    t = parse_template({"id": "short", "preamble": "Be kind.", "examples": [{"query": "Hi", "answer": "Hello!"}]})
    urial = InContextAligned(tiny_base, t)
    items = _items(urial, 8)
    same = list(ShiftAnalyzer(tiny_base, urial, label="u", template=t,
                              options=ShiftOptions(context="urial", layers="all")).analyse(items))
    read = [p["lens"] for r in same for p in r["positions"] if "lens" in p]
    assert read and all(max(lens["kl"]) < 1e-6 and lens["base_rank"] == lens["aligned_rank"] for lens in read)
    plain = list(ShiftAnalyzer(tiny_base, urial, label="u", options=ShiftOptions(layers="all")).analyse(items))
    assert max(max(p["lens"]["kl"]) for r in plain for p in r["positions"] if "lens" in p) > 1e-3


def test_cli_layers_writes_per_layer_records_and_summary(tiny_dir, tmp_path, capsys):
    from alignkit.cli.main import main

    inp = tmp_path / "in.jsonl"
    inp.write_text("".join(json.dumps({"id": i, "instruction": q}) + "\n" for i, q in enumerate(INSTRUCTIONS)))
    out = tmp_path / "s.jsonl"
    assert main(["shift", "--base", str(tiny_dir["base"]), "--aligned", str(tiny_dir["aligned"]),
                 "--aligned-method", "template", "--input", str(inp), "--output", str(out), "--max-new-tokens", "8",
                 "--layers", "every:1", "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    (label,) = summary
    assert summary[label]["layers"]["layers"]
    rec = json.loads(out.read_text().splitlines()[0])
    assert any("lens" in p for p in rec["positions"]) and "difference_lens" in rec
    assert rec["provenance"]["layers"] == summary[label]["layers"]["layers"] and rec["provenance"]["layers_seed"] == 0


def test_the_report_shows_the_layers_in_chromium(tiny_dir, tmp_path):
    from alignkit.cli.main import main
    from tests.support.browser import chromium_page

    inp = tmp_path / "in.jsonl"
    inp.write_text("".join(json.dumps({"id": i, "instruction": q}) + "\n" for i, q in enumerate(INSTRUCTIONS)))
    out, rep = tmp_path / "s.jsonl", tmp_path / "s.html"
    assert main(["shift", "--base", str(tiny_dir["base"]), "--aligned", str(tiny_dir["aligned"]),
                 "--aligned-method", "template", "--input", str(inp), "--output", str(out), "--report", str(rep),
                 "--max-new-tokens", "8", "--layers", "all"]) == 0
    with chromium_page() as (page, errors):
        page.goto(rep.as_uri())
        assert page.locator("#layers").count() == 1
        assert page.locator("table.layers").count() == 2  # by shift class, by token class
        read = json.loads(out.read_text().splitlines()[0])["positions"]
        t = next(i for i, q in enumerate(read) if "lens" in q)
        page.locator(f".t[data-r='0'][data-p='{t}']").click()
        tip = page.locator("#tip")
        assert tip.is_visible() and "aligned rank" in tip.inner_text()
    assert not errors, errors


def test_the_python_api_reads_the_layers_into_a_dataframe(tiny_dir):
    """``ak.shift(..., layers=True)``: every 4th layer and the last, one DataFrame row per read position and layer,
    the same values as the records."""
    import alignkit as ak

    aligned = ak.load(str(tiny_dir["aligned"]), method="template")
    result = ak.shift(str(tiny_dir["base"]), aligned, prompts=INSTRUCTIONS[:2], max_new_tokens=8, layers=True)
    df = result.layers()
    n_layers = aligned.num_layers
    assert sorted(df["layer"].unique()) == parse_layers("every:4", n_layers)
    read = [(r["id"], p) for r in result.records for p in r["positions"] if p.get("lens")]
    assert read and len(df) == len(read) * len(parse_layers("every:4", n_layers))
    rid, p = read[0]
    rows = df[(df["id"] == rid) & (df["t"] == p["t"])].sort_values("layer")
    assert rows["base_rank"].tolist() == p["lens"]["base_rank"] and rows["kl"].tolist() == p["lens"]["kl"]
    assert set(df["category"]) <= {"unshifted", "marginal", "shifted"}
    assert ak.shift(str(tiny_dir["base"]), aligned, prompts=INSTRUCTIONS[:1], max_new_tokens=4,
                    layers=False).layers().empty
