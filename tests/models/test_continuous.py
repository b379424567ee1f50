"""Continuous batching (``stream(..., admit=)``): requests that join a running batch between decode steps get
exactly the tokens they get alone, for the transformers backend and the methods built on it (in-context
alignment with its shared prefix, DeRa's lockstep pair, best-of-N); a finished row's key/values are freed."""

from __future__ import annotations

import pytest
import torch

from alignkit import GenerationConfig
from alignkit.errors import CapabilityError
from alignkit.methods import MethodOptions, apply_method
from alignkit.methods.best_of_n import BestOfN
from alignkit.methods.dera import DeRa
from alignkit.methods.templates import parse_template
from alignkit.methods.urial import InContextAligned
from alignkit.models.base import run_stream_to_completions
from alignkit.scoring import Score, Scorer

PROMPTS = ["The quick brown fox jumps over the lazy dog and then", "Once", "def add(a, b):",
           "Thank you for asking! Here is", "x", "The cat sat on the mat while the dog"]
# greedy and sampled (seeded) requests, long and short, so rows finish at different steps
CONFIGS = [GenerationConfig(max_new_tokens=30), GenerationConfig(max_new_tokens=4),
           GenerationConfig(max_new_tokens=12, temperature=1.3, seed=5), GenerationConfig(max_new_tokens=20),
           GenerationConfig(max_new_tokens=7, temperature=0.9, top_p=0.8, seed=11),
           GenerationConfig(max_new_tokens=16, repetition_penalty=1.3)]


class Schedule:
    """An ``admit`` callback that lets request k join before decode step ``steps[k]`` (deterministic, no
    timing), and records how many rows were running each time it was asked."""

    def __init__(self, prompts, configs, steps):
        self.waiting = sorted(zip(steps, range(len(prompts))))
        self.prompts, self.configs = prompts, configs
        self.calls, self.running, self.order = 0, [], []

    def __call__(self, running: int, room: int | None = None):
        self.running.append(running)
        now = [k for s, k in self.waiting if s <= self.calls][:room]  # what the model has room for; the rest waits
        self.waiting = [(s, k) for s, k in self.waiting if k not in now]
        self.calls += 1
        self.order += now
        return [(self.prompts[k], self.configs[k]) for k in now]


def run_continuous(model, prompts, configs, first: int, steps):
    """Start with the first ``first`` requests; the others join at ``steps``; completions by request."""
    sched = Schedule(prompts[first:], configs[first:], steps)
    events = model.stream(prompts[:first], configs[:first], admit=sched)
    comps = run_stream_to_completions(events, len(prompts))
    order = list(range(first)) + [first + k for k in sched.order]  # event index -> request
    out = [None] * len(prompts)
    for idx, req in enumerate(order):
        out[req] = comps[idx]
    return out, sched


def alone(model, prompts, configs):
    return [model.generate([p], c)[0] for p, c in zip(prompts, configs)]


@pytest.fixture(scope="module")
def raw(tiny_base):
    return apply_method(tiny_base, MethodOptions(method="none"))


def test_requests_joining_a_running_batch_get_the_tokens_they_get_alone(raw):
    assert raw.capabilities.continuous_batching
    got, sched = run_continuous(raw, PROMPTS, CONFIGS, first=2, steps=[1, 3, 3, 9])
    want = alone(raw, PROMPTS, CONFIGS)
    assert [c.token_ids for c in got] == [c.token_ids for c in want]
    assert [c.text for c in got] == [c.text for c in want]
    assert [c.finish_reason for c in got] == [c.finish_reason for c in want]
    # they really joined a running batch (rows were running when they were admitted)
    assert sched.order == [0, 1, 2, 3] and max(sched.running) >= 3 and sched.running[3] > 0


def test_a_request_can_join_after_every_other_row_has_finished_but_one(raw):
    # request 1 (4 tokens) finishes long before request 0 (30 tokens); one joins at step 25, when only 0 runs
    got, _ = run_continuous(raw, PROMPTS[:3], CONFIGS[:3], first=2, steps=[25])
    assert [c.token_ids for c in got] == [c.token_ids for c in alone(raw, PROMPTS[:3], CONFIGS[:3])]


def test_a_finished_rows_key_values_are_freed(tiny_base):
    """When the row with the long prompt finishes, the columns only it used are dropped: the batch is then as
    wide as the short row needs, and its logits equal a fresh run of the short row alone."""
    long = tiny_base.encode_prompt(PROMPTS[0])
    short = tiny_base.encode_prompt(PROMPTS[1])
    st = tiny_base.stepper([long, short], extra=8)
    assert st.mask.shape[1] == len(long)
    st.step([5, 6], [0, 1])
    st.step([7], [1])  # the long row is done
    assert st.mask.shape[1] == len(short) + 2 == st.cache.layers[0].get_seq_length()
    ref = tiny_base.stepper([short + [6, 7]], extra=8)
    torch.testing.assert_close(st.logits, ref.logits, rtol=1e-9, atol=1e-9)


def test_joining_rows_reuse_the_stored_in_context_prefix(tiny_base):
    preamble = "Answer the question kindly, clearly and briefly, in full sentences."
    t = parse_template({"id": "s", "preamble": preamble, "examples": [{"query": "Hi there", "answer": "Hello!"}]})
    urial = InContextAligned(tiny_base, t)
    store = tiny_base.engine.store
    store.clear()
    misses = store.misses
    cfgs = [GenerationConfig(max_new_tokens=n) for n in (12, 5, 9, 6)]
    got, _ = run_continuous(urial, PROMPTS[:4], cfgs, first=1, steps=[2, 2, 6])
    assert store.misses - misses == 1  # the shared preamble was computed once, for the first request
    assert [c.text for c in got] == [c.text for c in alone(urial, PROMPTS[:4], cfgs)]


