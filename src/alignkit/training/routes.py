"""Data and training for the route stages: BPO rewriters and Aligner correctors.

* **Loaders** for the public record formats, from local files (JSONL or a JSON list) or the hub (``hub:NAME``,
  through ``datasets``): HH-RLHF transcripts (``chosen``/``rejected`` with ``Human:``/``Assistant:`` turns), the
  BPO data set (``instruction``, ``context``, ``good_res``, ``bad_res``, ``optimized_prompt``), the Aligner data
  set (``question``, ``answer``, ``correction``), and alignkit's own (``{id, prompt, chosen, rejected}`` and
  ``{id, question, answer[, correction]}``). Every bad record is reported with its line (or item) number.
* **Construction with a teacher** (any model and method): BPO pairs -- the teacher reads a prompt with a
  preferred and a dispreferred answer, says why one is better, and writes an improved prompt; Aligner triples --
  the teacher writes the corrected answer. Empty, runaway and unreadable teacher outputs are dropped with a
  reason; output is appended record by record and resumable; each record keeps its provenance.
* **Training** on the SFT machinery (TRL + PEFT, LoRA by default): the records become conversations in the
  stage's layout (``prompts/routes/layouts.yaml``), and the adapter records that layout so it prompts itself
  the way it was trained. Aligner first warms up on identity corrections (a good answer maps to itself).
"""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from alignkit.errors import InputError
from alignkit.io import BadLine, JsonlAppender, read_jsonl, written_ids
from alignkit.methods.routes import load_layout
from alignkit.progress import SILENT, Progress
from alignkit.training.data import Record
from alignkit.training.sft import run_sft
from alignkit.types import GenerationConfig

FORMATS = ("auto", "alignkit", "hh-rlhf", "bpo", "aligner")


# ----------------------------------------------------------------------------- reading public formats
def _raw_records(source: str) -> Iterable[tuple[str, Any]]:
    """(where, record) from a JSONL file, a JSON list file, or ``hub:NAME[:SPLIT]`` (datasets)."""
    if source.startswith("hub:"):
        name, _, split = source[4:].partition(":")
        try:
            import datasets
        except ImportError:
            raise InputError("reading from the hub needs the datasets package: pip install 'alignkit[train]'") from None
        try:
            ds = datasets.load_dataset(name, split=split or "train")
        except Exception as e:  # the hub, the network, a wrong name: one line
            raise InputError(f"cannot load {name!r} from the hub: {str(e).splitlines()[0]}") from e
        for i, rec in enumerate(ds):
            yield f"{source} item {i}", dict(rec)
        return
    path = Path(source)
    if not path.is_file():
        raise InputError(f"input file {source!r} does not exist")
    head = path.read_text(encoding="utf-8", errors="replace").lstrip()[:1]
    if head == "[":
        try:
            items = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as e:
            raise InputError(f"{source}: not valid JSON ({e.msg} at line {e.lineno})") from e
        for i, rec in enumerate(items):
            yield f"{source} item {i}", rec
        return
    for lineno, rec in read_jsonl(path):
        yield f"{source}:{lineno}", rec


def _detect(rec: dict[str, Any]) -> str:
    if "good_res" in rec or "optimized_prompt" in rec:
        return "bpo"
    if "correction" in rec and "question" in rec:
        return "aligner"
    if isinstance(rec.get("chosen"), str) and "Human:" in rec["chosen"] and "prompt" not in rec:
        return "hh-rlhf"
    return "alignkit"


_TURN = re.compile(r"\n\n(Human|Assistant): ")


def split_hh(transcript: str) -> tuple[str, str]:
    """An HH-RLHF transcript -> (the conversation up to the last assistant turn as one prompt, that turn)."""
    text = "\n\n" + transcript.lstrip("\n") if not transcript.startswith("\n\n") else transcript
    cut = text.rfind("\n\nAssistant:")
    if cut < 0 or "\n\nHuman:" not in text[:cut]:
        raise ValueError("not an HH-RLHF transcript (needs Human: and Assistant: turns)")
    prompt, answer = text[:cut], text[cut + len("\n\nAssistant:"):].strip()
    turns = _TURN.split(prompt)[1:]
    pairs = list(zip(turns[0::2], turns[1::2]))
    if len(pairs) == 1:
        return pairs[0][1].strip(), answer
    return "\n".join(f"{who}: {what.strip()}" for who, what in pairs), answer


