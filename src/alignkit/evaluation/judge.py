"""LLM judges: rubrics as data, any alignkit model as the judge, bounded retries, and a cache.

A judgment keeps the judge's raw answers; a score that cannot be read after the retries is recorded as
missing (None). Calls are cached by (judge spec, rubric hash, input), so re-running a report costs nothing.
Remote judges run with bounded concurrency (the openai backend's pool); local ones are batched.

Structured replies: a local judge (a backend that enforces constraints in alignkit's token loop: transformers,
llama.cpp) is held to the rubric's reply shape by a JSON schema (:meth:`Rubric.reply_constraint`) -- aspects in
the rubric's order, a reason of at most :data:`REASON_CHARS` characters, a score that can only be 1-5 (a verdict
only "A", "B" or "tie"), laid out exactly as the canonical shape the probability-weighted reading rewrites
(:mod:`alignkit.evaluation.weighted`) -- so a weak judge that would echo the prompt still gives a readable verdict.
A reply cut by the token limit is still incomplete JSON and counts as missing. An API judge is asked for a JSON
object (``response_format``) instead; ``structured=False`` asks in the prompt only.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from alignkit.errors import AlignkitError, CapabilityError, InputError
from alignkit.evaluation.parse import parse_pairwise, parse_scores
from alignkit.evaluation.weighted import Weigher
from alignkit.models.base import served_over_api
from alignkit.structured import Constraint
from alignkit.types import GenerationConfig, Message

_PLACEHOLDER = re.compile(r"\{([a-z_]+)\}")
#: the fields each kind of rubric is filled with
FIELDS = {"score": ("instruction", "answer"), "pairwise": ("instruction", "answer_a", "answer_b")}
RUBRICS = {"just-eval": "judge-just-eval.yaml", "just-eval-safety": "judge-just-eval-safety.yaml",
           "multi-aspect": "judge-multi-aspect.yaml", "safety": "judge-safety.yaml", "pairwise": "judge-pairwise.yaml",
           "overall": "judge-overall.yaml"}
#: the longest reason a constrained judge may write (one sentence; it keeps a five-aspect verdict near 300 tokens --
#: weak judges otherwise repeat themselves up to any limit)
REASON_CHARS = 200
#: how the JSON of a constrained reply is laid out: the canonical shape of the rubrics and of the weighted reading
_LAYOUT = {"whitespace_flexible": False, "item_separator": ", ", "key_separator": ": "}
RETRY_NOTE = ("Your previous reply could not be read. Reply again with only the JSON object, in exactly the "
              "shape asked for, scores as whole numbers from 1 to 5.")


@dataclass(frozen=True)
class Rubric:
    id: str
    kind: str
    aspects: tuple[str, ...]
    system: str
    user: str
    version: int = 1
    reply: str = "json"
    """the reply's form: ``json`` (the object the user template shows) or ``digit`` (one digit 1-5, one aspect)"""

    @property
    def hash(self) -> str:
        payload = json.dumps([self.kind, self.aspects, self.system, self.user], ensure_ascii=False)
        return hashlib.sha256(payload.encode()).hexdigest()[:16]

    @property
    def placeholders(self) -> tuple[str, ...]:
        """The ``{name}`` fields of the user template, in order of first appearance."""
        return tuple(dict.fromkeys(_PLACEHOLDER.findall(self.user)))

    def messages(self, **fields: str) -> list[Message]:
        """The judge's conversation with ``fields`` filled in. One pass over the template: a field's value is
        never scanned again, so an instruction or answer that contains ``{answer}`` (or any other
        placeholder) stays as written."""
        missing = [k for k in self.placeholders if k not in fields]
        if missing:
            raise ValueError(f"rubric {self.id!r} needs field(s) {', '.join(missing)}")
        user = _PLACEHOLDER.sub(lambda m: str(fields[m.group(1)]), self.user)
        return [Message("system", self.system), Message("user", user)]

    def reply_constraint(self) -> Any:
        """The :class:`~alignkit.structured.Constraint` a reply in this rubric's shape meets (see the module doc):
        score rubrics ``{"aspect": {"reason": "...", "score": 1-5}, ...}``, pairwise ``{"aspect": "A"|"B"|"tie",
        ..., "reason": "..."}``, digit rubrics one digit."""
        if self.reply == "digit":
            return Constraint("regex", "[1-5]")
        reason = {"type": "string", "maxLength": REASON_CHARS}
        if self.kind == "pairwise":
            props: dict[str, Any] = {a: {"enum": ["A", "B", "tie"]} for a in self.aspects}
            props["reason"] = reason
        else:
            props = {a: {"type": "object", "properties": {"reason": reason,
                                                           "score": {"type": "integer", "enum": [1, 2, 3, 4, 5]}},
                         "required": ["reason", "score"], "additionalProperties": False} for a in self.aspects}
        schema = {"x-guidance": _LAYOUT, "type": "object", "properties": props, "required": list(props),
                  "additionalProperties": False}
        # not Constraint.json_schema: it sorts keys, and the aspects' order is part of the shape
        return Constraint("json_schema", json.dumps(schema))


