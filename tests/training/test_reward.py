"""Reward models and scorers on tiny real models: the reward trainer lowers its loss and orders held-out pairs;
its folder loads as a scorer whose batched scores equal a direct forward pass; hub-style reward models, rubric
judges and G-Eval expected scores behind the same interface; the DPO family and online RL each train and write
a loadable adapter."""

from __future__ import annotations

import json
import math

import pytest
import torch

from alignkit.cli.main import main
from alignkit.errors import InputError

FAST = ["--learning-rate", "5e-3", "--batch-size", "8", "--save-steps", "100"]


def _pairs(n: int = 40):
    return [{"id": f"p{i}", "prompt": f"What is {i} plus {i}?", "chosen": f"The answer is {2 * i}. Thank you!",
             "rejected": "The quick brown fox jumps over the lazy dog."} for i in range(n)]


@pytest.fixture(scope="module")
def prefs(tmp_path_factory):
    path = tmp_path_factory.mktemp("rmdata") / "prefs.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in _pairs()))
    return path


@pytest.fixture(scope="module")
def reward_dir(tiny_dir, prefs, tmp_path_factory):
    out = tmp_path_factory.mktemp("rm") / "rm"
    assert main(["train", "reward", "--model", str(tiny_dir["base"]), "--data", str(prefs), "--output", str(out),
                 "--eval-share", "0.25", "--epochs", "3", *FAST]) == 0
    return out


def test_reward_trainer_lowers_its_loss_and_orders_held_out_pairs(reward_dir, prefs):
    from alignkit.api import open_scorer
    from alignkit.training.reward import held_out

    info = json.loads((reward_dir / "alignkit.json").read_text())
    r = info["result"]
    assert info["kind"] == "reward" and info["layout"] == {"name": "urial", "template": "urial-k0"}
    assert r["final_loss"] < r["first_loss"] / 4
    assert info["data"]["held_out_pairs"] > 3 and info["data"]["train_pairs"] + info["data"]["held_out_pairs"] == 40
    assert r["eval_accuracy"] == 1.0 and r["eval_margin"] > 0
    assert "Held-out accuracy: 1.0" in (reward_dir / "README.md").read_text()
    # the folder is a scorer; held-out pairs (never trained on) are ordered correctly, and an unseen prompt too
    scorer = open_scorer(f"reward:{reward_dir}")
    held = [p for p in _pairs() if held_out(p["id"], 0.25)]
    assert held
    for p in held + [{"prompt": "What is 50 plus 50?", "chosen": "The answer is 100. Thank you!",
                      "rejected": "The quick brown fox jumps over the lazy dog."}]:
        good, bad = scorer.score([p["prompt"]] * 2, [p["chosen"], p["rejected"]])
        assert good.value > bad.value


def test_batched_scores_equal_a_direct_forward_pass(reward_dir):
    """Right padding and batching change nothing: each score equals the model's output on the bare sequence,
    read at its last token (the end-of-sequence token appended as in training)."""
    from peft import PeftModel
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from alignkit.training.reward_model import RewardModelScorer

    scorer = RewardModelScorer.load(str(reward_dir), batch_size=4)
    prompts = ["What is 3 plus 3?", "Name a colour.", "What is 12 plus 12?"]
    answers = ["The answer is 6. Thank you!", "Blue, like the sky on a long and quiet summer afternoon.", "24"]
    got = [s.value for s in scorer.score(prompts, answers)]
    info = json.loads((reward_dir / "alignkit.json").read_text())
    tok = AutoTokenizer.from_pretrained(reward_dir)
    base = AutoModelForSequenceClassification.from_pretrained(info["base_source"], num_labels=1, dtype=torch.float32)
    model = PeftModel.from_pretrained(base, str(reward_dir)).eval()
    for p, a, g in zip(prompts, answers, got):
        ids = scorer.ids(p, a)
        assert ids[-1] == tok.eos_token_id and ids[0] == tok.bos_token_id
        with torch.no_grad():
            want = float(model(input_ids=torch.tensor([ids])).logits[0, 0])
        assert g == pytest.approx(want, abs=1e-4)


