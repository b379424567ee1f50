"""Every command x every kind of bad value: a one-line error that names the flag (or config key) and what it
accepts, exit code 2, and nothing loaded -- the model spec given is a path that does not exist, so an error
about it would mean the value was checked too late."""

from __future__ import annotations

import json

import pytest

from alignkit.cli.main import main

NO_MODEL = "./no-such-model-folder"


@pytest.fixture
def files(tmp_path):
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text(json.dumps({"id": "a", "prompt": "Hello"}) + "\n")
    instr = tmp_path / "instr.jsonl"
    instr.write_text(json.dumps({"id": "a", "instruction": "Hello"}) + "\n")
    sft = tmp_path / "sft.jsonl"
    sft.write_text(json.dumps({"id": "a", "messages": [{"role": "user", "content": "Hi"},
                                                      {"role": "assistant", "content": "Hello"}]}) + "\n")
    prefs = tmp_path / "prefs.jsonl"
    prefs.write_text(json.dumps({"id": "a", "prompt": "Hi", "chosen": "Hello", "rejected": "no"}) + "\n")
    return {"prompts": str(prompts), "instr": str(instr), "sft": str(sft), "prefs": str(prefs),
            "out": str(tmp_path / "out.jsonl"), "dir": str(tmp_path / "outdir")}


# command argv (with valid files) -> the flags that take numbers/choices there
COMMANDS = {
    "generate": lambda f: ["generate", "--model", NO_MODEL, "--input", f["prompts"], "--output", f["out"]],
    "chat": lambda f: ["chat", "--model", NO_MODEL, "--message", "hi"],
    "shift": lambda f: ["shift", "--base", NO_MODEL, "--aligned", NO_MODEL, "--input", f["instr"], "--output", f["out"]],
    "serve": lambda f: ["serve", "--model", NO_MODEL],
    "dera-sweep": lambda f: ["dera", "sweep", "--ref", NO_MODEL, "--aligned", NO_MODEL, "--lams", "0,1",
                             "--input", f["prompts"], "--output", f["dir"]],
    "train-sft": lambda f: ["train", "sft", "--model", NO_MODEL, "--data", f["sft"], "--output", f["dir"]],
    "train-dpo": lambda f: ["train", "dpo", "--model", NO_MODEL, "--data", f["prefs"], "--output", f["dir"]],
    "train-reward": lambda f: ["train", "reward", "--model", NO_MODEL, "--data", f["prefs"], "--output", f["dir"]],
    "train-kto": lambda f: ["train", "kto", "--model", NO_MODEL, "--data", f["prefs"], "--output", f["dir"]],
    "train-simpo": lambda f: ["train", "simpo", "--model", NO_MODEL, "--data", f["prefs"], "--output", f["dir"]],
    "train-grpo": lambda f: ["train", "grpo", "--model", NO_MODEL, "--data", f["prompts"], "--output", f["dir"],
                             "--scorer", "reward:" + NO_MODEL],
    "data-answers": lambda f: ["data", "answers", "--model", NO_MODEL, "--input", f["prompts"], "--output", f["out"]],
    "data-pairs": lambda f: ["data", "pairs", "--chosen-model", NO_MODEL, "--input", f["prompts"], "--output", f["out"]],
    "data-clean": lambda f: ["data", "clean", "--input", f["sft"], "--output", f["out"]],
    "data-select": lambda f: ["data", "select", "--input", f["sft"], "--output", f["out"], "--n", "1"],
}

