"""``alignkit serve``: any model or method behind an OpenAI-compatible HTTP API."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from dataclasses import dataclass, field, replace
from typing import Any

from alignkit.api import resources
from alignkit.cli._common import open_model
from alignkit.cli._config import add_dataclass_arguments, build, load_config_file
from alignkit.errors import InputError
from alignkit.methods import MethodOptions, apply_method
from alignkit.methods.tree import build as build_tree
from alignkit.methods.tree import is_route_file, load_tree
from alignkit.models.base import answering_backend
from alignkit.models.catalog import DEFAULT_MODEL
from alignkit.models.registry import ModelOptions, SharedPool
from alignkit.server.service import Service
from alignkit.validate import check_mapping


@dataclass(frozen=True)
class ServeJob:
    model: str = field(default=DEFAULT_MODEL, metadata={"help": "model spec (see `alignkit models`)"})
    name: str | None = field(default=None, metadata={"help": "model name clients use (default: method:model)"})
    host: str = field(default="127.0.0.1", metadata={"help": "address to bind (localhost by default)"})
    port: int = field(default=8000, metadata={"min": 0, "max": 65535, "help": "port"})
    api_key: str | None = field(default=None, metadata={
        "help": "require 'Authorization: Bearer KEY' on /v1 (or set ALIGNKIT_API_KEY)"})
    max_batch: int | None = field(default=None, metadata={"min": 1, "help": (
        "most requests (choices) generated together (default 8; on vLLM's async engine, which schedules its own "
        "batch, the engine's max_num_seqs)")})
    scheduler: str = field(default="auto", metadata={
        "choices": ("auto", "continuous", "static"),
        "help": "continuous: requests join the running batch between decode steps and leave when they finish "
                "(transformers backend, under any method but a rewriter/corrector route); static: a batch runs "
                "until its last request ends; auto: continuous where the model can"})
    max_queue: int = field(default=64, metadata={"min": 0, "help": "requests waiting beyond that get 503 + Retry-After"})
    max_tokens: int = field(default=2048, metadata={"min": 1, "help": "largest max_tokens a request may ask for"})
    default_max_tokens: int = field(default=256, metadata={"min": 1, "help": "max_tokens when a request gives none"})
    max_n: int = field(default=4, metadata={"min": 1, "help": "largest n (choices per request)"})
    max_body_bytes: int = field(default=1 << 20, metadata={"min": 1, "help": "largest request body"})
    log_prompts: bool = field(default=False, metadata={"help": "log prompts (off: prompts and keys are never logged)"})
    route: tuple[str, ...] = field(default=(), metadata={
        "help": "serve several routes from one process: NAME=KEY=VALUE,KEY=VALUE,... with model= (default --model) "
                "and any alignment-method option, e.g. urial=method=urial,template=urial-k3 or "
                "mix=model=runs/dpo,method=dera,ref=runs/sft,lam=0.5; a request's 'model' picks the route; routes "
                "on the same model spec share one loaded copy (in a config file: route: [..]); NAME=FILE.yaml serves "
                "the route tree in that file (see docs/concepts/route-trees.md)"})


def add_parser(sub) -> None:
    p = sub.add_parser(
        "serve",
        help="serve a model or alignment method over an OpenAI-compatible API",
        description="Serve any model or method (e.g. a base model aligned in context) at /v1/chat/completions, "
        "/v1/completions and /v1/models, with /health. Example: alignkit serve --model gemma-3-270m --method urial",
    )
    p.add_argument("--config", help="YAML file of options (flags override it)")
    add_dataclass_arguments(p, ServeJob)
    add_dataclass_arguments(p, MethodOptions, group="alignment method")
    add_dataclass_arguments(p, ModelOptions, group="model options")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import uvicorn

    from alignkit.server.app import Limits, build_app

    file_values = load_config_file(args.config, ServeJob, MethodOptions, ModelOptions)
    job: ServeJob = build(ServeJob, args, file_values)
    file_values.setdefault("method", "auto")
    method: MethodOptions = build(MethodOptions, args, file_values)
    options: ModelOptions = build(ModelOptions, args, file_values)
    if options.vllm_engine is None:  # a server wants vLLM's async engine: token streaming, continuous batching
        options = replace(options, vllm_engine="async")
    if job.route:
        services = [Service(model, name, max_batch=batch_size(job.max_batch, model), max_queue=job.max_queue,
                            scheduler=job.scheduler)
                    for name, model in open_routes(job.route, job.model, options)]
        name = ", ".join(s.name for s in services)
    else:
        model = open_model(job.model, options, method)
        name = job.name or f"{model.method}:{job.model}"
        services = [Service(model, name, max_batch=batch_size(job.max_batch, model), max_queue=job.max_queue,
                            scheduler=job.scheduler)]
    limits = Limits(max_tokens=job.max_tokens, default_max_tokens=job.default_max_tokens, max_n=job.max_n,
                    max_body_bytes=job.max_body_bytes)
    api_key = job.api_key or os.environ.get("ALIGNKIT_API_KEY") or None
    if job.log_prompts:
        logging.getLogger("alignkit.server").setLevel(logging.INFO)
    app = build_app(services, api_key=api_key, limits=limits, log_prompts=job.log_prompts, close_models=True)
    if job.host not in ("127.0.0.1", "localhost", "::1") and not api_key:
        print("alignkit serve: warning: listening beyond localhost without --api-key", file=sys.stderr)
    print(f"alignkit serve: {name} on http://{job.host}:{job.port}/v1" + (" (API key required)" if api_key else ""),
          file=sys.stderr)
    uvicorn.run(app, host=job.host, port=job.port, log_level="warning", timeout_graceful_shutdown=30)
    return 0


def batch_size(asked: int | None, model: Any) -> int:
    """``--max-batch``, else 8 -- or, where the answer comes from vLLM's async engine (which schedules its own
    batch), the engine's own limit."""
    if asked is not None:
        return asked
    engine = getattr(answering_backend(model), "max_num_seqs", None)
    return int(engine) if engine else 8


