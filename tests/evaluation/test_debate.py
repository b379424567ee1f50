"""The debate judge (ChatEval-style): personas speak one after another for the rounds, each hearing every earlier
turn; each then gives a verdict in the rubric's shape, combined (mean score, majority verdict); an unreadable
verdict is left out, never guessed; turns and verdicts are kept and cached; it serves alignkit eval and scorers."""

from __future__ import annotations

import json
import re

import pytest

from alignkit.errors import InputError
from alignkit.evaluation.debate import PERSONAS, DebateJudge
from alignkit.evaluation.judge import JudgeCache, load_rubric
from alignkit.models.base import Capabilities
from alignkit.types import Completion


class Panel:
    """A scripted judge model: a turn says who spoke and what it heard; a verdict's score is set per persona
    (``scores``; None: an unreadable reply); pairwise verdicts per persona from ``votes``."""

    backend, spec = "scripted", "panel"
    capabilities = Capabilities(chat_template=True)
    context_length = None

    def __init__(self, scores=None, votes=None) -> None:
        self.scores, self.votes, self.seen = scores or {}, votes or {}, []

    def info(self):
        return {"spec": self.spec}

    def close(self):
        pass

    def generate(self, prompts, configs=None):
        out = []
        for msgs in prompts:
            self.seen.append(msgs)
            persona = next(p for p, d in PERSONAS.items() if d in msgs[0].content)
            user = msgs[-1].content
            if "Do not reply with the JSON verdict yet" in user:
                heard = re.findall(r"\[(\w+), round (\d)\]", user)
                text = f"{persona} heard {len(heard)} turn(s)"
            elif "ANSWER A" in user:
                text = json.dumps({"helpfulness": self.votes[persona], "clarity": "A", "reason": f"{persona} says"})
            else:
                s = self.scores.get(persona, 3)
                text = "no idea" if s is None else json.dumps(
                    {a: {"reason": f"{persona} thinks so", "score": s} for a in ("helpfulness", "clarity", "factuality",
                                                                                 "depth", "engagement")})
            out.append(Completion(text=text, finish_reason="stop", prompt_tokens=0, completion_tokens=1))
        return out


ITEM = {"instruction": "Name a colour. {discussion}", "answer": "Blue, {answer} and {discussion} stay as written."}


def test_personas_hear_every_earlier_turn_and_the_verdicts_are_averaged(tmp_path):
    panel = Panel(scores={"expert": 2, "editor": 4, "user": None})
    judge = DebateJudge(panel, load_rubric("multi-aspect"), personas=3, rounds=2, retries=0,
                        cache=JudgeCache(tmp_path / "cache.jsonl"))
    (res,) = judge.judge([ITEM])
    turns = res["debate"]["turns"]
    assert [(t["round"], t["persona"]) for t in turns] == [(r, p) for r in (1, 2) for p in ("expert", "editor", "user")]
    assert [t["text"] for t in turns] == [f"{p} heard {k} turn(s)" for k, p in
                                         enumerate(["expert", "editor", "user"] * 2)]
    # the user's unreadable verdict is left out: the mean of 2 and 4, with the votes and the personas' reasons
    assert res["result"]["helpfulness"]["score"] == 3.0 and res["result"]["helpfulness"]["votes"] == [2, 4]
    assert "expert: expert thinks so" in res["result"]["helpfulness"]["reason"] and res["missing"] == []
    assert res["debate"]["verdicts"]["user"]["helpfulness"]["score"] is None
    # text that looks like a placeholder stays literal, in the turns' and the verdicts' prompts
    assert all("{discussion} stay as written" in m[-1].content for m in panel.seen)
    prov = judge.provenance()
    assert prov["debate"] == {"personas": ["expert", "editor", "user"], "rounds": 2, "turn_tokens": 120}
    # cached: a second run asks nothing
    n = len(panel.seen)
    again = DebateJudge(panel, load_rubric("multi-aspect"), personas=3, rounds=2, retries=0,
                        cache=JudgeCache(tmp_path / "cache.jsonl")).judge([ITEM])
    assert len(panel.seen) == n and again[0]["result"] == res["result"] and again[0]["cached"]


def test_no_readable_verdict_is_missing_and_pairwise_takes_the_majority():
    (res,) = DebateJudge(Panel(scores={"expert": None, "editor": None}), load_rubric("multi-aspect"), personas=2,
                         rounds=1, retries=0).judge([ITEM])
    assert res["missing"] == ["helpfulness", "clarity", "factuality", "depth", "engagement"]
    assert res["result"]["helpfulness"]["score"] is None
    pair = {"instruction": "Name a colour.", "answer_a": "Blue.", "answer_b": "Turtles."}
    (won,) = DebateJudge(Panel(votes={"expert": "A", "editor": "A", "user": "B"}), load_rubric("pairwise"),
                         personas=3, rounds=1, retries=0).judge([pair])
    assert won["result"]["helpfulness"] == "A" and won["result"]["clarity"] == "A"
    assert won["debate"]["verdicts"]["user"]["helpfulness"] == "B" and len(won["raw"]) == 3
    (split,) = DebateJudge(Panel(votes={"expert": "A", "editor": "B", "user": "tie"}), load_rubric("pairwise"),
                           personas=3, rounds=1, retries=0).judge([pair])
    assert split["result"]["helpfulness"] == "tie"


def test_bad_debates_are_refused():
    for personas, rounds in ((1, 2), (6, 2), (3, 0)):
        with pytest.raises(InputError, match="debate needs"):
            DebateJudge(Panel(), load_rubric("multi-aspect"), personas=personas, rounds=rounds)


def test_a_debate_as_a_scorer_and_in_alignkit_eval(tiny_dir, tmp_path):
    import alignkit as ak
    from alignkit.evaluation.harness import EvalConfig, Harness

    scorer = ak.scorer("debate+skills-user:" + str(tiny_dir["judge"]))
    (s,) = scorer.score(["Name a prime number."], ["Seven."])
    assert s.value is None or 1 <= s.value <= 5
    assert scorer.info()["debate"]["personas"] == ["expert", "editor", "user"]
    inst = tmp_path / "inst.jsonl"
    inst.write_text(json.dumps({"id": "a", "instruction": "Name a colour.", "category": "general"}) + "\n")
    panel = Panel(scores={"expert": 2, "editor": 5})
    values = {"instructions": str(inst), "judge": "panel", "max_new_tokens": 4, "batch_size": 2,
              "output": str(tmp_path / "run"), "rubric": "multi-aspect", "debate_personas": 2, "debate_rounds": 1,
              "contestants": [{"name": "raw", "model": str(tiny_dir["base"]), "method": "none"}]}
    cfg = EvalConfig.from_dict(values)
    from alignkit.methods import MethodOptions, apply_method

    def loader(spec):
        return panel if spec == "panel" else apply_method(ak.load_model(spec), MethodOptions(method="none"))

    report = Harness(cfg, loader, progress=lambda m: None).run()
    assert report["summary"]["raw"]["mean"]["helpfulness"] == 3.5
    (rec,) = [json.loads(x) for x in (tmp_path / "run" / "judgments" / "raw.jsonl").read_text().splitlines()]
    assert [t["persona"] for t in rec["debate"]["turns"]] == ["expert", "editor"]
    assert rec["provenance"]["debate"]["rounds"] == 1
    with pytest.raises(InputError, match="2 to 5 personas"):
        Harness(EvalConfig.from_dict({**values, "debate_personas": 1, "output": str(tmp_path / "r2")}), loader,
                progress=lambda m: None).run()
