"""Training data: every kind of bad record is caught with its line number; cleaning and selection keep what
they should; the shipped SFT set meets its brief."""

from __future__ import annotations

import json
from collections import Counter

import pytest

from alignkit.cli.main import main
from alignkit.training import data


def _write(path, lines):
    path.write_text("\n".join(x if isinstance(x, str) else json.dumps(x) for x in lines) + "\n", encoding="utf-8")
    return path


def _conv(*turns, system=None):
    msgs = [{"role": "system", "content": system}] if system else []
    for i, t in enumerate(turns):
        msgs.append({"role": "user" if i % 2 == 0 else "assistant", "content": t})
    return msgs


GOOD = {"id": "ok", "messages": _conv("Hi?", "Hello!")}

SFT_BAD = [
    ("{not json", "invalid JSON"),
    ("[1, 2]", "expected a JSON object"),
    ({"id": "a"}, "needs 'messages'"),
    ({"id": "b", "messages": []}, "non-empty list"),
    ({"id": "c", "messages": [{"role": "user"}]}, "must be an object with 'role' and 'content'"),
    ({"id": "d", "messages": [{"role": "robot", "content": "x"}]}, "unknown role 'robot'"),
    ({"id": "e", "messages": _conv("Hi?", "   ")}, "message 1 (assistant) is empty"),
    ({"id": "f", "messages": [{"role": "user", "content": 3}]}, "content must be a string"),
    ({"id": "g", "messages": _conv("Hi?")}, "must end with an assistant turn"),
    ({"id": "h", "messages": [{"role": "assistant", "content": "x"}]}, "must alternate"),
    ({"id": "i", "messages": _conv("a", "b") + [{"role": "system", "content": "late"}]}, "only the first message"),
    ({"id": "j", "messages": _conv("a", "b", "c", "d")[:2] + _conv("c", "d")[1:]}, "must alternate"),
    ({"id": True, "messages": _conv("a", "b")}, "'id' must be"),
    ({"id": "ok", "messages": _conv("again", "dup id")}, "duplicate id 'ok' (first on line 1)"),
]


def test_every_kind_of_bad_sft_record_is_reported_with_its_line(tmp_path):
    path = _write(tmp_path / "bad.jsonl", [GOOD] + [b for b, _ in SFT_BAD])
    loaded = data.load(str(path), "sft")
    assert [r.id for r in loaded.records] == ["ok"]
    assert len(loaded.problems) == len(SFT_BAD)
    for (_, expected), problem, lineno in zip(SFT_BAD, loaded.problems, range(2, 2 + len(SFT_BAD))):
        assert problem.lineno == lineno
        assert expected in problem.reason, (lineno, problem.reason)


PREF_BAD = [
    ({"id": 1, "prompt": "q", "chosen": "a"}, "missing: rejected"),
    ({"id": 2, "prompt": "", "chosen": "a", "rejected": "b"}, "'prompt' is empty"),
    ({"id": 3, "prompt": "q", "chosen": "same ", "rejected": "same"}, "the same answer"),
    ({"id": 4, "prompt": "q", "chosen": 5, "rejected": "b"}, "'chosen' must be a non-empty string"),
    ({"id": 5, "prompt": _conv("q", "a"), "chosen": "x", "rejected": "y"}, "must end with a user turn"),
]


def test_every_kind_of_bad_preference_record_is_reported(tmp_path):
    good = {"id": 0, "prompt": _conv("q", "a", "q2"), "chosen": "x", "rejected": "y"}
    path = _write(tmp_path / "prefs.jsonl", [good] + [b for b, _ in PREF_BAD])
    loaded = data.load(str(path), "prefs")
    assert len(loaded.records) == 1
    for (_, expected), problem in zip(PREF_BAD, loaded.problems):
        assert expected in problem.reason, problem.reason
    assert [p.lineno for p in loaded.problems] == [2, 3, 4, 5, 6]


def test_empty_and_missing_files(tmp_path):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n\n")
    assert "no records" in data.load(str(empty), "sft").problems[0].reason
    from alignkit.errors import InputError

    with pytest.raises(InputError, match="does not exist"):
        data.load(str(tmp_path / "nope.jsonl"), "sft")
    with pytest.raises(InputError, match="unknown data kind"):
        data.load(str(empty), "rlhf")


