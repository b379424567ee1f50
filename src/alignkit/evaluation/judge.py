"""LLM judges: rubrics as data, any alignkit model as the judge, bounded retries, and a cache.

A judgment keeps the judge's raw answers; a score that cannot be read after the retries is recorded as
missing (None). Calls are cached by (judge spec, rubric hash, input), so re-running a report costs nothing.
Remote judges run with bounded concurrency (the openai backend's pool); local ones are batched.

Structured replies: a local judge (a backend that enforces constraints in alignkit's token loop: transformers,
llama.cpp) is held to the rubric's reply shape by a JSON schema (:meth:`Rubric.reply_constraint`) -- aspects in
the rubric's order, a reason of at most :data:`REASON_CHARS` characters, a score that can only be 1-5 (a verdict
only "A", "B" or "tie"), laid out exactly as the canonical shape the probability-weighted reading rewrites
(:mod:`alignkit.evaluation.weighted`) -- so a weak judge that would echo the prompt still gives a readable verdict.
A reply cut by the token limit is still incomplete JSON and counts as missing.

An API judge (OpenAI, a vLLM server, ``alignkit serve``) is sent the same schema as ``response_format:
json_schema`` -- first with the canonical layout (an ``x-guidance`` annotation that llguidance-based servers
honour), then, if the server refuses that, the plain schema (no layout, no reason length: what OpenAI's strict
mode takes), then a JSON object (``json_object``), then nothing (the prompt only); each step down is recorded in
the provenance with the server's reason. Weighted scores from an API judge are read from the log-probabilities
of its own reply (:func:`alignkit.evaluation.weighted.reply_weights`). ``structured=False`` asks in the prompt
only.
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
from alignkit.evaluation.parse import parse_labels, parse_pairwise, parse_scores
from alignkit.evaluation.weighted import Weigher, reply_weights
from alignkit.models.base import served_over_api
from alignkit.structured import Constraint
from alignkit.types import GenerationConfig, Message

_PLACEHOLDER = re.compile(r"\{([a-z_]+)\}")
#: the fields each kind of rubric is filled with
FIELDS = {"score": ("instruction", "answer"), "pairwise": ("instruction", "answer_a", "answer_b"),
          "label": ("instruction", "answer")}
RUBRICS = {"just-eval": "judge-just-eval.yaml", "just-eval-safety": "judge-just-eval-safety.yaml",
           "multi-aspect": "judge-multi-aspect.yaml", "safety": "judge-safety.yaml", "pairwise": "judge-pairwise.yaml",
           "overall": "judge-overall.yaml", "refusal": "judge-refusal.yaml", "curation": "judge-curation.yaml",
           # the skill-set pack (FLASK-style): all twelve skills, or one group of them
           **{name: f"judge-{name}.yaml" for name in ("skills", "skills-logic", "skills-background", "skills-problem",
                                                      "skills-user")}}
#: the longest reason a constrained judge may write (one sentence; it keeps a five-aspect verdict near 300 tokens --
#: weak judges otherwise repeat themselves up to any limit)
REASON_CHARS = 200
#: how the JSON of a constrained reply is laid out: the canonical shape of the rubrics and of the weighted reading
_LAYOUT = {"whitespace_flexible": False, "item_separator": ", ", "key_separator": ": "}
#: an API error that is about the response_format asked for (as OpenAI, vLLM and alignkit's server word it)
_FORMAT_REFUSED = re.compile(r"response_format|json_schema|json_object|schema|structured|guided", re.I)
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
    labels: tuple[str, ...] = ()
    """a ``label`` rubric's labels (its judge classifies: one label per aspect, never a score)"""

    @property
    def hash(self) -> str:
        payload = json.dumps([self.kind, self.aspects, self.system, self.user]
                             + ([list(self.labels)] if self.labels else []), ensure_ascii=False)
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
        elif self.kind == "label":
            props = {a: {"type": "object", "properties": {"reason": reason, "label": {"enum": list(self.labels)}},
                         "required": ["reason", "label"], "additionalProperties": False} for a in self.aspects}
        else:
            props = {a: {"type": "object", "properties": {"reason": reason,
                                                           "score": {"type": "integer", "enum": [1, 2, 3, 4, 5]}},
                         "required": ["reason", "score"], "additionalProperties": False} for a in self.aspects}
        schema = {"x-guidance": _LAYOUT, "type": "object", "properties": props, "required": list(props),
                  "additionalProperties": False}
        return Constraint.json_schema(schema)  # the aspects' order is part of the shape


