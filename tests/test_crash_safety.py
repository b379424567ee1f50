"""Crash safety: each long command killed with SIGKILL in the middle (a torn last line left behind), then
resumed, ends with exactly the records of an uninterrupted run: none lost, none duplicated, equal content.
Training is killed right after a checkpoint and continues from it to the same loss curve.

The kill is real (SIGKILL of a child process, no clean-up); *where* it lands is set by the fault hook in
``alignkit._fault`` so the test always interrupts mid-run.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _cli(args: list[str], *, kill_after: int | None = None, kill_at_checkpoint: int | None = None):
    env = {k: v for k, v in os.environ.items() if not k.startswith("ALIGNKIT_FAULT")}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT / "src"), env.get("PYTHONPATH", "")])
    if kill_after is not None:
        env["ALIGNKIT_FAULT_KILL_AFTER_RECORDS"] = str(kill_after)
    if kill_at_checkpoint is not None:
        env["ALIGNKIT_FAULT_KILL_AT_CHECKPOINT"] = str(kill_at_checkpoint)
    proc = subprocess.run([sys.executable, "-c", "from alignkit.cli.main import entrypoint; entrypoint()", *args],
                          env=env, capture_output=True, text=True, timeout=600)
    return proc


def _killed(proc) -> None:
    assert proc.returncode == -signal.SIGKILL, f"expected a SIGKILL death, got {proc.returncode}: {proc.stderr[-2000:]}"


def _ok(proc) -> None:
    assert proc.returncode == 0, proc.stderr[-3000:]


def _records(path: Path) -> list[dict]:
    out = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return out


def _torn(path: Path) -> bool:
    """The file ends without a newline: the kill landed in the middle of a record."""
    return not path.read_bytes().endswith(b"\n")


def _by_key(records, key=lambda r: str(r["id"])):
    keyed = {}
    for r in records:
        k = key(r)
        assert k not in keyed, f"duplicated record {k}"
        keyed[k] = r
    return keyed


def _strip(rec: dict) -> dict:
    """A record without what legitimately differs between runs: wall-clock timings, and whether a judge
    answer came from the judge cache (a resumed run finds the answers its killed predecessor cached)."""
    return {k: v for k, v in rec.items() if k not in ("seconds", "elapsed", "cached")}


@pytest.fixture
def prompts(tmp_path):
    path = tmp_path / "prompts.jsonl"
    path.write_text("".join(json.dumps({"id": f"p{i}", "prompt": f"Tell me about item {i}"}) + "\n" for i in range(7)))
    return path


def test_generate_killed_then_resumed(tiny_dir, prompts, tmp_path):
    args = ["generate", "--model", str(tiny_dir["base"]), "--input", str(prompts), "--max-new-tokens", "6",
            "--batch-size", "2"]
    _ok(_cli([*args, "--output", str(tmp_path / "full.jsonl")]))
    part = tmp_path / "part.jsonl"
    _killed(_cli([*args, "--output", str(part)], kill_after=3))
    assert len(_records(part)) == 3 and _torn(part)
    _ok(_cli([*args, "--output", str(part), "--resume"]))
    full, resumed = _by_key(_records(tmp_path / "full.jsonl")), _by_key(_records(part))
    assert set(resumed) == set(full) and len(_records(part)) == 7
    assert {k: _strip(v) for k, v in resumed.items()} == {k: _strip(v) for k, v in full.items()}


def test_data_answers_killed_then_resumed(tiny_dir, prompts, tmp_path):
    args = ["data", "answers", "--model", str(tiny_dir["base"]), "--method", "none", "--input", str(prompts),
            "--max-new-tokens", "5", "--batch-size", "2", "--keep-truncated"]
    _ok(_cli([*args, "--output", str(tmp_path / "full.jsonl")]))
    part = tmp_path / "part.jsonl"
    _killed(_cli([*args, "--output", str(part)], kill_after=2))
    assert len(_records(part)) == 2 and _torn(part)
    _ok(_cli([*args, "--output", str(part)]))  # data answers always resumes by id
    full, resumed = _by_key(_records(tmp_path / "full.jsonl")), _by_key(_records(part))
    assert len(full) == 7 and {k: _strip(v) for k, v in resumed.items()} == {k: _strip(v) for k, v in full.items()}


def test_shift_killed_then_resumed(tiny_dir, tmp_path):
    inp = tmp_path / "instr.jsonl"
    inp.write_text("".join(json.dumps({"id": f"i{i}", "instruction": f"Explain thing {i}"}) + "\n" for i in range(5)))
    args = ["shift", "--base", str(tiny_dir["base"]), "--aligned", str(tiny_dir["aligned"]), "--aligned-method",
            "template", "--input", str(inp), "--max-new-tokens", "6", "--batch-size", "2", "--json"]
    full_out = tmp_path / "full.jsonl"
    full = _cli([*args, "--output", str(full_out)])
    _ok(full)
    part = tmp_path / "part.jsonl"
    _killed(_cli([*args, "--output", str(part)], kill_after=2))
    assert len(_records(part)) == 2 and _torn(part)
    resumed = _cli([*args, "--output", str(part), "--resume"])
    _ok(resumed)

    def key(r):
        return f"{r.get('label')}|{r['id']}"

    a, b = _by_key(_records(full_out), key), _by_key(_records(part), key)
    assert set(a) == set(b) and len(a) == 5
    assert {k: _strip(v) for k, v in a.items()} == {k: _strip(v) for k, v in b.items()}
    assert json.loads(full.stdout) == json.loads(resumed.stdout)  # the summary over all records is the same


def test_eval_killed_then_resumed(tiny_dir, tmp_path):
    inst = tmp_path / "inst.jsonl"
    inst.write_text("".join(json.dumps({"id": f"q{i}", "instruction": f"Question {i}", "category": "writing"}) + "\n"
                            for i in range(4)))

    def config(out: Path) -> Path:
        cfg = tmp_path / f"{out.name}.yaml"
        cfg.write_text(json.dumps({
            "instructions": str(inst), "judge": str(tiny_dir["judge"]), "judge_method": "template",
            "max_new_tokens": 5, "judge_max_new_tokens": 12, "retries": 1, "batch_size": 2, "output": str(out),
            "contestants": [{"name": "raw", "model": str(tiny_dir["base"]), "method": "none"},
                            {"name": "tmpl", "model": str(tiny_dir["aligned"]), "method": "template"}]}))
        return cfg

    _ok(_cli(["eval", "--config", str(config(tmp_path / "full"))]))
    part = tmp_path / "part"
    # 4 answers of the first contestant, 4 of the second, then judgments: die inside the judging stage
    _killed(_cli(["eval", "--config", str(config(part))], kill_after=9))
    _ok(_cli(["eval", "--config", str(config(part))]))
    for sub in ("answers", "judgments"):
        for f in sorted((tmp_path / "full" / sub).glob("*.jsonl")):
            g = part / sub / f.name
            a, b = _by_key(_records(f)), _by_key(_records(g))
            assert set(a) == set(b) and len(a) == 4, (sub, f.name)
            assert {k: _strip(v) for k, v in a.items()} == {k: _strip(v) for k, v in b.items()}, (sub, f.name)
    full_report = json.loads((tmp_path / "full" / "report.json").read_text())
    part_report = json.loads((part / "report.json").read_text())
    assert full_report["summary"] == part_report["summary"]


def test_train_killed_at_a_checkpoint_then_resumed(tiny_dir, tmp_path):
    import trl  # noqa: F401 - installed by make; missing is an error
    data = tmp_path / "sft.jsonl"
    data.write_text("".join(json.dumps({"id": f"a{i}", "messages": [
        {"role": "user", "content": f"What is {i} plus {i}?"},
        {"role": "assistant", "content": f"The answer is {2 * i}."}]}) + "\n" for i in range(8)))
    args = ["train", "sft", "--model", str(tiny_dir["base"]), "--data", str(data), "--learning-rate", "5e-3",
            "--batch-size", "2", "--save-steps", "2", "--max-steps", "6"]
    _ok(_cli([*args, "--output", str(tmp_path / "full")]))
    part = tmp_path / "part"
    _killed(_cli([*args, "--output", str(part)], kill_at_checkpoint=4))
    assert (part / "checkpoints" / "checkpoint-4").is_dir() and not (part / "alignkit.json").exists()
    resumed = _cli([*args, "--output", str(part), "--resume"])
    _ok(resumed)
    assert "resuming at step 4" in resumed.stderr

    def losses(folder: Path) -> dict[int, float]:
        rows = [json.loads(x) for x in (folder / "train_log.jsonl").read_text().splitlines()]
        steps = [r["step"] for r in rows if "loss" in r]
        assert len(steps) == len(set(steps)), f"a step logged twice: {steps}"
        return {r["step"]: r["loss"] for r in rows if "loss" in r}

    a, b = losses(tmp_path / "full"), losses(part)
    assert sorted(a) == sorted(b) == [1, 2, 3, 4, 5, 6]
    assert b == pytest.approx(a, rel=1e-4, abs=1e-6)
    assert (part / "alignkit.json").is_file()
