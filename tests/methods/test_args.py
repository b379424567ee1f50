"""Reward-guided decoding (ARGS) on tiny real models: each chosen token is the argmax of log p + w * r over the
model's top-k, recomputed here from full-sequence forward passes; w = 0 and top_k = 1 are the model itself; it
streams, joins a running batch, sits in route trees and refuses what it cannot do."""

from __future__ import annotations

import pytest
import torch

import alignkit as ak
from alignkit import GenerationConfig
from alignkit.errors import CapabilityError, InputError
from alignkit.methods import MethodOptions, apply_method
from alignkit.methods.args import RewardGuided
from alignkit.models.base import run_stream_to_completions
from alignkit.scoring import Score, Scorer
from alignkit.structured import Constraint

PROMPTS = ["The quick brown", "Once upon a time", "def main("]
GREEDY = GenerationConfig(max_new_tokens=8)


class CountScorer(Scorer):
    """Rates an answer by how often a character occurs in it; answers containing ``unrated`` get no score."""

    kind = "count"

    def __init__(self, char: str = "e", unrated: str | None = None) -> None:
        self.char, self.unrated, self.spec, self.seen = char, unrated, f"count:{char}", []

    def score(self, prompts, answers):
        self.seen += list(zip(prompts, answers))
        return [Score(None, "marked") if self.unrated and self.unrated in a else Score(float(a.count(self.char)))
                for a in answers]


class DistinctScorer(CountScorer):
    """Rates an answer by how many different characters it has (the tiny models repeat one token)."""

    def score(self, prompts, answers):
        self.seen += list(zip(prompts, answers))
        return [Score(float(len(set(a)))) for a in answers]


@pytest.fixture(scope="module")
def raw(tiny_base):
    return apply_method(tiny_base, MethodOptions(method="none"))


def _next_logp(model, prompt, gen):
    """The model's next-token log-probabilities after ``gen`` from one full forward pass (the scoring path: its
    chunks in order, the last position of the last)."""
    *_, last = model.iter_logprobs([prompt], [gen + [0]])
    return last.logprobs[-1].double()


def _direct(raw, prompt, scorer, k, w, steps):
    """ARGS-greedy computed from scratch: the next-token log-probabilities from a full forward pass over the
    prompt and the answer so far, the top k re-scored by log p + w * r(answer + token)."""
    eos = raw.base.token_loop.eos_ids
    gen: list[int] = []
    for _ in range(steps):
        logp = _next_logp(raw, prompt, gen)
        top_v, top_i = logp.topk(k)
        texts = [raw.base.token_loop.decode(gen if t in eos else gen + [t]) for t in top_i.tolist()]
        r = torch.tensor([s.value for s in scorer.score([prompt] * k, texts)], dtype=torch.float64)
        tok = int(top_i[int((top_v + w * r).argmax())])
        gen.append(tok)
        if tok in eos:
            break
    return gen


def test_each_token_is_the_argmax_of_log_p_plus_w_reward_over_the_top_k(raw):
    scorer = DistinctScorer()
    args = RewardGuided(raw, scorer, top_k=5, weight=5.0)
    got = [list(c.token_ids or ()) for c in args.generate(PROMPTS, GREEDY)]
    want = [_direct(raw, p, DistinctScorer(), 5, 5.0, 8) for p in PROMPTS]
    assert got == want
    plain = [list(c.token_ids or ()) for c in raw.generate(PROMPTS, GREEDY)]
    assert got != plain  # the reward moved some choices
    # the scorer saw the user's prompt and every candidate: top_k per row per step
    assert len(scorer.seen) == 5 * sum(len(g) for g in got)
    assert {p for p, _ in scorer.seen} == set(PROMPTS)


def test_weight_zero_or_top_k_one_is_the_model_itself(raw):
    plain = [c.token_ids for c in raw.generate(PROMPTS, GREEDY)]
    assert [c.token_ids for c in RewardGuided(raw, CountScorer(), top_k=6, weight=0.0).generate(PROMPTS, GREEDY)] == plain
    assert [c.token_ids for c in RewardGuided(raw, CountScorer(), top_k=1, weight=50.0).generate(PROMPTS, GREEDY)] == plain


def test_unrated_candidates_get_their_rows_lowest_reward_and_sampling_stays_in_the_top_k(raw):
    # every candidate unrated: the model's own log-probabilities decide (its greedy tokens)
    none = RewardGuided(raw, CountScorer(unrated=""), top_k=4, weight=3.0)
    assert [c.token_ids for c in none.generate(PROMPTS, GREEDY)] == [c.token_ids for c in raw.generate(PROMPTS, GREEDY)]
    # sampling (ARGS-stochastic) draws only among the re-scored top k
    scorer = CountScorer()
    args = RewardGuided(raw, scorer, top_k=3, weight=1.0)
    cfg = GenerationConfig(max_new_tokens=6, temperature=1.5, seed=3)
    comp = args.generate(["Once upon a time"], cfg)[0]
    gen = list(comp.token_ids)
    for j, tok in enumerate(gen):
        assert tok in _next_logp(raw, "Once upon a time", gen[:j]).topk(3).indices.tolist()
    again = RewardGuided(raw, CountScorer(), top_k=3, weight=1.0).generate(["Once upon a time"], cfg)[0]
    assert again.token_ids == comp.token_ids  # seeded


