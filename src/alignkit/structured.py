"""Structured output: a constraint on what a completion may say -- a JSON schema, any JSON object, a regular
expression, one of several choices, or a Lark grammar -- enforced token by token in alignkit's own token loop
with llguidance (a well-kept structured-generation library), so it works for every local model -- the transformers
and llama.cpp backends -- and every method built on them (in-context alignment, DeRa, best-of-N, routes).

At each step the constraint's matcher gives the set of tokens that keep the output valid; every other token's
logit is set to -inf before the usual sampling (temperature, top-p/top-k, the repetition penalty). The
end-of-sequence token is allowed only where the output is complete, and generation stops when the grammar
cannot continue. A completion that reaches ``max_new_tokens`` first is cut (``finish_reason == "length"``) and
may be incomplete, as in vLLM.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

from alignkit.errors import InputError

KINDS = ("json_schema", "json_object", "regex", "choice", "lark")


@dataclass(frozen=True)
class Constraint:
    """What a completion must match. ``spec``: the JSON schema (as JSON text), the regex, the choices (a JSON list)
    or the Lark grammar; empty for ``json_object``."""

    kind: str
    spec: str = ""

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise InputError(f"unknown constraint {self.kind!r}; choose one of {', '.join(KINDS)}")

    @classmethod
    def json_schema(cls, schema: dict[str, Any]) -> Constraint:
        """The schema as given: its properties are generated in the order they are listed (as OpenAI's structured
        outputs do), so a judge's aspects come out in its rubric's order."""
        if not isinstance(schema, dict):
            raise InputError("a JSON schema must be an object")
        return cls("json_schema", json.dumps(schema))

    @classmethod
    def choice(cls, options: list[str]) -> Constraint:
        if not options or not all(isinstance(o, str) and o for o in options):
            raise InputError("choices must be a non-empty list of non-empty strings")
        return cls("choice", json.dumps(list(options)))

    def grammar(self) -> str:
        """The llguidance grammar of this constraint (checked: a bad schema or regex is an InputError)."""
        from llguidance import LLMatcher

        compact = {"whitespace_flexible": False}  # JSON without free whitespace: a model cannot pad it forever
        if self.kind == "json_schema":
            g = LLMatcher.grammar_from_json_schema(json.loads(self.spec), defaults=compact)
        elif self.kind == "json_object":
            g = LLMatcher.grammar_from_json_schema({"type": "object"}, defaults=compact)
        elif self.kind == "regex":
            g = LLMatcher.grammar_from_regex(self.spec)
        elif self.kind == "choice":
            g = LLMatcher.grammar_from_regex("|".join(re.escape(o) for o in json.loads(self.spec)))
        else:
            g = LLMatcher.grammar_from_lark(self.spec)
        message = LLMatcher.validate_grammar(g)  # empty when valid, else what is wrong
        if message:
            raise InputError(f"invalid {self.kind.replace('_', ' ')} constraint: {message.strip().splitlines()[0]}")
        return g

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "spec": self.spec}


_TOKENIZERS: dict[int, Any] = {}


def ll_tokenizer(hf_tokenizer: Any, vocab_size: int) -> Any:
    """llguidance's view of a transformers tokenizer (built once per tokenizer: for a 262k vocabulary it takes a
    moment)."""
    key = id(hf_tokenizer)
    if key not in _TOKENIZERS:
        import llguidance.hf

        try:
            _TOKENIZERS[key] = llguidance.hf.from_tokenizer(hf_tokenizer, n_vocab=vocab_size)
        except Exception as e:  # noqa: BLE001 -- llguidance reports unsupported tokenizers in several ways
            raise InputError(f"structured output: llguidance cannot read this tokenizer ({e})") from e
    return _TOKENIZERS[key]


class Guide:
    """One row's constraint state: masks the next-token logits and follows the chosen tokens."""

    def __init__(self, constraint: Constraint, lltok: Any, vocab_size: int) -> None:
        import llguidance
        import llguidance.torch as lt

        self.matcher = llguidance.LLMatcher(lltok, constraint.grammar())
        if self.matcher.is_error():
            raise InputError(f"structured output: {self.matcher.get_error()}")
        self._lt = lt
        self.bitmask = lt.allocate_token_bitmask(1, vocab_size)
        self.vocab_size = vocab_size

    def mask(self, logits: Any) -> Any:
        """``logits`` ([V]) with every token that would break the constraint at -inf."""
        self._lt.fill_next_token_bitmask(self.matcher, self.bitmask, 0)
        out = logits.unsqueeze(0).clone()
        self._lt.apply_token_bitmask_inplace(out[:, : self.vocab_size], self.bitmask)
        if out.shape[-1] > self.vocab_size:
            out[:, self.vocab_size :] = float("-inf")
        return out[0]

    def accept(self, token: int) -> None:
        if not self.matcher.consume_token(token):
            raise RuntimeError(f"structured output: token {token} broke the constraint ({self.matcher.get_error()})")

    @property
    def done(self) -> bool:
        """The grammar cannot continue (the output is complete)."""
        return bool(self.matcher.is_stopped())


def from_request(body: dict[str, Any]) -> Constraint | None:
    """The constraint of an OpenAI-style request: ``response_format`` ({"type": "json_object"} or {"type":
    "json_schema", "json_schema": {"schema": ...}}) or vLLM's ``guided_json`` / ``guided_regex`` /
    ``guided_choice`` / ``guided_grammar`` (Lark). At most one."""
    found = []
    rf = body.get("response_format")
    if rf not in (None, {}):
        if not isinstance(rf, dict) or rf.get("type") not in ("text", "json_object", "json_schema"):
            raise InputError("response_format must be {\"type\": \"text\" | \"json_object\" | \"json_schema\"}")
        if rf["type"] == "json_object":
            found.append(Constraint("json_object"))
        elif rf["type"] == "json_schema":
            js = rf.get("json_schema")
            schema = js.get("schema") if isinstance(js, dict) else None
            if not isinstance(schema, dict):
                raise InputError("response_format json_schema needs json_schema.schema (an object)")
            found.append(Constraint.json_schema(schema))
    if body.get("guided_json") is not None:
        g = body["guided_json"]
        if isinstance(g, str):
            try:
                g = json.loads(g)
            except json.JSONDecodeError as e:
                raise InputError(f"guided_json is not valid JSON: {e}") from None
        found.append(Constraint.json_schema(g))
    if body.get("guided_regex") is not None:
        if not isinstance(body["guided_regex"], str) or not body["guided_regex"]:
            raise InputError("guided_regex must be a non-empty string")
        found.append(Constraint("regex", body["guided_regex"]))
    if body.get("guided_choice") is not None:
        found.append(Constraint.choice(body["guided_choice"]))
    if body.get("guided_grammar") is not None:
        if not isinstance(body["guided_grammar"], str) or not body["guided_grammar"]:
            raise InputError("guided_grammar must be a non-empty Lark grammar")
        found.append(Constraint("lark", body["guided_grammar"]))
    if len(found) > 1:
        raise InputError("give one of response_format, guided_json, guided_regex, guided_choice, guided_grammar")
    if found:
        found[0].grammar()  # a bad schema or regex is a 400 now, not an error mid-generation
    return found[0] if found else None
