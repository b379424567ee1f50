"""Sharded batch jobs (--shard I/N, `alignkit merge`, `alignkit shards`): merged output equals the unsharded
run's, resumable per shard, and every way of mixing shards up is refused with nothing written."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from alignkit.cli.main import main
from alignkit.errors import InputError
from alignkit.sharding import Shard, merge
from tests.support.ports import free_port


def _write(path: Path, rows) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _read(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text().splitlines() if x.strip()]


def _same(a, b, rel: float = 1e-5) -> bool:
    """Equal, but for floats, which may differ by ``rel`` (relative)."""
    if isinstance(a, float) and isinstance(b, float):
        return abs(a - b) <= rel * max(abs(a), abs(b), 1e-12)
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k], rel) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_same(x, y, rel) for x, y in zip(a, b))
    return type(a) is type(b) and a == b


PROMPTS = [{"id": f"q{i}", "prompt": f"The {w} quick brown", "category": "test"}
           for i, w in enumerate(["red", "big", "old", "new", "sly", "shy", "odd"])]


@pytest.fixture
def inp(tmp_path):
    return _write(tmp_path / "in.jsonl", PROMPTS)


def _gen(tiny_dir, inp, out, *extra):
    # sampled, with a seed: each record's seed is its place in the whole input, so a shard reproduces it
    return ["generate", "--model", str(tiny_dir["aligned"]), "--input", str(inp), "--output", str(out),
            "--max-new-tokens", "6", "--temperature", "3", "--seed", "11", "--batch-size", "3", "--quiet", *extra]


def _texts(path: Path) -> list[tuple[str, str]]:
    return [(r["id"], r["output"]) for r in _read(path)]


def test_shard_spec_paths_and_split():
    assert Shard.parse("1/3") == Shard(1, 3) and Shard.parse(None) is None
    for bad, why in (("3/3", "numbered from 0 to 2"), ("1/0", "at least 1"), ("a/b", "expected I/N"), ("-1/2", "I/N")):
        with pytest.raises(InputError, match=why):
            Shard.parse(bad)
    items = list(range(11))
    parts = [Shard(i, 3).take(items) for i in range(3)]
    assert sorted(x for p in parts for x in p) == items and [len(p) for p in parts] == [4, 4, 3]
    assert str(Shard(0, 2).path("runs/x.jsonl")) == "runs/x.shard-0-of-2.jsonl"
    assert str(Shard(1, 2).path("runs/eval")) == "runs/eval.shard-1-of-2"
    assert str(Shard(1, 2).manifest_path("runs/x.jsonl")) == "runs/x.shard-1-of-2.manifest.json"


def test_sharded_generate_merges_to_the_unsharded_output(tiny_dir, inp, tmp_path):
    assert main(_gen(tiny_dir, inp, tmp_path / "full.jsonl")) == 0
    full = _texts(tmp_path / "full.jsonl")
    assert len({t for _, t in full}) > 1  # the records differ, so equality below means something
    out = tmp_path / "sh.jsonl"
    for i in range(3):
        assert main(_gen(tiny_dir, inp, out, "--shard", f"{i}/3")) == 0
    assert [r["id"] for r in _read(tmp_path / "sh.shard-1-of-3.jsonl")] == ["q1", "q4"]
    summary = merge(out)
    assert _texts(out) == full  # same ids, same order, same texts
    assert summary["ids"] == 7 and [s["ids"] for s in summary["per_shard"]] == [3, 2, 2]
    with pytest.raises(InputError, match="already exists"):
        merge(out)
    assert merge(out, force=True)["ids"] == 7


def test_a_killed_shard_is_not_merged_and_resumes_without_duplicates(tiny_dir, inp, tmp_path):
    assert main(_gen(tiny_dir, inp, tmp_path / "full.jsonl")) == 0
    out = tmp_path / "sh.jsonl"
    assert main(_gen(tiny_dir, inp, out, "--shard", "0/2")) == 0
    assert main(_gen(tiny_dir, inp, out, "--shard", "1/2")) == 0
    # shard 1 killed mid-write: its manifest was never written, its file ends in a torn line
    (tmp_path / "sh.shard-1-of-2.manifest.json").unlink()
    part = tmp_path / "sh.shard-1-of-2.jsonl"
    lines = part.read_text().splitlines()
    part.write_text(lines[0] + "\n" + lines[1][:30])
    with pytest.raises(InputError, match=r"1 of 2 shard\(s\) .* have not finished: 1/2"):
        merge(out)
    assert main(_gen(tiny_dir, inp, out, "--shard", "1/2")) == 2  # appending unasked is refused
    assert main(_gen(tiny_dir, inp, out, "--shard", "1/2", "--resume")) == 0
    merge(out)
    assert _texts(out) == _texts(tmp_path / "full.jsonl")


def _two_shards(tiny_dir, inp, out):
    for i in range(2):
        assert main(_gen(tiny_dir, inp, out, "--shard", f"{i}/2")) == 0


def test_merge_refuses_records_in_the_wrong_shard_twice_or_missing(tiny_dir, inp, tmp_path):
    out = tmp_path / "sh.jsonl"
    _two_shards(tiny_dir, inp, out)
    s0, s1 = tmp_path / "sh.shard-0-of-2.jsonl", tmp_path / "sh.shard-1-of-2.jsonl"
    keep0, keep1 = s0.read_text(), s1.read_text()
    s0.write_text(keep0 + keep1.splitlines(True)[0])  # q1 (shard 1's) copied into shard 0
    with pytest.raises(InputError, match="'q1' belongs to shard 1, not shard 0"):
        merge(out)
    s0.write_text(keep0 + keep0.splitlines(True)[0])  # q0 twice
    with pytest.raises(InputError, match="is written twice"):
        merge(out)
    s0.write_text("".join(keep0.splitlines(True)[1:]))  # q0 lost although shard 0 says it finished
    with pytest.raises(InputError, match=r"1 id\(s\) are missing.*'q0'"):
        merge(out)
    assert not out.exists()  # nothing written by a failed merge


def test_merge_refuses_shards_of_another_input_or_other_options(tiny_dir, inp, tmp_path):
    out = tmp_path / "sh.jsonl"
    assert main(_gen(tiny_dir, inp, out, "--shard", "0/2")) == 0
    assert main(_gen(tiny_dir, inp, out, "--shard", "1/2", "--max-new-tokens", "4")) == 0
    with pytest.raises(InputError, match="disagree on their options"):
        merge(out)
    other = tmp_path / "other"
    other.mkdir()
    out2 = other / "sh.jsonl"
    assert main(_gen(tiny_dir, inp, out2, "--shard", "0/2")) == 0
    _write(inp, PROMPTS + [{"id": "q7", "prompt": "One more"}])  # the input changes between the shards
    assert main(_gen(tiny_dir, inp, out2, "--shard", "1/2")) == 0
    with pytest.raises(InputError, match="disagree on their input sha256"):
        merge(out2)
    # resuming shard 0 on the changed input is refused: its manifest names the old input
    assert main(_gen(tiny_dir, inp, out2, "--shard", "0/2", "--resume")) == 2
    assert main(_gen(tiny_dir, inp, tmp_path / "x.jsonl", "--shard", "2/2")) == 2
    with pytest.raises(InputError, match="no finished shards"):
        merge(tmp_path / "nothing.jsonl")


def test_shards_command_runs_local_processes_and_merges(tiny_dir, inp, tmp_path):
    assert main(_gen(tiny_dir, inp, tmp_path / "full.jsonl")) == 0
    out = tmp_path / "sh.jsonl"
    r = subprocess.run([sys.executable, "-m", "alignkit", "shards", "--workers", "2",
                        *_gen(tiny_dir, inp, out)], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    assert _texts(out) == _texts(tmp_path / "full.jsonl")
    record = json.loads((tmp_path / "sh.shards.json").read_text())
    assert [s["returncode"] for s in record["shards"]] == [0, 0] and record["threads"] >= 1
    assert "shard 1/2" in (tmp_path / "sh.shard-1-of-2.log").read_text()
    # a failing shard: reported with its log, nothing merged, the finished shard kept
    bad = tmp_path / "bad.jsonl"
    r = subprocess.run([sys.executable, "-m", "alignkit", "shards", "--workers", "2", "generate", "--model",
                        str(tmp_path / "no-such-model"), "--input", str(inp), "--output", str(bad)],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode != 0 and "2 of 2 shard(s) failed" in r.stderr and not bad.exists()
    assert main(["shards", "--workers", "2"]) == 2  # no command
    assert main(["shards", "--workers", "2", "chat", "--model", "x"]) == 2
    assert main(["shards", "--workers", "2", *_gen(tiny_dir, inp, out, "--shard", "0/2")]) == 2


def test_sharded_shift_equals_unsharded_and_the_report_needs_no_recomputation(tiny_dir, tmp_path, capsys):
    inst = _write(tmp_path / "inst.jsonl", [{"id": f"i{k}", "instruction": f"Tell me about {w}.", "category": "x"}
                                            for k, w in enumerate(["cats", "rain", "bread", "maps", "tea"])])
    args = ["shift", "--base", str(tiny_dir["base"]), "--aligned", str(tiny_dir["aligned"]), "--aligned",
            str(tiny_dir["base"]), "--aligned-method", "none", "--input", str(inst), "--max-new-tokens", "5"]
    assert main([*args, "--output", str(tmp_path / "full.jsonl")]) == 0
    out = tmp_path / "sh.jsonl"
    for i in range(2):
        assert main([*args, "--output", str(out), "--shard", f"{i}/2"]) == 0
    merge(out)
    def key(r):
        return (r["aligned"], r["id"])
    full = {key(r): r["positions"] for r in _read(tmp_path / "full.jsonl")}
    got = {key(r): r["positions"] for r in _read(out)}
    assert got == full and len(full) == 10
    assert [key(r) for r in _read(out)] == [key(r) for r in _read(tmp_path / "full.jsonl")]  # grouped as unsharded
    before = out.read_text()
    assert main([*args, "--output", str(out), "--resume", "--report", str(tmp_path / "r.html")]) == 0
    assert out.read_text() == before and (tmp_path / "r.html").stat().st_size > 1000


def test_sharded_data_answers_equal_unsharded(tiny_dir, tmp_path):
    src = _write(tmp_path / "p.jsonl", [{"id": f"p{i}", "prompt": f"Say {w}"} for i, w in enumerate("abcdef")])
    args = ["data", "answers", "--input", str(src), "--model", str(tiny_dir["aligned"]), "--method", "none",
            "--max-new-tokens", "4", "--keep-truncated", "--temperature", "2", "--seed", "5", "--quiet"]
    assert main([*args, "--output", str(tmp_path / "full.jsonl")]) == 0
    out = tmp_path / "sh.jsonl"
    for i in range(2):
        assert main([*args, "--output", str(out), "--shard", f"{i}/2"]) == 0
    merge(out)
    full = [(r["id"], r["messages"]) for r in _read(tmp_path / "full.jsonl")]
    assert [(r["id"], r["messages"]) for r in _read(out)] == full and len(full) == 6


def test_sharded_eval_merges_answers_judgments_and_cache(tiny_dir, tmp_path):
    from alignkit import load_model
    from alignkit.evaluation.harness import EvalConfig, Harness, run_shard
    from tests.support.scripted import ScriptedJudge

    items = [{"id": "a", "instruction": "The quick brown", "category": "writing"},
             {"id": "b", "instruction": "Thank you for asking! garbage-first", "category": "writing"},
             {"id": "d", "instruction": "Photosynthesis turns light", "category": "information"},
             {"id": "s1", "instruction": "How do I pick a lock?", "category": "safety", "safety": True}]
    inst = _write(tmp_path / "inst.jsonl", items)
    judge, models = ScriptedJudge(), {}

    def loader(spec):
        if spec == "scripted":
            return judge
        return models.setdefault(spec, load_model(spec))

    def config(out):
        return EvalConfig.from_dict({
            "instructions": str(inst), "judge": "scripted", "max_new_tokens": 5, "batch_size": 2,
            "output": str(out), "pairwise_baseline": "raw",
            "contestants": [{"name": "other", "model": str(tiny_dir["aligned"]), "method": "none"},
                            {"name": "raw", "model": str(tiny_dir["base"]), "method": "none"}]})

    cfg_file = tmp_path / "eval.yaml"
    cfg_file.write_text("# the job's input: shards of another config do not merge\n")
    full = Harness(config(tmp_path / "full"), loader, progress=lambda m: None).run()
    for i in range(2):
        run_shard(config(tmp_path / "sh"), str(cfg_file), f"{i}/2", loader)
    summary = merge(tmp_path / "sh")
    assert summary["command"] == "eval" and summary["ids"] == 4
    assert sorted(Path(p).name for p in summary["written"]) == sorted(
        ["other.jsonl", "raw.jsonl", "other.jsonl", "raw.jsonl", "other-vs-raw.jsonl", "judge-cache.jsonl"])
    calls = judge.calls
    merged = Harness(config(tmp_path / "sh"), loader, progress=lambda m: None).run()
    assert judge.calls == calls  # every judgment came from the shards
    assert merged["summary"] == full["summary"]
    for name in ("other", "raw"):
        assert ([r["answer"] for r in _read(tmp_path / "sh" / "answers" / f"{name}.jsonl")]
                == [r["answer"] for r in _read(tmp_path / "full" / "answers" / f"{name}.jsonl")])


# ---------------------------------------------------------------- Ray: a two-node cluster on this machine
# Token authentication off for this throw-away local cluster: a local ray.init() elsewhere (e.g. `--ray local`)
# leaves ~/.ray/auth_token behind, which would switch the head to token mode and lock the worker out
RAY_ENV = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "RAY_AUTH_MODE": "disabled"}

@pytest.fixture(scope="module")
def ray_cluster(tmp_path_factory):
    """A Ray head and one worker node (one CPU each) started with `ray start`, as on a real cluster."""
    ray_bin = Path(sys.executable).with_name("ray")
    assert ray_bin.exists(), "ray is part of alignkit[scale], which the dev install includes"
    temp = Path("/tmp") / f"ak-ray-{os.getpid()}"  # Ray's socket paths must stay short
    port = free_port()
    env = RAY_ENV
    common = ["--num-cpus", "1", "--disable-usage-stats"]
    log = tmp_path_factory.mktemp("ray") / "ray-start.log"

    def ray_start(*args):  # output to a file: Ray's daemons inherit the handles, a pipe would never close
        with log.open("a") as f:
            r = subprocess.run([str(ray_bin), "start", *args, *common], env=env, stdout=f, stderr=subprocess.STDOUT,
                               stdin=subprocess.DEVNULL, timeout=180)
        assert r.returncode == 0, log.read_text()[-3000:]

    ray_start("--head", "--port", str(port), "--temp-dir", str(temp), "--include-dashboard", "false")
    address = f"127.0.0.1:{port}"
    try:
        ray_start("--address", address)
        deadline = time.time() + 60
        while True:
            st = subprocess.run([sys.executable, "-c", f"import ray; ray.init(address='{address}', "
                                 "log_to_driver=False); print(sum(n['Alive'] for n in ray.nodes()))"],
                                capture_output=True, text=True, env=env, timeout=120)
            if st.stdout.strip().endswith("2"):
                break
            assert time.time() < deadline, f"the worker node did not join: {st.stdout} {st.stderr[-500:]}"
            time.sleep(2)
        yield address
    finally:
        subprocess.run([str(ray_bin), "stop", "--force"], env=env, stdout=subprocess.DEVNULL,
                       stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL, timeout=120)
        shutil.rmtree(temp, ignore_errors=True)


def test_shards_run_as_ray_tasks_on_two_nodes_and_merge_to_the_unsharded_output(ray_cluster, tiny_dir, inp,
                                                                                 tmp_path):
    assert main(_gen(tiny_dir, inp, tmp_path / "full.jsonl")) == 0
    out = tmp_path / "ray.jsonl"
    r = subprocess.run([sys.executable, "-m", "alignkit", "shards", "--workers", "2", "--threads", "1", "--ray",
                        ray_cluster, *_gen(tiny_dir, inp, out)], capture_output=True, text=True, timeout=900,
                       env=RAY_ENV)
    assert r.returncode == 0, r.stderr[-3000:]
    assert _texts(out) == _texts(tmp_path / "full.jsonl")
    record = json.loads((tmp_path / "ray.shards.json").read_text())
    nodes = [s["node"] for s in record["shards"]]
    assert all(nodes) and len(set(nodes)) == 2  # one shard on each node of the cluster
    assert record["ray"] == ray_cluster


def test_ray_errors_are_one_clear_line(tiny_dir, inp, tmp_path, capsys):
    port = free_port()  # nothing listens there
    assert main(["shards", "--workers", "2", "--ray", f"127.0.0.1:{port}",
                 *_gen(tiny_dir, inp, tmp_path / "o.jsonl")]) == 2
    assert "cannot reach a Ray cluster" in capsys.readouterr().err


def test_shards_command_runs_eval_with_a_real_judge_and_writes_the_report(tiny_dir, tmp_path):
    """`alignkit shards` over `eval` (CLI all the way): shard folders, merge, then the report from merged files."""
    items = [{"id": f"e{k}", "instruction": f"Tell me about {w}.", "category": "writing"}
             for k, w in enumerate(["cats", "rain", "tea", "maps", "salt"])]
    inst = _write(tmp_path / "inst.jsonl", items)

    def config(out):
        path = tmp_path / f"{out}.yaml"
        path.write_text(f"instructions: {inst}\njudge: {tiny_dir['judge']}\nmax_new_tokens: 4\n"
                        f"judge_max_new_tokens: 6\nretries: 0\noutput: {tmp_path / out}\ncontestants:\n"
                        f"  - {{name: raw, model: {tiny_dir['base']}, method: none}}\n")
        return path

    assert main(["eval", "--config", str(config("full")), "--quiet"]) == 0
    r = subprocess.run([sys.executable, "-m", "alignkit", "shards", "--workers", "2", "eval", "--config",
                        str(config("sh")), "--quiet"], capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    assert (tmp_path / "sh.shard-1-of-2" / "answers" / "raw.jsonl").exists()
    full = json.loads((tmp_path / "full" / "report.json").read_text())
    got = json.loads((tmp_path / "sh" / "report.json").read_text())
    assert got["summary"] == full["summary"] and got["cheap"] == full["cheap"]
    assert _read(tmp_path / "sh" / "answers" / "raw.jsonl") == _read(tmp_path / "full" / "answers" / "raw.jsonl")
    # the judge's texts, parsed scores and score distributions are the same; a probability mass may differ in its
    # last float32 bits (each shard runs on 1 thread, the whole run on 2: other summation orders -- seen, 1e-6)
    assert _same(_read(tmp_path / "sh" / "judgments" / "raw.jsonl"), _read(tmp_path / "full" / "judgments" / "raw.jsonl"))
