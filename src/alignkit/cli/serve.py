"""``alignkit serve``: any model or method behind an OpenAI-compatible HTTP API."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from dataclasses import dataclass, field

from alignkit.cli._common import open_model
from alignkit.cli._config import add_dataclass_arguments, build, load_config_file
from alignkit.methods import MethodOptions
from alignkit.models.catalog import DEFAULT_MODEL
from alignkit.models.registry import ModelOptions


@dataclass(frozen=True)
class ServeJob:
    model: str = field(default=DEFAULT_MODEL, metadata={"help": "model spec (see `alignkit models`)"})
    name: str | None = field(default=None, metadata={"help": "model name clients use (default: method:model)"})
    host: str = field(default="127.0.0.1", metadata={"help": "address to bind (localhost by default)"})
    port: int = field(default=8000, metadata={"min": 0, "max": 65535, "help": "port"})
    api_key: str | None = field(default=None, metadata={
        "help": "require 'Authorization: Bearer KEY' on /v1 (or set ALIGNKIT_API_KEY)"})
    max_batch: int = field(default=8, metadata={"min": 1, "help": "most requests (choices) generated together"})
    max_queue: int = field(default=64, metadata={"min": 0, "help": "requests waiting beyond that get 503 + Retry-After"})
    max_tokens: int = field(default=2048, metadata={"min": 1, "help": "largest max_tokens a request may ask for"})
    default_max_tokens: int = field(default=256, metadata={"min": 1, "help": "max_tokens when a request gives none"})
    max_n: int = field(default=4, metadata={"min": 1, "help": "largest n (choices per request)"})
    max_body_bytes: int = field(default=1 << 20, metadata={"min": 1, "help": "largest request body"})
    log_prompts: bool = field(default=False, metadata={"help": "log prompts (off: prompts and keys are never logged)"})


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
    from alignkit.server.service import Service

    file_values = load_config_file(args.config, ServeJob, MethodOptions, ModelOptions)
    job: ServeJob = build(ServeJob, args, file_values)
    file_values.setdefault("method", "auto")
    method: MethodOptions = build(MethodOptions, args, file_values)
    options: ModelOptions = build(ModelOptions, args, file_values)
    model = open_model(job.model, options, method)
    name = job.name or f"{model.method}:{job.model}"
    service = Service(model, name, max_batch=job.max_batch, max_queue=job.max_queue)
    limits = Limits(max_tokens=job.max_tokens, default_max_tokens=job.default_max_tokens, max_n=job.max_n,
                    max_body_bytes=job.max_body_bytes)
    api_key = job.api_key or os.environ.get("ALIGNKIT_API_KEY") or None
    if job.log_prompts:
        logging.getLogger("alignkit.server").setLevel(logging.INFO)
    app = build_app(service, api_key=api_key, limits=limits, log_prompts=job.log_prompts)
    if job.host not in ("127.0.0.1", "localhost", "::1") and not api_key:
        print("alignkit serve: warning: listening beyond localhost without --api-key", file=sys.stderr)
    print(f"alignkit serve: {name} on http://{job.host}:{job.port}/v1" + (" (API key required)" if api_key else ""),
          file=sys.stderr)
    uvicorn.run(app, host=job.host, port=job.port, log_level="warning", timeout_graceful_shutdown=30)
    return 0
