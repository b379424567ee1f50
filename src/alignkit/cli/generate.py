"""``alignkit generate``: JSONL of prompts in, JSONL of completions out, resumable."""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass, field

from alignkit.cli._common import (
    Decoding,
    RouteFile,
    Sharding,
    add_quiet,
    given_options,
    open_model,
    progress_for,
    show_prompt,
    start_shard,
    with_seed,
)
from alignkit.cli._config import add_dataclass_arguments, build, load_config_file
from alignkit.errors import InputError
from alignkit.generation import generate_records
from alignkit.io import nonempty, written_ids
from alignkit.methods import MethodOptions
from alignkit.models.catalog import DEFAULT_MODEL
from alignkit.models.registry import ModelOptions
from alignkit.records import parse_records, record_prompt


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
    add_dataclass_arguments(p, RouteFile, group="route tree")
    add_dataclass_arguments(p, ModelOptions, group="model options")
    add_dataclass_arguments(p, Sharding, group="sharding")
    add_quiet(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    file_values = load_config_file(args.config, GenerateJob, Decoding, MethodOptions, ModelOptions, RouteFile, Sharding)
    job: GenerateJob = build(GenerateJob, args, file_values)
    decoding: Decoding = build(Decoding, args, file_values)
    decoding.constraint()  # a bad schema, regex or choice list fails before any model loads
    method: MethodOptions = build(MethodOptions, args, file_values)
    options: ModelOptions = build(ModelOptions, args, file_values)
    records = parse_records(job.input, job.on_error)
    index = {str(r["id"]): i for i, (_, r) in enumerate(records)}  # a record's seed: its place in the whole input
    if job.show_prompt:
        model = open_model(job.model, options, method, build(RouteFile, args, file_values).route,
                       given_options(args, file_values))
        base_cfg = decoding.config(model)
        for _, r in records:
            show_prompt(model, record_prompt(r), with_seed(base_cfg, index[str(r["id"])]), label=f"id={r['id']}")
        return 0
    shard, output = start_shard(build(Sharding, args, file_values), "generate", job.input, job.output,
                                [str(r["id"]) for _, r in records], options=(job, decoding, method, options, build(RouteFile, args, file_values)))
    if shard is not None:
        mine = set(shard.ids)
        records = [nr for nr in records if str(nr[1]["id"]) in mine]
    done = written_ids(output) if job.resume else set()
    if not job.resume and nonempty(output):
        raise InputError(f"output file {output!r} already has records; pass --resume to continue it, "
                         "or choose another output file")
    todo = [r for _, r in records if str(r["id"]) not in done]
    if not todo:
        print(f"alignkit generate: nothing to do ({len(records)} records, all already in {output})", file=sys.stderr)
        if shard is not None:
            shard.finish({"records": len(records)})
        return 0
    model = open_model(job.model, options, method, build(RouteFile, args, file_values).route,
                       given_options(args, file_values))
    # every record keeps its place in the whole input (its seed), whichever shard or resumed run does it
    generate_records(model, [r for _, r in records], decoding.config(model), output=output, resume=job.resume,
                     batch_size=job.batch_size, progress=progress_for(args), index=index)
    print(f"alignkit generate: wrote {len(todo)} record(s) to {output}", file=sys.stderr)
    if shard is not None:
        print(f"alignkit generate: shard finished: {shard.finish({'records': len(records)})}", file=sys.stderr)
    return 0
