"""`alignkit chat` and the method flags of `alignkit generate`, in-process on tiny models."""

from __future__ import annotations

import builtins
import io
import json

import pytest

from alignkit.cli.main import main


class _TTY(io.StringIO):
    def isatty(self) -> bool:
        return True


def _short_template(tmp_path):
    f = tmp_path / "short.yaml"
    f.write_text("id: short\npreamble: Be kind and helpful.\nexamples:\n  - query: Hi\n    answer: Hello! How can I help?\n")
    return str(f)


def test_pipe_is_one_message(tiny_dir, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr("sys.stdin", io.StringIO("How do I boil an egg?\n"))
    code = main(["chat", "--model", str(tiny_dir["base"]), "--method", "urial", "--template",
                 _short_template(tmp_path), "--max-new-tokens", "8"])
    out = capsys.readouterr().out
    assert code == 0 and out.endswith("\n") and "# Query" not in out and "````" not in out


def test_empty_pipe_is_an_error(tiny_dir, monkeypatch, capsys):
    monkeypatch.setattr("sys.stdin", io.StringIO(""))
    assert main(["chat", "--model", str(tiny_dir["base"])]) == 2
    assert "stdin was empty" in capsys.readouterr().err


def test_show_prompt_prints_what_the_model_sees_without_running_it(tiny_dir, tmp_path, capsys):
    code = main(["chat", "--model", str(tiny_dir["base"]), "--method", "urial", "--template", _short_template(tmp_path),
                 "--message", "What is 2+2?", "--system", "Be brief.", "--show-prompt", "--stop", "\\n\\n"])
    out = capsys.readouterr().out
    assert code == 0
    assert "Be kind and helpful." in out and "What is 2+2?" in out and "Be brief." in out
    assert "'````'" in out and "'\\n# Query:'" in out and "'\\n\\n'" in out


def test_auto_method_uses_the_chat_template_when_there_is_one(tiny_dir, capsys):
    assert main(["chat", "--model", str(tiny_dir["aligned"]), "--message", "Hi", "--show-prompt"]) == 0
    out = capsys.readouterr().out
    assert "(template)" in out and "<|user|>\nHi\n<|assistant|>" in out


def test_repl_commands(tiny_dir, tmp_path, monkeypatch, capsys):
    lines = iter(["Hello", "/system Be brief.", "/prompt", "Again", "/save " + str(tmp_path / "c.json"), "/reset",
                  "/save " + str(tmp_path / "empty.json"), "/nonsense", "/exit"])
    monkeypatch.setattr("sys.stdin", _TTY())
    monkeypatch.setattr(builtins, "input", lambda prompt="": next(lines))
    assert main(["chat", "--model", str(tiny_dir["aligned"]), "--max-new-tokens", "4"]) == 0
    saved = json.loads((tmp_path / "c.json").read_text())
    roles = [m["role"] for m in saved["messages"]]
    assert roles == ["system", "user", "assistant", "user", "assistant"]
    assert saved["messages"][0]["content"] == "Be brief." and saved["provenance"]["method"] == "template"
    assert [m["role"] for m in json.loads((tmp_path / "empty.json").read_text())["messages"]] == ["system"]
    err = capsys.readouterr().err
    assert "/reset" in err  # help shown for the unknown command


def test_generate_with_urial_records_template_provenance(tiny_dir, tmp_path):
    inp = tmp_path / "in.jsonl"
    inp.write_text("".join(json.dumps({"id": i, "prompt": q}) + "\n" for i, q in enumerate(["Hi there", "Help me"])))
    out = tmp_path / "out.jsonl"
    assert main(["generate", "--model", str(tiny_dir["base"]), "--method", "urial", "--template",
                 _short_template(tmp_path), "--input", str(inp), "--output", str(out), "--max-new-tokens", "6"]) == 0
    recs = [json.loads(x) for x in out.read_text().splitlines()]
    prov = recs[0]["provenance"]["model"]
    assert prov["method"] == "urial" and prov["template"]["id"] == "short" and len(prov["template"]["hash"]) == 16
    assert recs[0]["provenance"]["generation"]["repetition_penalty"] == 1.15  # urial's recommended decoding
    assert all("````" not in r["output"] for r in recs)


def test_generate_show_prompt(tiny_dir, tmp_path, capsys):
    inp = tmp_path / "in.jsonl"
    inp.write_text(json.dumps({"id": "a", "messages": [{"role": "user", "content": "Hi"}]}) + "\n")
    out = tmp_path / "never.jsonl"
    assert main(["generate", "--model", str(tiny_dir["base"]), "--method", "urial", "--template",
                 _short_template(tmp_path), "--input", str(inp), "--output", str(out), "--show-prompt"]) == 0
    shown = capsys.readouterr().out
    assert "===== prompt id=a (urial) =====" in shown and not out.exists()


@pytest.mark.parametrize("flags, needle", [
    (["--method", "template"], "lacks it"),
    (["--method", "urial", "--template", "nope"], "not a shipped template"),
    (["--method", "none", "--k", "3"], "apply to --method urial only"),
])
def test_method_errors_are_one_line(tiny_dir, tmp_path, capsys, flags, needle):
    code = main(["chat", "--model", str(tiny_dir["base"]), "--message", "Hi", *flags])
    err = capsys.readouterr().err
    assert code == 2 and needle in err and len(err.strip().splitlines()) == 1
