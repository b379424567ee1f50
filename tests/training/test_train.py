"""SFT and DPO on tiny real models: they change the trained parameters, lower the loss, resume, and the
output loads back through the model interface and changes what the model says."""

from __future__ import annotations

import json
import math

import pytest
import trl  # noqa: F401 - installed by make; missing is an error

from alignkit.cli.main import main


def _sft_records():
    recs = [{"id": f"add{i}", "messages": [{"role": "user", "content": f"What is {i} plus {i}?"},
                                           {"role": "assistant", "content": f"The answer is {2 * i}. Thank you!"}]}
            for i in range(10)]
    recs.append({"id": "multi", "messages": [
        {"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello! How can I help?"},
        {"role": "user", "content": "How do I boil an egg?"},
        {"role": "assistant", "content": "Put the egg in boiling water for nine minutes."}]})
    return recs


@pytest.fixture(scope="module")
def sft_data(tmp_path_factory):
    root = tmp_path_factory.mktemp("sftdata")
    path = root / "sft.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in _sft_records()) + "\n")
    prefs = root / "prefs.jsonl"
    prefs.write_text("\n".join(json.dumps({"id": i, "prompt": f"What is {i} plus {i}?", "chosen": f"The answer is {2 * i}.",
                                           "rejected": "The quick brown fox jumps over the lazy dog."})
                               for i in range(8)) + "\n")
    return {"sft": path, "prefs": prefs}


FAST = ["--learning-rate", "5e-3", "--batch-size", "4", "--save-steps", "100"]


