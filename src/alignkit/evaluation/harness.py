"""The evaluation harness: contestants (any model + method) answer one instruction set; one judge scores them
all on one footing; a report compares them. Every step appends to JSONL and resumes by id."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from alignkit.errors import InputError
from alignkit.evaluation.cheap import answer_metrics
from alignkit.evaluation.data import apply_tags, load_instructions, load_tags
from alignkit.evaluation.debate import DebateJudge
from alignkit.evaluation.judge import Judge, JudgeCache, load_rubric
from alignkit.evaluation.report import build_report
from alignkit.evaluation.weighted import preference
from alignkit.io import JsonlAppender
from alignkit.methods import MethodOptions, apply_method, recommended_repetition_penalty
from alignkit.methods.tree import build, parse
from alignkit.progress import SILENT, Progress
from alignkit.resumable import generate_into, provenance_of
from alignkit.sharding import Shard, ShardJob
from alignkit.types import GenerationConfig
from alignkit.validate import check_mapping


@dataclass(frozen=True)
class Contestant:
    name: str
    model: str = ""
    """the model spec (with the method options below); or give ``route`` instead"""
    route: Any = None
    """a route tree (its YAML form, a :class:`~alignkit.methods.tree.Node` or a loaded model) instead of ``model``
    and the method options"""
    method: str = "auto"
    template: str | None = None
    k: int | None = field(default=None, metadata={"min": 0})
    select: str = field(default="fixed", metadata={"choices": ["fixed", "similar", "similar-any"]})
    """in-context examples: the template's, or chosen per instruction (see ``--select``)"""
    repetition_penalty: float | None = field(default=None, metadata={"gt": 0})
    """none: the method's recommendation (1.15 under in-context alignment, else off)"""
    repetition_penalty_scope: str = field(default="answer", metadata={"choices": ["answer", "all"]})
    """what the penalty counts: the answer's tokens, or the prompt's too (the URIAL paper's setting)"""
    ref: str | None = None
    lam: float | None = field(default=None, metadata={"min": 0})
    # route stages around the model (see alignkit.methods.routes)
    rewriter: str | None = None
    rewriter_method: str | None = None
    rewriter_layout: str | None = None
    corrector: str | None = None
    corrector_method: str | None = None
    corrector_layout: str | None = None
    # best-of-n: sample n answers, keep the one the scorer rates highest
    scorer: str | None = None
    n: int = field(default=4, metadata={"min": 1})
    sample_temperature: float = field(default=0.8, metadata={"gt": 0})
    stop: tuple[str, ...] = ()
    """extra stop strings for this contestant's answers"""

    @classmethod
    def from_dict(cls, d: Any) -> Contestant:
        if not isinstance(d, dict) or "name" not in d or ("model" in d) == ("route" in d):
            raise InputError(f"a contestant needs a name and either a model or a route, got {d!r:.100}")
        if "route" in d:
            others = sorted(set(d) - {"name", "route", "repetition_penalty", "repetition_penalty_scope", "stop"})
            if others:
                raise InputError(f"contestant {d['name']!r}: a route says how the model is prompted; {', '.join(others)} "
                                 "belong in the route tree")
            d = {**d, "route": parse(d["route"], where=f"contestant {d['name']!r}")}
            checked = check_mapping(cls, {k: v for k, v in d.items() if k != "route"}, what=f"contestant {d['name']!r}")
            return cls(**checked, route=d["route"])
        return cls(**check_mapping(cls, d, what=f"contestant {d['name']!r}"))

    def provenance(self) -> dict[str, Any]:
        """The contestant as the report records it (a route as its tree)."""
        d = dict(self.__dict__)
        r = d.pop("route")
        if r is not None:
            d["route"] = r.to_dict() if hasattr(r, "to_dict") else r if isinstance(r, str) else getattr(r, "spec", str(r))
        return d


