"""Judge prompts are filled in one pass: text that looks like a placeholder is never substituted again."""

from __future__ import annotations

import pytest

from alignkit.errors import InputError
from alignkit.evaluation.judge import FIELDS, RUBRICS, load_rubric

EVIL = "{instruction} {answer} {answer_a} {answer_b} {unknown} {{answer}} {"


@pytest.mark.parametrize("name", sorted(RUBRICS))
def test_every_placeholder_in_every_field_stays_literal(name):
    rubric = load_rubric(name)
    fields = {k: f"<<{k}:{EVIL}>>" for k in FIELDS[rubric.kind]}
    user = rubric.messages(**fields)[1].content
    for k, v in fields.items():
        assert user.count(v) == 1, f"{k} was not inserted exactly once"
    # the template's own text around the fields is unchanged: removing the inserted values gives the template
    # with its placeholders removed
    stripped = user
    for v in fields.values():
        stripped = stripped.replace(v, "", 1)
    template = rubric.user
    for k in FIELDS[rubric.kind]:
        template = template.replace("{" + k + "}", "")
    assert stripped == template


def test_missing_field_is_an_error():
    with pytest.raises(ValueError, match="answer"):
        load_rubric("multi-aspect").messages(instruction="x")


@pytest.mark.parametrize("user, problem", [
    ("Q: {instruction}", "missing: answer"),
    ("Q: {instruction} A: {answer} {extra}", "unknown: extra"),
])
def test_rubric_files_are_checked_for_placeholders(tmp_path, user, problem):
    f = tmp_path / "r.yaml"
    f.write_text(f"id: r\nkind: score\naspects: [helpfulness]\nsystem: s\nuser: '{user}'\n")
    with pytest.raises(InputError, match=problem):
        load_rubric(str(f))
