"""``alignkit data backtranslate`` on tiny real models: passages from text and JSONL files, the backward model
trained on the seed turned around, candidate instructions (garbage dropped with the reason), curation by any scorer
or by the seed-tuned forward model (its unreadable ratings kept out, never guessed), tags, iterations, resume; bad
corpus lines listed by line."""

from __future__ import annotations

import json

import pytest

from alignkit.errors import InputError
from alignkit.training.backtranslate import BACKWARD_REQUEST, SEED_TAG, WEB_TAG, backward_records, read_corpus
from alignkit.training.data import Record

SEED = [{"id": f"s{i}", "messages": [{"role": "user", "content": f"What is {i} plus {i}?"},
                                     {"role": "assistant", "content": f"{i} plus {i} is {2 * i}."}]} for i in range(4)]
TEXT = ("Basil grows best in a sunny window. Water it when the soil is dry.\n\n"
        "Pinch off the flowers so the plant keeps making leaves.\n\n\n"
        + "A sourdough starter needs flour and water every day. Keep it warm. " * 3)


def _rows(path):
    return [json.loads(x) for x in path.read_text().splitlines()] if path.exists() else []


@pytest.fixture()
def files(tmp_path):
    seed = tmp_path / "seed.jsonl"
    seed.write_text("".join(json.dumps(r) + "\n" for r in SEED))
    txt = tmp_path / "notes.txt"
    txt.write_text(TEXT)
    jl = tmp_path / "web.jsonl"
    jl.write_text(json.dumps({"text": "Tea tastes best with water just off the boil, steeped for three minutes."})
                  + "\n")
    return seed, txt, jl


def test_passages_and_the_backward_records(files, tmp_path):
    _, txt, jl = files
    ps = read_corpus([str(txt), str(jl)], min_chars=40, max_chars=120)
    assert all(40 <= len(p["text"]) <= 120 for p in ps) and len({p["id"] for p in ps}) == len(ps)
    assert ps[0]["text"].startswith("Basil grows best") and ps[-1]["source"] == f"{jl}:1"
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"text": "fine text " * 10}) + "\n{oops\n" + json.dumps({"title": "no text"}) + "\n")
    with pytest.raises(InputError) as e:
        read_corpus([str(bad)], min_chars=10)
    assert "bad.jsonl:2:" in str(e.value) and "bad.jsonl:3: no text field" in str(e.value)
    with pytest.raises(InputError, match="no passage of at least"):
        read_corpus([str(jl)], min_chars=5000, max_chars=6000)
    (b,) = backward_records([Record(1, SEED[1])])
    assert b.data["messages"][0]["content"] == BACKWARD_REQUEST.format(text="1 plus 1 is 2.")
    assert b.data["messages"][1] == {"role": "assistant", "content": "What is 1 plus 1?"}


def test_the_command_with_a_reward_curator_and_with_the_default_curator(tiny_dir, hub_reward, files, tmp_path, capsys):
    from alignkit.cli.main import main

    seed, txt, jl = files
    out = tmp_path / "bt"
    base = ["data", "backtranslate", "--corpus", str(txt), "--corpus", str(jl), "--seed-data", str(seed),
            "--model", str(tiny_dir["aligned"]), "--min-chars", "30", "--max-chars", "60", "--max-new-tokens", "8",
            "--max-steps", "1", "--keep-truncated", "--temperature", "1.5"]
    assert main(base + ["--output", str(out), "--curator", f"reward:{hub_reward['rm']}", "--threshold=-1e9"]) == 0
    assert (out / "backward" / "alignkit.json").is_file()
    cands, dropped = _rows(out / "candidates.jsonl"), _rows(out / "dropped.jsonl")
    passages = _rows(out / "passages.jsonl")
    assert sorted(r["id"] for r in cands + dropped) == sorted(p["id"] for p in passages)  # each written once
    # the tiny models never stop by themselves: their 8-token instructions are kept (--keep-truncated), an empty
    # one is dropped with its reason
    assert cands and all(r["instruction"] for r in cands) and all(r["reason"] for r in dropped)
    kept = _rows(out / "iter-1" / "curated.jsonl")
    assert [r["id"] for r in kept] == [r["id"] for r in cands]  # threshold -1e9: all rated pairs kept
    for r in kept:
        assert r["messages"][0] == {"role": "system", "content": WEB_TAG} and r["curation"]["score"] is not None
    assert all(r["messages"][0]["content"] == SEED_TAG for r in _rows(out / "seed-tagged.jsonl"))
    assert len(_rows(out / "uncurated.jsonl")) == len(cands)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["iterations"][0]["kept"] == len(kept) and summary["passages"] == len(passages)
    # resumed: nothing trained, written or rated twice
    stamp = (out / "backward" / "alignkit.json").stat().st_mtime
    assert main(base + ["--output", str(out), "--curator", f"reward:{hub_reward['rm']}", "--threshold=-1e9"]) == 0
    assert (out / "backward" / "alignkit.json").stat().st_mtime == stamp
    assert len(_rows(out / "iter-1" / "scores.jsonl")) == len(cands) and _rows(out / "candidates.jsonl") == cands

    # the default curator: the seed-tuned forward model as a 1-5 judge; two iterations
    out2 = tmp_path / "bt2"
    assert main(base + ["--output", str(out2), "--iterations", "2"]) == 0
    for k in (1, 2):
        assert (out2 / f"iter-{k}" / "forward" / "alignkit.json").is_file()
        rejected = _rows(out2 / f"iter-{k}" / "rejected.jsonl")
        kept = _rows(out2 / f"iter-{k}" / "curated.jsonl")
        assert rejected and len(rejected) + len(kept) == len(_rows(out2 / "candidates.jsonl"))
        # the tiny judge puts almost no probability on a digit: unrated, said so, never guessed
        assert all(r["reason"].startswith(("unrated:", "rated ")) for r in rejected)
    assert json.loads((out2 / "summary.json").read_text())["curator"].startswith("geval+curation")
    capsys.readouterr()
    assert main(base + ["--output", str(tmp_path / "bt3"), "--curator", "reward:x", "--iterations", "2"]) != 0
    assert "nothing to iterate" in capsys.readouterr().err