def test_a_hub_style_reward_model_is_a_scorer(hub_reward):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from alignkit.api import open_scorer

    scorer = open_scorer(f"reward:{hub_reward['rm']}")
    assert scorer.layout.name == "chat-template" and scorer.info()["trained_by_alignkit"] is False
    got = scorer.score(["Name a colour."], ["Blue."])[0].value
    tok = AutoTokenizer.from_pretrained(hub_reward["rm"])
    model = AutoModelForSequenceClassification.from_pretrained(hub_reward["rm"]).eval()
    text = tok.apply_chat_template([{"role": "user", "content": "Name a colour."},
                                    {"role": "assistant", "content": "Blue."}], tokenize=False)
    ids = tok(text, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    with torch.no_grad():
        assert got == pytest.approx(float(model(input_ids=torch.tensor([ids])).logits[0, 0]), abs=1e-5)
    with pytest.raises(InputError, match="3 outputs"):
        open_scorer(f"reward:{hub_reward['three']}")


@pytest.mark.parametrize("spec, needle", [
    ("rewardmodel", "KIND:TARGET"), ("nope:x", "unknown kind 'nope'"), ("reward:", "nothing after"),
    ("reward+multi-aspect:x", "takes no rubric"), ("reward:./no/such/folder", "no such folder"),
    ("judge+pairwise:x", "pairwise rubric"),
])
def test_bad_scorer_specs_are_clear_errors(spec, needle, tiny_dir):
    from alignkit.api import open_scorer

    if spec == "judge+pairwise:x":
        spec = f"judge+pairwise:{tiny_dir['judge']}"
    with pytest.raises(Exception, match=needle):
        open_scorer(spec)


def test_judge_scorer_means_the_aspects_and_never_guesses():
    from alignkit.evaluation.judge import Judge, load_rubric
    from alignkit.evaluation.scorers import JudgeScorer
    from tests.support.scripted import ScriptedJudge

    scorer = JudgeScorer(Judge(ScriptedJudge(), load_rubric("multi-aspect"), retries=1))
    good, bad = scorer.score(["Q"] * 2, ["one two three four five six seven eight nine", "never-readable"])
    aspects = good.detail["aspects"]
    assert set(aspects) == {"helpfulness", "clarity", "factuality", "depth", "engagement"}
    assert good.value == sum(aspects.values()) / 5 and 1 <= good.value <= 5
    assert bad.value is None and "unreadable" in bad.reason and "2 attempt" in bad.reason


def test_geval_is_the_expected_digit_under_the_judge(tiny_dir):
    from alignkit import load_model
    from alignkit.api import open_scorer
    from alignkit.evaluation.judge import load_rubric
    from alignkit.evaluation.scorers import ExpectedScoreJudge
    from alignkit.methods import MethodOptions, apply_method

    scorer = open_scorer(f"geval:{tiny_dir['judge']}")
    assert isinstance(scorer, ExpectedScoreJudge)
    got = scorer.score(["Name a colour.", "What is 2 plus 2?"], ["Blue.", "4"])
    judge = apply_method(load_model(str(tiny_dir["judge"])), MethodOptions(method="auto"))
    rubric = load_rubric("overall")
    for (q, a), s in zip([("Name a colour.", "Blue."), ("What is 2 plus 2?", "4")], got):
        conv = rubric.messages(instruction=q, answer=a)
        probs = [math.exp(judge.score([conv], [str(d)])[0].logprobs[-1]) for d in range(1, 6)]
        want = sum((i + 1) * p for i, p in enumerate(probs)) / sum(probs)
        if s.value is None:  # a random judge may put almost nothing on the digits: then it is not a judgment
            assert sum(probs) < 0.01 and "probability" in s.reason
        else:
            assert s.value == pytest.approx(want, abs=1e-4) and 1 <= s.value <= 5


@pytest.mark.parametrize("kind, extra", [("kto", []), ("orpo", []), ("simpo", []),
                                         ("dpo", ["--loss-type", "ipo"]), ("dpo", ["--loss-type", "apo_zero"])])
def test_each_preference_trainer_runs_and_writes_a_loadable_adapter(kind, extra, tiny_dir, prefs, tmp_path):
    from alignkit import GenerationConfig, load_model

    out = tmp_path / kind
    assert main(["train", kind, "--model", str(tiny_dir["base"]), "--data", str(prefs), "--output", str(out),
                 "--max-steps", "2", *FAST, *extra]) == 0
    info = json.loads((out / "alignkit.json").read_text())
    assert info["kind"] == kind and info["result"]["steps"] == 2 and info["result"]["final_loss"] is not None
    assert (out / "adapter_config.json").is_file() and (out / "README.md").is_file()
    model = load_model(str(out))
    assert model.generate(["What is 2 plus 2?"], GenerationConfig(max_new_tokens=3))[0].completion_tokens > 0


def test_a_loss_of_another_trainer_is_refused(tiny_dir, prefs, tmp_path, capsys):
    assert main(["train", "kto", "--model", str(tiny_dir["base"]), "--data", str(prefs), "--output",
                 str(tmp_path / "x"), "--loss-type", "ipo"]) == 2
    assert "not a KTO loss" in capsys.readouterr().err


@pytest.mark.parametrize("algorithm", ["grpo", "rloo"])
def test_online_rl_with_a_scorer_as_the_reward(algorithm, tiny_dir, reward_dir, tmp_path):
    from alignkit import load_model
    from alignkit.api import open_scorer

    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"id": i, "prompt": f"What is {i} plus {i}?"}) + "\n" for i in range(4)))
    out = tmp_path / algorithm
    assert main(["train", algorithm, "--model", str(tiny_dir["aligned"]), "--data", str(prompts), "--output",
                 str(out), "--scorer", f"reward:{reward_dir}", "--num-generations", "4", "--batch-size", "4",
                 "--max-completion-length", "8", "--max-steps", "2", "--learning-rate", "5e-3"]) == 0
    info = json.loads((out / "alignkit.json").read_text())
    assert info["kind"] == algorithm and info["result"]["steps"] == 2 and info["scorer"]["kind"] == "reward"
    samples = [json.loads(x) for x in (out / "samples.jsonl").read_text().splitlines()]
    assert len(samples) == 2 * 4 and info["result"]["samples"] == 8
    scorer = open_scorer(f"reward:{reward_dir}")
    for s in samples[:4]:  # the reward each sample got is the scorer's score of it
        assert s["score"] == pytest.approx(scorer.score([s["request"]], [s["answer"]])[0].value, abs=1e-4)
    assert load_model(str(out)).spec


