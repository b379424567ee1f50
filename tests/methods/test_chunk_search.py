"""Chunk-level weak-to-strong search on tiny real models: a one-round search returns, of the model's own seeded
samples, the one the small pair values most; every answer's value is log p_tuned - log p_untuned of its text,
recomputed here; several rounds keep to the budget; it sits in route trees and refuses what it cannot do."""

from __future__ import annotations

import pytest

import alignkit as ak
from alignkit import GenerationConfig
from alignkit.errors import CapabilityError, InputError
from alignkit.methods.chunk_search import ChunkSearch

PROMPTS = ["The quick brown", "Once upon a time", "def main("]


@pytest.fixture(scope="module")
def sides(tiny_dir):
    return {"model": ak.load(str(tiny_dir["base"]), method="none"),
            "tuned": ak.load(str(tiny_dir["aligned"]), method="template"),
            "untuned": ak.load(str(tiny_dir["llama"]), method="none")}


def _value(sides, prompt, text):
    hi = sides["tuned"].score([prompt], [text])[0]
    lo = sides["untuned"].score([prompt], [text])[0]
    return sum(hi.logprobs) - sum(lo.logprobs)


def test_one_round_returns_the_sample_the_pair_values_most(sides):
    cfg = GenerationConfig(max_new_tokens=6, temperature=1.3, seed=11)
    search = ChunkSearch(sides["model"], sides["tuned"], sides["untuned"], chunk=6, beams=1, candidates=4)
    got = search.generate(PROMPTS, cfg)
    for p, comp in zip(PROMPTS, got):
        # the candidates are the model's own samples with seeds seed .. seed + 3
        samples = [sides["model"].generate([p], GenerationConfig(max_new_tokens=6, temperature=1.3, seed=11 + k))[0]
                   for k in range(4)]
        values = [_value(sides, p, s.text) if s.text else 0.0 for s in samples]
        best = max(range(4), key=lambda k: values[k])
        assert comp.text == samples[best].text
        info = comp.meta["chunk_search"]
        assert info["value"] == pytest.approx(values[best], abs=1e-4)
        assert info["rounds"] == 1 and info["generated_tokens"] == sum(s.completion_tokens for s in samples)


def test_several_rounds_keep_to_the_budget_and_value_the_whole_answer(sides):
    cfg = GenerationConfig(max_new_tokens=7, temperature=1.0, seed=3)
    search = ChunkSearch(sides["model"], sides["tuned"], sides["untuned"], chunk=2, beams=2, candidates=2)
    comps = search.generate(PROMPTS, cfg)
    for p, comp in zip(PROMPTS, comps):
        info = comp.meta["chunk_search"]
        assert comp.completion_tokens <= 7 and len(comp.token_ids) == comp.completion_tokens
        assert info["rounds"] >= 1 and info["values"] == sorted(info["values"], reverse=True)
        assert comp.text == sides["model"].base.token_loop.decode(list(comp.token_ids)) or comp.finish_reason == "stop"
        assert info["value"] == pytest.approx(_value(sides, p, comp.text) if comp.text else 0.0, abs=1e-4)
        # at most beams x candidates chunks of at most 2 tokens per round
        assert info["generated_tokens"] <= info["rounds"] * 2 * 2 * 2
    again = search.generate(PROMPTS, cfg)  # seeded: the same search
    assert [c.text for c in again] == [c.text for c in comps]
    # streaming gives each answer in one piece, equal to generate
    streamed = {ev.index: ev.completion.text for ev in search.stream(PROMPTS, cfg) if ev.completion}
    assert [streamed[i] for i in range(len(PROMPTS))] == [c.text for c in comps]


def test_stop_strings_end_a_beam(sides):
    search = ChunkSearch(sides["model"], sides["tuned"], sides["untuned"], chunk=3, beams=2, candidates=2)
    for c in search.generate(PROMPTS, GenerationConfig(max_new_tokens=12, temperature=1.5, seed=1, stop=(" ",))):
        assert " " not in c.text.strip()


def test_in_a_route_tree_and_what_it_refuses(tiny_dir, sides):
    tree = {"chunk-search": {"chunk": 3, "beams": 2, "candidates": 2, "model": {"urial": {"model": str(tiny_dir["base"]), "k": 0}},
                             "tuned": {"template": {"model": str(tiny_dir["aligned"])}},
                             "untuned": {"none": {"model": str(tiny_dir["llama"])}}}}
    model = ak.load(tree)
    assert isinstance(model, ChunkSearch) and [s for s, _ in model.children()] == ["model", "tuned", "untuned"]
    out = model.generate(["Name a colour."], GenerationConfig(max_new_tokens=6, seed=2))[0]
    assert out.meta["chunk_search"]["beams"] == 2 and out.completion_tokens <= 6
    assert not model.capabilities.continuous_batching
    with pytest.raises(InputError, match="chunk must be a positive integer"):
        ChunkSearch(sides["model"], sides["tuned"], sides["untuned"], chunk=0)
    with pytest.raises(InputError, match="candidates"):
        ak.load({"chunk-search": {**tree["chunk-search"], "candidates": 0}})
    with pytest.raises(CapabilityError, match="step"):
        ChunkSearch(ak.load({"best-of-n": {"scorer": "geval:" + str(tiny_dir["judge"]), "n": 2,
                                           "model": {"none": {"model": str(tiny_dir["base"])}}}}),
                    sides["tuned"], sides["untuned"])
