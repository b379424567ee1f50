"""Route trees: every alignment method is one node of one tree, and the tree is itself a model.

A node has a *kind* (a registered method: ``urial``, ``dera``, ``best-of-n``, ``rewrite`` ...), the kind's own
typed options (a frozen dataclass, each field documented and range-checked) and its *children* in named slots --
model specs, already-loaded models, or other nodes. ``correct(aligner) ∘ urial(base) ∘ rewrite(bpo)`` is::

    correct:
      corrector: ./aligner                 # a bare model: asked in its layout's method
      model:
        rewrite:
          rewriter: ./bpo
          model: {urial: {model: gemma-3-270m, k: 3}}

The same tree in Python is ``node("correct", corrector="./aligner", model=node("rewrite", rewriter="./bpo",
model=node("urial", model="gemma-3-270m", k=3)))``, and the command-line flags (``--method``, ``--rewriter`` ...)
are shorthands that build it (:func:`alignkit.methods.tree_from_options`).

One registry (:data:`NODES`: name -> options class, slots, factory) serves every kind: a new method is one file
and one :func:`register` call, never another branch. :func:`build` is the one walk that turns a tree into a model;
it gets the other models and the scorers a node needs from a :class:`Resources` object its caller passes (the
public API makes one that opens reward models and judges), never by importing a factory from a higher layer.
"""

from __future__ import annotations

import dataclasses
import importlib
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Union

from alignkit.errors import AlignkitError, InputError
from alignkit.models.base import LanguageModel
from alignkit.scoring import Scorer
from alignkit.validate import check_mapping

#: a child of a node: a model spec, an already-loaded model, or another node
Child = Union[str, LanguageModel, "Node"]


# ----------------------------------------------------------------------------- resources
class Resources:
    """What a tree's nodes may load: models by spec (``models(spec)``, e.g. a :class:`ModelPool` that keeps one copy
    of each) and scorers by spec (``scorers(spec, resources)``; the public API passes one that opens reward models
    and LLM judges). A node never imports a loader from a higher layer."""

    def __init__(self, models: Callable[[str], LanguageModel] | None = None,
                 scorers: Callable[[str, Resources], Scorer] | None = None) -> None:
        self.models, self.scorers = models, scorers

    def model(self, spec: str) -> LanguageModel:
        if self.models is None:
            raise InputError(f"this route needs the model {spec!r} but was given no way to load models")
        return self.models(spec)

    def scorer(self, spec: str) -> Scorer:
        if self.scorers is None:
            raise InputError(f"this route needs the scorer {spec!r} but was given no way to open scorers "
                             "(load it through alignkit.load / the CLI, which can)")
        return self.scorers(spec, self)

    __call__ = model  # a Resources is also a plain loader ``loader(spec) -> model``

    @staticmethod
    def of(loader: Any) -> Resources:
        """``loader`` as a Resources: itself, a plain ``loader(spec)`` callable, or None (nothing to load)."""
        if isinstance(loader, Resources):
            return loader
        return Resources(loader)


# ----------------------------------------------------------------------------- the registry
@dataclass(frozen=True)
class NodeKind:
    """A registered node kind. ``factory`` is ``"module:function"`` (imported when a node of this kind is built,
    so the registry stays light), called as ``function(options, children, resources, node)`` with the built
    children by slot; it returns the model."""

    name: str
    options: type
    slots: tuple[str, ...]
    factory: str
    summary: str
    #: slot -> how an error while loading that child is prefixed (``{spec}``: the child's spec)
    slot_errors: Mapping[str, str] = field(default_factory=dict)
    #: slots that take a list of children (``mix``'s ``models``); a node keeps them as ``slot.0``, ``slot.1`` ...
    lists: tuple[str, ...] = ()

    def make(self) -> Callable[..., Any]:
        module, _, func = self.factory.partition(":")
        return getattr(importlib.import_module(module), func)


NODES: dict[str, NodeKind] = {}


