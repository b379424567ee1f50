"""Pieces shared by the commands that run a model."""

from __future__ import annotations

import logging
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, TextIO

from alignkit.api import resources
from alignkit.errors import InputError
from alignkit.methods import MethodOptions, apply_method, recommended_repetition_penalty
from alignkit.methods.base import MethodModel, prepared_for_backend
from alignkit.methods.tree import build, load_tree
from alignkit.models.base import children
from alignkit.models.registry import ModelOptions, ModelPool
from alignkit.progress import Progress
from alignkit.resumable import with_seed  # noqa: F401 -- re-exported for the commands
from alignkit.sharding import Shard, ShardJob
from alignkit.structured import Constraint
from alignkit.types import GenerationConfig, Prompt


@dataclass(frozen=True)
class Sharding:
    shard: str | None = field(default=None, metadata={
        "help": "do only shard I of N (written I/N, from 0: the input records at positions k with k %% N == I) and "
                "write them beside the output (OUTPUT.shard-I-of-N); `alignkit merge OUTPUT` joins the finished "
                "shards, `alignkit shards --workers N COMMAND ...` runs them all and merges"})


def start_shard(sharding: Sharding, command: str, input_path: str, output: str, ids: list[str],
                files: dict[str, dict[str, Any]] | None = None, options: Sequence[Any] = ()):
    """The shard job (None when unsharded) and the output path this run writes to. ``options``: the command's
    resolved option dataclasses (shards that disagree on them do not merge)."""
    import dataclasses


    shard = Shard.parse(sharding.shard)
    if shard is None:
        return None, output
    resolved = {}
    for o in options:
        resolved.update({k: v for k, v in dataclasses.asdict(o).items() if k not in ("resume", "shard", "show_prompt")})
    job = ShardJob(shard, command, input_path, output, [ids[k] for k in range(len(ids)) if shard.owns(k)],
                   files or {"output": {"key": ["id"], "complete": True}}, resolved)
    for spec in job.files.values():  # each file: where it merges to, where this shard writes it
        spec.setdefault("output", output)
        spec.setdefault("target", str(shard.path(spec["output"])))
    job.check_input()
    print(f"alignkit {command}: shard {shard.index}/{shard.count}: {len(job.ids)} of {len(ids)} record(s) -> "
          f"{job.target}", file=sys.stderr)
    return job, str(job.target)


@dataclass(frozen=True)
class Decoding:
    max_new_tokens: int = field(default=256, metadata={"min": 1, "help": "most tokens to generate per answer"})
    temperature: float = field(default=0.0, metadata={"min": 0, "help": "sampling temperature; 0 is greedy"})
    top_p: float = field(default=1.0, metadata={"gt": 0, "max": 1, "help": "nucleus sampling threshold"})
    top_k: int = field(default=0, metadata={"min": 0, "help": "sample from the k most likely tokens (0: off)"})
    repetition_penalty: float | None = field(default=None, metadata={"min": 0.01, "max": 100,
        "help": "penalty for repeating tokens (see --repetition-penalty-scope; 1: off; default: the method's recommendation, "
                "1.15 for urial, else 1.0)"})
    repetition_penalty_scope: str = field(default="answer", metadata={
        "choices": ("answer", "all"),
        "help": "what the repetition penalty counts: answer (the answer so far; an in-context prompt's examples hold "
                "tokens an answer must be free to use) or all (prompt and answer, URIAL's original setting; vLLM "
                "always counts both)"})
    seed: int | None = field(default=None, metadata={"help": "random seed for sampling"})
    stop: tuple[str, ...] = field(
        default=(), metadata={"help": "extra stop string; the output ends before it (\\n and \\t escapes work)"}
    )
    json_schema: str | None = field(default=None, metadata={
        "help": "structured output: every answer is JSON matching the JSON schema in this file (enforced token by "
                "token; transformers and llama.cpp backends)"})
    regex: str | None = field(default=None, metadata={"help": "structured output: every answer matches this regex"})
    choice: tuple[str, ...] = field(default=(), metadata={
        "help": "structured output: every answer is exactly one of these strings"})

    def constraint(self) -> Any:
        """The structured-output constraint these options ask for (at most one), or None."""
        import json
        from pathlib import Path


        given = [n for n, v in (("--json-schema", self.json_schema), ("--regex", self.regex),
                                ("--choice", self.choice)) if v]
        if len(given) > 1:
            raise InputError(f"give one of --json-schema, --regex, --choice (got {', '.join(given)})")
        if self.json_schema:
            try:
                schema = json.loads(Path(self.json_schema).read_text(encoding="utf-8"))
            except OSError as e:
                raise InputError(f"--json-schema: cannot read {self.json_schema!r}: {e.strerror}") from None
            except json.JSONDecodeError as e:
                raise InputError(f"--json-schema: {self.json_schema!r} is not valid JSON: {e}") from None
            c = Constraint.json_schema(schema)
        elif self.regex:
            c = Constraint("regex", self.regex)
        elif self.choice:
            c = Constraint.choice(list(self.choice))
        else:
            return None
        c.grammar()  # a bad schema or regex fails here, before any model runs
        return c

    def config(self, model: Any = None) -> GenerationConfig:
        """The generation config; unset options take the method's recommended decoding."""
        rp = self.repetition_penalty
        if rp is None:
            rp = recommended_repetition_penalty(model)
        return GenerationConfig(
            max_new_tokens=self.max_new_tokens, temperature=self.temperature, top_p=self.top_p, top_k=self.top_k,
            repetition_penalty=rp, repetition_penalty_scope=self.repetition_penalty_scope, seed=self.seed,
            stop=tuple(unescape(s) for s in self.stop),
            constraint=self.constraint(),
        )