def test_it_streams_and_joins_a_running_batch_with_the_tokens_it_gets_alone(raw):
    args = RewardGuided(raw, DistinctScorer(), top_k=4, weight=5.0)
    whole = args.generate(PROMPTS, GREEDY)
    streamed = run_stream_to_completions(args.stream(PROMPTS, GREEDY), len(PROMPTS))
    assert [c.text for c in streamed] == [c.text for c in whole]
    assert args.capabilities.continuous_batching
    waiting = [(p, GREEDY) for p in PROMPTS[1:]]
    calls = []

    def admit(running, room):
        calls.append(running)
        return [waiting.pop(0)] if waiting and len(calls) in (3, 5) else []

    got = run_stream_to_completions(args.stream(PROMPTS[:1], GREEDY, admit=admit), len(PROMPTS))
    assert [c.token_ids for c in got] == [c.token_ids for c in whole]


def test_args_in_a_route_tree_with_a_scorer_spec(tiny_dir):
    tree = {"args": {"scorer": "geval:" + str(tiny_dir["judge"]), "top_k": 3, "weight": 0.5,
                     "model": {"none": {"model": str(tiny_dir["base"])}}}}
    model = ak.load(tree)
    assert isinstance(model, RewardGuided) and model.knobs() == {"weight": 0.5}
    assert model.info()["args"]["top_k"] == 3
    out = model.generate(["Tell me a fact"], GenerationConfig(max_new_tokens=4))[0]
    assert out.completion_tokens == 4
    # the weight is a knob (per-request weights, sweeps); the copy shares the loaded models
    assert model.with_knobs({"weight": 0.0}).weight == 0.0 and model.weight == 0.5
    with pytest.raises(InputError, match="top_k"):
        ak.load({"args": {**tree["args"], "top_k": 0}})
    with pytest.raises(InputError, match="scorer"):
        ak.load({"args": {"model": {"none": {"model": str(tiny_dir["base"])}}}})


def test_what_it_cannot_do_is_refused(raw):
    args = RewardGuided(raw, CountScorer())
    with pytest.raises(CapabilityError):
        args.generate(["x"], GenerationConfig(max_new_tokens=3, constraint=Constraint.json_schema({"type": "object"})))
    with pytest.raises(InputError, match="top_k"):
        RewardGuided(raw, CountScorer(), top_k=0)
    with pytest.raises(InputError, match="weight"):
        RewardGuided(raw, CountScorer(), weight=float("nan"))


def test_over_a_logit_mix_the_reward_rescores_the_mixed_distribution(tiny_dir):
    """ARGS around proxy-tuning: weight 0 is proxy-tuning's own tokens; with a weight, each token is the argmax of
    log_softmax(the mix) + w * r over the mix's top k."""
    proxy_tree = {"proxy": {"alpha": 1.0, "base": {"none": {"model": str(tiny_dir["base"])}},
                            "expert": {"template": {"model": str(tiny_dir["aligned"])}},
                            "antiexpert": {"none": {"model": str(tiny_dir["llama"])}}}}
    proxy = ak.load(proxy_tree)
    plain = [c.token_ids for c in proxy.generate(PROMPTS, GREEDY)]
    assert [c.token_ids for c in RewardGuided(proxy, DistinctScorer(), top_k=5, weight=0.0).generate(PROMPTS, GREEDY)] == plain
    args = RewardGuided(proxy, DistinctScorer(), top_k=5, weight=5.0)
    assert args.spec == proxy.spec and dict(args.children())["model"] is proxy
    got = [list(c.token_ids) for c in args.generate(PROMPTS, GREEDY)]
    eos = args.inners[0].token_loop.eos_ids
    decode = args.inners[0].token_loop.decode
    for p, toks in zip(PROMPTS, got):
        for j, tok in enumerate(toks):
            top_v, top_i = _next_logp(proxy, p, toks[:j]).topk(5)  # the mixed distribution, a full pass
            texts = [decode(toks[:j] if t in eos else toks[:j] + [t]) for t in top_i.tolist()]
            r = torch.tensor([float(len(set(t))) for t in texts], dtype=torch.float64)
            s = top_v + 5.0 * r
            assert tok == int(top_i[int(s.argmax())]), (s, top_i)


def test_from_the_command_line_with_a_route_file(tiny_dir, hub_reward, tmp_path, capsys):
    import json

    import yaml

    from alignkit.cli.main import main

    route = tmp_path / "args.yaml"
    route.write_text(yaml.safe_dump({"args": {"scorer": f"reward:{hub_reward['rm']}", "top_k": 3,
                                              "model": {"none": {"model": str(tiny_dir["base"])}}}}))
    inp = tmp_path / "in.jsonl"
    inp.write_text("".join(json.dumps({"id": i, "prompt": p}) + "\n" for i, p in enumerate(PROMPTS)))
    assert main(["generate", "--route", str(route), "--input", str(inp), "--output", str(tmp_path / "x.jsonl"),
                 "--show-prompt"]) == 0
    shown = capsys.readouterr().out
    assert "The quick brown" in shown and "reward:" not in shown.split("=====")[0]
    out = tmp_path / "out.jsonl"
    assert main(["generate", "--route", str(route), "--input", str(inp), "--output", str(out),
                 "--max-new-tokens", "4"]) == 0
    rows = [json.loads(x) for x in out.read_text().splitlines()]
    assert len(rows) == 3 and rows[0]["provenance"]["tree"]["args"]["top_k"] == 3
