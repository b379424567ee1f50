"""In-context alignment templates as data: loading, validation, hashing (no torch).

A template file (YAML) holds an ``id``, a ``description``, a ``preamble``, a list of ``examples``
(``{query, answer}``; optional ``id`` and ``tags``), optionally ``pool`` (which shipped example pool its
``"@name"`` references and retrieval draw from: ``default``, ``basic`` or ``paper``) and ``fence``: the fewest backticks a block's fence
has (4 by default, which leaves room for ``` code blocks inside answers; 3 is the URIAL paper's layout -- the
fence still grows past any backtick run in the texts, so no text can close its block). The shipped templates in ``alignkit/prompts/urial``
refer to the shared example pool with ``"@name"`` strings; a user's file can do the same or spell its
examples out. The content hash covers the resolved preamble and examples, so two files that render the
same prompt have the same hash.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from alignkit.errors import AlignkitError

DEFAULT_TEMPLATE = "urial-k3"
DEFAULT_FENCE = 4


class TemplateError(AlignkitError):
    """A template file is missing, malformed or refers to unknown pool entries."""


@dataclass(frozen=True)
class Example:
    query: str
    answer: str
    id: str = ""
    tags: tuple[str, ...] = ()


@dataclass(frozen=True)
class Template:
    id: str
    preamble: str
    examples: tuple[Example, ...]
    description: str = ""
    source: str = ""
    pool: tuple[Example, ...] = field(default=(), repr=False)
    """The example pool the template's ``@refs`` came from (retrieval selects from it)."""
    min_fence: int = DEFAULT_FENCE
    """The fewest backticks a fence has."""

    @property
    def hash(self) -> str:
        content: dict[str, Any] = {"preamble": self.preamble, "examples": [[e.query, e.answer] for e in self.examples]}
        if self.min_fence != DEFAULT_FENCE:  # (templates with the usual fence keep the hash they always had)
            content["fence"] = self.min_fence
        payload = json.dumps(content, ensure_ascii=False, sort_keys=True)
        return hashlib.sha256(payload.encode()).hexdigest()[:16]

    @property
    def k(self) -> int:
        return len(self.examples)

    def provenance(self) -> dict[str, Any]:
        return {"id": self.id, "hash": self.hash, "k": self.k, "source": self.source,
                "examples": [e.id for e in self.examples]}


def _shipped_dir():
    return resources.files("alignkit") / "prompts" / "urial"


def shipped_templates() -> list[str]:
    return sorted(p.name[:-5] for p in _shipped_dir().iterdir() if p.name.endswith(".yaml") and not p.name.startswith("pool"))


def _read_yaml(text: str, where: str) -> Any:
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise TemplateError(f"template {where} is not valid YAML: {e}") from e


POOLS = ("default", "basic", "paper")


def load_pool(name: str = "default") -> tuple[dict[str, str], dict[str, Example]]:
    """The shipped preambles and one of the example pools: ``default`` (restyled answers, ``pool.yaml``),
    ``basic`` (plain answers) or ``paper`` (paper-style answers), each ``pool-NAME.yaml``."""
    data = _read_yaml((_shipped_dir() / "pool.yaml").read_text(encoding="utf-8"), "pool.yaml")
    if name != "default":
        fname = f"pool-{name}.yaml"
        items = _read_yaml((_shipped_dir() / fname).read_text(encoding="utf-8"), fname)["examples"]
    else:
        fname, items = "pool.yaml", data["examples"]
    examples = {e["id"]: _example(e, fname, i) for i, e in enumerate(items)}
    return dict(data["preambles"]), examples


def _example(item: Any, where: str, i: int) -> Example:
    if not isinstance(item, dict):
        raise TemplateError(f"{where}: examples[{i}] must be a mapping with 'query' and 'answer' or an '@name' reference")
    unknown = set(item) - {"query", "answer", "id", "tags"}
    if unknown:
        raise TemplateError(f"{where}: examples[{i}] has unknown key(s) {sorted(unknown)}; allowed: query, answer, id, tags")
    for key in ("query", "answer"):
        if not isinstance(item.get(key), str) or not item[key].strip():
            raise TemplateError(f"{where}: examples[{i}] needs a non-empty string '{key}'")
    tags = item.get("tags") or ()
    if not isinstance(tags, (list, tuple)) or not all(isinstance(t, str) for t in tags):
        raise TemplateError(f"{where}: examples[{i}].tags must be a list of strings")
    return Example(query=item["query"].strip(), answer=item["answer"].strip(), id=str(item.get("id", f"ex{i}")), tags=tuple(tags))


def load_template(name_or_path: str | None = None) -> Template:
    """A shipped template by name (see :func:`shipped_templates`) or a user's YAML file by path."""
    name_or_path = name_or_path or DEFAULT_TEMPLATE
    path = Path(name_or_path)
    if name_or_path in shipped_templates():
        text, where = (_shipped_dir() / f"{name_or_path}.yaml").read_text(encoding="utf-8"), name_or_path
    elif path.is_file():
        try:
            text, where = path.read_text(encoding="utf-8"), str(path)
        except (OSError, UnicodeDecodeError) as e:
            raise TemplateError(f"cannot read template file {path}: {e}") from e
    else:
        raise TemplateError(
            f"no template {name_or_path!r}: not a shipped template ({', '.join(shipped_templates())}) and not a file"
        )
    return parse_template(_read_yaml(text, where), where)


def parse_template(data: Any, where: str = "<template>") -> Template:
    if not isinstance(data, dict):
        raise TemplateError(f"template {where} must be a mapping with id, preamble and examples")
    unknown = set(data) - {"id", "description", "preamble", "examples", "fence", "pool"}
    if unknown:
        raise TemplateError(f"template {where} has unknown key(s) {sorted(unknown)}; allowed: id, description, preamble, "
                            "examples, fence, pool")
    pool_name = data.get("pool", "default")
    if pool_name not in POOLS:
        raise TemplateError(f"template {where}: 'pool' must be one of {', '.join(POOLS)}, got {pool_name!r}")
    fence = data.get("fence", DEFAULT_FENCE)
    if not isinstance(fence, int) or isinstance(fence, bool) or not 3 <= fence <= 16:
        raise TemplateError(f"template {where}: 'fence' must be a whole number of backticks from 3 to 16, got {fence!r}")
    if not isinstance(data.get("id"), str) or not data["id"].strip():
        raise TemplateError(f"template {where} needs a non-empty string 'id'")
    preambles, pool = load_pool(pool_name)
    preamble = data.get("preamble")
    if not isinstance(preamble, str) or not preamble.strip():
        raise TemplateError(f"template {where} needs a non-empty string 'preamble' (or '@default' / '@helpful')")
    if preamble.startswith("@"):
        if preamble[1:] not in preambles:
            raise TemplateError(f"template {where}: unknown preamble {preamble!r}; known: {', '.join('@' + p for p in preambles)}")
        preamble = preambles[preamble[1:]]
    items = data.get("examples", [])
    if not isinstance(items, list):
        raise TemplateError(f"template {where}: 'examples' must be a list")
    examples = []
    for i, item in enumerate(items):
        if isinstance(item, str) and item.startswith("@"):
            if item[1:] not in pool:
                raise TemplateError(f"template {where}: examples[{i}] refers to unknown pool example {item!r}")
            examples.append(pool[item[1:]])
        else:
            examples.append(_example(item, where, i))
    return Template(
        id=data["id"].strip(), preamble=preamble.strip(), examples=tuple(examples),
        description=str(data.get("description", "")), source=where, pool=tuple(pool.values()), min_fence=fence,
    )
