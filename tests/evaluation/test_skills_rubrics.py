"""The skill-set rubric pack (FLASK-style): twelve skills in four groups, each with its own 1-5 anchors; the group
files say each skill exactly as the full file does; a judge held to the shape reads every skill; usable as a scorer
(``judge+skills-logic:MODEL``)."""

from __future__ import annotations

import re

from alignkit.evaluation.judge import RUBRICS, Judge, load_rubric

GROUPS = ("skills-logic", "skills-background", "skills-problem", "skills-user")


def _skill_blocks(rubric) -> dict[str, str]:
    """Each skill's two lines (question, anchors) in the rubric's user template."""
    return {m.group(1): m.group(0) for m in re.finditer(r"^- ([a-z_]+): .*\n  1 = .*; 3 = .*; 5 = .*\.$", rubric.user, re.M)}


def test_the_pack_is_twelve_skills_in_four_groups_said_once():
    full = load_rubric("skills")
    assert len(full.aspects) == 12 and set(GROUPS) <= set(RUBRICS)
    blocks = _skill_blocks(full)
    assert list(blocks) == list(full.aspects)  # every skill has its question and its 1 / 3 / 5 anchors
    seen = []
    for name in GROUPS:
        group = load_rubric(name)
        assert group.kind == "score" and group.id == name
        assert _skill_blocks(group) == {a: blocks[a] for a in group.aspects}  # word for word
        # the reply shape names exactly the group's skills, in order
        shape = group.user.strip().splitlines()[-1]
        assert re.findall(r'"([a-z_]+)": \{', shape) == list(group.aspects)
        seen += group.aspects
    assert seen == list(full.aspects)


def test_a_constrained_judge_reads_every_skill_and_it_scores_as_a_scorer(tiny_dir):
    import alignkit as ak

    judge_model = ak.load(str(tiny_dir["judge"]), method="template")
    rubric = load_rubric("skills-user")
    res = Judge(judge_model, rubric, retries=0, max_new_tokens=400, structured=True).judge(
        [{"instruction": "Name a prime number.", "answer": "Seven."}])[0]
    assert res["missing"] == [] and set(res["result"]) == set(rubric.aspects)
    assert all(v["score"] in range(1, 6) for v in res["result"].values())
    scorer = ak.scorer("judge+skills-user:" + str(tiny_dir["judge"]))
    (s,) = scorer.score(["Name a prime number."], ["Seven."])
    assert s.value is None or 1 <= s.value <= 5