def data_loss(model_dir: str, records, adapter: str | None = None, template: str = "tuned-k0") -> float:
    """Mean assistant-token loss of a model (optionally with an adapter) on SFT records, computed directly."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from alignkit.training.format import PromptFormat, render, tokenize

    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    if adapter:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, adapter)
    model.eval()
    total, n = 0.0, 0
    with torch.no_grad():
        for r in records:
            enc = tokenize(render(r["messages"], PromptFormat("urial", template), tok), tok)
            ids = torch.tensor([enc["input_ids"]])
            labels = torch.tensor([[i if m else -100 for i, m in zip(enc["input_ids"], enc["assistant_masks"])]])
            k = int((labels[:, 1:] != -100).sum())
            total += float(model(input_ids=ids, labels=labels).loss) * k
            n += k
    return total / n


@pytest.fixture(scope="module")
def sft_adapter(tiny_dir, sft_data, tmp_path_factory):
    out = tmp_path_factory.mktemp("sft") / "adapter"
    code = main(["train", "sft", "--model", str(tiny_dir["base"]), "--data", str(sft_data["sft"]), "--output", str(out),
                 "--template", "tuned-k0", "--epochs", "6", "--merge", *FAST])
    assert code == 0
    return out


def test_sft_lowers_the_loss_and_changes_parameters(tiny_dir, sft_adapter):
    from safetensors.torch import load_file

    before = data_loss(str(tiny_dir["base"]), _sft_records())
    after = data_loss(str(tiny_dir["base"]), _sft_records(), adapter=str(sft_adapter))
    assert after < before - 0.5, (before, after)
    weights = load_file(str(sft_adapter / "adapter_model.safetensors"))
    lora_b = [v for k, v in weights.items() if "lora_B" in k]
    assert lora_b and all(float(v.abs().max()) > 0 for v in lora_b)  # LoRA B starts at zero: training moved it
    info = json.loads((sft_adapter / "alignkit.json").read_text())
    assert info["result"]["final_loss"] < info["result"]["first_loss"]
    assert info["inference"] == {"method": "urial", "template": "tuned-k0"}
    assert info["data"]["records"] == 11 and len(info["data"]["hash"]) == 16
    assert info["recipe"]["weight_decay"] == 0.1 and info["recipe"]["scheduler"] == "linear"
    card = (sft_adapter / "README.md").read_text()
    assert info["data"]["hash"] in card and "base_model:" in card and "tuned-k0" in card
    log = [json.loads(x) for x in (sft_adapter / "train_log.jsonl").read_text().splitlines()]
    assert sum("loss" in row for row in log) == info["result"]["steps"]


def test_adapter_loads_back_and_changes_outputs(tiny_dir, sft_adapter):
    from alignkit import load_model
    from alignkit.methods import MethodOptions, apply_method
    from alignkit.types import GenerationConfig

    base = load_model(str(tiny_dir["base"]), dtype="float64")
    tuned = load_model(str(sft_adapter), dtype="float64")  # the folder alone names its base
    assert tuned.source["adapter"] == str(sft_adapter) and tuned.trained_format["template"] == "tuned-k0"
    auto = apply_method(tuned, MethodOptions(method="auto"))
    assert auto.method == "urial" and auto.template.id == "tuned-k0"  # prompted the way it was trained
    cfg = GenerationConfig(max_new_tokens=12)
    prompt = "What is 3 plus 3?"
    base_out = apply_method(base, MethodOptions(method="urial", template="tuned-k0")).generate([prompt], cfg)[0].text
    tuned_out = auto.generate([prompt], cfg)[0].text
    assert tuned_out != base_out
    # the merged copy is an ordinary folder that gives the same next-token scores as base + adapter
    merged = load_model(str(sft_adapter / "merged"), dtype="float64")
    def lp(m):
        return m.score(["What is 3 plus 3?"], [" The answer is 6."])[0].logprobs

    assert lp(merged) == pytest.approx(lp(tuned), abs=1e-5)


def test_sft_resumes_from_its_checkpoint(tiny_dir, sft_data, tmp_path, capsys):
    out = tmp_path / "run"
    args = ["train", "sft", "--model", str(tiny_dir["base"]), "--data", str(sft_data["sft"]), "--output", str(out),
            "--learning-rate", "5e-3", "--batch-size", "2", "--save-steps", "2"]
    assert main([*args, "--max-steps", "2"]) == 0
    assert (out / "checkpoints" / "checkpoint-2").is_dir()
    assert main([*args, "--max-steps", "2"]) == 2  # a second run never overwrites silently
    assert "--resume" in capsys.readouterr().err
    assert main([*args, "--max-steps", "4", "--resume"]) == 0
    assert "resuming at step 2" in capsys.readouterr().err
    steps = [json.loads(x)["step"] for x in (out / "train_log.jsonl").read_text().splitlines()
             if "loss" in json.loads(x)]
    assert steps == [1, 2, 3, 4]


def test_full_fine_tuning_writes_a_loadable_model(tiny_dir, sft_data, tmp_path):
    out = tmp_path / "full"
    assert main(["train", "sft", "--model", str(tiny_dir["base"]), "--data", str(sft_data["sft"]), "--output", str(out),
                 "--full", "--epochs", "2", *FAST]) == 0
    assert (out / "config.json").is_file() and not (out / "adapter_config.json").exists()
    assert data_loss(str(out), _sft_records()) < data_loss(str(tiny_dir["base"]), _sft_records())
    from alignkit import load_model

    m = load_model(str(out))
    assert m.trained_format == {"method": "urial", "template": "urial-k0"}


def test_sft_with_chat_template_format(tiny_dir, sft_data, tmp_path):
    out = tmp_path / "chat"
    assert main(["train", "sft", "--model", str(tiny_dir["aligned"]), "--data", str(sft_data["sft"]), "--output",
                 str(out), "--epochs", "2", *FAST]) == 0
    info = json.loads((out / "alignkit.json").read_text())
    assert info["format"]["name"] == "chat-template" and info["inference"] == {"method": "template"}
    # a base model without a chat template can be given one; it is saved with the adapter and used on load
    tpl = tmp_path / "tpl.jinja"
    tpl.write_text("{% for m in messages %}[{{ m['role'] }}] {{ m['content'] }}\n{% endfor %}"
                   "{% if add_generation_prompt %}[assistant] {% endif %}")
    out2 = tmp_path / "chat2"
    assert main(["train", "sft", "--model", str(tiny_dir["base"]), "--data", str(sft_data["sft"]), "--output", str(out2),
                 "--format", "chat-template", "--chat-template", str(tpl), "--max-steps", "1", *FAST]) == 0
    from alignkit import load_model

    m = load_model(str(out2))
    assert m.capabilities.chat_template and "[assistant]" in m.render([{"role": "user", "content": "hi"}])


def test_bad_training_input_is_refused_before_loading(tiny_dir, tmp_path, capsys):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"id": 1, "messages": [{"role": "user", "content": "q"}]}\n{nope\n')
    assert main(["train", "sft", "--model", str(tiny_dir["base"]), "--data", str(bad), "--output",
                 str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert f"{bad}:1: the conversation must end with an assistant turn" in err and f"{bad}:2: invalid JSON" in err
    assert not (tmp_path / "o").exists()
    good = tmp_path / "good.jsonl"
    good.write_text(json.dumps(_sft_records()[0]) + "\n")
    assert main(["train", "sft", "--model", str(tiny_dir["base"]), "--data", str(good), "--output",
                 str(tmp_path / "o"), "--format", "chat-template"]) == 2
    assert "no chat template" in capsys.readouterr().err
    assert main(["train", "sft", "--model", str(tiny_dir["base"]), "--data", str(good), "--output",
                 str(tmp_path / "o2"), "--batch-size", "0"]) == 2
    assert main(["train", "dpo", "--model", str(tiny_dir["base"]), "--data", str(good), "--output",
                 str(tmp_path / "o3")]) == 2  # SFT records are not preference pairs
    assert "needs 'prompt', 'chosen' and 'rejected'" in capsys.readouterr().err


def test_dpo_from_the_sft_adapter(tiny_dir, sft_adapter, sft_data, tmp_path):
    out = tmp_path / "dpo"
    assert main(["train", "dpo", "--model", str(tiny_dir["base"]), "--adapter", str(sft_adapter), "--data",
                 str(sft_data["prefs"]), "--output", str(out), "--epochs", "3", "--beta", "0.1", *FAST]) == 0
    info = json.loads((out / "alignkit.json").read_text())
    # the reference is the starting adapter itself, so the first loss is exactly -log(sigmoid(0)) = log 2
    assert info["result"]["first_loss"] == pytest.approx(math.log(2), abs=1e-4)
    assert info["result"]["final_loss"] < info["result"]["first_loss"]
    assert info["result"]["final_reward_margin"] > 0
    assert info["format"] == {"name": "urial", "template": "tuned-k0"}  # inherited from the SFT adapter
    assert not (out / "ref").exists()  # only the trained adapter is saved
    from alignkit import load_model
    from alignkit.training.data import load
    from alignkit.training.dpo import pair_rows
    from alignkit.training.format import PromptFormat

    rows = pair_rows(load(str(sft_data["prefs"]), "prefs").records, PromptFormat("urial", "tuned-k0"))
    dpo = load_model(str(out), dtype="float64")
    sft = load_model(str(sft_adapter), dtype="float64")

    def margin(m):
        total = 0.0
        for r in rows[:4]:
            for sign, key in ((1, "chosen"), (-1, "rejected")):
                total += sign * sum(m.score([r["prompt"]], [r[key]])[0].logprobs)
        return total

    assert margin(dpo) > margin(sft)  # DPO moved probability from rejected to chosen answers


def test_dpo_from_the_base_with_lora(tiny_dir, sft_data, tmp_path):
    out = tmp_path / "dpo-base"
    assert main(["train", "dpo", "--model", str(tiny_dir["aligned"]), "--data", str(sft_data["prefs"]), "--output",
                 str(out), "--max-steps", "3", *FAST]) == 0
    info = json.loads((out / "alignkit.json").read_text())
    assert info["format"]["name"] == "chat-template"  # the model has a chat template
    assert info["result"]["first_loss"] == pytest.approx(math.log(2), abs=1e-4)  # reference = base, adapter off
    assert (out / "adapter_config.json").is_file()


def test_compact_loss_equals_trls_loss(tiny_dir, sft_data):
    """The CPU fast path computes the same loss (and gradients) as TRL's own."""
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import SFTConfig, SFTTrainer

    from alignkit.training import data
    from alignkit.training.format import PromptFormat, render, tokenize
    from alignkit.training.sft import compact_loss, compact_loss_applies

    tok = AutoTokenizer.from_pretrained(str(tiny_dir["base"]))
    model = AutoModelForCausalLM.from_pretrained(str(tiny_dir["base"]), dtype=torch.float64)
    rows = [tokenize(render(r.data["messages"], PromptFormat("urial", "tuned-k0"), tok), tok)
            for r in data.load(str(sft_data["sft"]), "sft").records[:4]]
    trainer = SFTTrainer(model=model, args=SFTConfig(output_dir="/tmp/unused", report_to="none", bf16=False,
                                                     use_cpu=True), train_dataset=Dataset.from_list(rows),
                         processing_class=tok)
    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(4)])
    assert compact_loss_applies(trainer.model)
    n = int((batch["labels"][:, 1:] != -100).sum())
    theirs = SFTTrainer.compute_loss(trainer, trainer.model, dict(batch), num_items_in_batch=torch.tensor(n))
    ours = compact_loss(trainer.model, dict(batch), torch.tensor(n))
    assert float(ours) == pytest.approx(float(theirs), rel=1e-9)
    g_theirs = torch.autograd.grad(theirs, trainer.model.lm_head.weight)[0]
    g_ours = torch.autograd.grad(ours, trainer.model.lm_head.weight)[0]
    diff = (g_ours - g_theirs).abs().max() / g_theirs.abs().max()
    assert diff < 1e-3, float(diff)


