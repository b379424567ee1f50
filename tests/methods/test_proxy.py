"""Proxy-tuning (``base + alpha * (expert - antiexpert)``) on the logit-arithmetic kernel DeRa shares: its
invariants, its errors, and its place in route trees."""

from __future__ import annotations

import pytest

import alignkit as ak
from alignkit.errors import CapabilityError, InputError
from alignkit.methods.proxy import ProxyTuned
from alignkit.types import GenerationConfig

PROMPTS = ["The quick brown", "Tell me a fact", "Name a colour."]
GREEDY = GenerationConfig(max_new_tokens=8)


def _tree(d, alpha, expert="aligned", anti="llama"):
    return {"proxy": {"alpha": alpha, "base": {"none": {"model": str(d["base"])}},
                      "expert": {"template": {"model": str(d[expert])}},
                      "antiexpert": {"none": {"model": str(d[anti])}}}}


def _tokens(model, cfg=GREEDY):
    return [list(c.token_ids or ()) for c in model.generate(PROMPTS, cfg)]


def test_alpha_zero_is_the_base_model_token_for_token(tiny_dir):
    base = ak.load(str(tiny_dir["base"]), method="none")
    proxy = ak.load(_tree(tiny_dir, 0.0))
    assert _tokens(proxy) == _tokens(base)


def test_an_expert_equal_to_its_antiexpert_leaves_the_base_unchanged(tiny_dir):
    """The fine-tuning term is zero when the expert is its own anti-expert, whatever alpha (both sides see the same
    prompt through the same method, so their logits cancel exactly)."""
    base = ak.load(str(tiny_dir["base"]), method="none")
    same = {"proxy": {"alpha": 2.5, "base": {"none": {"model": str(tiny_dir["base"])}},
                      "expert": {"none": {"model": str(tiny_dir["llama"])}},
                      "antiexpert": {"none": {"model": str(tiny_dir["llama"])}}}}
    assert _tokens(ak.load(same)) == _tokens(base)


def test_base_equal_to_antiexpert_at_alpha_one_is_the_expert(tiny_dir):
    """base + (expert - base) is the expert: its greedy tokens (the issue's second invariant)."""
    expert = ak.load(str(tiny_dir["llama"]), method="none")
    swap = {"proxy": {"alpha": 1.0, "base": {"none": {"model": str(tiny_dir["base"])}},
                      "expert": {"none": {"model": str(tiny_dir["llama"])}},
                      "antiexpert": {"none": {"model": str(tiny_dir["base"])}}}}
    assert _tokens(ak.load(swap)) == _tokens(expert)


def test_the_expert_steers_the_base_and_scoring_is_the_mixed_distribution(tiny_dir):
    import torch

    proxy = ak.load(_tree(tiny_dir, 1.0))
    base = ak.load(str(tiny_dir["base"]), method="none")
    assert _tokens(proxy) != _tokens(base)  # alpha 1: the fine-tuning term moves the base's choices
    assert isinstance(proxy, ProxyTuned) and proxy.spec == str(tiny_dir["base"])
    # the mixed log-probabilities are log_softmax(base + alpha * (expert - antiexpert)) of the three sides' own
    sides = dict(proxy.children())
    ids = [proxy.encode(" fox jumps")]
    def rows(model):
        return torch.cat([c.logprobs for c in model.iter_logprobs(PROMPTS[:1], ids)])

    parts = {r: rows(m) for r, m in sides.items()}
    want = torch.log_softmax(parts["base"] + 1.0 * (parts["expert"] - parts["antiexpert"]), dim=-1)
    assert rows(proxy).shape[0] == len(ids[0]) and torch.allclose(rows(proxy), want, atol=1e-5)
    # streaming equals generate; the answer is cleaned by the expert's method (the lead side)
    events = list(proxy.stream(PROMPTS, GREEDY))
    texts = {i: "".join(e.text for e in events if e.index == i) for i in range(len(PROMPTS))}
    assert [texts[i] for i in range(len(PROMPTS))] == [c.text for c in proxy.generate(PROMPTS, GREEDY)]
    assert proxy.info()["alpha"] == 1.0 and set(proxy.info()["sides"]) == {"expert", "base", "antiexpert"}