def test_validate_command_lists_problems_and_exits_nonzero(tmp_path, capsys):
    path = _write(tmp_path / "bad.jsonl", [GOOD, "{oops", {"id": "x", "messages": _conv("only a question")}])
    assert main(["data", "validate", "--input", str(path)]) == 1
    err = capsys.readouterr().err
    assert f"{path}:2: invalid JSON" in err and f"{path}:3: the conversation must end with an assistant" in err
    good = _write(tmp_path / "good.jsonl", [GOOD])
    assert main(["data", "validate", "--input", str(good)]) == 0


def test_shipped_sft_set_meets_its_brief():
    loaded = data.load("alignkit-sft", "sft")
    assert not loaded.problems
    records = [r.data for r in loaded.records]
    assert len(records) >= 100
    multi = [r for r in records if sum(m["role"] == "assistant" for m in r["messages"]) > 1]
    assert len(multi) >= 10
    tasks = Counter(r["tags"]["task"] for r in records)
    assert tasks["safety"] >= 5 and tasks["safety-benign"] >= 3  # declines, and risky-sounding benign answers
    assert len(tasks) >= 15  # many task types
    kept, removed = data.clean(loaded.records, data.CleanOptions())
    assert not removed, removed  # no duplicates or near duplicates in what we ship


def test_clean_removes_exact_and_near_duplicates_and_length_outliers(tmp_path, capsys):
    answer = "Boil the egg for six minutes, then cool it in cold water and peel it carefully before serving warm."
    recs = [
        {"id": "a", "messages": _conv("How do I boil an egg?", answer)},
        {"id": "b", "messages": _conv("How do I boil an egg?", answer)},  # exact
        {"id": "c", "messages": _conv("How do I boil an egg??", answer.replace("warm", "hot"))},  # near
        {"id": "d", "messages": _conv("Capital of France?", "Paris.")},  # short
        {"id": "e", "messages": _conv("Tell me about rivers.", "Rivers carry water from high ground to the sea "
                                      "and shape valleys over thousands of years.")},
    ]
    src = _write(tmp_path / "in.jsonl", recs + ["{broken"])
    out, removed = tmp_path / "out.jsonl", tmp_path / "removed.jsonl"
    assert main(["data", "clean", "--input", str(src), "--output", str(out)]) == 2  # malformed: stop
    assert not out.exists()
    assert main(["data", "clean", "--input", str(src), "--output", str(out), "--removed", str(removed),
                 "--min-words", "3", "--skip-bad"]) == 0
    kept = [json.loads(x)["id"] for x in out.read_text().splitlines()]
    assert kept == ["a", "e"]
    why = {json.loads(x).get("record", {}).get("id"): json.loads(x)["reason"] for x in removed.read_text().splitlines()}
    assert why["b"].startswith("exact duplicate of 'a'")
    assert why["c"].startswith("near duplicate of 'a'")
    assert why["d"].startswith("answer too short")
    assert any(r.startswith("malformed: invalid JSON") for r in why.values())  # nothing is lost silently
    # an existing output is never overwritten
    assert main(["data", "clean", "--input", str(src), "--output", str(out), "--skip-bad"]) == 2


def _bag_of_words(texts):
    import numpy as np

    vocab = ["cook", "egg", "pasta", "code", "python", "bug", "star", "planet", "moon"]
    return np.array([[t.lower().count(w) + 1e-3 for w in vocab] for t in texts], dtype=float)


def test_diverse_selection_spreads_over_clusters():
    topics = {"cook": ["cook an egg", "cook pasta", "egg and pasta cook"], "code": ["python code bug", "code in python",
              "python bug"], "space": ["star and planet", "moon planet", "star moon"]}
    records = [data.Record(i + 1, {"id": f"{k}{j}", "messages": _conv(q, "answer")})
               for i, (k, j, q) in enumerate((k, j, q) for k, qs in topics.items() for j, q in enumerate(qs))]
    chosen = data.select_diverse(records, 3, _bag_of_words)
    assert sorted(r.id[:-1] for r in chosen) == ["code", "cook", "space"]
    assert data.select_diverse(records, 3, _bag_of_words) == chosen  # deterministic
    assert len(data.select_diverse(records, 50, _bag_of_words)) == len(records)


def test_data_hash_depends_on_content_not_ids():
    a = [data.Record(1, {"id": "x", "messages": _conv("q", "a")})]
    b = [data.Record(1, {"id": "y", "messages": _conv("q", "a"), "tags": {"t": 1}})]
    c = [data.Record(1, {"id": "x", "messages": _conv("q", "b")})]
    assert data.data_hash(a) == data.data_hash(b) != data.data_hash(c)