def load_rubric(name_or_path: str) -> Rubric:
    if name_or_path in RUBRICS:
        text = (resources.files("alignkit") / "prompts" / "eval" / RUBRICS[name_or_path]).read_text(encoding="utf-8")
    elif Path(name_or_path).is_file():
        text = Path(name_or_path).read_text(encoding="utf-8")
    else:
        raise InputError(f"no rubric {name_or_path!r}: not one of {', '.join(RUBRICS)} and not a file")
    try:
        d = yaml.safe_load(text)
        r = Rubric(id=str(d["id"]), kind=str(d["kind"]), aspects=tuple(d["aspects"]), system=str(d["system"]),
                   user=str(d["user"]), version=int(d.get("version", 1)), reply=str(d.get("reply", "json")))
    except (yaml.YAMLError, KeyError, TypeError, ValueError) as e:
        raise InputError(f"rubric {name_or_path} is malformed (needs id, kind, aspects, system, user): {e}") from e
    if r.kind not in ("score", "pairwise") or not r.aspects:
        raise InputError(f"rubric {name_or_path}: kind must be score or pairwise, with at least one aspect")
    if r.reply not in ("json", "digit") or (r.reply == "digit" and (r.kind != "score" or len(r.aspects) != 1)):
        raise InputError(f"rubric {name_or_path}: reply must be json, or digit for a score rubric of one aspect; "
                         f"got {r.reply!r}")
    unknown = [k for k in r.placeholders if k not in FIELDS[r.kind]]
    absent = [k for k in FIELDS[r.kind] if k not in r.placeholders]
    if unknown or absent:
        raise InputError(f"rubric {name_or_path}: a {r.kind} rubric's user template must contain "
                         f"{', '.join('{' + k + '}' for k in FIELDS[r.kind])} and no other placeholder"
                         + (f"; unknown: {', '.join(unknown)}" if unknown else "")
                         + (f"; missing: {', '.join(absent)}" if absent else ""))
    return r


class JudgeCache:
    """JSONL cache of judge answers keyed by (judge, rubric hash, input)."""

    def __init__(self, path: str | Path | None) -> None:
        self.path = Path(path) if path else None
        self.data: dict[str, list[str]] = {}
        if self.path and self.path.exists():
            for line in self.path.read_text(encoding="utf-8").splitlines():
                try:
                    rec = json.loads(line)
                    self.data[rec["key"]] = rec["raw"]
                except (json.JSONDecodeError, KeyError, TypeError):
                    continue

    @staticmethod
    def key(judge: str, rubric: Rubric, fields: dict[str, str]) -> str:
        payload = json.dumps([judge, rubric.hash, fields], ensure_ascii=False, sort_keys=True)
        return hashlib.sha256(payload.encode()).hexdigest()

    def get(self, key: str) -> list[str] | None:
        return self.data.get(key)

    def put(self, key: str, raw: list[str]) -> None:
        self.data[key] = raw
        if self.path:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with self.path.open("a", encoding="utf-8") as f:
                f.write(json.dumps({"key": key, "raw": raw}, ensure_ascii=False) + "\n")