def register(kind: NodeKind) -> NodeKind:
    """Add a node kind (a method, a stage, a combination) to the one registry."""
    if kind.name in NODES:
        raise ValueError(f"node kind {kind.name!r} is already registered")
    overlap = set(kind.slots) & {f.name for f in dataclasses.fields(kind.options)}
    if overlap:
        raise ValueError(f"node kind {kind.name!r}: slots and options share names {sorted(overlap)}")
    NODES[kind.name] = kind
    return kind


def kind_of(name: str) -> NodeKind:
    if name not in NODES:
        raise InputError(f"unknown node kind {name!r}; registered: {', '.join(NODES)}")
    return NODES[name]


# ----------------------------------------------------------------------------- the tree
@dataclass(frozen=True)
class Node:
    """One node of a route tree: ``kind``, its options (the kind's dataclass) and its children by slot."""

    kind: str
    options: Any
    children: tuple[tuple[str, Child], ...]

    def child(self, slot: str) -> Child:
        return dict(self.children)[slot]

    def to_dict(self) -> dict[str, Any]:
        """The YAML/JSON form: ``{kind: {option: value (non-default only), slot: child}}``; a loaded model child
        is written as its spec."""
        body: dict[str, Any] = {}
        for f in dataclasses.fields(self.options):
            value = getattr(self.options, f.name)
            if value != f.default:
                body[f.name] = list(value) if isinstance(value, tuple) else value
        for slot, c in self.children:
            value = c.to_dict() if isinstance(c, Node) else c if isinstance(c, str) else c.spec
            name, dot, _ = slot.partition(".")
            if dot:  # one child of a list slot
                body.setdefault(name, []).append(value)
            else:
                body[slot] = value
        return {self.kind: body}

    def __str__(self) -> str:
        return json.dumps(self.to_dict())


def node(kind: str, /, **fields: Any) -> Node:
    """A node from keyword arguments: the kind's options and its slots, e.g. ``node("dera", lam=0.5,
    ref=node("none", model="./sft"), aligned=node("auto", model="./dpo"))``. Values are checked as in a YAML file."""
    k = kind_of(kind)
    missing = [s for s in k.slots if s not in fields]
    if missing:
        raise InputError(f"node {kind!r} needs {', '.join(repr(s) for s in missing)} (its slots: "
                         f"{', '.join(k.slots)})")
    children = []
    for slot in k.slots:
        given = fields.pop(slot)
        if slot in k.lists:
            if not isinstance(given, (list, tuple)) or not given:
                raise InputError(f"node {kind!r}: slot {slot!r} takes a list of model specs, models or nodes, got "
                                 f"{given!r:.80}")
            items = [(f"{slot}.{i}", c) for i, c in enumerate(given)]
        else:
            items = [(slot, given)]
        for name, c in items:
            if isinstance(c, Mapping):
                c = parse(c, where=f"{kind}.{name}")
            if not isinstance(c, (str, Node)) and not hasattr(c, "generate"):
                raise InputError(f"node {kind!r}: slot {name!r} takes a model spec, a model or a node, got {c!r:.80}")
            if isinstance(c, str) and not c.strip():
                raise InputError(f"node {kind!r}: slot {name!r} is an empty model spec")
            children.append((name, c))
    known = [f.name for f in dataclasses.fields(k.options)]
    unknown = sorted(set(fields) - set(known))
    if unknown:
        raise InputError(f"node {kind!r}: unknown key(s) {', '.join(unknown)}; its options: "
                         f"{', '.join(known) or '(none)'}; its slots: {', '.join(k.slots)}")
    values = check_mapping(k.options, fields, what=f"node {kind!r}")
    required = [f.name for f in dataclasses.fields(k.options) if f.metadata.get("required") and values.get(f.name) is None]
    if required:
        raise InputError(f"node {kind!r} needs {', '.join(required)} ({'; '.join(_help(k.options, r) for r in required)})")
    try:
        options = k.options(**values)
    except (TypeError, ValueError) as e:
        raise InputError(f"node {kind!r}: {e}") from e
    return Node(kind, options, tuple(children))