# (flag, bad value, words the message must contain), per command
BAD = {
    "generate": [("--max-new-tokens", "0", ">= 1"), ("--temperature", "-1", ">= 0"), ("--batch-size", "0", ">= 1"),
                 ("--batch-size", "-1", ">= 1"), ("--top-p", "1.5", "<= 1"), ("--top-p", "0", "> 0"),
                 ("--top-k", "-3", ">= 0"), ("--repetition-penalty", "0", ">= 0.01"), ("--repetition-penalty", "1e-300", ">= 0.01"), ("--temperature", "nan", ">= 0"),
                 ("--k", "-1", ">= 0"), ("--lam", "-0.5", ">= 0"), ("--concurrency", "0", ">= 1"),
                 ("--timeout", "0", "> 0"), ("--n-ctx", "0", ">= 1"), ("--n", "0", ">= 1"),
                 ("--sample-temperature", "0", "> 0")],
    "chat": [("--max-new-tokens", "0", ">= 1"), ("--temperature", "-1", ">= 0"), ("--top-p", "2", "<= 1"),
             ("--min-prefix-tokens", "0", ">= 1")],
    "shift": [("--batch-size", "0", ">= 1"), ("--top-k", "-1", ">= 0"), ("--max-new-tokens", "0", ">= 1"),
              ("--lam", "-1", ">= 0")],
    "serve": [("--port", "70000", "<= 65535"), ("--max-batch", "0", ">= 1"), ("--max-tokens", "0", ">= 1"),
              ("--max-n", "0", ">= 1"), ("--max-queue", "-1", ">= 0"), ("--max-body-bytes", "0", ">= 1")],
    "dera-sweep": [("--max-new-tokens", "0", ">= 1"), ("--batch-size", "0", ">= 1"), ("--temperature", "-2", ">= 0"),
                   ("--validation-share", "0", "> 0"), ("--validation-share", "1.5", "<= 1")],
    "train-sft": [("--epochs", "0", "> 0"), ("--batch-size", "0", ">= 1"), ("--learning-rate", "-1", "> 0"),
                  ("--lora-r", "0", ">= 1"), ("--max-steps", "0", ">= 1 (or -1)"), ("--warmup-ratio", "2", "<= 1"),
                  ("--lora-dropout", "1.5", "<= 1"), ("--grad-accum", "0", ">= 1"), ("--save-steps", "0", ">= 1")],
    "train-dpo": [("--beta", "0", "> 0"), ("--max-length", "1", ">= 2"), ("--epochs", "-1", "> 0")],
    "train-reward": [("--eval-share", "-0.1", ">= 0"), ("--eval-share", "0.95", "<= 0.9"),
                     ("--center-rewards", "-1", ">= 0"), ("--lora-r", "0", ">= 1")],
    "train-kto": [("--beta", "0", "> 0"), ("--simpo-gamma", "-1", ">= 0")],
    "train-simpo": [("--beta", "-2", "> 0"), ("--simpo-gamma", "-0.5", ">= 0")],
    "train-grpo": [("--num-generations", "1", ">= 2"), ("--temperature", "0", "> 0"), ("--beta", "-1", ">= 0"),
                   ("--max-completion-length", "0", ">= 1")],
    "data-answers": [("--batch-size", "0", ">= 1"), ("--max-new-tokens", "0", ">= 1")],
    "data-pairs": [("--batch-size", "0", ">= 1"), ("--temperature", "-1", ">= 0"), ("--k", "1", ">= 2"),
                   ("--min-margin", "-1", ">= 0")],
    "data-clean": [("--near-duplicate", "0", "> 0"), ("--near-duplicate", "1.2", "<= 1"), ("--max-words", "0", ">= 1")],
    "data-select": [("--n", "0", ">= 1")],
}

CASES = [(cmd, flag, value, words) for cmd, rows in BAD.items() for flag, value, words in rows]


def _one_line_error(capsys, argv) -> str:
    code = main(argv)
    err = capsys.readouterr().err.strip()
    assert code == 2, f"exit {code} for {argv}: {err}"
    assert "Traceback" not in err and len(err.splitlines()) == 1, err
    assert "no-such-model" not in err, f"the model was reached before the value was checked: {err}"
    return err


@pytest.mark.parametrize("cmd, flag, value, words", CASES, ids=[f"{c}{f}={v}" for c, f, v, _ in CASES])
def test_bad_flag_value(files, capsys, cmd, flag, value, words):
    err = _one_line_error(capsys, [*COMMANDS[cmd](files), flag, value])
    assert flag in err and words in err, err


def test_argparse_type_errors_are_one_line_too(files, capsys):
    with pytest.raises(SystemExit) as e:
        main([*COMMANDS["generate"](files), "--max-new-tokens", "twelve"])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "--max-new-tokens" in err and "invalid int value" in err and "Traceback" not in err


