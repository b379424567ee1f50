"""``alignkit generate``: JSONL of prompts in, JSONL of completions out, resumable."""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass, field
from typing import Any

from alignkit.cli._common import (
    Decoding,
    Sharding,
    add_quiet,
    open_model,
    progress_for,
    show_prompt,
    start_shard,
    with_seed,
)
from alignkit.cli._config import add_dataclass_arguments, build, load_config_file
from alignkit.errors import InputError
from alignkit.evaluation.cheap import answer_metrics
from alignkit.io import BadLine, JsonlAppender, read_jsonl, written_ids
from alignkit.methods import MethodOptions
from alignkit.methods.routes import usage
from alignkit.models.catalog import DEFAULT_MODEL
from alignkit.models.registry import ModelOptions
from alignkit.types import as_messages


@dataclass(frozen=True)
class GenerateJob:
    input: str = field(default="", metadata={"help": "JSONL file: records with an id and a prompt or messages", "required": True})
    output: str = field(default="", metadata={"help": "JSONL file the completions are appended to", "required": True})
    model: str = field(default=DEFAULT_MODEL, metadata={"help": "model spec (see `alignkit models`)"})
    batch_size: int = field(default=8, metadata={"min": 1, "help": "prompts generated together"})
    resume: bool = field(default=False, metadata={"help": "skip ids already in the output file"})
    on_error: str = field(
        default="stop", metadata={"help": "what to do with malformed input lines", "choices": ["stop", "skip"]}
    )
    show_prompt: bool = field(
        default=False, metadata={"help": "print the exact prompt(s) and stop strings the model would see, and exit"}
    )


def add_parser(sub) -> None:
    p = sub.add_parser(
        "generate",
        help="generate completions for a JSONL file of prompts",
        description="Generate a completion for every record of a JSONL file. Each input record has an "
        "'id' and either a 'prompt' (raw text) or 'messages' (a list of {role, content}); other fields are "
        "carried over. Output records are appended and flushed one by one; --resume skips ids already "
        "written.",
    )
    p.add_argument("--config", help="YAML file of options (flags override it)")
    add_dataclass_arguments(p, GenerateJob)
    add_dataclass_arguments(p, Decoding, group="decoding")
    add_dataclass_arguments(p, MethodOptions, group="alignment method")
    add_dataclass_arguments(p, ModelOptions, group="model options")
    add_dataclass_arguments(p, Sharding, group="sharding")
    add_quiet(p)
    p.set_defaults(func=run)


def parse_records(path: str, on_error: str) -> list[tuple[int, dict[str, Any]]]:
    """Read and check the input; malformed lines are reported with their line numbers."""
    good, bad, seen = [], [], {}
    for lineno, rec in read_jsonl(path):
        if isinstance(rec, BadLine):
            bad.append(rec)
            continue
        problem = _check_record(rec)
        if problem is None and str(rec["id"]) in seen:
            problem = f"duplicate id {rec['id']!r} (first on line {seen[str(rec['id'])]})"
        if problem:
            bad.append(BadLine(path, lineno, problem))
            continue
        seen[str(rec["id"])] = lineno
        good.append((lineno, rec))
    if bad:
        shown = "\n".join(f"  {b}" for b in bad[:20]) + (f"\n  ... and {len(bad) - 20} more" if len(bad) > 20 else "")
        if on_error == "stop":
            raise InputError(f"{len(bad)} malformed input line(s), nothing generated (use --on-error skip to "
                             f"skip them):\n{shown}")
        print(f"alignkit generate: skipping {len(bad)} malformed input line(s):\n{shown}", file=sys.stderr)
    return good


