"""``alignkit data convert | bpo-pairs | aligner-triples | revise``: training data for the route stages (BPO
rewriters, Aligner correctors) from public record formats and with a teacher model, and critique-and-revise."""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass, field

from alignkit.api import open_scorer, resources
from alignkit.cli._common import Decoding, open_model, progress_for
from alignkit.cli._config import build
from alignkit.errors import InputError
from alignkit.io import JsonlAppender
from alignkit.methods import SIDE_METHODS, MethodOptions
from alignkit.methods.tree import build as build_tree
from alignkit.methods.tree import is_route_file, load_tree, node
from alignkit.models.catalog import DEFAULT_MODEL
from alignkit.models.registry import ModelOptions
from alignkit.records import parse_records
from alignkit.training import data
from alignkit.training.backtranslate import backtranslate, read_corpus
from alignkit.training.common import Recipe, Tuning
from alignkit.training.revise import critique_and_revise
from alignkit.training.routes import (
    FORMATS,
    build_aligner_triples,
    build_bpo_pairs,
    load_preferences,
    load_qa,
)
from alignkit.training.sft import SFTJob, run_sft
from alignkit.types import GenerationConfig


@dataclass(frozen=True)
class ConvertJob:
    input: str = field(default="", metadata={
        "help": "a JSONL or JSON-list file, or hub:NAME[:SPLIT] (through datasets)", "required": True})
    output: str = field(default="", metadata={"help": "JSONL in alignkit's format", "required": True})
    kind: str = field(default="prefs", metadata={
        "help": "what to read: prefs ({id, prompt, chosen, rejected}) or qa ({id, question, answer[, correction]})",
        "choices": ["prefs", "qa"]})
    input_format: str = field(default="auto", metadata={
        "help": "the input's record format (auto: detected per record)", "choices": list(FORMATS)})


@dataclass(frozen=True)
class BPOPairsJob:
    input: str = field(default="", metadata={
        "help": "preference records: JSONL/JSON file (alignkit, HH-RLHF or BPO format) or hub:NAME[:SPLIT]",
        "required": True})
    output: str = field(default="", metadata={
        "help": "JSONL of {id, prompt, improved_prompt, critique} (appended; rerun to resume)", "required": True})
    teacher: str = field(default=DEFAULT_MODEL, metadata={"help": "teacher model spec (critiques, rewrites)"})
    teacher_prompt: str = field(default="bpo", metadata={
        "help": "bpo (an instruction, for capable teachers: use --method auto/template) or bpo-fewshot (a few-shot "
                "completion, for small or base teachers: use --method none)", "choices": ["bpo", "bpo-fewshot"]})
    min_overlap: float = field(default=0.5, metadata={
        "min": 0, "max": 1, "help": "drop rewrites that keep less than this share of the request's content words "
                                    "(off topic: small teachers copy their examples)"})
    input_format: str = field(default="auto", metadata={"help": "the input's record format", "choices": list(FORMATS)})
    batch_size: int = field(default=8, metadata={"min": 1, "help": "records the teacher works on together"})


@dataclass(frozen=True)
class AlignerTriplesJob:
    input: str = field(default="", metadata={
        "help": "question-answer records: JSONL/JSON file (alignkit, Aligner or HH-RLHF format) or hub:NAME",
        "required": True})
    output: str = field(default="", metadata={
        "help": "JSONL of {id, question, answer, correction} (appended; rerun to resume)", "required": True})
    teacher: str = field(default=DEFAULT_MODEL, metadata={"help": "teacher model spec (writes the corrections)"})
    teacher_prompt: str = field(default="aligner", metadata={
        "help": "aligner (an instruction) or aligner-fewshot (a few-shot completion, with --method none)",
        "choices": ["aligner", "aligner-fewshot"]})
    input_format: str = field(default="auto", metadata={"help": "the input's record format", "choices": list(FORMATS)})
    batch_size: int = field(default=8, metadata={"min": 1, "help": "records the teacher works on together"})