def add_quiet(parser: Any) -> None:
    """``--quiet``: no progress output (results and errors still print)."""
    parser.add_argument("--quiet", action="store_true", help="no progress bars or progress lines on stderr")


def progress_for(args: Any) -> Progress:
    return Progress(quiet=bool(getattr(args, "quiet", False)))


def unescape(text: str) -> str:
    """Turn the escapes people type on a command line (\\n, \\t, \\\\) into the characters they mean."""
    out, i = [], 0
    while i < len(text):
        if text[i] == "\\" and i + 1 < len(text) and text[i + 1] in "nt\\":
            out.append({"n": "\n", "t": "\t", "\\": "\\"}[text[i + 1]])
            i += 2
        else:
            out.append(text[i])
            i += 1
    return "".join(out)


@dataclass(frozen=True)
class RouteFile:
    route: str | None = field(default=None, metadata={
        "help": "a route tree to run, from a YAML or JSON file (e.g. {urial: {model: gemma-3-270m, k: 3}}; any "
                "composition of methods: see docs/concepts/route-trees.md), instead of --model and the "
                "alignment-method flags"})


def open_model(spec: str, options: ModelOptions, method: MethodOptions, route: str | None = None,
               given: set[str] | frozenset[str] = frozenset()) -> Any:
    """Load a model and wrap it in the chosen method (other models a method needs are loaded once per spec), or
    build the route tree of a ``--route`` file; ``given``: the option names the user set (flags and config keys),
    which must not also say what the route file says."""
    log_warnings_to_stderr()
    pool = ModelPool(options)
    if route:
        import dataclasses

        clash = sorted(given & ({f.name for f in dataclasses.fields(MethodOptions)} | {"model"}))
        if clash:
            raise InputError(f"--route {route} says which models run and how they are prompted; drop "
                             f"{', '.join('--' + c.replace('_', '-') for c in clash)}")
        return build(load_tree(route), resources(pool=pool))
    return apply_method(pool(spec), method, resources(pool=pool))


def given_options(args: Any, file_values: dict[str, Any]) -> set[str]:
    """The option names a user set, by flag or in the config file (flags' defaults never reach ``args``)."""
    return set(vars(args)) | set(file_values)


def show_prompt(model: Any, prompt: Prompt, config: GenerationConfig, out: TextIO | None = None, label: str = "") -> None:
    """Print exactly what the underlying model sees, and where it stops, without running it."""
    out = out or sys.stdout
    if hasattr(model, "stage_prompts"):  # a route: every stage's prompt (earlier stages run to show later ones)
        for i, (label_i, text) in enumerate(model.stage_prompts(prompt, config), 1):
            print(f"===== prompt{(' ' + label) if label else ''} stage {i}: {label_i} =====", file=out)
            print(text, end="" if text.endswith("\n") else "\n", file=out)
        return

    prepared = model.prepare(prompt, config)
    stops = tuple(dict.fromkeys(config.stop + prepared.stop))
    # a method shows what the model under it sees; a node that is not a method (DeRa) shows each of its sides
    sides = [("", model)] if isinstance(model, MethodModel) else [  # (a scorer is a child, not a side)
        (f" {'reference' if slot == 'ref' else slot} side", m) for slot, m in children(model) if hasattr(m, "generate")]
    for side, m in sides:
        backend, seen, _, _ = prepared_for_backend(m, prompt, config)
        rendered = backend.render(seen)
        extra = f", lambda {model.lam}" if getattr(model, "lam", None) is not None else ""
        print(f"===== prompt{(' ' + label) if label else ''}{side} ({model.method}{extra}) =====", file=out)
        print(rendered, end="" if rendered.endswith("\n") else "\n", file=out)
    print("===== stop strings =====", file=out)
    for s in stops:
        print(repr(s), file=out)
    if prepared.meta:
        print(f"===== meta: {prepared.meta} =====", file=out)


def log_warnings_to_stderr() -> None:
    log = logging.getLogger("alignkit")
    if not any(getattr(h, "_alignkit", False) for h in log.handlers):
        h = logging.StreamHandler(sys.stderr)
        h.setFormatter(logging.Formatter("alignkit: warning: %(message)s"))
        h._alignkit = True  # type: ignore[attr-defined]
        log.addHandler(h)
        log.setLevel(logging.WARNING)
        log.propagate = False