def test_bad_proxies_are_clear(tiny_dir, tiny_gguf):
    with pytest.raises(InputError, match="node 'proxy' needs 'antiexpert'"):
        ak.node("proxy", base="a", expert="b")
    with pytest.raises(InputError, match="alpha"):
        ak.load({"proxy": {"alpha": "much", "base": "a", "expert": "b", "antiexpert": "c"}})
    with pytest.raises(InputError, match="one backend"):
        ak.load({"proxy": {"base": {"none": {"model": str(tiny_dir["base"])}},
                           "expert": {"none": {"model": "llamacpp:" + str(tiny_gguf["llama"])}},
                           "antiexpert": {"none": {"model": str(tiny_dir["llama"])}}}})
    with pytest.raises(CapabilityError, match="put it around proxy-tuning instead"):
        ak.load({"proxy": {"base": {"best-of-n": {"scorer": f"geval:{tiny_dir['judge']}",
                                                  "model": {"proxy": _tree(tiny_dir, 1.0)["proxy"]}}},
                           "expert": {"none": {"model": str(tiny_dir["aligned"])}},
                           "antiexpert": {"none": {"model": str(tiny_dir["llama"])}}}})


# ---- the other presets of the kernel: eft, dexperts, mix (each equals its formula over the sides' own logits)

def _rows(model, ids):
    import torch

    return torch.cat([c.logprobs for c in model.iter_logprobs(PROMPTS[:1], ids)])


def _direct(parts, weights):
    import torch

    out = sum(w * parts[r] for r, w in weights.items())
    return torch.log_softmax(out, dim=-1)


def test_eft_dexperts_and_mix_are_their_formulas(tiny_dir):
    import torch

    b, a, ll = (str(tiny_dir[k]) for k in ("base", "aligned", "llama"))
    cases = [
        ({"eft": {"alpha": 1.5, "beta": 0.8, "base": {"none": {"model": b}}, "tuned": {"template": {"model": a}},
                  "untuned": {"none": {"model": ll}}}}, {"base": 0.8, "tuned": 1.5, "untuned": -1.5}),
        ({"dexperts": {"alpha": 2.0, "base": {"none": {"model": b}}, "expert": {"template": {"model": a}},
                       "antiexpert": {"none": {"model": ll}}}}, {"base": 1.0, "expert": 2.0, "antiexpert": -2.0}),
        ({"mix": {"weights": [0.7, 0.5, -0.2], "models": [{"template": {"model": a}}, {"none": {"model": b}},
                                                           {"none": {"model": ll}}]}},
         {"model 0": 0.7, "model 1": 0.5, "model 2": -0.2}),
    ]
    for tree, weights in cases:
        model = ak.load(tree)
        ids = [model.encode(" fox jumps")]
        parts = {r: _rows(m, ids) for r, m in model.children()}
        assert set(parts) == set(weights)
        got = _rows(model, ids)
        assert got.shape[0] == len(ids[0]) and torch.max(torch.abs(got - _direct(parts, weights))) <= 1e-5, tree
        (kind, body), = tree.items()
        assert model.tree.to_dict() == ak.node(kind, **body).to_dict()  # YAML and Python build one tree


def test_dexperts_is_proxy_under_another_name_and_mix_can_be_dera(tiny_dir):
    b, a, ll = (str(tiny_dir[k]) for k in ("base", "aligned", "llama"))
    sides = {"base": {"none": {"model": b}}, "expert": {"template": {"model": a}}, "antiexpert": {"none": {"model": ll}}}
    assert _tokens(ak.load({"dexperts": {"alpha": 0.5, **sides}})) == _tokens(ak.load({"proxy": {"alpha": 0.5, **sides}}))
    dera = ak.load({"dera": {"lam": 0.3, "ref": {"none": {"model": b}}, "aligned": {"template": {"model": a}}}})
    mix = ak.load({"mix": {"weights": [0.3, 0.7], "models": [{"template": {"model": a}}, {"none": {"model": b}}]}})
    assert _tokens(mix) == _tokens(dera)
    # weight 1 on the first model, 0 on the rest: the first model's greedy tokens
    first = ak.load({"mix": {"weights": [1, 0], "models": [{"none": {"model": ll}}, {"none": {"model": b}}]}})
    assert _tokens(first) == _tokens(ak.load(ll, method="none"))
    # eft at beta 1 is proxy-tuning
    eft = ak.load({"eft": {"alpha": 0.5, "base": sides["base"], "tuned": sides["expert"], "untuned": sides["antiexpert"]}})
    assert _tokens(eft) == _tokens(ak.load({"proxy": {"alpha": 0.5, **sides}}))