def test_online_rl_needs_whole_groups(tiny_dir, reward_dir, tmp_path, capsys):
    prompts = tmp_path / "p.jsonl"
    prompts.write_text(json.dumps({"id": 1, "prompt": "Hi"}) + "\n")
    assert main(["train", "grpo", "--model", str(tiny_dir["aligned"]), "--data", str(prompts), "--output",
                 str(tmp_path / "o"), "--scorer", f"reward:{reward_dir}", "--num-generations", "3",
                 "--batch-size", "4"]) == 2
    assert "multiple of --num-generations" in capsys.readouterr().err


def test_the_gpu_sampling_switch_reaches_trls_config(tmp_path):
    """--use-vllm (GPU only, not run here) is passed to TRL as its own options, and TRL's config accepts them."""
    from trl import GRPOConfig

    from alignkit.training.common import Recipe, Tuning
    from alignkit.training.online import OnlineJob, config_kwargs

    kw = config_kwargs(OnlineJob(data="p", output=str(tmp_path), scorer="reward:x", use_vllm=True), Recipe(),
                       Tuning(), tmp_path)
    assert kw["use_vllm"] is True and kw["vllm_mode"] == "colocate" and kw["num_generations"] == 4
    cfg = GRPOConfig(**kw)
    assert cfg.use_vllm and cfg.vllm_mode == "colocate"