@dataclass(frozen=True)
class EvalConfig:
    contestants: tuple[Contestant, ...]
    judge: str | None = None
    """the judge's model spec; none (or no key) runs the judge-free metrics only"""
    judge_method: str = "auto"
    instructions: str = "alignkit-eval"
    limit: int | None = field(default=None, metadata={"min": 1})
    types: tuple[str, ...] = ()
    max_new_tokens: int = field(default=256, metadata={"min": 1})
    judge_max_new_tokens: int = field(default=400, metadata={"min": 1})
    retries: int = field(default=2, metadata={"min": 0})
    batch_size: int = field(default=8, metadata={"min": 1})
    pairwise_baseline: str | None = None
    rubric: str = "just-eval"
    """the rubric for ordinary instructions (``multi-aspect``: alignkit's own anchors), a name or a YAML file"""
    safety_rubric: str = "just-eval-safety"
    """the rubric for safety prompts (``safety``: alignkit's, which also counts needless refusals against)"""
    pairwise_rubric: str = "pairwise"
    weighted: bool = True
    """also read probability-weighted scores (G-Eval) where the judge gives token log-probabilities"""
    judge_top_k: int = field(default=20, metadata={"min": 2})
    debate_personas: int = field(default=0, metadata={"min": 0, "max": 5})
    """2-5: the judge model debates as that many personas for ``debate_rounds`` rounds before each gives a verdict,
    combined (:mod:`alignkit.evaluation.debate`); 0: one judge"""
    debate_rounds: int = field(default=2, metadata={"min": 1})
    judge_structured: bool = True
    """hold a local judge's reply to the rubric's shape (a JSON schema enforced token by token: scores can only be
    1-5); an API judge is asked for a JSON object. False: the shape is asked for in the prompt only"""
    tags: str | None = None
    """a just-eval tags file (``id`` with ``task_types``/``topics`` lists, or one boolean field per tag) whose
    tags replace each instruction's type/topic in the per-tag breakdowns"""
    output: str = "runs/eval"
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, d: dict[str, Any], contestants: tuple[Contestant, ...] = ()) -> EvalConfig:
        """The config of a YAML mapping; ``contestants`` built in Python (:func:`alignkit.evaluate`) join the
        mapping's own."""
        if not (d.get("contestants") or contestants) or "judge" not in d:
            raise InputError("an eval config needs 'contestants' (a list) and a 'judge' model spec (or judge: none "
                             "for the judge-free metrics only)")
        if d.get("judge") in (None, "none") and d.get("pairwise_baseline"):
            raise InputError("pairwise_baseline needs a judge")
        if not isinstance(d.get("contestants", []), list):
            raise InputError("eval config: key 'contestants' must be a list of {name, model, ...}")
        cs = tuple(Contestant.from_dict(c) for c in d.get("contestants", [])) + tuple(contestants)
        rest = {k: v for k, v in d.items() if k != "contestants"}
        if "extra" in rest:
            raise InputError("unknown key(s) in eval config: extra")
        if rest.get("types") is None:
            rest.pop("types", None)
        checked = check_mapping(cls, rest, what="eval config")
        names = [c.name for c in cs]
        if len(set(names)) != len(names):
            raise InputError("contestant names must be unique")
        if d.get("pairwise_baseline") and d["pairwise_baseline"] not in names:
            raise InputError(f"pairwise_baseline {d['pairwise_baseline']!r} is not a contestant")
        return cls(**{**checked, "contestants": cs})


def _done(path: Path) -> dict[str, dict[str, Any]]:
    out = {}
    if path.exists():
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                rec = json.loads(line)
                out[str(rec["id"])] = rec
            except (json.JSONDecodeError, KeyError, TypeError):
                continue
    return out


def _same_judge(done: dict[str, dict[str, Any]], wanted) -> dict[str, dict[str, Any]]:
    """The records of ``done`` that this run's judge would give: ``wanted(record)`` is the provenance this run's
    judge writes for such a record (None: no judge for it) -- same judge, rubric, retries, structured replies and
    weighting. Others -- a run resumed with another judge or rubric -- are judged again (their answers come from
    the judge cache where they were asked the same), never mixed into this report."""
    return {key: rec for key, rec in done.items()
            if rec.get("provenance") is not None and rec.get("provenance") == wanted(rec)}


