"""DeRa: exactness at lambda 0 and 1, an independent full-recompute reference at 0.5, guards, and the places
it plugs into (streaming, scoring for the shift analysis, in-context-aligned sides)."""

from __future__ import annotations

import pytest
import torch

from alignkit import GenerationConfig, load_model
from alignkit.errors import CapabilityError, InputError
from alignkit.methods import MethodOptions, apply_method
from alignkit.methods.dera import DeRa

PROMPTS = ["The quick brown", "Thank you for asking!", "def add(a, b):"]


def _raw(m):
    return apply_method(m, MethodOptions(method="none"))


@pytest.fixture(scope="module")
def pair(tiny_base, tiny_aligned):
    return _raw(tiny_base), _raw(tiny_aligned)


def _naive(ref, aligned, prompt: str, lam: float, n: int) -> list[int]:
    """Independent reference: full recompute of both models at every step, greedy on the mixed logits."""
    ids_r, ids_a, out = ref.base.encode_prompt(prompt), aligned.base.encode_prompt(prompt), []
    with torch.no_grad():
        for _ in range(n):
            lr = ref.base.model(torch.tensor([ids_r + out])).logits[0, -1]
            la = aligned.base.model(torch.tensor([ids_a + out])).logits[0, -1]
            out.append(int((lam * la + (1 - lam) * lr).argmax()))
    return out


@pytest.mark.parametrize("lam", [0.0, 1.0])
def test_lambda_0_and_1_are_the_two_models(pair, lam):
    ref, aligned = pair
    cfg = GenerationConfig(max_new_tokens=10)
    got = DeRa(ref, aligned, lam).generate(PROMPTS, cfg)
    own = (aligned if lam == 1 else ref).generate(PROMPTS, cfg)
    assert [c.token_ids for c in got] == [c.token_ids for c in own]


@pytest.mark.parametrize("lam", [0.5, 1.5])
def test_mixed_tokens_equal_a_full_recompute_loop(pair, lam):
    ref, aligned = pair
    got = DeRa(ref, aligned, lam).generate(PROMPTS, GenerationConfig(max_new_tokens=8))
    for p, c in zip(PROMPTS, got):
        assert list(c.token_ids) == _naive(ref, aligned, p, lam, len(c.token_ids))


def test_bad_lambda_and_mismatched_tokenizers(pair, tmp_path):
    ref, aligned = pair
    for bad in (-0.1, float("nan"), float("inf"), "x"):
        with pytest.raises(InputError, match="lambda must be a number >= 0"):
            DeRa(ref, aligned, bad)
    from tests.support import tiny

    other = tiny.build_tokenizer(vocab_size=300)
    path = tiny.save_model(tmp_path / "o", tiny.build_model(other, seed=4), other)
    with pytest.raises(InputError, match="share one tokenizer"):
        DeRa(ref, _raw(load_model(str(path))), 0.5)


def test_api_models_cannot_be_mixed(pair):
    from alignkit import Capabilities

    class Fake:  # what an API model declares: top-k log-probabilities, no token-by-token stepping
        spec, backend = "openai:x@http://h/v1", "openai"
        capabilities = Capabilities(topk_logprobs=20, chat_template=True, streaming=True)

    with pytest.raises(CapabilityError, match="use a local model"):
        DeRa(Fake(), pair[1], 0.5)


def test_stream_and_stop_strings(pair):
    ref, aligned = pair
    d = DeRa(ref, aligned, 0.5)
    cfg = GenerationConfig(max_new_tokens=16, temperature=1.0, seed=2)
    full = d.generate(PROMPTS[:1], cfg)[0].text
    stop = full[3:6]
    cfg = GenerationConfig(max_new_tokens=16, temperature=1.0, seed=2, stop=(stop,))
    events = list(d.stream(PROMPTS[:1], cfg))
    assert "".join(e.text for e in events) == events[-1].completion.text == full[: full.find(stop)]


