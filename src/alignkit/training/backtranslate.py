"""Instruction back-translation with self-curation (in the manner of *Self-Alignment with Instruction
Backtranslation*, 2023): from unlabelled text, make instruction-following data.

1. **Passages**: the user's corpus -- JSONL (a ``text`` field per line) or text files, split at blank lines into
   passages of ``min_chars`` .. ``max_chars`` characters (short paragraphs are joined, long ones cut at a sentence).
2. **Backward model**: LoRA SFT of the base on the seed SFT records turned around -- the answer is the request, the
   instruction the reply (``BACKWARD_REQUEST``) -- so it learns to write the instruction a text answers.
3. **Candidates**: the backward model writes an instruction for every passage; an empty one, one cut off by the
   token limit or one that copies the passage is dropped with the reason.
4. **Self-curation**: a scorer rates each (instruction, passage) pair -- by default the seed-tuned forward model as a
   1-5 judge (``geval+curation``: the expected digit under the ``curation`` rubric), any scorer otherwise -- and the
   pairs at or above ``threshold`` are kept; every other one is written with its score and reason.
5. **Tags**: seed records get :data:`SEED_TAG` as their system prompt, generated ones :data:`WEB_TAG` (the paper
   found tagging the two sources helps); ``seed-tagged.jsonl`` + ``iter-K/curated.jsonl`` are the training set,
   ``uncurated.jsonl`` (every candidate, tagged) the ablation without curation.
6. **Iterations**: iteration K > 1 curates again with a forward model trained on the seed and iteration K-1's
   curated pairs (the default curator only).

Every step writes its files in the output folder and is skipped when they are complete (a rerun resumes).
"""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from alignkit.errors import AlignkitError, InputError
from alignkit.io import BadLine, JsonlAppender, read_jsonl, written_ids
from alignkit.scoring import score_records
from alignkit.training.data import Record
from alignkit.types import GenerationConfig, Message

#: the backward model's request: the text is given, the instruction it answers is asked for (alignkit's wording)
BACKWARD_REQUEST = ("Here is a text that answers someone's request:\n\n{text}\n\nWrite the request it answers: "
                    "one instruction or question, as the person would have asked it.")
#: the system prompts that tag seed and generated records
SEED_TAG = "Answer in the style of an AI assistant."
WEB_TAG = "Answer with knowledge from web text."


def read_corpus(paths: Sequence[str], *, min_chars: int = 200, max_chars: int = 1500) -> list[dict[str, Any]]:
    """Passages ``{id, text, source}`` from JSONL files (``text`` per line) and text files (split at blank lines;
    short paragraphs joined up to ``min_chars``, long ones cut at a sentence end before ``max_chars``). Malformed
    JSONL lines and lines without text are listed with their line numbers (nothing is read then)."""
    if not paths:
        raise InputError("give at least one corpus file (--corpus FILE: JSONL with a text field, or .txt)")
    if min_chars < 1 or max_chars < min_chars:
        raise InputError(f"need 1 <= min_chars <= max_chars, got {min_chars} and {max_chars}")
    out: list[dict[str, Any]] = []
    problems: list[str] = []
    for path in paths:
        p = Path(path)
        if not p.is_file():
            raise InputError(f"corpus file {path!r}: no such file")
        if p.suffix in (".jsonl", ".json"):
            for lineno, rec in read_jsonl(str(p)):
                text = rec.get("text") if isinstance(rec, dict) else None
                if not isinstance(text, str) or not text.strip():
                    problems.append(str(rec) if isinstance(rec, BadLine) else f"{path}:{lineno}: no text field")
                    continue
                for k, piece in enumerate(_cut(text.strip(), max_chars)):
                    if len(piece) >= min_chars:
                        out.append({"id": f"{p.name}:{lineno}.{k}", "text": piece, "source": f"{path}:{lineno}"})
        else:
            paras = [x.strip() for x in re.split(r"\n\s*\n", p.read_text(encoding="utf-8-sig")) if x.strip()]
            buf = ""
            for para in paras:
                buf = f"{buf}\n\n{para}" if buf else para
                if len(buf) >= min_chars:
                    for piece in _cut(buf, max_chars):  # a cut's short tail is left out
                        if len(piece) >= min_chars:
                            out.append({"id": f"{p.name}:{len(out)}", "text": piece, "source": path})
                    buf = ""
            out += [{"id": f"{p.name}:{len(out) + k}", "text": piece, "source": path}
                    for k, piece in enumerate(x for x in _cut(buf, max_chars) if len(x) >= min_chars)]
    if problems:
        raise InputError(f"{len(problems)} bad corpus line(s), nothing was read:\n  " + "\n  ".join(problems[:20]))
    if not out:
        raise InputError(f"the corpus has no passage of at least {min_chars} characters")
    return out


