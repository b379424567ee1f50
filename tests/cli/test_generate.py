"""`alignkit generate` in-process: output, resume, bad input, and one-line errors with non-zero exits."""

from __future__ import annotations

import json

import pytest

from alignkit.cli.main import main


def _write(path, lines):
    path.write_text("".join((ln if isinstance(ln, str) else json.dumps(ln)) + "\n" for ln in lines))
    return path


def _read(path):
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


@pytest.fixture
def inp(tmp_path):
    return _write(tmp_path / "in.jsonl", [
        {"id": "a", "prompt": "The quick brown", "category": "test"},
        {"id": "b", "prompt": "Thank you"},
        {"id": "c", "messages": [{"role": "user", "content": "Hello"}]},
    ])


def _args(tiny_dir, inp, out, *extra):
    return ["generate", "--model", str(tiny_dir["aligned"]), "--input", str(inp), "--output", str(out),
            "--max-new-tokens", "5", "--batch-size", "2", *extra]


def test_generates_every_record_with_provenance(tiny_dir, inp, tmp_path):
    out = tmp_path / "out.jsonl"
    assert main(_args(tiny_dir, inp, out)) == 0
    recs = _read(out)
    assert [r["id"] for r in recs] == ["a", "b", "c"]
    assert recs[0]["category"] == "test" and isinstance(recs[0]["output"], str)
    prov = recs[0]["provenance"]
    assert prov["model"]["spec"] == str(tiny_dir["aligned"]) and prov["model"]["backend"] == "hf"
    assert prov["generation"]["max_new_tokens"] == 5 and prov["model"]["alignkit"]


def test_resume_skips_written_ids_and_survives_a_torn_line(tiny_dir, inp, tmp_path):
    out = tmp_path / "out.jsonl"
    assert main(_args(tiny_dir, inp, out)) == 0
    lines = out.read_text().splitlines()
    out.write_text(lines[0] + "\n" + lines[1][:25])  # killed while writing the second record
    assert main(_args(tiny_dir, inp, out, "--resume")) == 0
    recs = _read_tolerant(out)
    assert sorted(r["id"] for r in recs) == ["a", "b", "c"]
    assert main(_args(tiny_dir, inp, out, "--resume")) == 0  # nothing left: no duplicates
    assert len(_read_tolerant(out)) == 3


def _read_tolerant(path):
    out = []
    for line in path.read_text().splitlines():
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            pass
    return out


def test_refuses_to_append_to_existing_output_without_resume(tiny_dir, inp, tmp_path, capsys):
    out = tmp_path / "out.jsonl"
    out.write_text('{"id": "x", "output": "keep me"}\n')
    assert main(_args(tiny_dir, inp, out)) == 2
    assert "pass --resume" in capsys.readouterr().err
    assert out.read_text() == '{"id": "x", "output": "keep me"}\n'


def test_malformed_lines_are_reported_by_line_number(tiny_dir, tmp_path, capsys):
    inp = _write(tmp_path / "in.jsonl", [
        {"id": 1, "prompt": "The quick"},
        "{not json",
        {"id": 1, "prompt": "again"},
        {"prompt": "no id"},
        {"id": 4, "messages": [{"role": "robot", "content": "x"}]},
        "[1, 2]",
        {"id": 5, "prompt": "Thank you"},
    ])
    out = tmp_path / "out.jsonl"
    assert main(_args(tiny_dir, inp, out)) == 2
    err = capsys.readouterr().err
    for needle in ("in.jsonl:2: invalid JSON", "in.jsonl:3: duplicate id 1", "in.jsonl:4: record needs an 'id'",
                   "in.jsonl:5: bad 'messages': unknown message role 'robot'", "in.jsonl:6: expected a JSON object"):
        assert needle in err
    assert not out.exists()
    assert main(_args(tiny_dir, inp, out, "--on-error", "skip")) == 0
    assert [r["id"] for r in _read(out)] == [1, 5]


@pytest.mark.parametrize(
    "model, needle",
    [
        ("no-such-org/no-such-model", "tried 'no-such-org/no-such-model' as a Hugging Face hub id"),
        ("./missing-folder", "model path './missing-folder' does not exist"),
        ("openai:m@http://127.0.0.1:9/v1", "cannot reach the OpenAI-compatible server at http://127.0.0.1:9/v1"),
    ],
)
def test_bad_models_give_one_line_errors(inp, tmp_path, capsys, model, needle):
    code = main(["generate", "--model", model, "--input", str(inp), "--output", str(tmp_path / "o.jsonl"),
                 "--max-retries", "0"])
    err = capsys.readouterr().err
    assert code == 2
    assert needle in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1


def test_missing_adapter_is_a_clear_error(tiny_dir, inp, tmp_path, capsys):
    code = main(_args(tiny_dir, inp, tmp_path / "o.jsonl", "--adapter", str(tmp_path / "nope")))
    assert code == 2 and "adapter folder" in capsys.readouterr().err


def test_config_file_and_flags(tiny_dir, inp, tmp_path, capsys):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"model: {tiny_dir['aligned']}\nmax_new_tokens: 3\ntemperature: 0\n")
    out = tmp_path / "o.jsonl"
    assert main(["generate", "--config", str(cfg), "--input", str(inp), "--output", str(out),
                 "--max-new-tokens", "4"]) == 0
    assert _read(out)[0]["provenance"]["generation"]["max_new_tokens"] == 4  # the flag wins
    bad = tmp_path / "bad.yaml"
    bad.write_text("max_new_tokenz: 3\n")
    assert main(["generate", "--config", str(bad), "--input", str(inp), "--output", str(out)]) == 2
    assert "unknown key(s)" in capsys.readouterr().err


def test_missing_input_and_bad_values(tiny_dir, tmp_path, capsys):
    assert main(["generate", "--input", str(tmp_path / "none.jsonl"), "--output", str(tmp_path / "o")]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert main(["generate", "--output", str(tmp_path / "o")]) == 2
    assert "--input" in capsys.readouterr().err


def test_a_file_saved_with_a_byte_order_mark_reads_like_any_other(tiny_dir, tmp_path):
    """Windows editors often save UTF-8 with a byte-order mark: the first record is still a record (the eval
    loaders' JSONL and CSV read it the same way)."""
    from alignkit.evaluation.data import read_rows

    inp = tmp_path / "bom.jsonl"
    inp.write_bytes(b"\xef\xbb\xbf" + b'{"id": 1, "prompt": "The quick"}\n{"id": 2, "prompt": "Thank you"}\n')
    out = tmp_path / "out.jsonl"
    assert main(_args(tiny_dir, inp, out)) == 0
    assert [r["id"] for r in _read(out)] == [1, 2]
    assert read_rows(inp)[0]["id"] == 1
    csv = tmp_path / "bom.csv"
    csv.write_bytes(b"\xef\xbb\xbfid,prompt\n7,hello\n")
    assert read_rows(csv) == [{"id": "7", "prompt": "hello"}]  # "id", not "\ufeffid"
