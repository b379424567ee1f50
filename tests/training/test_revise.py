"""``alignkit data revise`` (critique and revise): rounds kept in the record, early stop when the critic finds
nothing, garbage dropped with its reason, resume after a kill, the implied pairs, malformed input listed by line;
on tiny real models from the command line."""

from __future__ import annotations

import json

import pytest

from alignkit.errors import InputError
from alignkit.training.revise import CRITIQUE_PROMPT, critique_and_revise
from alignkit.types import Completion, GenerationConfig

CFG = GenerationConfig(max_new_tokens=16)


class Scripted:
    """A stand-in route whose reply to a prompt is ``reply(prompt text)`` (the critic's and reviser's wiring is
    what is tested here; the real models run in the command-line test)."""

    spec = "scripted"

    def __init__(self, reply, finish="stop") -> None:
        self.reply, self.finish, self.calls = reply, finish, 0

    def info(self):
        return {"spec": self.spec}

    def generate(self, prompts, configs):
        self.calls += 1
        out = []
        for p in prompts:
            text = p[-1].content
            reply = self.reply(text)
            out.append(Completion(text=reply, finish_reason=self.finish, prompt_tokens=0, completion_tokens=len(reply.split())))
        return out


def _critic(text):
    if "Answer to review:\nGood answer" in text or "Answer to review:\nLonger answer, revised" in text:
        return "NO ISSUES"
    return "- It is too short.\n- It does not say why."


def _reviser(text):
    if "Answer:\nshort" in text:
        return "Longer answer, revised"
    if "Answer:\nbroken" in text:
        return ""
    return "Another revision"


RECORDS = [
    {"id": "a", "messages": [{"role": "user", "content": "Q1"}, {"role": "assistant", "content": "Good answer"}]},
    {"id": "b", "prompt": "Q2", "answer": "short", "topic": "x"},
    {"id": "c", "messages": [{"role": "user", "content": "Q3"}, {"role": "assistant", "content": "broken"}]},
]


def _rows(path):
    return [json.loads(x) for x in path.read_text().splitlines()] if path.exists() else []


def test_rounds_early_stop_dropped_garbage_and_pairs(tmp_path):
    out, gone, pairs = tmp_path / "out.jsonl", tmp_path / "removed.jsonl", tmp_path / "pairs.jsonl"
    counts = critique_and_revise(RECORDS, Scripted(_critic), Scripted(_reviser), CFG, str(out), rounds=3,
                                 removed=str(gone), pairs=str(pairs), report=lambda s: None)
    assert counts == {"written": 2, "dropped": 1, "skipped_done": 0, "stopped_early": 2, "pairs": 1}
    a, b = _rows(out)
    # a: nothing to fix -- kept as it was, one round recorded
    assert a["messages"][-1]["content"] == "Good answer" and a["original"] == "Good answer"
    assert a["rounds"] == [{"round": 1, "critique": "NO ISSUES", "revision": None}]
    # b: revised once, then the critic is satisfied; its other fields kept
    assert b["messages"] == [{"role": "user", "content": "Q2"}, {"role": "assistant", "content": "Longer answer, revised"}]
    assert [r["revision"] for r in b["rounds"]] == ["Longer answer, revised", None] and b["topic"] == "x"
    assert b["rounds"][0]["critique"].startswith("- It is too short") and b["stopped"] == "the critic found nothing to fix"
    assert b["provenance"]["rounds"] == 3
    # c: the reviser's empty answer is not invented into a revision: dropped, with the reason and its round
    (c,) = _rows(gone)
    assert c["id"] == "c" and c["reason"] == "the reviser gave an empty revision" and c["rounds"][0]["revision"] == ""
    (p,) = _rows(pairs)
    assert p == {**p, "id": "b", "prompt": "Q2", "chosen": "Longer answer, revised", "rejected": "short"}


def test_a_later_round_that_fails_keeps_the_earlier_revision(tmp_path):
    replies = iter(["First revision", ""])
    out = tmp_path / "out.jsonl"
    critique_and_revise(RECORDS[1:2], Scripted(lambda t: "Needs more."), Scripted(lambda t: next(replies)), CFG,
                        str(out), rounds=3, report=lambda s: None)
    (b,) = _rows(out)
    assert b["messages"][-1]["content"] == "First revision"
    assert b["stopped"] == "the reviser gave an empty revision" and b["rounds"][1]["rejected"]
    # a revision cut off by the token limit is never kept
    cut = tmp_path / "cut.jsonl"
    counts = critique_and_revise(RECORDS[1:2], Scripted(lambda t: "Needs more."), Scripted(lambda t: "x", "length"),
                                 CFG, str(cut), rounds=2, removed=str(tmp_path / "rm.jsonl"), report=lambda s: None)
    assert counts["dropped"] == 1 and "token limit" in _rows(tmp_path / "rm.jsonl")[0]["reason"]