def _answer(c: Any) -> tuple[str, Any]:
    """A judge's reply as ``(text, its per-token log-probabilities or None)``."""
    return c.text, (c.meta or {}).get("logprobs")


def response_formats(rubric: Rubric) -> list[tuple[str, dict[str, Any] | None]]:
    """What an API judge is asked for, best first: ``(name, response_format)`` -- the rubric's schema with its
    canonical layout, the plain schema, a JSON object, nothing."""
    if rubric.reply == "digit":
        return [("off", None)]
    schema = json.loads(rubric.reply_constraint().spec)
    name = re.sub(r"[^A-Za-z0-9_-]", "_", f"{rubric.id}_verdict")[:64]

    def plain(node: Any) -> Any:
        if isinstance(node, dict):
            return {k: plain(v) for k, v in node.items() if k not in ("x-guidance", "maxLength")}
        return node

    return [("json_schema", {"type": "json_schema", "json_schema": {"name": name, "strict": True, "schema": schema}}),
            ("json_schema_plain", {"type": "json_schema",
                                   "json_schema": {"name": name, "strict": True, "schema": plain(schema)}}),
            ("json_object", {"type": "json_object"}), ("off", None)]


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
                   user=str(d["user"]), version=int(d.get("version", 1)), reply=str(d.get("reply", "json")),
                   labels=tuple(str(x) for x in d.get("labels") or ()))
    except (yaml.YAMLError, KeyError, TypeError, ValueError) as e:
        raise InputError(f"rubric {name_or_path} is malformed (needs id, kind, aspects, system, user): {e}") from e
    if r.kind not in ("score", "pairwise", "label") or not r.aspects:
        raise InputError(f"rubric {name_or_path}: kind must be score, pairwise or label, with at least one aspect")
    if (r.kind == "label") != bool(r.labels) or len(set(r.labels)) != len(r.labels):
        raise InputError(f"rubric {name_or_path}: a label rubric needs a list of distinct labels, and only it has one")
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
    """JSONL cache of judge answers keyed by (judge, rubric hash, input); an API judge's entries also keep the
    weighted reading of each reply (read from its log-probabilities, which are not kept)."""

    def __init__(self, path: str | Path | None) -> None:
        self.path = Path(path) if path else None
        self.data: dict[str, list[str]] = {}
        self.reply_weights: dict[str, list[Any]] = {}
        if self.path and self.path.exists():
            for line in self.path.read_text(encoding="utf-8").splitlines():
                try:
                    rec = json.loads(line)
                    self.data[rec["key"]] = rec["raw"]
                    if "reply_weights" in rec:
                        self.reply_weights[rec["key"]] = rec["reply_weights"]
                except (json.JSONDecodeError, KeyError, TypeError):
                    continue

    @staticmethod
    def key(judge: str, rubric: Rubric, fields: dict[str, str]) -> str:
        payload = json.dumps([judge, rubric.hash, fields], ensure_ascii=False, sort_keys=True)
        return hashlib.sha256(payload.encode()).hexdigest()

    def get(self, key: str) -> list[str] | None:
        return self.data.get(key)

    def put(self, key: str, raw: list[str], reply_weights: list[Any] | None = None) -> None:
        self.data[key] = raw
        rec: dict[str, Any] = {"key": key, "raw": raw}
        if reply_weights is not None:
            self.reply_weights[key] = rec["reply_weights"] = reply_weights
        if self.path:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with self.path.open("a", encoding="utf-8") as f:
                f.write(json.dumps(rec, ensure_ascii=False) + "\n")


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
        if weighted and rubric.kind == "label":
            raise InputError(f"rubric {rubric.id!r} classifies (labels): it has no weighted scores")
        if weighted:
            self.weigher = Weigher(model, rubric, top_k=top_k)
        self.cache = cache or JudgeCache(None)
        self.batch_size = batch_size
        self.spec = getattr(model, "spec", str(model))

        caps = getattr(model, "capabilities", None)
        #: "schema" (the rubric's shape enforced token by token in alignkit's loop); for an API judge the
        #: response_format asked for -- "json_schema", "json_schema_plain", "json_object" (each dropped for the
        #: next when the server refuses it, see :func:`response_formats`) -- or "off"
        self.structured = "off"
        self.api = served_over_api(model)
        self._formats: list[tuple[str, dict[str, Any] | None]] = []
        #: each step down the API judge's response_format list: ``{"from", "to", "reason"}``
        self.fallbacks: list[dict[str, str]] = []
        if structured and self.api:
            self._formats = response_formats(rubric)
            self.structured = self._formats[0][0]
        elif structured and caps is not None and caps.constraints:
            self.structured = "schema"
        self.cfg = GenerationConfig(max_new_tokens=max_new_tokens,
                                    constraint=rubric.reply_constraint() if self.structured == "schema" else None)

    def provenance(self) -> dict[str, Any]:
        prov = {"judge": self.spec, "rubric": self.rubric.id, "rubric_hash": self.rubric.hash,
                "retries": self.retries, "structured": self.structured}
        if self.structured == "schema":
            prov["reason_chars"] = REASON_CHARS
        if self.fallbacks:
            prov["structured_fallbacks"] = list(self.fallbacks)
        if self.weigher is not None:
            prov["weighted"] = ({"top_k": self.weigher.top_k, "read_from": self.weigher.mode}
                                if self.weigher.unavailable is None else {"unavailable": self.weigher.unavailable})
        return prov

    def _parse(self, raw: str) -> dict[str, Any]:
        if self.rubric.kind == "pairwise":
            return parse_pairwise(raw, list(self.rubric.aspects))
        if self.rubric.kind == "label":
            return parse_labels(raw, list(self.rubric.aspects), list(self.rubric.labels))
        return parse_scores(raw, list(self.rubric.aspects))

    @staticmethod
    def _value(v: Any) -> Any:
        """An aspect's parsed value: the score or label of a dict entry, a pairwise verdict itself."""
        return v.get("score", v.get("label")) if isinstance(v, dict) else v

    @classmethod
    def _complete(cls, parsed: dict[str, Any]) -> bool:
        return all(cls._value(v) is not None for v in parsed.values())

    def judge(self, items: list[dict[str, str]]) -> list[dict[str, Any]]:
        """``items``: the rubric's fields (instruction, answer / answer_a, answer_b). Returns per item
        ``{"result": parsed, "raw": [answers...], "missing": [aspects], "cached": bool}``, and ``"weighted"``
        (per aspect) when the judge was asked for weighted scores and can give them."""
        # a reply held to the schema is another experiment than a free one: its own cache entries
        spec = self.spec + (f" [schema, reasons <= {REASON_CHARS}]" if self.structured == "schema" else "")
        keys = [JudgeCache.key(spec, self.rubric, it) for it in items]
        raws: list[list[str]] = [list(self.cache.get(k) or []) for k in keys]
        cached = [bool(r) for r in raws]
        from_reply = self.weigher is not None and self.weigher.mode == "reply" and self.weigher.unavailable is None
        reply_w: list[list[Any]] = [list(self.cache.reply_weights.get(k) or []) if cached[i] else []
                                    for i, k in enumerate(keys)]
        todo = [i for i, r in enumerate(raws) if not r]
        convs = {i: self.rubric.messages(**items[i]) for i in todo}
        for _ in range(self.retries + 1):
            if not todo:
                break
            for start in range(0, len(todo), self.batch_size):
                chunk = todo[start : start + self.batch_size]
                for i, (text, lps) in zip(chunk, self._ask([convs[i] for i in chunk], logprobs=from_reply)):
                    raws[i].append(text)
                    if from_reply:
                        reply_w[i].append(reply_weights(lps, self.rubric))
                    convs[i] = convs[i] + [Message("assistant", text), Message("user", RETRY_NOTE)]
            todo = [i for i in todo if not self._complete(self._parse(raws[i][-1]))]
        results = []
        for i, k in enumerate(keys):
            if not cached[i]:
                self.cache.put(k, raws[i], reply_w[i] if from_reply else None)
            parsed = self._best(raws[i])
            missing = [a for a, v in parsed.items() if self._value(v) is None]
            results.append({"result": parsed, "raw": raws[i], "missing": missing, "cached": cached[i]})
        if from_reply:
            for i, res in enumerate(results):
                res["weighted"] = self._best_weights(raws[i], reply_w[i])
        elif self.weigher is not None and self.weigher.unavailable is None:
            for start in range(0, len(items), self.batch_size):
                part = slice(start, start + self.batch_size)
                replies = [r["raw"][0] if r["raw"] else "" for r in results[part]]
                for res, w in zip(results[part], self.weigher.weigh(items[part], [r["result"] for r in results[part]],
                                                                    replies)):
                    res["weighted"] = w
        return results

    def _best_weights(self, raws: list[str], per_reply: list[Any]) -> dict[str, Any]:
        """An API judge's weighted reading per aspect, from the reply whose value :meth:`_best` took (the first
        readable one), else from the first reply that has the slot at all; ``{}`` when no reply came with
        log-probabilities."""
        out: dict[str, Any] = {}
        readable = [self._parse(r) for r in raws]
        for a in self.rubric.aspects:
            picked = None
            for parsed, w in zip(readable, per_reply):
                if w and self._value(parsed.get(a)) is not None:
                    picked = w[a]
                    break
            if picked is None:
                picked = next((w[a] for w in per_reply if w and w[a]["p"] is not None), None)
            if picked is not None:
                out[a] = picked
        if out and len(out) < len(self.rubric.aspects):  # an aspect no reply gave a slot for: no number
            empty = {"p": None, "mass": 0.0} if self.rubric.kind == "pairwise" else {"weighted": None, "p": None,
                                                                                      "mass": 0.0}
            out = {a: out.get(a, dict(empty)) for a in self.rubric.aspects}
        return out

    def _ask(self, convs: list[list[Message]], *, logprobs: bool = False) -> list[tuple[str, Any]]:
        """The judge's answers ``(text, per-token log-probabilities or None)``; a request the judge cannot take
        (too long, ...) becomes an error note, which parses as missing -- one bad item does not stop the run.
        An API judge steps down its response_format list when its server refuses one (recorded)."""
        extra: dict[str, Any] = {"top_logprobs": self.weigher.top_k} if logprobs and self.weigher else {}
        while self._formats and self._formats[0][1] is not None:
            name, fmt = self._formats[0]
            try:
                comps = self.model.generate(convs, self.cfg, response_format=fmt, **extra)
                return self._note_logprobs([_answer(c) for c in comps], logprobs)
            except CapabilityError:
                raise
            except AlignkitError as e:
                if not _FORMAT_REFUSED.search(str(e)):
                    break  # not about the format (a request too long, ...): each item on its own below
                self._formats.pop(0)  # this server does not take this response_format: the next one
                nxt = self._formats[0][0]
                self.fallbacks.append({"from": name, "to": nxt, "reason": str(e)[:300]})
                self.structured = nxt
        if self._formats and self._formats[0][1] is not None:
            extra["response_format"] = self._formats[0][1]
        try:
            comps = self.model.generate(convs, self.cfg, **extra)
            return self._note_logprobs([_answer(c) for c in comps], logprobs)
        except CapabilityError:
            raise  # the judge cannot do what was asked of it at all: not one item's problem
        except AlignkitError:
            out: list[tuple[str, Any]] = []
            for conv in convs:
                try:
                    out.append(_answer(self.model.generate([conv], self.cfg, **extra)[0]))
                except CapabilityError:
                    raise
                except AlignkitError as e:
                    out.append((f"[judge error: {e}]", None))
            return self._note_logprobs(out, logprobs)

    def _note_logprobs(self, answers: list[tuple[str, Any]], asked: bool) -> list[tuple[str, Any]]:
        """An API judge asked for log-probabilities whose server sent none: weighted scores are unavailable."""
        if asked and self.weigher is not None and answers and all(lps is None for _, lps in answers):
            self.weigher.unavailable = (f"judge {self.spec!r}: its server sent no log-probabilities with the chat "
                                        "replies (asked for logprobs with top_logprobs)")
        return answers

    def _best(self, raws: list[str]) -> dict[str, Any]:
        """Per aspect, the first attempt that gave a readable value (never a made-up one)."""
        best = self._parse(raws[0] if raws else "")
        for raw in raws[1:]:
            more = self._parse(raw)
            for a, v in more.items():
                if self._value(best[a]) is None and self._value(v) is not None:
                    best[a] = v
        return best