def _check_record(rec: dict[str, Any]) -> str | None:
    if "id" not in rec or not isinstance(rec["id"], (str, int)) or isinstance(rec["id"], bool) or rec["id"] == "":
        return "record needs an 'id' (a non-empty string or an integer)"
    has_prompt, has_msgs = "prompt" in rec, "messages" in rec
    if has_prompt == has_msgs:
        return "record needs exactly one of 'prompt' (text) or 'messages' (a list of {role, content})"
    if has_prompt and (not isinstance(rec["prompt"], str) or not rec["prompt"]):
        return "'prompt' must be a non-empty string"
    if has_msgs:
        try:
            as_messages(rec["messages"])
        except ValueError as e:
            return f"bad 'messages': {e}"
    return None


def run(args: argparse.Namespace) -> int:
    file_values = load_config_file(args.config, GenerateJob, Decoding, MethodOptions, ModelOptions, Sharding)
    job: GenerateJob = build(GenerateJob, args, file_values)
    decoding: Decoding = build(Decoding, args, file_values)
    decoding.constraint()  # a bad schema, regex or choice list fails before any model loads
    method: MethodOptions = build(MethodOptions, args, file_values)
    options: ModelOptions = build(ModelOptions, args, file_values)
    records = parse_records(job.input, job.on_error)
    index = {str(r["id"]): i for i, (_, r) in enumerate(records)}  # a record's seed: its place in the whole input
    if job.show_prompt:
        model = open_model(job.model, options, method)
        base_cfg = decoding.config(model)
        for _, r in records:
            show_prompt(model, _prompt(r), with_seed(base_cfg, index[str(r["id"])]), label=f"id={r['id']}")
        return 0
    shard, output = start_shard(build(Sharding, args, file_values), "generate", job.input, job.output,
                                [str(r["id"]) for _, r in records], options=(job, decoding, method, options))
    if shard is not None:
        mine = set(shard.ids)
        records = [nr for nr in records if str(nr[1]["id"]) in mine]
    done = written_ids(output) if job.resume else set()
    if not job.resume and _nonempty(output):
        raise InputError(f"output file {output!r} already has records; pass --resume to continue it, "
                         "or choose another output file")
    todo = [(n, r) for n, r in records if str(r["id"]) not in done]
    if not todo:
        print(f"alignkit generate: nothing to do ({len(records)} records, all already in {output})", file=sys.stderr)
        if shard is not None:
            shard.finish({"records": len(records)})
        return 0
    model = open_model(job.model, options, method)
    base_cfg = decoding.config(model)
    provenance = {"model": model.info(), "generation": base_cfg.to_dict()}
    with JsonlAppender(output) as out, progress_for(args).task("generate", len(todo)) as advance:
        for start in range(0, len(todo), job.batch_size):
            batch = [r for _, r in todo[start : start + job.batch_size]]
            configs = [with_seed(base_cfg, index[str(r["id"])]) for r in batch]
            for rec, comp in zip(batch, model.generate([_prompt(r) for r in batch], configs)):
                row = {**rec, "output": comp.text, "finish_reason": comp.finish_reason, "stop": comp.stop,
                       "usage": usage(comp),
                       "metrics": answer_metrics(comp.text, comp.finish_reason, comp.completion_tokens)}
                meta = {k: v for k, v in (comp.meta or {}).items() if k not in ("route", "usage")}
                if comp.meta and comp.meta.get("route"):
                    row["route"] = comp.meta["route"]  # every stage: its model, input, output and usage
                if meta:
                    row["meta"] = meta
                out.write({**row, "provenance": provenance})
            advance(len(batch))
    print(f"alignkit generate: wrote {len(todo)} record(s) to {output}", file=sys.stderr)
    if shard is not None:
        print(f"alignkit generate: shard finished: {shard.finish({'records': len(records)})}", file=sys.stderr)
    return 0


def _prompt(rec: dict[str, Any]):
    return rec["prompt"] if "prompt" in rec else as_messages(rec["messages"])


def _nonempty(path: str) -> bool:
    from pathlib import Path

    p = Path(path)
    return p.is_file() and p.stat().st_size > 0