@dataclass
class Loaded:
    records: list[dict[str, Any]]
    problems: list[str]

    def raise_if_problems(self) -> None:
        if self.problems:
            shown = "\n".join(f"  {p}" for p in self.problems[:20])
            more = f"\n  ... and {len(self.problems) - 20} more" if len(self.problems) > 20 else ""
            raise InputError(f"{len(self.problems)} bad record(s), nothing was done:\n{shown}{more}")


def _text(rec: dict[str, Any], key: str) -> str:
    v = rec.get(key)
    if not isinstance(v, str) or not v.strip():
        raise ValueError(f"needs a non-empty string {key!r}")
    return v


def _load(source: str, fmt: str, convert) -> Loaded:
    """Records from ``source``, each converted by ``convert(kind, record) -> fields``; every problem is kept
    with where it is (line or item), not raised."""
    out = Loaded([], [])
    seen: set[str] = set()
    for i, (where, rec) in enumerate(_raw_records(source)):
        if isinstance(rec, BadLine):
            out.problems.append(str(rec))
            continue
        try:
            if not isinstance(rec, dict):
                raise ValueError(f"expected a JSON object, got {type(rec).__name__}")
            rid = str(rec.get("id", f"{Path(source).stem}-{i}"))
            row = {"id": rid, **convert(_detect(rec) if fmt == "auto" else fmt, rec)}
            if rid in seen:
                raise ValueError(f"duplicate id {rid!r}")
            seen.add(rid)
            out.records.append(row)
        except ValueError as e:
            out.problems.append(f"{where}: {e}")
    if not out.records and not out.problems:
        out.problems.append(f"{source}: no records")
    return out


def _preference(kind: str, rec: dict[str, Any]) -> dict[str, Any]:
    if kind == "hh-rlhf":
        prompt, chosen = split_hh(_text(rec, "chosen"))
        prompt_r, rejected = split_hh(_text(rec, "rejected"))
        if prompt_r != prompt:
            raise ValueError("chosen and rejected transcripts start differently")
        return {"prompt": prompt, "chosen": chosen, "rejected": rejected}
    if kind == "bpo":
        prompt = _text(rec, "instruction") + (f"\n\n{rec['context']}" if rec.get("context") else "")
        row = {"prompt": rec.get("final_input") or prompt, "chosen": _text(rec, "good_res"),
               "rejected": _text(rec, "bad_res")}
        if rec.get("optimized_prompt") or rec.get("final_output"):
            row["improved_prompt"] = rec.get("final_output") or rec["optimized_prompt"]
        if rec.get("comparison"):
            row["critique"] = rec["comparison"]
        return row
    if kind == "alignkit":
        row = {"prompt": _text(rec, "prompt"), "chosen": _text(rec, "chosen"), "rejected": _text(rec, "rejected")}
        row.update({k: rec[k] for k in ("improved_prompt", "critique") if isinstance(rec.get(k), str)})
        return row
    raise ValueError(f"a {kind} record is not a preference record")


def _question_answer(kind: str, rec: dict[str, Any]) -> dict[str, Any]:
    if kind == "hh-rlhf":  # the dispreferred answer is the one to correct
        question, answer = split_hh(_text(rec, "rejected"))
        return {"question": question, "answer": answer}
    if kind in ("aligner", "alignkit"):
        if kind == "alignkit" and "question" not in rec and "prompt" in rec:
            rec = {**rec, "question": rec["prompt"], "answer": rec.get("answer") or rec.get("output")}
        row = {"question": _text(rec, "question"), "answer": _text(rec, "answer")}
        if rec.get("correction") is not None:
            row["correction"] = _text(rec, "correction")
        return row
    raise ValueError(f"a {kind} record is not a question-answer record")


def load_preferences(source: str, fmt: str = "auto") -> Loaded:
    """``{id, prompt, chosen, rejected}`` records (and ``improved_prompt``, ``critique`` from the BPO set)."""
    return _load(source, fmt, _preference)