def _cut(text: str, max_chars: int) -> list[str]:
    pieces = []
    while len(text) > max_chars:
        end = max(text.rfind(". ", 0, max_chars), text.rfind("\n", 0, max_chars))
        end = end + 1 if end > max_chars // 2 else max_chars
        pieces.append(text[:end].strip())
        text = text[end:].strip()
    return pieces + ([text] if text else [])


def backward_records(seed: Sequence[Any]) -> list[Any]:
    """The seed's (request, answer) pairs turned around for the backward model: answer -> request (the last
    user/assistant pair of each conversation)."""
    out = []
    for r in seed:
        msgs = r.data["messages"]
        pairs = [(a["content"], b["content"]) for a, b in zip(msgs, msgs[1:])
                 if a["role"] == "user" and b["role"] == "assistant"]
        if pairs:
            request, answer = pairs[-1]
            out.append(Record(r.lineno, {"id": f"{r.id}#backward", "messages": [
                {"role": "user", "content": BACKWARD_REQUEST.format(text=answer.strip())},
                {"role": "assistant", "content": request.strip()}]}))
    if not out:
        raise InputError("the seed has no (user, assistant) turn to learn instructions from")
    return out


def tagged(rid: str, tag: str, instruction: str, answer: str, **extra: Any) -> dict[str, Any]:
    return {"id": rid, "messages": [{"role": "system", "content": tag}, {"role": "user", "content": instruction},
                                    {"role": "assistant", "content": answer}], **extra}