def test_resume_after_a_kill_writes_each_record_once(tmp_path):
    out, gone = tmp_path / "out.jsonl", tmp_path / "removed.jsonl"

    class Killed(Scripted):
        def generate(self, prompts, configs):
            if self.calls >= 1:
                raise KeyboardInterrupt  # killed at the reviser's second call: record c (a needs no revision)
            return super().generate(prompts, configs)

    with pytest.raises(KeyboardInterrupt):
        critique_and_revise(RECORDS, Scripted(_critic), Killed(_reviser), CFG, str(out), rounds=2,
                            removed=str(gone), batch_size=1, report=lambda s: None)
    assert [r["id"] for r in _rows(out)] == ["a", "b"] and not _rows(gone)
    counts = critique_and_revise(RECORDS, Scripted(_critic), Scripted(_reviser), CFG, str(out), rounds=2,
                                 removed=str(gone), batch_size=1, report=lambda s: None)
    assert counts["skipped_done"] == 2 and counts["written"] == 0 and counts["dropped"] == 1
    assert sorted(r["id"] for r in _rows(out) + _rows(gone)) == ["a", "b", "c"]


def test_prompts_alone_need_an_answering_route(tmp_path):
    recs = [{"id": "q", "prompt": "Name a colour."}]
    with pytest.raises(InputError, match="no answer to revise"):
        critique_and_revise(recs, Scripted(_critic), Scripted(_reviser), CFG, str(tmp_path / "o.jsonl"))
    out = tmp_path / "o.jsonl"
    critique_and_revise(recs, Scripted(_critic), Scripted(_reviser), CFG, str(out),
                        answerer=Scripted(lambda t: "short"), report=lambda s: None)
    (r,) = _rows(out)
    assert r["original"] == "short" and r["messages"][-1]["content"] == "Longer answer, revised"
    assert "answerer" in r["provenance"]
    with pytest.raises(InputError, match="must end with"):
        critique_and_revise([{"id": "z", "messages": [{"role": "system", "content": "s"}]}], Scripted(_critic),
                            Scripted(_reviser), CFG, str(out))
    assert "NO ISSUES" in CRITIQUE_PROMPT


def test_the_command_on_tiny_models_and_malformed_input(tiny_dir, tmp_path, capsys):
    from alignkit.cli.main import main

    inp = tmp_path / "in.jsonl"
    inp.write_text("".join(json.dumps(r) + "\n" for r in RECORDS))
    out, gone, pairs = tmp_path / "out.jsonl", tmp_path / "gone.jsonl", tmp_path / "pairs.jsonl"
    argv = ["data", "revise", "--input", str(inp), "--output", str(out), "--critic", str(tiny_dir["aligned"]),
            "--critic-method", "template", "--reviser", str(tiny_dir["base"]), "--reviser-method", "none",
            "--rounds", "2", "--max-new-tokens", "6", "--removed", str(gone), "--pairs", str(pairs), "--quiet"]
    assert main(argv) == 0
    written, dropped = _rows(out), _rows(gone)
    assert sorted(r["id"] for r in written + dropped) == ["a", "b", "c"]  # every record written or dropped
    for r in written:
        assert r["rounds"] and r["messages"][-1]["content"] == (
            r["original"] if not any(x.get("revision") and "rejected" not in x for x in r["rounds"]) else
            [x["revision"] for x in r["rounds"] if x.get("revision") and "rejected" not in x][-1])
        assert r["provenance"]["critic"]["method"] == "template"
    for r in dropped:
        assert r["reason"]  # the tiny reviser's garbage (cut off at 6 tokens) is dropped with its reason
    assert main(argv) == 0  # resumed: nothing twice
    assert sorted(r["id"] for r in _rows(out) + _rows(gone)) == ["a", "b", "c"]
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps(RECORDS[0]) + "\n{not json\n" + json.dumps({"id": "x"}) + "\n")
    capsys.readouterr()
    assert main(["data", "revise", "--input", str(bad), "--output", str(tmp_path / "o2.jsonl"),
                 "--critic", str(tiny_dir["aligned"]), "--quiet"]) != 0
    err = capsys.readouterr().err
    assert "bad.jsonl:2:" in err and "bad.jsonl:3:" in err and not (tmp_path / "o2.jsonl").exists()


@pytest.mark.parametrize("revision, reason", [
    ("Better answer.\n\nRewrite the answer so that it fixes every point of the review and keeps what was already right.",
     "the revision echoes the reviser's instructions"),
    ("Needs more.", "the revision copies the critique"),
])
def test_a_revision_that_echoes_its_prompt_or_copies_the_critique_is_dropped(tmp_path, revision, reason):
    gone = tmp_path / "rm.jsonl"
    counts = critique_and_revise(RECORDS[1:2], Scripted(lambda t: "Needs more."), Scripted(lambda t: revision), CFG,
                                 str(tmp_path / "out.jsonl"), rounds=1, removed=str(gone), report=lambda s: None)
    assert counts["dropped"] == 1 and _rows(gone)[0]["reason"] == reason
