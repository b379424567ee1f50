"""Which tokens are *style* and which are *content*, by a stated rule, so that "the shifted tokens are mostly
stylistic" is a measured share instead of a reading of a few counts.

The rule, applied to a token's text (leading/trailing whitespace and the tokenizer's word-start marks removed,
lower-cased):

* ``markup`` -- nothing is left (whitespace, newlines), or only punctuation, symbols and markup characters
  (``* # - • : . , ; ! ? ( ) [ ] { } " ' ` _ / | > <``), or a list number such as ``1.`` / ``2)``;
* ``function`` -- a function word (articles, pronouns, prepositions, conjunctions, auxiliaries and modal verbs,
  negation) or a discourse / politeness word (openers, transitions, hedges, thanks and apologies: "here",
  "however", "sure", "thank", "sorry", "please", "remember", "overall", ...): the lists below, written for
  alignkit, English only;
* ``content`` -- everything else (nouns, verbs, adjectives and the word pieces of longer words).

A word piece that continues a word (no leading space, e.g. ``"athers"``) is judged by its own letters, which
usually makes it ``content``; that errs on the side of calling fewer tokens stylistic.
"""

from __future__ import annotations

import re

CLASSES = ("markup", "function", "content")

FUNCTION_WORDS = frozenset("""
a an the this that these those some any each every no another other such
i me my mine myself you your yours yourself yourselves he him his himself she her hers herself it its itself
we us our ours ourselves they them their theirs themselves one ones
what which who whom whose when where why how whether
and or but nor so yet for because although though while if unless until since than as then also too either neither
of in on at to from by with without about above below over under into onto out up down off through during before
after between among against around across along behind beyond near toward towards upon within via per
is am are was were be been being do does did doing done have has had having will would shall should can could may
might must ought need let
not n't no yes
there here very just only even still really quite rather more most less least much many few lot lots all both
""".split())

DISCOURSE_WORDS = frozenset("""
however therefore thus hence moreover furthermore additionally besides meanwhile instead otherwise overall
finally firstly secondly lastly first second third next now well actually basically generally usually typically
certainly sure absolutely definitely indeed great good glad happy hope hi hello hey dear welcome
thank thanks sorry apologize apologise unfortunately please note remember important tip tips
summary short conclusion conclude example instance e.g. i.e. etc
okay ok alright oh ah
""".split())

_MARKUP = re.compile(r"^[\s*#\-•:.,;!?()\[\]{}\"'`_/|><=+~^%&@\\…–—“”‘’]*$")
_LIST_NUMBER = re.compile(r"^\d+[.)]$")
_WORD_START = "▁Ġ"  # SentencePiece and byte-level BPE marks for a leading space


def token_class(text: str) -> str:
    """``markup``, ``function`` or ``content`` for a token's text (see the module docstring)."""
    core = text.strip().strip(_WORD_START).strip()
    if not core or _MARKUP.match(core) or _LIST_NUMBER.match(core):
        return "markup"
    word = core.lower().strip(".,;:!?\"'()[]*`")
    if not word:
        return "markup"
    if word in FUNCTION_WORDS or word in DISCOURSE_WORDS:
        return "function"
    return "content"


def class_shares(tokens: list[str]) -> dict[str, float | int]:
    """Shares of each class among ``tokens`` (0 for every class when there are none), and their count."""
    n = len(tokens)
    counts = dict.fromkeys(CLASSES, 0)
    for t in tokens:
        counts[token_class(t)] += 1
    return {**{c: (counts[c] / n if n else 0.0) for c in CLASSES}, "positions": n}