def test_lima_recipe_preset_schedule_dev_choice_and_residual_dropout(tiny_dir, sft_data, tmp_path):
    """--recipe lima: full fine-tuning, lr 1e-5 decaying linearly to 1e-6 (checked step by step in the log),
    effective batch 64 by accumulation, 2048 tokens, a dev set whose lowest-loss epoch is the model written, and
    residual dropout rising over the layers; explicit options override the preset."""
    out = tmp_path / "lima"
    # 11 conversations: dev = 1, train = 10 -> one optimiser step per epoch at batch 4 x 16
    assert main(["train", "sft", "--model", str(tiny_dir["base"]), "--data", str(sft_data["sft"]), "--output",
                 str(out), "--recipe", "lima", "--epochs", "4", "--learning-rate", "5e-3",
                 "--min-learning-rate", "5e-4"]) == 0
    info = json.loads((out / "alignkit.json").read_text())
    r = info["recipe"]
    assert r["preset"] == "lima" and info["tuning"]["full"] and (out / "config.json").is_file()
    assert (r["batch_size"], r["grad_accum"], r["max_length"], r["epochs"]) == (4, 16, 2048, 4.0)
    assert r["residual_dropout"] == 0.2 and r["residual_dropout_rates"] == [0.0, 0.2]  # 2 layers: 0 -> 0.2
    assert (r["learning_rate"], r["min_learning_rate"]) == (5e-3, 5e-4)  # flags over the preset
    log = [json.loads(x) for x in (out / "train_log.jsonl").read_text().splitlines()]
    lrs = [row["learning_rate"] for row in log if "learning_rate" in row]
    assert len(lrs) == 4
    # linear from 5e-3 to 5e-4 over 4 steps: the lr after step k is 5e-3 - k * (4.5e-3 / 4)
    assert lrs == pytest.approx([5e-3 - k * 4.5e-3 / 4 for k in range(len(lrs))], rel=1e-6)
    dev = info["dev"]
    assert dev["size"] == 1 and len(dev["losses"]) == 4
    assert dev["best"]["loss"] == min(x["loss"] for x in dev["losses"])
    assert dev["kept_checkpoint"].endswith(f"checkpoint-{dev['best']['step']}")
    # the model written is the best epoch's: its dev loss equals the recorded best
    dev_rec = [x for x in _sft_records() if x["id"] in dev["ids"]]
    assert data_loss(str(out), dev_rec, template="urial-k0") == pytest.approx(dev["best"]["loss"], rel=1e-4)