class Judge:
    """Scores answers (or compares two) with a judge model and a rubric."""

    def __init__(self, model: Any, rubric: Rubric, *, retries: int = 2, max_new_tokens: int = 400,
                 cache: JudgeCache | None = None, batch_size: int = 8, weighted: bool = False,
                 top_k: int = 20, structured: bool = True) -> None:
        """``weighted``: also read probability-weighted scores (G-Eval; :mod:`alignkit.evaluation.weighted`) where
        the judge gives token log-probabilities. ``structured``: hold the reply to the rubric's shape where the
        judge can (see the module doc)."""
        self.model, self.rubric, self.retries = model, rubric, retries
        self.weigher = None
        if weighted:

            self.weigher = Weigher(model, rubric, top_k=top_k)
        self.cache = cache or JudgeCache(None)
        self.batch_size = batch_size
        self.spec = getattr(model, "spec", str(model))

        caps = getattr(model, "capabilities", None)
        #: "schema" (the rubric's shape enforced token by token), "json_object" (asked of an API judge; dropped
        #: if its server refuses it) or "off"
        self.structured = "off"
        if structured and served_over_api(model):
            self.structured = "json_object"
        elif structured and caps is not None and caps.constraints:
            self.structured = "schema"
        self.cfg = GenerationConfig(max_new_tokens=max_new_tokens,
                                    constraint=rubric.reply_constraint() if self.structured == "schema" else None)

    def provenance(self) -> dict[str, Any]:
        prov = {"judge": self.spec, "rubric": self.rubric.id, "rubric_hash": self.rubric.hash,
                "retries": self.retries, "structured": self.structured}
        if self.structured == "schema":
            prov["reason_chars"] = REASON_CHARS
        if self.weigher is not None:
            prov["weighted"] = ({"top_k": self.weigher.top_k} if self.weigher.unavailable is None
                                else {"unavailable": self.weigher.unavailable})
        return prov

    def _parse(self, raw: str) -> dict[str, Any]:
        if self.rubric.kind == "pairwise":
            return parse_pairwise(raw, list(self.rubric.aspects))
        return parse_scores(raw, list(self.rubric.aspects))

    @staticmethod
    def _complete(parsed: dict[str, Any]) -> bool:
        return all((v["score"] if isinstance(v, dict) else v) is not None for v in parsed.values())

    def judge(self, items: list[dict[str, str]]) -> list[dict[str, Any]]:
        """``items``: the rubric's fields (instruction, answer / answer_a, answer_b). Returns per item
        ``{"result": parsed, "raw": [answers...], "missing": [aspects], "cached": bool}``, and ``"weighted"``
        (per aspect) when the judge was asked for weighted scores and can give them."""
        # a reply held to the schema is another experiment than a free one: its own cache entries
        spec = self.spec + (f" [schema, reasons <= {REASON_CHARS}]" if self.structured == "schema" else "")
        keys = [JudgeCache.key(spec, self.rubric, it) for it in items]
        raws: list[list[str]] = [list(self.cache.get(k) or []) for k in keys]
        cached = [bool(r) for r in raws]
        todo = [i for i, r in enumerate(raws) if not r]
        convs = {i: self.rubric.messages(**items[i]) for i in todo}
        for _ in range(self.retries + 1):
            if not todo:
                break
            for start in range(0, len(todo), self.batch_size):
                chunk = todo[start : start + self.batch_size]
                for i, text in zip(chunk, self._ask([convs[i] for i in chunk])):
                    raws[i].append(text)
                    convs[i] = convs[i] + [Message("assistant", text), Message("user", RETRY_NOTE)]
            todo = [i for i in todo if not self._complete(self._parse(raws[i][-1]))]
        results = []
        for i, k in enumerate(keys):
            if not cached[i]:
                self.cache.put(k, raws[i])
            parsed = self._best(raws[i])
            missing = [a for a, v in parsed.items() if (v["score"] if isinstance(v, dict) else v) is None]
            results.append({"result": parsed, "raw": raws[i], "missing": missing, "cached": cached[i]})
        if self.weigher is not None and self.weigher.unavailable is None:
            for start in range(0, len(items), self.batch_size):
                part = slice(start, start + self.batch_size)
                for res, w in zip(results[part], self.weigher.weigh(items[part], [r["result"] for r in results[part]])):
                    res["weighted"] = w
        return results

    def _ask(self, convs: list[list[Message]]) -> list[str]:
        """The judge's answers; a request the judge cannot take (too long, ...) becomes an error note, which
        parses as missing -- one bad item does not stop the run."""
        if self.structured == "json_object":
            try:
                return [c.text for c in self.model.generate(convs, self.cfg, response_format={"type": "json_object"})]
            except AlignkitError:
                self.structured = "off"  # this server does not take response_format: ask in the prompt only
        try:
            return [c.text for c in self.model.generate(convs, self.cfg)]
        except CapabilityError:
            raise  # the judge cannot do what was asked of it at all: not one item's problem
        except AlignkitError:
            out = []
            for conv in convs:
                try:
                    out.append(self.model.generate([conv], self.cfg)[0].text)
                except CapabilityError:
                    raise
                except AlignkitError as e:
                    out.append(f"[judge error: {e}]")
            return out

    def _best(self, raws: list[str]) -> dict[str, Any]:
        """Per aspect, the first attempt that gave a readable value (never a made-up one)."""
        best = self._parse(raws[0] if raws else "")
        for raw in raws[1:]:
            more = self._parse(raw)
            for a, v in more.items():
                got = best[a]["score"] if isinstance(best[a], dict) else best[a]
                new = v["score"] if isinstance(v, dict) else v
                if got is None and new is not None:
                    best[a] = v
        return best