def parse_route(text: str) -> tuple[str, str | None, Any]:
    """``NAME=KEY=VALUE,KEY=VALUE`` -> (name, model spec or None, method options), values read as YAML scalars
    and checked against the option they set; ``NAME=FILE.yaml`` -> (name, None, the route tree in the file)."""
    import yaml


    name, sep, rest = text.partition("=")
    if not sep or not name.strip():
        raise InputError(f"--route {text!r}: write NAME=KEY=VALUE,KEY=VALUE (e.g. urial=method=urial) or NAME=FILE.yaml")
    if is_route_file(rest):
        return name.strip(), None, load_tree(rest.strip())
    values: dict[str, Any] = {}
    for item in filter(None, (x.strip() for x in rest.split(","))):
        key, eq, value = item.partition("=")
        if not eq:
            raise InputError(f"--route {name}: {item!r} is not KEY=VALUE")
        values[key.strip().replace("-", "_")] = yaml.safe_load(value) if value.strip() else None
    model = values.pop("model", None)
    if model is not None and not isinstance(model, str):
        model = str(model)
    values.setdefault("method", "auto")
    return name.strip(), model, check_mapping(MethodOptions, values, what=f"--route {name}")


def open_routes(routes: tuple[str, ...], default_model: str, options: ModelOptions) -> list[tuple[str, Any]]:
    """Every route of ``--route``, all loaded through one pool: a model spec several routes use is loaded once, and
    an adapter folder is a view of its base already loaded (one copy of the weights, adapters switched per call)."""
    parsed = [parse_route(r) for r in routes]  # every route checked before anything loads
    names = [n for n, _, _ in parsed]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise InputError(f"--route: the name(s) {', '.join(dupes)} are used twice")
    pool = SharedPool(options)
    pool.prepare([model or default_model for _, model, values in parsed if isinstance(values, dict)])
    return [(name, apply_method(pool(model or default_model), MethodOptions(**values), resources(pool=pool))
             if isinstance(values, dict) else build_tree(values, resources(pool=pool)))
            for name, model, values in parsed]