# config-file values: the YAML type must match the field's type (a string is never split into a list)
CONFIG_CASES = [
    ("generate", "stop: \"\\nQ:\"\n", "'stop' must be a list of strings"),
    ("generate", "max_new_tokens: \"12\"\n", "'max_new_tokens' must be an integer"),
    ("generate", "temperature: hot\n", "'temperature' must be a number"),
    ("generate", "resume: \"yes\"\n", "'resume' must be true or false"),
    ("generate", "batch_size: 0\n", "'batch_size' must be >= 1"),
    ("generate", "method: telepathy\n", "'method' must be one of"),
    ("generate", "top_p: 1.01\n", "'top_p' must be > 0 and <= 1"),
    ("generate", "max_new_tokens: 2.5\n", "'max_new_tokens' must be an integer"),
    ("generate", "max_new_tokens: true\n", "'max_new_tokens' must be an integer"),
    ("generate", "max_new_tokens:\n", "'max_new_tokens' needs a value"),
    ("generate", "nonsense_key: 1\n", "unknown key(s)"),
    ("chat", "stop: \"END\"\n", "'stop' must be a list of strings"),
    ("serve", "port: \"8000\"\n", "'port' must be an integer"),
    ("train-sft", "epochs: three\n", "'epochs' must be a number"),
    ("train-dpo", "beta: -0.1\n", "'beta' must be > 0"),
    ("data-answers", "batch_size: \"8\"\n", "'batch_size' must be an integer"),
    ("shift", "aligned_method: urial\n", "'aligned_method' must be a list of strings"),
]


@pytest.mark.parametrize("cmd, yaml_text, words", CONFIG_CASES, ids=[f"{c}:{y.strip()}" for c, y, _ in CONFIG_CASES])
def test_bad_config_value(files, capsys, tmp_path, cmd, yaml_text, words):
    cfg = tmp_path / "job.yaml"
    cfg.write_text(yaml_text)
    err = _one_line_error(capsys, [*COMMANDS[cmd](files), "--config", str(cfg)])
    assert words in err, err


def test_a_good_config_list_is_taken_as_given(files, tmp_path):
    from alignkit.cli._common import Decoding
    from alignkit.cli._config import build, load_config_file
    from alignkit.cli.main import build_parser

    cfg = tmp_path / "job.yaml"
    cfg.write_text('stop: ["\\nQ:", "END"]\nmax_new_tokens: 12\ntemperature: 1\n')
    args = build_parser().parse_args([*COMMANDS["generate"](files), "--config", str(cfg)])
    d = build(Decoding, args, load_config_file(str(cfg), Decoding))
    assert d.stop == ("\nQ:", "END") and d.max_new_tokens == 12 and d.temperature == 1.0


EVAL_CASES = [
    ("limit: 0\n", "'limit' must be >= 1"),
    ("max_new_tokens: \"256\"\n", "'max_new_tokens' must be an integer"),
    ("types: coding\n", "'types' must be a list of strings"),
    ("retries: -1\n", "'retries' must be >= 0"),
    ("bogus: 1\n", "unknown key(s) in eval config: bogus"),
]


@pytest.mark.parametrize("extra, words", EVAL_CASES, ids=[e.strip() for e, _ in EVAL_CASES])
def test_bad_eval_config_value(capsys, tmp_path, extra, words):
    cfg = tmp_path / "eval.yaml"
    cfg.write_text(f"contestants:\n  - {{name: a, model: {NO_MODEL}}}\njudge: {NO_MODEL}\n" + extra)
    err = _one_line_error(capsys, ["eval", "--config", str(cfg)])
    assert words in err, err


def test_bad_eval_contestant_value(capsys, tmp_path):
    cfg = tmp_path / "eval.yaml"
    cfg.write_text(f"contestants:\n  - {{name: a, model: {NO_MODEL}, k: -2}}\njudge: {NO_MODEL}\n")
    err = _one_line_error(capsys, ["eval", "--config", str(cfg)])
    assert "contestant 'a': key 'k' must be >= 0" in err, err
