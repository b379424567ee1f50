"""Training data and training for the route stages: loaders for the public formats (every bad record with its
line), a teacher that critiques and rewrites (drops with reasons, resumable), and `train bpo|aligner` writing
adapters that prompt themselves in their stage's layout."""

from __future__ import annotations

import json

import pytest

from alignkit.cli.main import main
from alignkit.models.base import Capabilities
from alignkit.training.routes import (
    aligner_conversations,
    bpo_conversations,
    build_aligner_triples,
    build_bpo_pairs,
    load_preferences,
    load_qa,
    split_hh,
)
from alignkit.types import Completion, GenerationConfig


def _jsonl(path, rows):
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


HH = {"chosen": "\n\nHuman: How do I boil an egg?\n\nAssistant: Put it in boiling water for nine minutes.",
      "rejected": "\n\nHuman: How do I boil an egg?\n\nAssistant: Eggs are round."}


def test_hh_rlhf_bpo_and_aligner_formats(tmp_path):
    assert split_hh(HH["chosen"]) == ("How do I boil an egg?", "Put it in boiling water for nine minutes.")
    multi = "\n\nHuman: Hi\n\nAssistant: Hello!\n\nHuman: Tell me a joke\n\nAssistant: No."
    assert split_hh(multi) == ("Human: Hi\nAssistant: Hello!\nHuman: Tell me a joke", "No.")
    prefs = load_preferences(str(_jsonl(tmp_path / "hh.jsonl", [HH])))
    assert prefs.records[0]["prompt"] == "How do I boil an egg?" and prefs.records[0]["rejected"] == "Eggs are round."
    bpo = tmp_path / "bpo.json"  # the BPO set is a JSON list
    bpo.write_text(json.dumps([{"instruction": "Write a poem.", "context": "", "good_res": "A poem...",
                                "bad_res": "No.", "comparison": "The first follows the request.",
                                "optimized_prompt": "Write a short rhyming poem.", "final_input": "Write a poem.",
                                "final_output": "Write a short rhyming poem."}]))
    rec = load_preferences(str(bpo)).records[0]
    assert rec["improved_prompt"] == "Write a short rhyming poem." and rec["critique"].startswith("The first")
    qa = load_qa(str(_jsonl(tmp_path / "al.jsonl", [{"question": "Q?", "answer": "bad", "correction": "good"}])))
    assert qa.records[0] == {"id": "al-0", "question": "Q?", "answer": "bad", "correction": "good"}
    assert load_qa(str(_jsonl(tmp_path / "hq.jsonl", [HH]))).records[0]["answer"] == "Eggs are round."


def test_every_bad_record_is_reported_with_its_line(tmp_path):
    path = _jsonl(tmp_path / "bad.jsonl", [
        {"id": "ok", "prompt": "p", "chosen": "c", "rejected": "r"},
        "{not json",
        {"id": "no-chosen", "prompt": "p", "rejected": "r"},
        {"chosen": "\n\nHuman: a\n\nAssistant: b", "rejected": "\n\nHuman: DIFFERENT\n\nAssistant: c"},
        {"id": "ok", "prompt": "p", "chosen": "c", "rejected": "r"},
    ])
    loaded = load_preferences(str(path))
    text = "\n".join(loaded.problems)
    assert len(loaded.problems) == 4
    for line, words in ((2, "invalid JSON"), (3, "'chosen'"), (4, "start differently"), (5, "duplicate id")):
        assert f"bad.jsonl:{line}:" in text and words in text
    assert main(["data", "convert", "--input", str(path), "--output", str(tmp_path / "o.jsonl")]) == 2


class Teacher:
    """A scripted teacher: answers each teacher prompt by rule, to drive construction with known outcomes."""

    backend, spec, method = "scripted", "scripted-teacher", "none"
    capabilities = Capabilities()
    context_length = None

    def info(self):
        return {"spec": self.spec}

    def close(self):
        pass

    def generate(self, prompts, config=None):
        out = []
        for p in prompts:
            if "RUNAWAY" in p:
                out.append(Completion("Why: ... and on and on", "length", 10, 64))
            elif "OFFTOPIC" in p:
                out.append(Completion("Why: fine.\nImproved prompt: Explain how vaccines work.", "stop", 10, 9))
            elif "NOMARKER" in p:
                out.append(Completion("I like the first one.", "stop", 10, 5))
            elif "Improved prompt:" in p:
                request = p.split("<request>\n")[1].split("\n</request>")[0]
                out.append(Completion(f"Why: it is complete.\nImproved prompt: {request}, step by step", "stop", 10, 9))
            elif "EMPTY" in p:
                out.append(Completion("   ", "stop", 10, 1))
            else:
                answer = p.split("Answer: ")[1].split("\n")[0]
                out.append(Completion(f"{answer} (checked)", "stop", 10, 4))
        return out