def test_bad_mixes_are_clear(tiny_dir):
    b = str(tiny_dir["base"])
    with pytest.raises(InputError, match="2 models and 3 weights"):
        ak.load({"mix": {"weights": [1, 2, 3], "models": [b, b]}})
    with pytest.raises(InputError, match="must be a list of numbers"):
        ak.load({"mix": {"weights": [1, "x"], "models": [b, b]}})
    with pytest.raises(InputError, match="takes a list of model specs"):
        ak.load({"mix": {"weights": [1], "models": b}})
    with pytest.raises(InputError, match="needs weights"):
        ak.load({"mix": {"models": [b, b]}})
    with pytest.raises(InputError, match="at least two models"):
        ak.load({"mix": {"weights": [1], "models": [b]}})


def test_padding_rows_of_a_wider_output_layer_are_cut(tiny_dir, tmp_path):
    """One tokenizer, output layers of different widths (a tuned model's embeddings resized): the mix is over the
    shared rows, as proxy-tuning's reference code cuts the expert's extra rows; the lead's cut rows are never
    chosen. A side narrower than the tokenizer is refused."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_dir["base"])
    wide = AutoModelForCausalLM.from_pretrained(tiny_dir["llama"])
    n = wide.get_output_embeddings().weight.shape[0]
    wide.resize_token_embeddings(n + 8, mean_resizing=False)
    with torch.no_grad():
        wide.get_output_embeddings().weight[n:] = 5.0  # padding rows that would win every step if kept
    wide.save_pretrained(tmp_path / "wide")
    tok.save_pretrained(tmp_path / "wide")
    b = str(tiny_dir["base"])
    mix = ak.load({"mix": {"weights": [0.5, 0.5], "models": [{"none": {"model": str(tmp_path / "wide")}},
                                                              {"none": {"model": b}}]}})
    assert mix.width == n and mix.lead_width == n + 8
    assert all(t < n for ids in _tokens(mix) for t in ids)
    ids = [mix.encode(" fox jumps")]
    parts = [_rows(m, ids) for _, m in mix.children()]
    want = torch.log_softmax(0.5 * parts[0][:, :n] + 0.5 * parts[1], dim=-1)
    got = _rows(mix, ids)
    assert got.shape[-1] == n + 8 and torch.isinf(got[:, n:]).all()
    assert torch.max(torch.abs(got[:, :n] - want)) <= 1e-5
    narrow = AutoModelForCausalLM.from_pretrained(tiny_dir["llama"])
    narrow.resize_token_embeddings(n - 4)
    narrow.save_pretrained(tmp_path / "narrow")
    tok.save_pretrained(tmp_path / "narrow")
    with pytest.raises(InputError, match="has .* logits for a tokenizer of .* tokens"):
        ak.load({"mix": {"weights": [1, 1], "models": [b, str(tmp_path / "narrow")]}})


def test_the_gpu_recipes_are_valid_trees_of_hub_models():
    """examples/proxy-tuning/: the Llama-2 recipes parse as proxy trees whose sides are hub ids (not run here)."""
    from pathlib import Path

    from alignkit.methods.tree import load_tree
    from alignkit.models.registry import resolve

    for name, base in [("llama2-13b.yaml", "meta-llama/Llama-2-13b-hf"), ("llama2-70b.yaml", "meta-llama/Llama-2-70b-hf")]:
        tree = load_tree(Path(__file__).resolve().parents[2] / "examples" / "proxy-tuning" / name)
        assert tree.kind == "proxy" and tree.options.alpha == 1.0
        sides = {slot: c for slot, c in tree.children}
        assert sides["base"].to_dict() == {"none": {"model": base}}
        assert sides["expert"].to_dict() == {"template": {"model": "meta-llama/Llama-2-7b-chat-hf"}}
        for c in sides.values():
            assert resolve(c.child("model")).kind == "hub"
