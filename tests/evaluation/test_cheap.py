"""Judge-free metrics: a prompt layout showing through an answer is caught; ordinary answers are not flagged."""

from __future__ import annotations

import pytest

from alignkit.evaluation.cheap import answer_metrics, leaked_delimiter


@pytest.mark.parametrize("text", ["Sure.\n````\n# Query:", "An answer.\n\n# Query: next question", "Hi\nUser: more",
                                  "ok [/INST] more", "BEGINNING OF CONVERSATION: USER: x", "x<start_of_turn>user"])
def test_layout_delimiters_are_leaks(text):
    assert leaked_delimiter(text) and answer_metrics(text, "stop", 5)["leak"]


@pytest.mark.parametrize("text", ["The answer is 5.", "Answer: 42 apples", "Use ``` code fences ``` freely.",
                                  "Q&A sessions help.", "A queue: first in, first out."])
def test_ordinary_answers_are_not_leaks(text):
    assert not leaked_delimiter(text)