def test_bpo_pairs_from_a_teacher(tmp_path, capsys):
    recs = [{"id": str(i), "prompt": p, "chosen": "good", "rejected": "bad"}
            for i, p in enumerate(["Boil an egg", "RUNAWAY", "NOMARKER", "OFFTOPIC: planting tomatoes"])]
    recs.append({"id": "given", "prompt": "x", "chosen": "c", "rejected": "r", "improved_prompt": "x, kindly"})
    out = tmp_path / "pairs.jsonl"
    counts = build_bpo_pairs(recs, Teacher(), GenerationConfig(), str(out))
    assert counts["written"] == 2 and counts["dropped"] == 3
    assert set(counts["reasons"]) == {"the teacher hit its token limit (a runaway)",
                                      "no 'Improved prompt:' section in the teacher's answer",
                                      "the rewrite keeps 0% of the request's content words (< 50%): off topic"}
    rows = {r["id"]: r for r in map(json.loads, out.read_text().splitlines())}
    assert rows["0"]["improved_prompt"] == "Boil an egg, step by step" and rows["0"]["critique"].startswith("Why:")
    assert rows["0"]["provenance"]["teacher"]["spec"] == "scripted-teacher"
    assert rows["given"]["improved_prompt"] == "x, kindly"
    again = build_bpo_pairs(recs, Teacher(), GenerationConfig(), str(out))  # resumable: nothing twice
    assert again["skipped_done"] == 2 and len(out.read_text().splitlines()) == 2 + again["written"]


def test_aligner_triples_from_a_teacher(tmp_path):
    recs = [{"id": "a", "question": "Q", "answer": "draft"}, {"id": "b", "question": "Q", "answer": "EMPTY"},
            {"id": "c", "question": "Q", "answer": "x", "correction": "given"}]
    out = tmp_path / "triples.jsonl"
    counts = build_aligner_triples(recs, Teacher(), GenerationConfig(), str(out))
    assert counts["written"] == 2 and counts["reasons"] == {"the teacher's correction is empty": 1}
    rows = {r["id"]: r for r in map(json.loads, out.read_text().splitlines())}
    assert rows["a"]["correction"] == "draft (checked)" and rows["c"]["correction"] == "given"


def test_conversations_use_the_stage_layouts():
    (b,) = bpo_conversations([{"id": "1", "prompt": "Boil an egg", "improved_prompt": "Boil an egg well"}])
    assert "Request: Boil an egg" in b.data["messages"][0]["content"]
    assert b.data["messages"][1]["content"] == "Boil an egg well"
    row = {"id": "1", "question": "Q?", "answer": "bad", "correction": "good"}
    (a,) = aligner_conversations([row])
    (w,) = aligner_conversations([row], identity=True)
    assert "Draft answer: bad" in a.data["messages"][0]["content"] and a.data["messages"][1]["content"] == "good"
    assert "Draft answer: good" in w.data["messages"][0]["content"] and w.id == "1#identity"


FAST = ["--learning-rate", "5e-3", "--batch-size", "2", "--lora-r", "4", "--epochs", "2", "--save-steps", "100"]


@pytest.fixture(scope="module")
def stage_data(tmp_path_factory):
    root = tmp_path_factory.mktemp("stagedata")
    pairs = _jsonl(root / "pairs.jsonl", [{"id": str(i), "prompt": f"Tell me about item {i}",
                                           "improved_prompt": f"Tell me three facts about item {i}"} for i in range(6)])
    (root / "k0.yaml").write_text("id: tiny-k0\npreamble: Be kind.\nexamples: []\n")  # short: tiny models, 512 positions
    triples = _jsonl(root / "triples.jsonl", [{"id": str(i), "question": f"What is {i} plus {i}?",
                                               "answer": "I do not know.", "correction": f"It is {2 * i}."}
                                              for i in range(6)])
    return pairs, triples, ["--template", str(root / "k0.yaml")]


def test_train_bpo_writes_a_rewriter_that_knows_its_layout(tiny_dir, stage_data, tmp_path):
    import trl  # noqa: F401 - installed by make; missing is an error
    out = tmp_path / "bpo"
    assert main(["train", "bpo", "--model", str(tiny_dir["base"]), "--data", str(stage_data[0]),
                 "--output", str(out), *FAST, *stage_data[2]]) == 0
    info = json.loads((out / "alignkit.json").read_text())
    assert info["route_stage"] == "bpo" and info["inference"]["route_layout"] == "alignkit-bpo"
    assert info["result"]["final_loss"] < info["result"]["first_loss"]
    from alignkit import load_model
    from alignkit.methods import MethodOptions, apply_method
    from alignkit.methods.routes import PromptRewriter

    base = load_model(str(tiny_dir["base"]))
    route = apply_method(base, MethodOptions(method="none", rewriter=str(out)), load_model)
    assert isinstance(route, PromptRewriter) and route.layout.id == "alignkit-bpo"
    assert route.rewriter.method == "urial"  # the adapter prompts itself the way it was trained
    comp = route.generate(["Tell me about item 1"], GenerationConfig(max_new_tokens=4))[0]
    assert comp.meta["route"][0]["model"] == str(out)