def load_qa(source: str, fmt: str = "auto") -> Loaded:
    """``{id, question, answer[, correction]}`` records (the Aligner set has all three)."""
    return _load(source, fmt, _question_answer)


# ----------------------------------------------------------------------------- construction with a teacher
def teacher_prompts() -> dict[str, Any]:
    text = (resources.files("alignkit") / "prompts" / "routes" / "teachers.yaml").read_text(encoding="utf-8")
    return yaml.safe_load(text)


def _fill(template: str, **fields: str) -> str:
    return re.sub(r"\{(" + "|".join(fields) + r")\}", lambda m: fields[m.group(1)], template)


def parse_improved(text: str, marker: str) -> str | None:
    """The improved prompt after the marker line (e.g. ``Improved prompt:``), or None if it is absent/empty."""
    i = text.lower().rfind(marker.lower())
    if i < 0:
        return None
    rest = text[i + len(marker):].strip().split("\n###")[0].strip().strip('"').strip()
    return rest or None


_WORD = re.compile(r"[a-z0-9']+")
_STOPWORDS = set("the a an and or of to in on for with how what why who when is are do does i my me you your can "
                 "should would could please give tell about this that it be".split())


def _content(text: str) -> set[str]:
    return {w for w in _WORD.findall(text.lower()) if len(w) > 2 and w not in _STOPWORDS}


def off_topic(original: str, rewrite: str, examples: str, min_overlap: float) -> str | None:
    """Why a rewrite is not a rewrite of ``original`` (None if it is): it keeps too few of the request's
    content words, or it copies an example of the teacher prompt."""
    words = _content(original)
    if words:
        kept = len(words & _content(rewrite)) / len(words)
        if kept < min_overlap:
            return f"the rewrite keeps {kept:.0%} of the request's content words (< {min_overlap:.0%}): off topic"
    if rewrite.strip() and rewrite.strip() in examples:
        return "the rewrite copies an example of the teacher prompt"
    return None


def _drop(counts: dict[str, int], report, rid: str, why: str) -> None:
    counts["dropped"] += 1
    counts.setdefault("reasons", {})
    counts["reasons"][why] = counts["reasons"].get(why, 0) + 1  # type: ignore[index]
    report(f"  dropped {rid!r}: {why}")


def _teacher_spec(name: str, cfg: GenerationConfig) -> tuple[dict[str, Any], GenerationConfig]:
    prompts = teacher_prompts()
    if name not in prompts:
        raise InputError(f"no teacher prompt {name!r}; choose one of {', '.join(prompts)}")
    spec = prompts[name]
    stops = tuple(dict.fromkeys(cfg.stop + tuple(spec.get("stop") or ())))
    return spec, replace(cfg, stop=stops)


def _start(records: Sequence[dict[str, Any]], teacher: Any, cfg: GenerationConfig, output: str, teacher_prompt: str):
    """What a teacher run begins with: its prompt and decoding, the records not yet in ``output`` (resumable),
    the counts, and the provenance every written record carries."""
    spec, cfg = _teacher_spec(teacher_prompt, cfg)
    done = written_ids(output)
    todo = [r for r in records if str(r["id"]) not in done]
    counts: dict[str, Any] = {"written": 0, "skipped_done": len(records) - len(todo), "dropped": 0}
    prov = {"teacher": teacher.info(), "generation": cfg.to_dict(), "teacher_prompt": spec["id"]}
    return spec, cfg, todo, counts, prov