def _help(cls: type, name: str) -> str:
    return next(f.metadata.get("help", name) for f in dataclasses.fields(cls) if f.name == name)


def parse(data: Any, *, where: str = "route") -> Child:
    """A tree from its YAML/JSON form: a string is a model spec; a mapping has one key, the node kind, whose value
    holds the options and the slots."""
    if isinstance(data, str):
        if not data.strip():
            raise InputError(f"{where}: an empty model spec")
        return data
    if isinstance(data, Node):
        return data
    if not isinstance(data, Mapping) or len(data) != 1:
        raise InputError(f"{where}: a node is a mapping with one key, its kind ({', '.join(NODES)}), e.g. "
                         f"{{urial: {{model: gemma-3-270m}}}}; a model is a spec string; got {data!r:.120}")
    (kind, body), = data.items()
    if body is None:
        body = {}
    if not isinstance(body, Mapping):
        raise InputError(f"{where}: the value of {kind!r} must be a mapping of options and slots, got {body!r:.80}")
    kind_of(str(kind))
    fields_ = {str(k).replace("-", "_"): v for k, v in body.items()}
    for slot in NODES[str(kind)].slots:
        if slot in fields_ and slot in NODES[str(kind)].lists and isinstance(fields_[slot], list):
            fields_[slot] = [parse(c, where=f"{where}.{kind}.{slot}.{i}") for i, c in enumerate(fields_[slot])]
        elif slot in fields_:
            fields_[slot] = parse(fields_[slot], where=f"{where}.{kind}.{slot}")
    return node(str(kind), **fields_)


ROUTE_SUFFIXES = (".yaml", ".yml", ".json")


def is_route_file(x: Any) -> bool:
    """Whether ``x`` names a route-tree file (by its suffix: ``.yaml``, ``.yml``, ``.json``) rather than a model
    spec; :func:`load_tree` then reads it, or says it does not exist."""
    return isinstance(x, (str, Path)) and Path(str(x).strip()).suffix.lower() in ROUTE_SUFFIXES


def load_tree(path: str | Path) -> Child:
    """A route tree from a YAML or JSON file."""
    import yaml

    p = Path(path)
    if not p.is_file():
        raise InputError(f"route file {str(path)!r} does not exist")
    try:
        data = yaml.safe_load(p.read_text(encoding="utf-8"))
    except yaml.YAMLError as e:
        raise InputError(f"route file {str(path)!r} is not valid YAML/JSON: {e}") from e
    return parse(data, where=str(path))


# ----------------------------------------------------------------------------- building
def build(tree: Child, resources: Any = None) -> LanguageModel:
    """The model a tree describes: children first (each spec loaded through ``resources``), then each node's
    factory. The built model remembers its tree (``model.tree``) for provenance."""
    res = Resources.of(resources)
    if isinstance(tree, str):
        return res.model(tree)
    if not isinstance(tree, Node):
        return tree  # an already-loaded model
    kind = kind_of(tree.kind)
    built: dict[str, Any] = {}
    for slot, c in tree.children:
        try:
            built[slot] = build(c, res)
        except AlignkitError as e:
            label = kind.slot_errors.get(slot.partition(".")[0])
            if label is None or str(e).startswith("route stage "):
                raise
            spec = c if isinstance(c, str) else getattr(c, "spec", None) or str(c)
            raise type(e)(f"{label.format(spec=spec)}: {e}") from e
    model = kind.make()(tree.options, built, res, tree)
    try:
        model.tree = tree
    except AttributeError:  # pragma: no cover - a model that takes no attributes
        pass
    return model


def is_bare(tree: Node, slot: str) -> bool:
    """Whether a slot's child is a model itself (a spec or a loaded model) rather than a node."""
    return not isinstance(tree.child(slot), Node)