@dataclass(frozen=True)
class ReviseJob:
    input: str = field(default="", metadata={
        "help": "JSONL of SFT records (messages ending with the answer), {id, prompt, answer}, or prompts alone "
                "({id, prompt} / messages ending with a user turn: --answerer answers them first)", "required": True})
    output: str = field(default="", metadata={
        "help": "JSONL of SFT records with the final revision, the original and every round (appended; rerun to "
                "resume)", "required": True})
    critic: str = field(default=DEFAULT_MODEL, metadata={
        "help": "who writes the critiques: a model spec (under --critic-method) or a route-tree file (.yaml/.json)"})
    critic_method: str = field(default="auto", metadata={"help": "how a critic spec is prompted",
                                                         "choices": list(SIDE_METHODS)})
    reviser: str | None = field(default=None, metadata={
        "help": "who rewrites the answers following the critique: a model spec or a route file (default: the critic)"})
    reviser_method: str = field(default="auto", metadata={"help": "how a reviser spec is prompted",
                                                          "choices": list(SIDE_METHODS)})
    answerer: str | None = field(default=None, metadata={
        "help": "for records without an answer: a model spec or route file that answers them first"})
    answerer_method: str = field(default="auto", metadata={"help": "how an answerer spec is prompted",
                                                           "choices": list(SIDE_METHODS)})
    rounds: int = field(default=2, metadata={"min": 1, "help": "most critique-and-revise rounds per answer (stops "
                                                               "early when the critic replies NO ISSUES)"})
    removed: str | None = field(default=None, metadata={
        "help": "JSONL file for the records that could not be revised, with the reason and their rounds"})
    pairs: str | None = field(default=None, metadata={
        "help": "also write preference pairs: the final revision (chosen) over the original answer (rejected)"})
    batch_size: int = field(default=8, metadata={"min": 1, "help": "records worked on together"})


@dataclass(frozen=True)
class BacktranslateJob:
    corpus: tuple[str, ...] = field(default=(), metadata={
        "help": "unlabelled text to make instructions for: JSONL files with a text field per line, or text files "
                "(split at blank lines into passages); repeat for several", "required": True})
    output: str = field(default="", metadata={
        "help": "folder for every step's files: passages, the backward model, candidates and dropped ones, per "
                "iteration the curator, scores, curated and rejected pairs; seed-tagged.jsonl and uncurated.jsonl "
                "(a rerun resumes)", "required": True})
    seed_data: str = field(default="alignkit-sft", metadata={
        "help": "the seed SFT records the backward model (and the default curator) learn from: a JSONL file or a "
                "shipped set"})
    model: str = field(default=DEFAULT_MODEL, metadata={"help": "the base model both models are tuned from (LoRA)"})
    curator: str | None = field(default=None, metadata={
        "help": "the scorer that rates each (instruction, passage) pair (reward:PATH, judge:MODEL, geval:MODEL ...); "
                "default: the seed-tuned forward model as a 1-5 judge (geval+curation), re-trained each iteration"})
    threshold: float = field(default=4.5, metadata={"help": "keep pairs the curator rates at least this (its own "
                                                            "scale: 1-5 for the default)"})
    iterations: int = field(default=1, metadata={"min": 1, "help": "curation rounds (the default curator only): "
                                                                   "round K's curator is trained on the seed and "
                                                                   "round K-1's curated pairs"})
    min_chars: int = field(default=200, metadata={"min": 1, "help": "shortest passage (short paragraphs are joined)"})
    max_chars: int = field(default=1500, metadata={"min": 1, "help": "longest passage (cut at a sentence end)"})
    max_passages: int | None = field(default=None, metadata={"min": 1, "help": "use only the first N passages"})
    max_new_tokens: int = field(default=96, metadata={"min": 1, "help": "most tokens of a written instruction"})
    generate_batch: int = field(default=8, metadata={"min": 1, "help": "passages the backward model works on "
                                                                       "together"})
    keep_truncated: bool = field(default=False, metadata={
        "help": "keep instructions that hit --max-new-tokens (dropped by default: a runaway is no instruction)"})
    temperature: float = field(default=0.0, metadata={"min": 0, "help": "sampling temperature of the written "
                                                                        "instructions (0: greedy; seeded by --seed)"})


SPECS = [
    ("convert", ConvertJob, "run_convert", "read public record formats (HH-RLHF, BPO, Aligner) into alignkit's", ()),
    ("bpo-pairs", BPOPairsJob, "run_bpo_pairs",
     "BPO training pairs: a teacher critiques preferred vs dispreferred answers and writes an improved prompt",
     (Decoding, MethodOptions, ModelOptions)),
    ("aligner-triples", AlignerTriplesJob, "run_aligner_triples",
     "Aligner training triples: a teacher writes the corrected answer to each question-answer pair",
     (Decoding, MethodOptions, ModelOptions)),
    ("backtranslate", BacktranslateJob, "run_backtranslate",
     "instruction back-translation: a backward model writes instructions for your texts, a curator keeps the good "
     "pairs", (Tuning, Recipe)),
    ("revise", ReviseJob, "run_revise",
     "critique and revise: a critic route critiques each answer, a reviser route rewrites it, for N rounds",
     (Decoding, ModelOptions)),
]


