"""``alignkit chat``: talk to any model or method -- interactively, or once through a pipe.

Interactive commands: ``/reset`` (forget the conversation), ``/system TEXT`` (set the system message;
``/system`` alone clears it), ``/save FILE`` (the conversation and its provenance as JSON), ``/prompt``
(show what the model would see next), ``/help``, ``/exit``.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path

from alignkit.cli._common import Decoding, RouteFile, given_options, open_model, show_prompt
from alignkit.cli._config import add_dataclass_arguments, build, load_config_file
from alignkit.errors import InputError
from alignkit.methods import MethodOptions
from alignkit.models.catalog import DEFAULT_MODEL
from alignkit.models.registry import ModelOptions
from alignkit.types import Message

HELP = "/reset  /system TEXT  /save FILE  /prompt  /help  /exit"


@dataclass(frozen=True)
class ChatJob:
    model: str = field(default=DEFAULT_MODEL, metadata={"help": "model spec (see `alignkit models`)"})
    system: str | None = field(default=None, metadata={"help": "system message for the conversation"})
    message: str | None = field(default=None, metadata={
        "help": "send this one message, print the answer and exit (like piping it on stdin)"})
    show_prompt: bool = field(default=False, metadata={
        "help": "print the exact prompt and stop strings the model would see for the message, and exit"})


def add_parser(sub) -> None:
    p = sub.add_parser(
        "chat",
        help="chat with a model or alignment method (interactive, or through a pipe)",
        description="Chat with any model through any method. With a terminal it is a REPL with streamed "
        f"answers and history ({HELP}); with a pipe, stdin is one message and the answer is printed: "
        "echo 'How do I boil an egg?' | alignkit chat --model gemma-3-270m --method urial",
    )
    p.add_argument("--config", help="YAML file of options (flags override it)")
    add_dataclass_arguments(p, ChatJob)
    add_dataclass_arguments(p, Decoding, group="decoding")
    add_dataclass_arguments(p, MethodOptions, group="alignment method")
    add_dataclass_arguments(p, RouteFile, group="route tree")
    add_dataclass_arguments(p, ModelOptions, group="model options")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    file_values = load_config_file(args.config, ChatJob, Decoding, MethodOptions, ModelOptions, RouteFile)
    job: ChatJob = build(ChatJob, args, file_values)
    decoding: Decoding = build(Decoding, args, file_values)
    decoding.constraint()  # a bad schema, regex or choice list fails before any model loads
    given = given_options(args, file_values)
    file_values.setdefault("method", "auto")  # chat talks to whatever the model is best talked to with
    method: MethodOptions = build(MethodOptions, args, file_values)
    options: ModelOptions = build(ModelOptions, args, file_values)
    history: list[Message] = [Message("system", job.system)] if job.system else []
    one_shot = job.message
    if one_shot is None and not sys.stdin.isatty():
        one_shot = sys.stdin.read().strip()
        if not one_shot:
            raise InputError("no message: stdin was empty (pipe a message in, or pass --message)")
    if job.show_prompt and one_shot is None:
        raise InputError("--show-prompt needs a message: pass --message TEXT or pipe one in")
    model = open_model(job.model, options, method, build(RouteFile, args, file_values).route, given)
    cfg = decoding.config(model)
    if one_shot is not None:
        history.append(Message("user", one_shot))
        if job.show_prompt:
            show_prompt(model, history, cfg)
            return 0
        _answer(model, history, cfg)
        return 0
    return _repl(model, history, cfg, job)


def _answer(model, history: list[Message], cfg) -> str:
    text = ""
    for ev in model.stream([history], cfg):
        sys.stdout.write(ev.text)
        sys.stdout.flush()
        if ev.completion is not None:
            text = ev.completion.text
    sys.stdout.write("\n")
    sys.stdout.flush()
    return text


def _repl(model, history: list[Message], cfg, job: ChatJob) -> int:
    try:
        import readline  # noqa: F401  (line editing and history for input())
    except ImportError:  # pragma: no cover
        pass
    print(f"alignkit chat -- {job.model} via {model.method}. {HELP}", file=sys.stderr)
    while True:
        try:
            line = input("you> ")
        except EOFError:
            print(file=sys.stderr)
            return 0
        if not line.strip():
            continue
        if line.startswith("/"):
            cmd, _, arg = line.partition(" ")
            if cmd in ("/exit", "/quit"):
                return 0
            if cmd == "/reset":
                history[:] = [m for m in history if m.role == "system"]
                print("(conversation cleared)", file=sys.stderr)
            elif cmd == "/system":
                history[:] = [m for m in history if m.role != "system"]
                if arg.strip():
                    history.insert(0, Message("system", arg.strip()))
                print("(system message " + ("set)" if arg.strip() else "cleared)"), file=sys.stderr)
            elif cmd == "/save":
                _save(model, history, arg.strip())
            elif cmd == "/prompt":
                show_prompt(model, history + [Message("user", "…")], cfg)
            else:
                print(HELP, file=sys.stderr)
            continue
        history.append(Message("user", line))
        try:
            sys.stdout.write("assistant> ")
            history.append(Message("assistant", _answer(model, history, cfg)))
        except KeyboardInterrupt:
            history.pop()
            print("\n(interrupted)", file=sys.stderr)


def _save(model, history: list[Message], path: str) -> None:
    if not path:
        print("usage: /save FILE", file=sys.stderr)
        return
    data = {"messages": [m.to_dict() for m in history], "provenance": model.info()}
    try:
        Path(path).write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    except OSError as e:
        print(f"could not save: {e}", file=sys.stderr)
        return
    print(f"(saved {len(history)} messages to {path})", file=sys.stderr)