def test_mixed_scores_are_the_geometric_mixture(pair):
    ref, aligned = pair
    d = DeRa(ref, aligned, 0.25)
    cont = " fox jumps over the lazy dog."
    got = d.score(["The quick brown"], [cont], top_k=2)[0]
    ids = aligned.base.encode(cont)
    p = aligned.base.encode_prompt("The quick brown")
    with torch.no_grad():
        la = aligned.base.model(torch.tensor([p + ids])).logits[0, len(p) - 1 : -1]
        lr = ref.base.model(torch.tensor([p + ids])).logits[0, len(p) - 1 : -1]
    want = torch.log_softmax(0.25 * la.log_softmax(-1) + 0.75 * lr.log_softmax(-1), -1)
    want = want.gather(1, torch.tensor(ids)[:, None]).squeeze(1)
    assert torch.allclose(torch.tensor(got.logprobs, dtype=want.dtype), want, atol=1e-8)


def test_in_context_aligned_side_and_cli_flags(tiny_base, tiny_dir, tmp_path, capsys):
    from alignkit.cli.main import main

    tpl = tmp_path / "t.yaml"
    tpl.write_text("id: s\npreamble: Be kind.\nexamples:\n  - query: Hi\n    answer: Hello!\n")
    args = ["chat", "--model", str(tiny_dir["base"]), "--method", "dera", "--ref", str(tiny_dir["base"]),
            "--lam", "1", "--aligned-method", "urial", "--template", str(tpl), "--message", "Hello",
            "--max-new-tokens", "6"]
    assert main(args + ["--show-prompt"]) == 0
    shown = capsys.readouterr().out
    assert "aligned side (dera, lambda 1.0)" in shown and "reference side" in shown and "Be kind." in shown
    assert main(args) == 0
    out = capsys.readouterr().out
    # lambda 1 with an in-context-aligned side is exactly that method's answer
    from alignkit.methods.templates import load_template
    from alignkit.methods.urial import InContextAligned

    want = InContextAligned(tiny_base, load_template(str(tpl))).generate(["Hello"], GenerationConfig(max_new_tokens=6))[0]
    assert out.strip() == want.text.strip()
    assert main(["chat", "--model", str(tiny_dir["base"]), "--method", "dera", "--message", "x"]) == 2
    assert "needs --ref" in capsys.readouterr().err
    assert main(["chat", "--model", str(tiny_dir["base"]), "--method", "dera", "--ref", str(tiny_dir["base"]),
                 "--lam", "-1", "--message", "x"]) == 2
    assert "--lam must be >= 0" in capsys.readouterr().err


def test_dera_as_the_aligned_model_of_a_shift_analysis(pair, tiny_base):
    from alignkit.analysis.aggregate import summarize
    from alignkit.analysis.shift import Item, ShiftAnalyzer, ShiftOptions, answer_ids

    ref, aligned = pair
    d = DeRa(ref, aligned, 0.0)  # lambda 0 is the reference itself: no shift in the reference's context
    comps = d.generate(PROMPTS, GenerationConfig(max_new_tokens=8))
    items = [Item(str(i), p, c.text, {}, answer_ids(d, c)) for i, (p, c) in enumerate(zip(PROMPTS, comps))]
    s = summarize(ShiftAnalyzer(tiny_base, d, label="d", options=ShiftOptions(context="raw")).analyse(items))["d"]
    assert s["shifted"] == 0 and s["mean_kl"] == pytest.approx(0, abs=1e-9)