def _teacher(args: argparse.Namespace, values, spec: str):
    decoding: Decoding = build(Decoding, args, values)
    values.setdefault("method", "auto")
    method: MethodOptions = build(MethodOptions, args, values)
    options: ModelOptions = build(ModelOptions, args, values)
    return decoding, lambda: open_model(spec, options, method)


def run_convert(args: argparse.Namespace, values, job: ConvertJob) -> int:
    loaded = (load_preferences if job.kind == "prefs" else load_qa)(job.input, job.input_format)
    loaded.raise_if_problems()
    from pathlib import Path

    if Path(job.output).is_file() and Path(job.output).stat().st_size > 0:
        raise InputError(f"output file {job.output!r} already exists and is not empty; choose another file")
    with JsonlAppender(job.output) as out:
        for r in loaded.records:
            out.write(r)
    print(f"alignkit data convert: {len(loaded.records)} {job.kind} records -> {job.output}", file=sys.stderr)
    return 0


def _with_teacher(args: argparse.Namespace, values, job, load, construct, command: str, **kw) -> int:
    """Read and check the input, load the teacher, build the records, report the counts."""
    decoding, teacher_of = _teacher(args, values, job.teacher)
    loaded = load(job.input, job.input_format)
    loaded.raise_if_problems()
    teacher = teacher_of()
    counts = construct(loaded.records, teacher, decoding.config(teacher), job.output, batch_size=job.batch_size,
                       progress=progress_for(args), teacher_prompt=job.teacher_prompt, **kw)
    print(f"alignkit data {command}: {json.dumps(counts)} -> {job.output}", file=sys.stderr)
    return 0


def run_bpo_pairs(args: argparse.Namespace, values, job: BPOPairsJob) -> int:
    return _with_teacher(args, values, job, load_preferences, build_bpo_pairs, "bpo-pairs",
                         min_overlap=job.min_overlap)


def run_backtranslate(args: argparse.Namespace, values, job: BacktranslateJob) -> int:
    recipe, tuning = build(Recipe, args, values), build(Tuning, args, values)
    seed = data.load(job.seed_data, "sft")
    seed.raise_if_problems("nothing was done")
    passages = read_corpus(list(job.corpus), min_chars=job.min_chars, max_chars=job.max_chars)[: job.max_passages]
    res = resources()

    def train(records, folder):
        return run_sft(SFTJob(data=f"backtranslate:{job.seed_data}", output=folder, model=job.model), recipe, tuning,
                       records=records)

    summary = backtranslate(seed.records, passages, job.output, train=train,
                            load=lambda folder: build_tree(node("auto", model=folder), res),
                            scorer=lambda spec: open_scorer(spec, res), curator=job.curator,
                            threshold=job.threshold, iterations=job.iterations,
                            cfg=GenerationConfig(max_new_tokens=job.max_new_tokens, temperature=job.temperature,
                                                 seed=recipe.seed), batch_size=job.generate_batch,
                            keep_truncated=job.keep_truncated)
    print(f"alignkit data backtranslate: {json.dumps(summary)} -> {job.output}", file=sys.stderr)
    return 0


def run_revise(args: argparse.Namespace, values, job: ReviseJob) -> int:
    decoding: Decoding = build(Decoding, args, values)
    res = resources(build(ModelOptions, args, values))
    records = [r for _, r in parse_records(job.input, "stop")]  # malformed lines listed with their numbers

    def route(spec: str, method: str):
        return build_tree(load_tree(spec) if is_route_file(spec) else node(method, model=spec), res)

    critic = route(job.critic, job.critic_method)
    reviser = route(job.reviser, job.reviser_method) if job.reviser else critic
    answerer = route(job.answerer, job.answerer_method) if job.answerer else None
    counts = critique_and_revise(records, critic, reviser, decoding.config(reviser), job.output, rounds=job.rounds,
                                 answerer=answerer, removed=job.removed, pairs=job.pairs, batch_size=job.batch_size,
                                 progress=progress_for(args))
    print(f"alignkit data revise: {json.dumps(counts)} -> {job.output}", file=sys.stderr)
    return 0


def run_aligner_triples(args: argparse.Namespace, values, job: AlignerTriplesJob) -> int:
    return _with_teacher(args, values, job, load_qa, build_aligner_triples, "aligner-triples")