def build_bpo_pairs(records: Sequence[dict[str, Any]], teacher: Any, cfg: GenerationConfig, output: str, *,
                    batch_size: int = 8, progress: Progress = SILENT, report=None,
                    teacher_prompt: str = "bpo", min_overlap: float = 0.5) -> dict[str, Any]:
    """Append ``{id, prompt, improved_prompt, critique}`` per preference record; ids already written are
    skipped (resumable). Records that carry an ``improved_prompt`` already (the BPO set) are kept as they are.
    A rewrite that keeps under ``min_overlap`` of the request's content words, or copies an example of the
    teacher prompt, is dropped as off topic (small teachers copy their examples)."""
    report = report or (lambda s: print(s, file=sys.stderr))
    spec, cfg, todo, counts, prov = _start(records, teacher, cfg, output, teacher_prompt)
    with JsonlAppender(output) as out, progress.task("bpo pairs", len(todo)) as advance:
        given = [r for r in todo if r.get("improved_prompt")]
        for r in given:
            out.write({"id": r["id"], "prompt": r["prompt"], "improved_prompt": r["improved_prompt"],
                       "critique": r.get("critique"), "provenance": {"source": "given in the input"}})
            counts["written"] += 1
        advance(len(given))
        rest = [r for r in todo if not r.get("improved_prompt")]
        for start in range(0, len(rest), batch_size):
            batch = rest[start : start + batch_size]
            asks = [_fill(spec["template"], prompt=r["prompt"], chosen=r["chosen"], rejected=r["rejected"])
                    for r in batch]
            comps = teacher.generate(asks, cfg)
            additions: list[str | None] = [None] * len(batch)
            if spec.get("then"):  # two steps: the critique line, then the improved prompt after the marker
                thens = [_fill(spec["then"], prompt=r["prompt"]) for r in batch]
                follow = [a + c.text + t for a, c, t in zip(asks, comps, thens)]
                seconds = teacher.generate(follow, cfg)
                additions = [c2.text.strip() for c2 in seconds]  # what the teacher added after the forced text
                comps = [replace(c2, text=c1.text + t + c2.text,
                                 finish_reason="length" if "length" in (c1.finish_reason, c2.finish_reason) else "stop",
                                 completion_tokens=c1.completion_tokens + c2.completion_tokens)
                         for c1, c2, t in zip(comps, seconds, thens)]
            advance(len(batch))
            for r, c, added in zip(batch, comps, additions):
                if c.finish_reason == "length":
                    _drop(counts, report, r["id"], "the teacher hit its token limit (a runaway)")
                    continue
                if added is not None and not added:
                    _drop(counts, report, r["id"], "the teacher added nothing to the request")
                    continue
                if added and added in spec["template"]:
                    _drop(counts, report, r["id"], "the teacher's addition copies an example of the teacher prompt")
                    continue
                improved = parse_improved(c.text, spec["marker"])
                if improved is None:
                    _drop(counts, report, r["id"], f"no {spec['marker']!r} section in the teacher's answer")
                    continue
                problem = off_topic(r["prompt"], improved, spec["template"], min_overlap)
                if problem:
                    _drop(counts, report, r["id"], problem)
                    continue
                critique = c.text[: c.text.lower().rfind(spec["marker"].lower())].strip()
                out.write({"id": r["id"], "prompt": r["prompt"], "improved_prompt": improved, "critique": critique,
                           "provenance": {**prov, "completion_tokens": c.completion_tokens}})
                counts["written"] += 1
    return counts


def build_aligner_triples(records: Sequence[dict[str, Any]], teacher: Any, cfg: GenerationConfig, output: str, *,
                          batch_size: int = 8, progress: Progress = SILENT, report=None,
                          teacher_prompt: str = "aligner") -> dict[str, Any]:
    """Append ``{id, question, answer, correction}`` per question-answer record (a correction given in the
    input is kept); resumable by id."""
    report = report or (lambda s: print(s, file=sys.stderr))
    spec, cfg, todo, counts, prov = _start(records, teacher, cfg, output, teacher_prompt)
    with JsonlAppender(output) as out, progress.task("aligner triples", len(todo)) as advance:
        given = [r for r in todo if r.get("correction")]
        for r in given:
            out.write({**r, "provenance": {"source": "given in the input"}})
            counts["written"] += 1
        advance(len(given))
        rest = [r for r in todo if not r.get("correction")]
        for start in range(0, len(rest), batch_size):
            batch = rest[start : start + batch_size]
            comps = teacher.generate([_fill(spec["template"], question=r["question"], answer=r["answer"])
                                      for r in batch], cfg)
            advance(len(batch))
            for r, c in zip(batch, comps):
                text = c.text.strip()
                if not text:
                    _drop(counts, report, r["id"], "the teacher's correction is empty")
                elif c.finish_reason == "length":
                    _drop(counts, report, r["id"], "the teacher hit its token limit (a runaway)")
                else:
                    out.write({"id": r["id"], "question": r["question"], "answer": r["answer"], "correction": text,
                               "provenance": {**prov, "completion_tokens": c.completion_tokens}})
                    counts["written"] += 1
    return counts