def test_sweep_writes_a_file_per_lambda_a_table_and_a_plot_and_resumes(tiny_dir, tmp_path, capsys):
    import json

    from alignkit.cli.main import main

    inp = tmp_path / "in.jsonl"
    inp.write_text("".join(json.dumps({"id": i, "prompt": p}) + "\n" for i, p in enumerate(PROMPTS)))
    out = tmp_path / "sweep"
    args = ["dera", "sweep", "--ref", str(tiny_dir["base"]), "--aligned", str(tiny_dir["aligned"]),
            "--aligned-method", "none", "--lams", "0,0.5,1,1.5", "--input", str(inp), "--output", str(out),
            "--max-new-tokens", "6"]
    assert main(args) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert list(summary["lams"]) == ["0", "0.5", "1", "1.5"]
    assert all(s["answers"] == 3 for s in summary["lams"].values())
    assert (out / "sweep.png").stat().st_size > 1000 and "DeRa sweep" in capsys.readouterr().out
    assert main(args) == 0  # resumed: nothing new, no duplicates
    assert len((out / "lam-0.5.jsonl").read_text().splitlines()) == 3
    assert main(args[:8] + ["--lams", "0,-1"] + args[10:]) == 2
    # a judge adds per-lambda scores; this tiny judge answers garbage, which is counted as unreadable, not scored
    assert main(args + ["--judge", str(tiny_dir["judge"])]) == 0
    judged = json.loads((out / "summary.json").read_text())["lams"]["0.5"]["judge"]
    assert judged["missing_share"] == 1.0 and all(v is None for v in judged["mean"].values())
    assert "100%" in capsys.readouterr().out  # the unreadable share is shown


def test_scoring_leaves_gradients_on(pair):
    """Zipped log-probability streams must not leave torch's grad mode switched off for the caller."""
    ref, aligned = pair
    assert torch.is_grad_enabled()
    DeRa(ref, aligned, 0.5).score(PROMPTS, [" fox", " you", " return"])
    list(DeRa(ref, aligned, 0.5).stream(PROMPTS[:1], GenerationConfig(max_new_tokens=3)))
    assert torch.is_grad_enabled()


def test_a_model_and_its_lora_adapter(tiny_dir):
    base = _raw(load_model(str(tiny_dir["base"]), dtype="float64"))
    adapted = _raw(load_model(str(tiny_dir["adapter"]), dtype="float64"))
    cfg = GenerationConfig(max_new_tokens=8)
    assert [c.token_ids for c in DeRa(base, adapted, 1.0).generate(PROMPTS, cfg)] == \
        [c.token_ids for c in adapted.generate(PROMPTS, cfg)]
    got = DeRa(base, adapted, 0.5).generate(PROMPTS, cfg)
    for p, c in zip(PROMPTS, got):
        assert list(c.token_ids) == _naive(base, adapted, p, 0.5, len(c.token_ids))


def test_dera_behind_the_server(pair):
    import openai

    from alignkit.server.app import build_app
    from alignkit.server.service import Service
    from tests.support.openai_server import ServerThread

    ref, aligned = pair
    d = DeRa(ref, aligned, 0.5)
    with ServerThread(build_app(Service(d, "dera"))) as srv:
        client = openai.OpenAI(base_url=srv.url, api_key="none", max_retries=0)
        r = client.completions.create(model="dera", prompt="The quick brown", max_tokens=6, temperature=0)
        assert r.choices[0].text == d.generate(["The quick brown"], GenerationConfig(max_new_tokens=6))[0].text
        s = "".join(c.choices[0].text for c in client.completions.create(
            model="dera", prompt="The quick brown", max_tokens=6, temperature=0, stream=True))
        assert s == r.choices[0].text
        assert client.models.list().data[0].info["method"] == "dera"


