"""The README's Python is real: its API example runs on the embedded Gemma and does what it says; the route-tree
page's YAML and Python build the same tree, and its table of node kinds is the registry's."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import yaml

import alignkit as ak
from alignkit.methods.tree import NODES, parse

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text(encoding="utf-8")
ROUTE_TREES = (ROOT / "docs" / "concepts" / "route-trees.md").read_text(encoding="utf-8")


def _section(title: str) -> str:
    return README.split(f"## {title}\n", 1)[1].split("\n## ", 1)[0]


def _blocks(text: str, lang: str) -> list[str]:
    return re.findall(rf"```{lang}\n(.*?)```", text, flags=re.S)


def test_the_python_example_runs_on_the_embedded_gemma(gemma, tmp_path, monkeypatch, capsys):
    code, = _blocks(_section("Three jobs"), "python")
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    exec(compile(code, "README.md#python", "exec"), namespace)  # noqa: S102 -- the README's own example
    assert len(namespace["rows"]) == 2 and all(r["output"] for r in namespace["rows"])
    assert set(namespace["df"].columns) >= {"token", "base_rank", "kl", "category", "token_class"}
    assert (tmp_path / "runs" / "python" / "shift.html").is_file()
    assert set(namespace["report"].table().index) == {"urial", "raw"}
    assert capsys.readouterr().out.strip()


def test_the_route_tree_yaml_and_python_are_one_tree():
    (yml,) = _blocks(ROUTE_TREES, "yaml")
    (py,) = _blocks(ROUTE_TREES, "text")
    namespace = {"ak": ak}
    exec(py.split("model = ak.load")[0], namespace)  # noqa: S102 -- builds the tree only, loads nothing
    assert parse(yaml.safe_load(yml)) == namespace["tree"]


def test_the_kinds_table_is_the_registry():
    rows = [r for r in ROUTE_TREES.splitlines() if r.startswith("| `")]
    table = {}
    for r in rows:
        kind, slots, options = (c.strip() for c in r.strip("|").split("|"))
        table[kind.strip("`")] = (re.findall(r"`([^`]+)`", slots), re.findall(r"`([^`]+)`", options))
    assert table == {name: (list(k.slots), [f.name for f in dataclasses.fields(k.options)])
                     for name, k in NODES.items()}