def test_train_aligner_warms_up_on_identity_first(tiny_dir, stage_data, tmp_path, capsys):
    import trl  # noqa: F401 - installed by make; missing is an error
    out = tmp_path / "aligner"
    assert main(["train", "aligner", "--model", str(tiny_dir["base"]), "--data", str(stage_data[1]),
                 "--output", str(out), "--warmup-epochs", "1", *FAST, *stage_data[2]]) == 0
    err = capsys.readouterr().err
    assert err.index("identity warm-up") < err.index("corrections, continuing the warm-up adapter")
    warm = json.loads((tmp_path / "aligner.warmup" / "alignkit.json").read_text())
    main_info = json.loads((out / "alignkit.json").read_text())
    assert warm["phase"] == "identity warm-up" and warm["data"]["records"] == 6
    assert main_info["warmup"]["adapter"] == str(tmp_path / "aligner.warmup")
    assert main_info["inference"]["route_layout"] == "alignkit-aligner"
    from alignkit import load_model
    from alignkit.methods import MethodOptions, apply_method

    route = apply_method(load_model(str(tiny_dir["base"])), MethodOptions(method="none", corrector=str(out)),
                         load_model)
    assert route.layout.id == "alignkit-aligner"
    comp = route.generate(["What is 1 plus 1?"], GenerationConfig(max_new_tokens=4))[0]
    assert [r["stage"] for r in comp.meta["route"]] == ["answer", "correct"]


def test_bad_stage_data_is_refused_with_lines(tiny_dir, tmp_path, capsys):
    bad = _jsonl(tmp_path / "bad.jsonl", [{"id": "1", "prompt": "p"}, "{oops"])
    assert main(["train", "bpo", "--model", str(tiny_dir["base"]), "--data", str(bad),
                 "--output", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "bad.jsonl:1" in err and "bad.jsonl:2" in err and not (tmp_path / "o").exists()


class FewShotTeacher(Teacher):
    """Answers the few-shot teacher prompt in two steps: a 'Why' line, then what a good answer should contain
    after the request that alignkit wrote after the marker."""

    def generate(self, prompts, config=None):
        out = []
        for p in prompts:
            if p.endswith("A good answer"):
                tail = p.rsplit("Improved prompt: ", 1)[1]
                addition = "" if "NOTHING" in tail else (
                    " gives a complete list grouped as clothing, food and water, and safety gear, with one safety tip."
                    if "COPY" in tail else " lists the steps in order.")
                out.append(Completion(addition, "stop", 10, 5))
            else:
                out.append(Completion(" the preferred answer is complete.", "stop", 10, 5))
        return out


def test_few_shot_teacher_writes_the_request_then_what_a_good_answer_needs(tmp_path):
    recs = [{"id": str(i), "prompt": p, "chosen": "good", "rejected": "bad"}
            for i, p in enumerate(["Boil an egg.", "NOTHING to add", "COPY the example"])]
    out = tmp_path / "pairs.jsonl"
    counts = build_bpo_pairs(recs, FewShotTeacher(), GenerationConfig(), str(out), teacher_prompt="bpo-fewshot")
    assert counts["written"] == 1 and counts["reasons"] == {
        "the teacher added nothing to the request": 1,
        "the teacher's addition copies an example of the teacher prompt": 1}
    row = json.loads(out.read_text().splitlines()[0])
    assert row["improved_prompt"] == "Boil an egg. A good answer lists the steps in order."
    assert row["critique"].startswith("the preferred answer is complete.")


def test_data_commands_end_to_end(tiny_dir, tmp_path, capsys):
    hh = _jsonl(tmp_path / "hh.jsonl", [HH, {**HH, "id": "two"}])
    prefs = tmp_path / "prefs.jsonl"
    assert main(["data", "convert", "--input", str(hh), "--output", str(prefs)]) == 0
    assert [json.loads(x)["prompt"] for x in prefs.read_text().splitlines()] == ["How do I boil an egg?"] * 2
    # a tiny random teacher (the long-context one: the few-shot prompt is ~1,000 tokens): whatever it writes is either kept with provenance or dropped with a reason
    out = tmp_path / "pairs.jsonl"
    assert main(["data", "bpo-pairs", "--input", str(prefs), "--output", str(out), "--teacher", str(tiny_dir["judge"]),
                 "--method", "none", "--teacher-prompt", "bpo-fewshot", "--max-new-tokens", "6", "--quiet"]) == 0
    counts = json.loads(capsys.readouterr().err.strip().splitlines()[-1].split(": ", 1)[1].rsplit(" -> ", 1)[0])
    assert counts["written"] + counts["dropped"] == 2 and sum(counts.get("reasons", {}).values()) == counts["dropped"]
    qa = _jsonl(tmp_path / "qa.jsonl", [{"id": "a", "question": "Q?", "answer": "A."}])
    out = tmp_path / "triples.jsonl"
    assert main(["data", "aligner-triples", "--input", str(qa), "--output", str(out), "--teacher",
                 str(tiny_dir["judge"]), "--method", "none", "--teacher-prompt", "aligner-fewshot",
                 "--max-new-tokens", "6", "--quiet"]) == 0
    assert "aligner-triples" in capsys.readouterr().err
