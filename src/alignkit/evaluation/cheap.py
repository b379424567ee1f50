"""Cheap, judge-free metrics of an answer (pure functions): length, refusal, repetition, runaway, leaked
delimiters."""

from __future__ import annotations

import re
from typing import Any

from alignkit.evaluation.refusal_classifier import is_refusal

# a prompt layout showing through the answer: the in-context blocks' fence or headers, a role header, a turn marker
_LEAK = re.compile(r"````|^#+ ?(Query|Answer)\b|# Query:|# Answer:|^(User|Assistant|Human|Q|A): |<start_of_turn>|"
                   r"\[/?INST\]|BEGINNING OF CONVERSATION", re.M)


def leaked_delimiter(text: str) -> bool:
    """Whether the answer contains a prompt layout's delimiter (a block fence, a header, a role marker)."""
    return bool(_LEAK.search(text))


def repetition(text: str, n: int = 4) -> float:
    """Share of word n-grams that repeat an earlier n-gram of the same answer (0: none, near 1: a loop)."""
    words = text.split()
    grams = [tuple(words[i : i + n]) for i in range(len(words) - n + 1)]
    if not grams:
        return 0.0
    return 1.0 - len(set(grams)) / len(grams)


def answer_metrics(text: str, finish_reason: str, completion_tokens: int) -> dict[str, Any]:
    return {"tokens": completion_tokens, "words": len(text.split()), "refusal": is_refusal(text),
            "leak": leaked_delimiter(text),
            "repetition": round(repetition(text), 4), "runaway": finish_reason == "length", "empty": not text.strip()}