# ----------------------------------------------------------------------------- training
def _read_written(path: str, need: tuple[str, ...]) -> list[dict[str, Any]]:
    rows, bad = [], []
    for lineno, rec in read_jsonl(path):
        if isinstance(rec, BadLine):
            bad.append(str(rec))
        elif any(not isinstance(rec.get(k), str) or not rec.get(k).strip() for k in need):
            bad.append(f"{path}:{lineno}: needs non-empty strings {', '.join(need)}")
        else:
            rows.append(rec)
    if bad:
        raise InputError(f"{len(bad)} bad record(s), nothing was trained:\n" + "\n".join(f"  {b}" for b in bad[:20]))
    if not rows:
        raise InputError(f"{path}: no records")
    return rows


def bpo_conversations(rows: Sequence[dict[str, Any]], layout_id: str = "alignkit-bpo") -> list[Any]:
    """BPO pairs as SFT conversations in the rewriter's layout: the request -> the improved prompt."""
    layout = load_layout(layout_id, "rewrite")
    return [Record(i + 1, {"id": str(r["id"]), "messages": [
        {"role": "user", "content": layout.request(prompt=r["prompt"])},
        {"role": "assistant", "content": r["improved_prompt"].strip()}]}) for i, r in enumerate(rows)]


def aligner_conversations(rows: Sequence[dict[str, Any]], *, identity: bool = False,
                          layout_id: str = "alignkit-aligner") -> list[Any]:
    """Aligner triples as SFT conversations in the corrector's layout: (question, answer) -> correction; with
    ``identity``, the warm-up set: (question, correction) -> the same correction (keep what is good)."""
    layout = load_layout(layout_id, "correct")
    out = []
    for i, r in enumerate(rows):
        answer = r["correction"] if identity else r["answer"]
        out.append(Record(i + 1, {"id": f"{r['id']}{'#identity' if identity else ''}", "messages": [
            {"role": "user", "content": layout.request(question=r["question"], answer=answer)},
            {"role": "assistant", "content": r["correction"].strip()}]}))
    return out


def train_stage(stage: str, job: Any, recipe: Any, tuning: Any, *, warmup_epochs: float = 1.0) -> dict[str, Any]:
    """``alignkit train bpo|aligner``: SFT on the stage's conversations; the adapter records its layout."""
    from dataclasses import replace


    if stage == "bpo":
        rows = _read_written(job.data, ("prompt", "improved_prompt"))
        info = {"inference": {"route_layout": "alignkit-bpo"}, "route_stage": "bpo"}
        return run_sft(job, recipe, tuning, records=bpo_conversations(rows), extra_info=info)
    rows = _read_written(job.data, ("question", "answer", "correction"))
    info = {"inference": {"route_layout": "alignkit-aligner"}, "route_stage": "aligner"}
    if warmup_epochs <= 0 or tuning.full:
        return run_sft(job, recipe, tuning, records=aligner_conversations(rows), extra_info=info)
    warm = f"{job.output.rstrip('/')}.warmup"
    if not (Path(warm) / "alignkit.json").is_file():
        print(f"alignkit train aligner: identity warm-up ({warmup_epochs:g} epoch(s)) -> {warm}", file=sys.stderr)
        run_sft(replace(job, output=warm, resume=job.resume and (Path(warm) / "checkpoints").is_dir()),
                replace(recipe, epochs=warmup_epochs, max_steps=-1), tuning,
                records=aligner_conversations(rows, identity=True), extra_info={**info, "phase": "identity warm-up"})
    print("alignkit train aligner: corrections, continuing the warm-up adapter", file=sys.stderr)
    return run_sft(job, recipe, tuning, records=aligner_conversations(rows), init_adapter=warm,
                   extra_info={**info, "warmup": {"adapter": warm, "epochs": warmup_epochs}})