def test_dera_pairs_take_joining_requests_in_lockstep(tiny_base, tiny_aligned):
    ref, aligned = (apply_method(m, MethodOptions(method="none")) for m in (tiny_base, tiny_aligned))
    mix = DeRa(ref, aligned, 0.5)
    assert mix.capabilities.continuous_batching
    got, _ = run_continuous(mix, PROMPTS, CONFIGS, first=1, steps=[2, 2, 5, 11, 11])
    assert [c.token_ids for c in got] == [c.token_ids for c in alone(mix, PROMPTS, CONFIGS)]


class CountScorer(Scorer):
    kind, spec = "count", "count:e"

    def score(self, prompts, answers):
        return [Score(float(a.count("e"))) for a in answers]


def test_best_of_n_admits_requests_as_n_rows_and_answers_each_when_its_candidates_are_in(raw):
    bon = BestOfN(raw, CountScorer(), 3)
    cfgs = [GenerationConfig(max_new_tokens=n, temperature=1.2, seed=s) for n, s in ((20, 1), (4, 2), (9, 3))]
    sched = Schedule(PROMPTS[1:3], cfgs[1:], [2, 4])
    events = list(bon.stream(PROMPTS[:1], cfgs[:1], admit=sched))
    # asked in requests, not rows: one request (3 rows) ran when the second joined, two when the third did
    assert sched.running[2] == 1 and sched.running[4] == 2
    by_index = {ev.index: ev.completion for ev in events}
    assert [ev.index for ev in events][0] == 1  # the short request was answered first, before the long one
    want = alone(bon, PROMPTS[:3], cfgs)
    assert [by_index[i].text for i in range(3)] == [c.text for c in want]
    assert [by_index[i].meta["best_of_n"]["chosen"] for i in range(3)] == [c.meta["best_of_n"]["chosen"] for c in want]


def test_routes_that_run_a_model_before_answering_are_not_continuous(tiny_base, tiny_dir):
    from alignkit.models.registry import ModelPool

    pool = ModelPool()
    route = apply_method(tiny_base, MethodOptions(method="none", rewriter=str(tiny_dir["base"]), rewriter_method="none"),
                         pool)
    assert not route.capabilities.continuous_batching
    from alignkit.server.service import Service

    with pytest.raises(CapabilityError, match="running batch"):
        Service(route, "r", scheduler="continuous")
    assert not Service(route, "r").continuous  # auto: static for this route


def test_a_request_joins_a_batch_whose_rows_have_all_finished(raw, tiny_base):
    """The only row finishes (2 tokens); a request arriving right then joins the emptied batch instead of ending
    the stream, and gets its solo tokens."""
    cfgs = [GenerationConfig(max_new_tokens=2), GenerationConfig(max_new_tokens=6, temperature=1.1, seed=3)]
    got, sched = run_continuous(raw, PROMPTS[:2], cfgs, first=1, steps=[2])
    assert sched.running[2] == 0  # nothing was running when it joined
    assert [c.token_ids for c in got] == [c.token_ids for c in alone(raw, PROMPTS[:2], cfgs)]


def test_a_running_batch_copies_only_the_rows_that_change(tiny_base):
    """A finishing row frees its slot: the last row moves into it (the buffers stay; no other row is copied) and a
    joining row takes a free slot; every row's next-token logits stay those of a fresh run of that row alone."""
    rows = [tiny_base.encode_prompt(p) for p in PROMPTS[:4]]
    st = tiny_base.stepper(rows, extra=8)
    buffers = st.kv.phys[0][0]
    st.step([5, 6, 7, 8], [0, 1, 2, 3])
    rows = [r + [t] for r, t in zip(rows, [5, 6, 7, 8])]
    st.step([9, 10, 11], [1, 2, 3])  # row 0 is done: row 3 moves into its slot
    rows = [r + [t] for r, t in zip(rows[1:], [9, 10, 11])]
    assert st.kv.phys[0][0] is buffers and st.slots == [1, 2, 0] and st.kv.rows == 3
    st.join([tiny_base.encode_prompt(PROMPTS[5])], extra=8)  # a free slot and room on the left: no new buffers
    rows.append(tiny_base.encode_prompt(PROMPTS[5]))
    assert st.kv.phys[0][0] is buffers and st.slots == [1, 2, 0, 3]
    for _ in range(3):
        for j, ids in enumerate(rows):
            ref = tiny_base.stepper([ids], extra=8)
            torch.testing.assert_close(st.logits[j], ref.logits[0], rtol=1e-5, atol=1e-5)
        tokens = [int(x) for x in st.logits.argmax(-1)]
        st.step(tokens, list(range(len(rows))))
        rows = [r + [t] for r, t in zip(rows, tokens)]


def test_many_requests_joining_and_finishing_get_their_solo_tokens(raw):
    """Prompts longer and shorter than the running batch, joining alone and together, finishing at every step:
    the slots are reused, grown, and the columns before the batch taken, and every answer is its solo answer."""
    prompts = PROMPTS + ["A much longer prompt than any that is running: " * 3, "Hi", "Tell me about the moon",
                         "Once upon a time, in a land far away, there lived"]
    configs = [GenerationConfig(max_new_tokens=n) for n in (9, 3, 14, 5, 22, 7, 4, 11, 6, 17)]
    got, sched = run_continuous(raw, prompts, configs, first=3, steps=[1, 1, 2, 4, 4, 6, 9])
    assert [c.token_ids for c in got] == [c.token_ids for c in alone(raw, prompts, configs)]
    assert max(sched.running) >= 4