def test_residual_dropout_hooks(tiny_dir):
    import torch
    from transformers import AutoModelForCausalLM

    from alignkit.errors import InputError
    from alignkit.training.common import residual_dropout

    model = AutoModelForCausalLM.from_pretrained(str(tiny_dir["base"]), dtype=torch.float32)
    ids = torch.tensor([[2, 40, 41, 42, 43, 44]])
    with torch.no_grad():
        plain = model(ids).logits
        got = residual_dropout(model, 0.5)
        assert got["rates"] == [0.0, 0.5] and len(got["hooks"]) == 4  # two branches per layer
        model.eval()
        assert torch.equal(model(ids).logits, plain)  # eval mode: no dropout
        model.train()
        torch.manual_seed(0)
        a = model(ids).logits
        torch.manual_seed(1)
        assert not torch.allclose(a, model(ids).logits)  # training: stochastic
        for h in got["hooks"]:
            h.remove()
        assert torch.equal(model(ids).logits, plain)  # removed: the model is untouched
    with pytest.raises(InputError, match="no decoder layers"):
        residual_dropout(torch.nn.Sequential(torch.nn.Linear(2, 2)), 0.2)


def test_lima_options_are_checked(tiny_dir, sft_data, tmp_path, capsys):
    base = ["train", "sft", "--model", str(tiny_dir["base"]), "--data", str(sft_data["sft"]), "--output"]
    assert main([*base, str(tmp_path / "a"), "--recipe", "lima", "--dev-size", "11"]) == 2
    assert "leaves nothing to train on" in capsys.readouterr().err
    assert main([*base, str(tmp_path / "b"), "--min-learning-rate", "0.5"]) == 2
    assert "must be below the learning rate" in capsys.readouterr().err
    assert main(["train", "dpo", "--model", str(tiny_dir["base"]), "--data", str(sft_data["prefs"]), "--output",
                 str(tmp_path / "c"), "--residual-dropout", "0.1"]) == 2
    assert "part of the SFT recipe" in capsys.readouterr().err
