from __future__ import annotations

import json
import subprocess
import sys

import pytest

from alignkit.cli.main import COMMANDS, main


def test_import_does_not_import_torch():
    code = "import sys, alignkit, alignkit.cli.main; alignkit.cli.main.build_parser(); print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


@pytest.mark.parametrize("command", list(COMMANDS))
def test_every_command_has_help(command, capsys):
    with pytest.raises(SystemExit) as e:
        main([command, "--help"])
    assert e.value.code == 0
    assert "usage: alignkit " + command in capsys.readouterr().out


def test_models_lists_the_embedded_default(capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("ALIGNKIT_CACHE", str(tmp_path))
    assert main(["models", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    gemma = next(r for r in rows if r["alias"] == "gemma-3-270m")
    assert gemma["default"] and gemma["kind"] == "base" and gemma["cached"] is False


def test_generation_config_validates():
    from alignkit import GenerationConfig

    for bad in ({"max_new_tokens": 0}, {"temperature": -1}, {"top_p": 0}, {"top_k": -1}, {"stop": "x"},
                {"stop": ("",)}, {"repetition_penalty": 0}):
        with pytest.raises(ValueError):
            GenerationConfig(**bad)
