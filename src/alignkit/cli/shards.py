"""``alignkit shards --workers N [--ray ADDRESS] COMMAND ...``: run a batch job as N shards -- local processes,
or Ray tasks spread over a cluster -- then merge them (see :mod:`alignkit.sharding`)."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from alignkit.cli._config import read_yaml_mapping
from alignkit.cli.main import build_parser, main
from alignkit.errors import BackendUnavailableError, InputError
from alignkit.sharding import Shard, atomic_write_text, merge, stem

#: commands that take --shard, and whether they need --resume to continue a shard's file
SHARDABLE = {("generate",): True, ("shift",): True, ("eval",): False, ("data", "answers"): False,
             ("data", "pairs"): False}


def add_parser(sub) -> None:
    p = sub.add_parser(
        "shards",
        help="run generate / eval / shift / data answers / data pairs as N shards (processes or Ray tasks), then merge",
        description="Run COMMAND as --workers shards at once (each gets --shard I/N, and --resume where the command "
        "has it, so a rerun finishes only what is missing) and merge them into COMMAND's own --output when all "
        "have finished. Local processes by default; with --ray ADDRESS each shard is a Ray task on the cluster "
        "(every node needs alignkit installed and the input and output paths on a shared file system). Each "
        "shard's log: OUTPUT.shard-I-of-N.log; where and how long each ran: OUTPUT.shards.json. Example: alignkit shards --workers 2 generate --input in.jsonl "
        "--output out.jsonl --method urial",
    )
    p.add_argument("--workers", type=int, required=True, help="number of shards, all run at once (>= 1)")
    p.add_argument("--threads", type=int, default=None,
                   help="CPU threads per shard (default: this machine's cores / --workers, at least 1)")
    p.add_argument("--ray", metavar="ADDRESS", default=None,
                   help="run the shards as Ray tasks: a cluster address (host:port), 'auto' (RAY_ADDRESS or the "
                        "cluster started on this machine by `ray start`), or 'local' (a private one-machine cluster)")
    p.add_argument("--no-merge", action="store_true", help="leave the finished shards unmerged")
    p.add_argument("job", nargs=argparse.REMAINDER, help="the command and its options, as you would run it alone")
    p.set_defaults(func=run)


def _command(job: list[str]) -> tuple[tuple[str, ...], list[str]]:
    for words in sorted(SHARDABLE, key=len, reverse=True):
        if tuple(job[: len(words)]) == words:
            return words, job[len(words):]
    raise InputError("give the command to shard after the options, one of: "
                     + ", ".join(" ".join(w) for w in SHARDABLE) + f" (got {' '.join(job[:2]) or 'nothing'!r})")


def output_of(job: list[str]) -> str:
    """The --output the command itself resolves (flag, else its --config file's)."""
    try:
        ns = build_parser().parse_args(job)
    except SystemExit as e:
        raise InputError(f"the sharded command does not parse: alignkit {' '.join(job)}") from e
    if getattr(ns, "output", None):
        return str(ns.output)
    if getattr(ns, "config", None):
        out = read_yaml_mapping(ns.config).get("output")
        if out:
            return str(out)
    raise InputError("the sharded command needs an --output (or an output in its --config)")


def run(args: argparse.Namespace) -> int:
    if args.workers < 1:
        raise InputError("--workers must be at least 1")
    job = [a for a in args.job if a != "--"] if args.job[:1] == ["--"] else list(args.job)
    words, rest = _command(job)
    if any(a == "--shard" or a.startswith("--shard=") for a in rest):
        raise InputError("do not give --shard to the command: `alignkit shards` gives each shard its own")
    output = output_of(job)
    if args.threads is not None and args.threads < 1:
        raise InputError("--threads must be at least 1")
    threads = args.threads or max(1, (os.cpu_count() or 1) // args.workers)
    argvs = []
    for i in range(args.workers):
        extra = ["--shard", f"{i}/{args.workers}"] + (["--resume"] if SHARDABLE[words] and "--resume" not in rest else [])
        argvs.append([*words, *rest, *extra])
    logs = [str(Shard(i, args.workers).beside(output, ".log")) for i in range(args.workers)]
    env = {"OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    where = f"Ray ({args.ray})" if args.ray else "local processes"
    print(f"alignkit shards: {args.workers} shard(s) of `alignkit {' '.join(words)}` as {where}, {threads} thread(s) "
          f"each; logs: {logs[0]} ...", file=sys.stderr)
    t0 = time.perf_counter()
    results = (_run_ray(args.ray, argvs, logs, env, threads) if args.ray else _run_local(argvs, logs, env))
    wall = time.perf_counter() - t0
    failed = [r for r in results if r["returncode"] != 0]
    record = Path(output).with_name(f"{stem(output)}.shards.json")

    atomic_write_text(record, json.dumps({"command": ["alignkit", *job], "workers": args.workers, "threads": threads,
                                          "ray": args.ray, "cpu_count": os.cpu_count(), "wall_seconds": wall,
                                          "shards": results}, indent=1) + "\n")
    for r in results:
        print(f"alignkit shards: shard {r['shard']}: exit {r['returncode']} in {r['seconds']:.1f} s on "
              f"{r.get('host')}" + (f" (Ray node {r['node'][:8]})" if r.get("node") else ""), file=sys.stderr)
    if failed:
        for r in failed:
            tail = "".join(Path(r["log"]).read_text(errors="replace").splitlines(True)[-8:]) \
                if Path(r["log"]).exists() else "(no log)"
            print(f"alignkit shards: shard {r['shard']} failed; the end of {r['log']}:\n{tail}", file=sys.stderr)
        raise InputError(f"{len(failed)} of {args.workers} shard(s) failed (logs above); the finished ones are kept: "
                         "run the same command again to do only what is missing")
    print(f"alignkit shards: all {args.workers} shard(s) finished in {wall:.1f} s", file=sys.stderr)
    if args.no_merge:
        return 0
    summary = merge(output, say=lambda m: print(f"alignkit shards: {m}", file=sys.stderr))
    if words in (("eval",), ("shift",)):  # everything is done: the unsharded run only writes the report/summary

        print(f"alignkit shards: writing the report: alignkit {' '.join(words)} (nothing left to compute)",
              file=sys.stderr)
        return main(job + (["--resume"] if words == ("shift",) and "--resume" not in job else []))
    print(f"alignkit shards: {summary['ids']} input record(s) -> {output}", file=sys.stderr)
    return 0


def _shard_process(argv: list[str], log: str, env: dict[str, str]) -> dict[str, Any]:
    """One shard as a child process of this Python (runs inside a Ray task too)."""
    import socket

    Path(log).parent.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    with open(log, "w", encoding="utf-8") as f:
        rc = subprocess.call([sys.executable, "-m", "alignkit", *argv], stdout=f, stderr=subprocess.STDOUT,
                             env={**os.environ, **env})
    return {"returncode": rc, "seconds": time.perf_counter() - t0, "log": log, "host": socket.gethostname()}


def _run_local(argvs: list[list[str]], logs: list[str], env: dict[str, str]) -> list[dict[str, Any]]:
    import socket

    procs = []
    for argv, log in zip(argvs, logs):
        Path(log).parent.mkdir(parents=True, exist_ok=True)
        f = open(log, "w", encoding="utf-8")  # noqa: SIM115 - closed below, after the process ends
        procs.append((subprocess.Popen([sys.executable, "-m", "alignkit", *argv], stdout=f, stderr=subprocess.STDOUT,
                                       env={**os.environ, **env}), f, time.perf_counter(), log))
    out = []
    try:
        for i, (p, f, t0, log) in enumerate(procs):
            rc = p.wait()
            f.close()
            out.append({"shard": f"{i}/{len(procs)}", "returncode": rc, "seconds": time.perf_counter() - t0,
                        "log": log, "host": socket.gethostname()})
    except KeyboardInterrupt:
        for p, f, _, _ in procs:
            p.terminate()
            f.close()
        raise
    return out


def _run_ray(address: str, argvs: list[list[str]], logs: list[str], env: dict[str, str],
             threads: int) -> list[dict[str, Any]]:
    try:
        import ray
    except ImportError:
        raise BackendUnavailableError("ray", "scale", "ray") from None
    if address not in ("local", "auto"):
        _reachable(address)  # ray.init waits a long time on an address where nothing listens
    try:
        if address == "local":
            ray.init(num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False)
        else:
            ray.init(address=None if address == "auto" else address, log_to_driver=False)
    except (ConnectionError, RuntimeError, ValueError) as e:
        raise InputError(f"--ray {address}: cannot reach a Ray cluster: {str(e).splitlines()[0]}") from None
    try:
        cpus = ray.cluster_resources().get("CPU", 0)
        if cpus < threads:
            raise InputError(f"--ray {address}: the cluster has {cpus:g} CPU(s), a shard asks for {threads} "
                             "(lower --threads)")

        @ray.remote(num_cpus=threads, scheduling_strategy="SPREAD", max_retries=0)
        def shard_task(argv, log, env):
            res = _shard_process(argv, log, env)
            res["node"] = ray.get_runtime_context().get_node_id()
            return res

        refs = [shard_task.remote(a, log, env) for a, log in zip(argvs, logs)]
        out = ray.get(refs)
    finally:
        ray.shutdown()
    for i, r in enumerate(out):
        r["shard"] = f"{i}/{len(out)}"
    return out


def _reachable(address: str) -> None:
    import socket

    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
        raise InputError(f"--ray {address!r}: expected host:port (the head node's GCS address), 'auto' or 'local'")
    try:
        with socket.create_connection((host, int(port)), timeout=5):
            pass
    except OSError as e:
        raise InputError(f"--ray {address}: cannot reach a Ray cluster there ({e.strerror or e}); start one with "
                         "`ray start --head`, or use --ray local") from None