def test_sweep_with_a_scorer_measures_kl_and_recommends_a_lambda(tiny_dir, tmp_path, capsys):
    """KL(pi_lam || pi_ref) is 0 at lambda 0 and grows with lambda; every answer is rated; a lambda is recommended
    on the validation split; rerunning rates nothing twice."""
    import json

    from alignkit.cli.main import main

    inp = tmp_path / "in.jsonl"
    inp.write_text("".join(json.dumps({"id": f"q{i}", "prompt": p}) + "\n" for i, p in enumerate(PROMPTS * 2)))
    out = tmp_path / "sweep"
    args = ["dera", "sweep", "--ref", str(tiny_dir["base"]), "--aligned", str(tiny_dir["aligned"]),
            "--aligned-method", "none", "--lams", "0,0.5,1,2", "--input", str(inp), "--output", str(out),
            "--max-new-tokens", "6", "--scorer", "geval:" + str(tiny_dir["judge"]), "--validation-share", "0.5"]
    assert main(args) == 0
    summary = json.loads((out / "summary.json").read_text())
    kl = [summary["lams"][k]["all"]["kl_per_token"] for k in ("0", "0.5", "1", "2")]
    assert kl[0] == pytest.approx(0.0, abs=1e-6) and kl[0] < kl[1] < kl[2] < kl[3]
    for k, s in summary["lams"].items():
        assert s["validation"]["answers"] + s["test"]["answers"] == 6
        rows = [json.loads(x) for x in (out / f"lam-{k}.scores.jsonl").read_text().splitlines()]
        assert len(rows) == 6 and all("kl_sum" in r for r in rows)
    rec = summary["recommendation"]
    if rec is not None:  # a random tiny judge may rate nothing readable
        assert rec["lam"] in (0.0, 0.5, 1.0, 2.0)
    assert summary["scorer"]["kind"] == "geval"
    assert (out / "sweep.png").stat().st_size > 1000 and "KL/token" in capsys.readouterr().out
    before = (out / "lam-1.scores.jsonl").read_text()
    assert main(args) == 0
    assert (out / "lam-1.scores.jsonl").read_text() == before  # resumed: nothing rated twice


def test_kl_to_reference_equals_a_direct_computation(pair):
    ref, aligned = pair
    d = DeRa(ref, aligned, 0.7)
    conts = [" fox jumps", " you there", " return 1"]
    got = d.kl_to_reference(PROMPTS, conts)
    for p, c, (total, n) in zip(PROMPTS, conts, got):
        ids = ref.encode(c)
        la = torch.cat([x.logprobs for x in aligned.iter_logprobs([p], [ids])])
        lr = torch.cat([x.logprobs for x in ref.iter_logprobs([p], [ids])])
        mix = torch.log_softmax(0.7 * la + 0.3 * lr, dim=-1)
        assert n == len(ids)
        assert total == pytest.approx(float((mix.exp() * (mix - lr)).sum()), rel=1e-5, abs=1e-8)


def test_the_sweep_and_method_dera_build_the_same_sides(tiny_dir, tmp_path):
    """One code path: with the reference under in-context alignment (a template of the user's) and the aligned side
    resolved by auto, `alignkit dera sweep` writes, at each lambda, what `generate --method dera` writes."""
    import json

    import yaml

    from alignkit.cli.main import main

    template = tmp_path / "t.yaml"
    template.write_text(yaml.safe_dump({"id": "mine", "preamble": "Answer kindly and briefly.",
                                        "examples": [{"query": "Hi there", "answer": "Hello! How can I help?"}]}))
    inp = tmp_path / "in.jsonl"
    inp.write_text("".join(json.dumps({"id": i, "prompt": p}) + "\n" for i, p in enumerate(PROMPTS)))
    sides = ["--ref-method", "urial", "--aligned-method", "auto", "--template", str(template)]
    assert main(["dera", "sweep", "--ref", str(tiny_dir["base"]), "--aligned", str(tiny_dir["aligned"]), "--lams",
                 "0.5", "--input", str(inp), "--output", str(tmp_path / "sweep"), "--max-new-tokens", "6",
                 *sides]) == 0
    assert main(["generate", "--model", str(tiny_dir["aligned"]), "--method", "dera", "--ref", str(tiny_dir["base"]),
                 "--lam", "0.5", "--input", str(inp), "--output", str(tmp_path / "gen.jsonl"), "--max-new-tokens",
                 "6", "--quiet", *sides]) == 0
    swept = [json.loads(x) for x in (tmp_path / "sweep" / "lam-0.5.jsonl").read_text().splitlines()]
    generated = [json.loads(x) for x in (tmp_path / "gen.jsonl").read_text().splitlines()]
    assert [r["output"] for r in swept] == [r["output"] for r in generated]
    summary = json.loads((tmp_path / "sweep" / "summary.json").read_text())
    assert summary["aligned_method"] == "template"  # auto: the tiny aligned model has a chat template