def _as_written(provenance: dict[str, Any]) -> dict[str, Any]:
    """``provenance`` as it reads back from a JSONL record (tuples become lists)."""
    return json.loads(json.dumps(provenance))


class Harness:
    def __init__(self, cfg: EvalConfig, loader, progress=print, tracker: Progress = SILENT, *,
                 only: set[str] | None = None, output: str | None = None) -> None:
        """``progress(message)`` gets a line per finished batch; ``tracker`` draws bars (see
        :mod:`alignkit.progress`). ``only``: the instruction ids to do (one shard of the job), written under
        ``output`` (the shard's folder) and with no report: the report is built from the merged shards."""
        self.cfg, self.loader, self.say, self.tracker = cfg, loader, progress, tracker
        self.out = Path(output or cfg.output)
        self.only = only

    def _model(self, c: Contestant) -> Any:
        if c.route is not None:
            return build(c.route, self.loader)
        opts = MethodOptions(method=c.method, template=c.template, k=c.k, select=c.select, ref=c.ref, lam=c.lam,
                             rewriter=c.rewriter,
                             rewriter_method=c.rewriter_method, rewriter_layout=c.rewriter_layout,
                             corrector=c.corrector, corrector_method=c.corrector_method,
                             corrector_layout=c.corrector_layout, scorer=c.scorer, n=c.n,
                             sample_temperature=c.sample_temperature)
        return apply_method(self.loader(c.model), opts, self.loader)

    def run(self) -> dict[str, Any]:
        items = self.items()
        answers = {c.name: self._generate(c, items) for c in self.cfg.contestants}
        if self.only is not None and self.cfg.judge in (None, "none"):
            return {}
        if self.cfg.judge in (None, "none"):  # judge-free: the answers' own metrics only

            prov = {"judge": None, "rubrics": {}, "instructions": self.cfg.instructions,
                    "contestants": [c.provenance() for c in self.cfg.contestants]}
            return build_report(items, {c.name: {} for c in self.cfg.contestants}, {}, prov, self.out)
        judge_model = apply_method(self.loader(self.cfg.judge), MethodOptions(method=self.cfg.judge_method),
                                   self.loader)
        cache = JudgeCache(self.out / "judge-cache.jsonl")
        rubrics = {"multi-aspect": self.cfg.rubric, "safety": self.cfg.safety_rubric,
                   "pairwise": self.cfg.pairwise_rubric}
        if self.cfg.debate_personas == 1:
            raise InputError("debate_personas: a debate needs 2 to 5 personas (0: one judge)")
        if self.cfg.debate_personas:
            judges = {kind: DebateJudge(judge_model, load_rubric(name), personas=self.cfg.debate_personas,
                                        rounds=self.cfg.debate_rounds, retries=self.cfg.retries, cache=cache,
                                        max_new_tokens=self.cfg.judge_max_new_tokens, batch_size=self.cfg.batch_size,
                                        structured=self.cfg.judge_structured)
                      for kind, name in rubrics.items()}
        else:
            judges = {kind: Judge(judge_model, load_rubric(name), retries=self.cfg.retries, cache=cache,
                                  max_new_tokens=self.cfg.judge_max_new_tokens, batch_size=self.cfg.batch_size,
                                  weighted=self.cfg.weighted, top_k=self.cfg.judge_top_k,
                                  structured=self.cfg.judge_structured)
                      for kind, name in rubrics.items()}
        for kind, j in judges.items():
            if kind != "pairwise" and j.rubric.kind != "score":
                raise InputError(f"the {kind} rubric must be a score rubric, got {j.rubric.id!r} ({j.rubric.kind})")
        if judges["pairwise"].rubric.kind != "pairwise":
            raise InputError(f"pairwise_rubric must be a pairwise rubric, got {judges['pairwise'].rubric.id!r}")
        judged = {c.name: self._judge(c.name, items, answers[c.name], judges) for c in self.cfg.contestants}
        pairwise = {}
        if self.cfg.pairwise_baseline:
            base = self.cfg.pairwise_baseline
            for c in self.cfg.contestants:
                if c.name != base:
                    pairwise[c.name] = self._pairwise(c.name, base, items, answers, judges["pairwise"])
        if self.only is not None:
            return {}

        prov = {"judge": judges["multi-aspect"].provenance(),
                "rubrics": {k: {"id": j.rubric.id, "hash": j.rubric.hash} for k, j in judges.items()},
                "instructions": self.cfg.instructions, "contestants": [c.provenance() for c in self.cfg.contestants],
                **({"pairwise_baseline": self.cfg.pairwise_baseline} if pairwise else {})}
        return build_report(items, judged, pairwise, prov, self.out)

    def items(self) -> list[dict[str, Any]]:
        """The instructions this run does (all of them, or one shard's)."""
        items = load_instructions(self.cfg.instructions, limit=self.cfg.limit, types=list(self.cfg.types) or None)
        if self.cfg.tags:
            items = apply_tags(items, load_tags(self.cfg.tags))
        return items if self.only is None else [it for it in items if str(it["id"]) in self.only]

    def files(self) -> dict[str, dict[str, Any]]:
        """Every file a run writes, keyed for :mod:`alignkit.sharding` (relative to the output folder)."""
        files: dict[str, dict[str, Any]] = {}
        judged = self.cfg.judge not in (None, "none")
        for c in self.cfg.contestants:
            files[f"answers/{c.name}.jsonl"] = {"key": ["id"], "complete": True}
            if judged:
                files[f"judgments/{c.name}.jsonl"] = {"key": ["id"], "complete": True}
                if self.cfg.pairwise_baseline and c.name != self.cfg.pairwise_baseline:
                    # safety prompts are not compared pairwise: not every id appears
                    files[f"pairwise/{c.name}-vs-{self.cfg.pairwise_baseline}.jsonl"] = {"key": ["id"], "complete": False}
        if judged:
            files["judge-cache.jsonl"] = {"key": None}
        return files

    def _generate(self, c: Contestant, items: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
        path = self.out / "answers" / f"{c.name}.jsonl"
        done = _done(path)
        todo = [it for it in items if it["id"] not in done]
        if todo:
            model = self._model(c)
            penalty = (recommended_repetition_penalty(model) if c.repetition_penalty is None
                       else c.repetition_penalty)
            cfg = GenerationConfig(max_new_tokens=self.cfg.max_new_tokens, stop=c.stop, repetition_penalty=penalty,
                                   repetition_penalty_scope=c.repetition_penalty_scope)
            prov = provenance_of(model, cfg)

            def answer(it: dict[str, Any], comp: Any) -> dict[str, Any]:
                rec = {"id": it["id"], "answer": comp.text, "finish_reason": comp.finish_reason,
                       "metrics": answer_metrics(comp.text, comp.finish_reason, comp.completion_tokens),
                       "provenance": prov}
                if comp.meta and comp.meta.get("route"):
                    rec["route"] = comp.meta["route"]
                    rec["usage"] = comp.meta.get("usage")
                if comp.meta and comp.meta.get("best_of_n"):
                    rec["best_of_n"] = comp.meta["best_of_n"]  # every candidate and its score
                done[it["id"]] = rec
                return rec

            generate_into(model, todo, cfg, to_record=answer, output=path, batch_size=self.cfg.batch_size,
                          progress=self.tracker, label=f"answers {c.name}", prompt_of=lambda it: it["instruction"],
                          after_batch=lambda made: self.say(f"{c.name}: {len(done)}/{len(items)} answers"))
        return done

    def _judge(self, name: str, items, answers, judges) -> dict[str, dict[str, Any]]:
        path = self.out / "judgments" / f"{name}.jsonl"
        provenances = {kind: _as_written(j.provenance()) for kind, j in judges.items()}
        done = _same_judge(_done(path), lambda rec: provenances.get(rec.get("rubric")))
        todo = [it for it in items if it["id"] not in done]
        with JsonlAppender(path) as out, self.tracker.task(f"judge {name}", len(todo)) as advance:
            for s in range(0, len(todo), self.cfg.batch_size):
                batch = todo[s : s + self.cfg.batch_size]
                for kind in ("multi-aspect", "safety"):
                    part = [it for it in batch if it["safety"] == (kind == "safety")]
                    if not part:
                        continue
                    fields = [{"instruction": it["instruction"], "answer": answers[it["id"]]["answer"]} for it in part]
                    for it, res in zip(part, judges[kind].judge(fields)):
                        rec = {"id": it["id"], "rubric": kind, **res, "provenance": judges[kind].provenance()}
                        out.write(rec)
                        done[it["id"]] = rec
                advance(len(batch))
                self.say(f"{name}: {len(done)}/{len(items)} judged")
        return done

    def _pairwise(self, name: str, base: str, items, answers, judge) -> dict[str, dict[str, Any]]:
        path = self.out / "pairwise" / f"{name}-vs-{base}.jsonl"
        provenance = _as_written(judge.provenance())
        done = _same_judge(_done(path), lambda rec: provenance)
        todo = [it for it in items if it["id"] not in done and not it["safety"]]
        with JsonlAppender(path) as out, self.tracker.task(f"pairwise {name} vs {base}", len(todo)) as advance:
            for s in range(0, len(todo), self.cfg.batch_size):
                batch = todo[s : s + self.cfg.batch_size]
                ab = [{"instruction": it["instruction"], "answer_a": answers[name][it["id"]]["answer"],
                       "answer_b": answers[base][it["id"]]["answer"]} for it in batch]
                ba = [{"instruction": f["instruction"], "answer_a": f["answer_b"], "answer_b": f["answer_a"]} for f in ab]
                for it, f, r1, r2 in zip(batch, ab, judge.judge(ab), judge.judge(ba)):
                    verdict, weighted = {}, {}
                    for a in judge.rubric.aspects:
                        x, y = r1["result"][a], r2["result"][a]
                        y = {"A": "B", "B": "A"}.get(y, y)  # back to this contestant = A
                        verdict[a] = None if x is None or y is None else (x if x == y else "tie")
                        if "weighted" in r1 and "weighted" in r2:
                            both = [preference(r1["weighted"][a]["p"], "A"), preference(r2["weighted"][a]["p"], "B")]
                            weighted[a] = None if None in both else sum(both) / 2
                    rec = {"id": it["id"], "verdict": verdict, "orders": [r1, r2],
                           "lengths": [len(f["answer_a"]), len(f["answer_b"])], "provenance": judge.provenance()}
                    if weighted:
                        rec["weighted_preference"] = weighted
                    out.write(rec)
                    done[it["id"]] = rec
                advance(len(batch))
        return done


def run_shard(cfg: EvalConfig, config_path: str, shard_text: str, loader, *, tracker: Progress = SILENT,
              say=lambda m: None) -> Path:
    """Answer and judge one shard of an evaluation into ``OUTPUT.shard-I-of-N/`` and write its manifest (see
    :mod:`alignkit.sharding`); returns the manifest's path. ``config_path`` is the job's input: shards of
    another config do not merge."""
    import dataclasses


    shard = Shard.parse(shard_text)
    if shard is None:
        raise InputError("run_shard needs a shard (I/N)")
    folder = shard.path(cfg.output)
    plan = Harness(cfg, loader)
    ids = [str(it["id"]) for it in plan.items()]
    files = {rel: {**spec, "output": str(Path(cfg.output) / rel), "target": str(folder / rel)}
             for rel, spec in plan.files().items()}
    options = {k: v for k, v in dataclasses.asdict(cfg).items() if k != "output"}
    job = ShardJob(shard, "eval", config_path, cfg.output, [ids[k] for k in range(len(ids)) if shard.owns(k)], files,
                   options)
    job.check_input()
    say(f"shard {shard.index}/{shard.count}: {len(job.ids)} of {len(ids)} instruction(s) -> {folder}")
    Harness(cfg, loader, progress=lambda m: None, tracker=tracker, only=set(job.ids), output=str(folder)).run()
    return job.finish({"instructions": len(job.ids)})
