"""`alignkit train` on two processes (accelerate launch / torchrun, CPU over gloo): the same loss curve as one
process at the same global batch, one output folder written once, a loadable adapter."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from alignkit.cli.main import main
from tests.support.ports import free_port
from tests.training.test_train import _sft_records

# 8 records and a global batch of 8: every optimiser step sees the whole data set, so one process and two
# processes see the same examples at every step whatever order each samples them in
COMMON = ["--template", "tuned-k0", "--learning-rate", "5e-3", "--save-steps", "100", "--lora-dropout", "0",
          "--logging-steps", "1"]


def _launch(launcher: str, args: list[str], log: Path) -> None:
    bin_dir = Path(sys.executable).parent
    if launcher == "accelerate":
        # on a machine without CUDA, accelerate's --multi_gpu launcher is what starts N processes (torchrun
        # underneath); alignkit's trainer then runs them on the CPU over gloo
        cmd = [str(bin_dir / "accelerate"), "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
               "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", str(free_port())]
    else:
        cmd = [str(bin_dir / "torchrun"), "--nproc-per-node", "2", "--master-port", str(free_port())]
    with log.open("w") as f:
        r = subprocess.run([*cmd, "-m", "alignkit", *args], stdout=f, stderr=subprocess.STDOUT, timeout=900)
    assert r.returncode == 0, log.read_text()[-4000:]


def _losses(folder: Path) -> list[tuple[int, float]]:
    rows = [json.loads(x) for x in (folder / "train_log.jsonl").read_text().splitlines()]
    return [(r["step"], r["loss"]) for r in rows if "loss" in r]


def _weights(folder: Path):
    from safetensors.torch import load_file

    return load_file(str(folder / "adapter_model.safetensors"))


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("mp")
    sft = root / "sft.jsonl"
    sft.write_text("".join(json.dumps(r) + "\n" for r in _sft_records()[:8]))
    prefs = root / "prefs.jsonl"
    prefs.write_text("".join(json.dumps({"id": i, "prompt": f"What is {i} plus {i}?", "chosen": f"It is {2 * i}.",
                                         "rejected": "The quick brown fox."}) + "\n" for i in range(8)))
    return {"sft": sft, "dpo": prefs}


@pytest.mark.parametrize("kind,launcher,epochs", [("sft", "accelerate", "4"), ("dpo", "torchrun", "3")])
def test_two_processes_follow_the_one_process_loss_curve(kind, launcher, epochs, tiny_dir, data, tmp_path):
    import torch

    args = ["train", kind, "--model", str(tiny_dir["base"]), "--data", str(data[kind]), "--epochs", epochs, *COMMON]
    one, two = tmp_path / "one", tmp_path / "two"
    assert main([*args, "--output", str(one), "--batch-size", "4", "--grad-accum", "2"]) == 0
    _launch(launcher, [*args, "--output", str(two), "--batch-size", "4", "--grad-accum", "1"], tmp_path / "two.log")
    a, b = _losses(one), _losses(two)
    assert [s for s, _ in b] == list(range(1, len(a) + 1)) and len(a) == int(epochs)  # each step logged once
    assert [s for s, _ in a] == [s for s, _ in b]
    for (_, x), (_, y) in zip(a, b):
        assert y == pytest.approx(x, rel=1e-3, abs=1e-4)
    assert a[-1][1] < a[0][1] or kind == "dpo" and a[-1][1] < 0.69
    info = json.loads((two / "alignkit.json").read_text())
    assert info["processes"] == 2 and json.loads((one / "alignkit.json").read_text())["processes"] == 1
    wa, wb = _weights(one), _weights(two)
    assert wa.keys() == wb.keys()
    for k in wa:
        assert torch.allclose(wa[k], wb[k], atol=1e-4), k
    log = (tmp_path / "two.log").read_text()
    assert log.count(f"alignkit train {kind}: wrote") == 1  # one process reports, one writes
    # the adapter trained on two processes loads and generates
    from alignkit import load_model
    from alignkit.types import GenerationConfig

    m = load_model(str(tiny_dir["base"]), adapter=str(two))
    assert m.generate(["What is 2 plus 2?"], GenerationConfig(max_new_tokens=3))[0].completion_tokens >= 1