def backtranslate(seed: Sequence[Any], passages: Sequence[dict[str, Any]], out: str, *, train: Callable[..., Any],
                  load: Callable[[str], Any], scorer: Callable[[str], Any], curator: str | None = None,
                  threshold: float = 4.5, iterations: int = 1, cfg: GenerationConfig | None = None,
                  keep_truncated: bool = False,
                  batch_size: int = 8, say: Callable[[str], None] = lambda m: print(m, file=sys.stderr)
                  ) -> dict[str, Any]:
    """Run the steps (see the module) into folder ``out``; returns the summary (also ``out/summary.json``).

    ``train(records, output_folder)`` trains a LoRA SFT model on records (``run_sft``); ``load(folder)`` loads a
    trained model under its own layout; ``scorer(spec)`` opens a scorer. ``curator``: a scorer spec (default: the
    seed-tuned forward model through ``geval+curation``). ``keep_truncated``: keep instructions cut off by the token
    limit (dropped by default)."""
    if iterations < 1:
        raise InputError(f"iterations must be >= 1, got {iterations}")
    if curator is not None and iterations > 1:
        raise InputError("iterations re-train the default curator (the forward model) on the curated pairs; with "
                         "--curator there is nothing to iterate: give --iterations 1")
    cfg = cfg or GenerationConfig(max_new_tokens=96)
    root = Path(out)
    root.mkdir(parents=True, exist_ok=True)
    summary: dict[str, Any] = {"seed": len(seed), "passages": len(passages), "threshold": threshold,
                               "curator": curator or "geval+curation:<forward model>", "iterations": []}
    with JsonlAppender(root / "passages.jsonl") as w:
        have = written_ids(root / "passages.jsonl")
        for p in passages:
            if p["id"] not in have:
                w.write(p)
    # 2. the backward model
    backward = root / "backward"
    if not (backward / "alignkit.json").is_file():
        say(f"backtranslate: training the backward model on {len(seed)} seed records -> {backward}")
        train(backward_records(seed), str(backward))
    # 3. candidate instructions
    cands_path, dropped_path = root / "candidates.jsonl", root / "dropped.jsonl"
    done = written_ids(cands_path) | written_ids(dropped_path)
    todo = [p for p in passages if p["id"] not in done]
    if todo:
        model = load(str(backward))
        with JsonlAppender(cands_path) as keep, JsonlAppender(dropped_path) as drop:
            for start in range(0, len(todo), batch_size):
                batch = todo[start : start + batch_size]
                for p, c in zip(batch, _instructions(model, batch, cfg)):
                    if isinstance(c, str):  # the model could not take it (e.g. longer than its context)
                        drop.write({"id": p["id"], "passage": p["text"], "source": p["source"], "reason": c})
                        continue
                    inst = c.text.strip()
                    why = ("the backward model wrote nothing" if not inst else
                           "the instruction hit the token limit (cut off)" if c.finish_reason == "length"
                           and not keep_truncated else
                           "the instruction copies the passage" if inst[:80] in p["text"] and len(inst) > 40 else None)
                    row = {"id": p["id"], "instruction": inst, "passage": p["text"], "source": p["source"]}
                    (drop if why else keep).write({**row, "reason": why} if why else row)
        model.close()
    cands = [r for _, r in read_jsonl(str(cands_path)) if isinstance(r, dict)]
    summary["candidates"] = len(cands)
    summary["dropped_candidates"] = sum(1 for _ in read_jsonl(str(dropped_path))) if dropped_path.exists() else 0
    # 5. the tagged seed and the uncurated ablation
    _write_all(root / "seed-tagged.jsonl", [
        {**r.data, "messages": [{"role": "system", "content": SEED_TAG}]
         + [m for m in r.data["messages"] if m["role"] != "system"]} for r in seed])
    _write_all(root / "uncurated.jsonl", [tagged(c["id"], WEB_TAG, c["instruction"], c["passage"]) for c in cands])
    # 4 + 6. curation, iterated
    curated: list[dict[str, Any]] = []
    for k in range(1, iterations + 1):
        it = root / f"iter-{k}"
        it.mkdir(exist_ok=True)
        spec = curator
        if spec is None:
            forward = it / "forward"
            if not (forward / "alignkit.json").is_file():
                records = list(seed) + _as_records(curated)
                say(f"backtranslate: iteration {k}: training the curator on {len(records)} records -> {forward}")
                train(records, str(forward))
            spec = f"geval+curation:{forward}"
        scores = _scores(it / "scores.jsonl", cands, scorer(spec), batch_size)
        keep, rejected = [], []
        for c in cands:
            s = scores[c["id"]]
            if s["score"] is not None and s["score"] >= threshold:
                keep.append(tagged(c["id"], WEB_TAG, c["instruction"], c["passage"], curation=s, iteration=k))
            else:
                why = (f"unrated: {s.get('reason')}" if s["score"] is None else
                       f"rated {s['score']:.2f}, below the threshold {threshold:g}")
                rejected.append({"id": c["id"], "instruction": c["instruction"], "score": s["score"], "reason": why})
        _write_all(it / "curated.jsonl", keep)
        _write_all(it / "rejected.jsonl", rejected)
        curated = keep
        summary["iterations"].append({"iteration": k, "curator": spec, "kept": len(keep), "rejected": len(rejected),
                                      "unrated": sum(1 for r in rejected if r["score"] is None)})
        say(f"backtranslate: iteration {k}: kept {len(keep)} of {len(cands)} candidates")
    (root / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def _instructions(model: Any, batch: Sequence[dict[str, Any]], cfg: GenerationConfig) -> list[Any]:
    """The backward model's completion for each passage, or the error (a text) for a passage it cannot take: a
    batch that fails is retried one passage at a time, so one bad passage does not stop the others."""
    prompts = [[_user(BACKWARD_REQUEST.format(text=p["text"]))] for p in batch]
    try:
        return model.generate(prompts, [cfg] * len(batch))
    except AlignkitError:
        out: list[Any] = []
        for prompt in prompts:
            try:
                out.append(model.generate([prompt], [cfg])[0])
            except AlignkitError as e:
                out.append(f"the backward model cannot take it: {e}")
        return out


def _user(text: str) -> Any:
    return Message("user", text)


def _as_records(rows: Sequence[dict[str, Any]]) -> list[Any]:
    return [Record(i + 1, r) for i, r in enumerate(rows)]


def _write_all(path: Path, rows: Sequence[dict[str, Any]]) -> None:
    """Write a derived file whole (it is recomputed from the step files on every run)."""
    tmp = path.with_suffix(".tmp")
    tmp.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    tmp.replace(path)


def _scores(path: Path, cands: Sequence[dict[str, Any]], scorer: Any, batch_size: int) -> dict[str, dict[str, Any]]:
    """Each candidate's curation score (kept per id in ``path``: a rerun rates only the new ones)."""
    have = {str(r["id"]): r for _, r in read_jsonl(str(path)) if isinstance(r, dict)} if path.exists() else {}
    todo = [c for c in cands if str(c["id"]) not in have]
    with JsonlAppender(path) as w:
        for start in range(0, len(todo), batch_size):
            batch = todo[start : start + batch_size]
            # a batch the scorer cannot take is rated one by one; what still fails is unrated, with the error
            for c, s in zip(batch, score_records(scorer, [(c["instruction"], c["passage"]) for c in batch])):
                row = {"id": c["id"], "score": s.value, "reason": s.reason}
                w.write(row)
                have[str(c["id"])] = row
    return {str(c["id"]): have[str(c["id"])] for c in cands}
