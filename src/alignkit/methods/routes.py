"""Route stages: models around a model. A route is ``[rewriter ->] model under a method [-> corrector]`` and is
itself one model, so every command, the server, evaluation and analysis take it like any other.

* **BPO** (prompt optimisation, :class:`PromptRewriter`): a *rewriter* model turns the user's request into a
  better one before the wrapped model sees it. The wrapped model is untouched (it may be an API model).
* **Aligner** (answer correction, :class:`AnswerCorrector`): the upstream route answers, then a *corrector* model
  reads (question, upstream answer) and writes the corrected answer.

Each stage is a node of the route tree (``rewrite`` and ``correct``, registered in :mod:`alignkit.methods.nodes`,
built by :func:`build_rewrite` and :func:`build_correct`), so a new stage is one registration, not another branch
in a dispatcher. The rewriter and
the corrector are any model + method; the layout they are asked in is data (``prompts/routes/layouts.yaml``):
the layout a published checkpoint was trained on when the spec names it, the layout an adapter was trained on
(recorded by ``alignkit train bpo|aligner``), else alignkit's own.

Every completion of a route carries ``meta["route"]``: one record per stage, in order -- its model spec and
method, its input, its output and its token usage -- and ``meta["usage"]``, the tokens of all stages added up.
Streaming streams the last stage (the corrector starts once the upstream answer is complete).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from alignkit.errors import AlignkitError, CapabilityError, InputError
from alignkit.methods import recommended_repetition_penalty
from alignkit.methods.base import MethodModel, Prepared, StreamCleaner, prepared_for_backend
from alignkit.methods.tree import build, is_bare
from alignkit.methods.tree import node as make_node
from alignkit.models.base import answering_backend
from alignkit.types import Completion, GenerationConfig, Message, Prompt


# ----------------------------------------------------------------------------- layouts (data)
@dataclass(frozen=True)
class Layout:
    """How a stage model is asked: a text template, the method it is prompted with, default decoding."""

    id: str
    stage: str  # "rewrite" or "correct"
    method: str  # "none" (raw completion of the template) or a method for a user message ("auto", "template", ...)
    template: str
    decoding: dict[str, Any] = field(default_factory=dict)

    def request(self, **fields: str) -> str:
        """The template filled in one pass (a field that contains ``{answer}`` stays as written)."""
        import re

        return re.sub(r"\{(prompt|question|answer)\}", lambda m: fields[m.group(1)], self.template)

    def config(self, base: GenerationConfig | None = None) -> GenerationConfig:
        keys = ("max_new_tokens", "temperature", "top_p", "top_k", "repetition_penalty", "seed")
        values: dict[str, Any] = {k: self.decoding[k] for k in keys if k in self.decoding}
        if "stop" in self.decoding:
            values["stop"] = tuple(self.decoding["stop"])
        try:
            return replace(base or GenerationConfig(), **values)
        except (TypeError, ValueError) as e:
            raise InputError(f"layout {self.id!r}: bad decoding setting: {e}") from e

    def provenance(self) -> dict[str, Any]:
        import hashlib

        return {"id": self.id, "method": self.method,
                "hash": hashlib.sha256(self.template.encode("utf-8")).hexdigest()[:16]}


def _layout_data() -> dict[str, Any]:
    text = (resources.files("alignkit") / "prompts" / "routes" / "layouts.yaml").read_text(encoding="utf-8")
    return yaml.safe_load(text)


def load_layout(name_or_path: str, stage: str) -> Layout:
    """A shipped layout by id, or a YAML file with ``id``, ``stage``, ``method``, ``template`` (``decoding``)."""
    data = _layout_data()["layouts"]
    if name_or_path in data:
        d = {"id": name_or_path, **data[name_or_path]}
    elif Path(name_or_path).is_file():
        try:
            d = yaml.safe_load(Path(name_or_path).read_text(encoding="utf-8"))
        except yaml.YAMLError as e:
            raise InputError(f"layout file {name_or_path!r} is not valid YAML: {e}") from e
        if not isinstance(d, dict):
            raise InputError(f"layout file {name_or_path!r} must hold a mapping")
    else:
        raise InputError(f"no layout {name_or_path!r}: not one of {', '.join(sorted(data))} and not a file")
    missing = [k for k in ("id", "stage", "method", "template") if not isinstance(d.get(k), str) or not d.get(k)]
    if missing:
        raise InputError(f"layout {name_or_path!r} needs {', '.join(missing)} (non-empty strings)")
    layout = Layout(d["id"], d["stage"], d["method"], d["template"], dict(d.get("decoding") or {}))
    if layout.stage != stage:
        raise InputError(f"layout {layout.id!r} is for the {layout.stage!r} stage, not {stage!r}")
    needed = ("{prompt}",) if stage == "rewrite" else ("{question}", "{answer}")
    absent = [n for n in needed if n not in layout.template]
    if absent:
        raise InputError(f"layout {layout.id!r}: its template must contain {', '.join(needed)} (missing: "
                         f"{', '.join(absent)})")
    return layout


def layout_for(model: Any, stage: str, explicit: str | None) -> Layout:
    """The layout a stage model is asked in: explicit > trained (alignkit.json) > published checkpoint > alignkit's."""
    if explicit:
        return load_layout(explicit, stage)
    trained = (getattr(model, "trained_format", None) or {}).get("route_layout")
    if trained:
        return load_layout(trained, stage)
    spec = str(getattr(model, "spec", ""))
    for prefix in ("hf:", "vllm:"):
        spec = spec.removeprefix(prefix)
    checkpoint = _layout_data().get("checkpoints", {}).get(spec)
    if checkpoint:
        return load_layout(checkpoint, stage)
    return load_layout("alignkit-bpo" if stage == "rewrite" else "alignkit-aligner", stage)


# ----------------------------------------------------------------------------- helpers
def user_text(prompt: Prompt) -> str:
    """The request a stage works on: the text of a completion prompt, or the last user turn of a chat."""
    if isinstance(prompt, str):
        return prompt
    users = [m for m in prompt if m.role == "user"]
    if not users:
        raise InputError("a conversation for a route needs a user turn")
    return users[-1].content


def with_user_text(prompt: Prompt, text: str) -> Prompt:
    """``prompt`` with its request (the text, or the last user turn) replaced by ``text``."""
    if isinstance(prompt, str):
        return text
    msgs = list(prompt)
    last = max(i for i, m in enumerate(msgs) if m.role == "user")
    msgs[last] = Message("user", text)
    return msgs


def usage(comp: Completion) -> dict[str, int]:
    """A completion's token usage, all stages of its route added up."""
    total = (comp.meta or {}).get("usage")
    if isinstance(total, dict):
        return dict(total)
    return {"prompt_tokens": comp.prompt_tokens, "completion_tokens": comp.completion_tokens}


def own_usage(comp: Completion) -> dict[str, int]:
    return {"prompt_tokens": comp.prompt_tokens, "completion_tokens": comp.completion_tokens}


def _run_stage(name: str, model: Any, fn: Callable[[], Any]) -> Any:
    """Run a stage model; its errors name the stage, so a failing rewriter or corrector is one clear line."""
    try:
        return fn()
    except AlignkitError as e:
        if str(e).startswith("route stage "):
            raise
        raise type(e)(f"route stage {name!r} ({model.spec}): {e}") from e


def total_usage(route: list[dict[str, Any]]) -> dict[str, int]:
    return {k: sum(int(r["usage"][k]) for r in route) for k in ("prompt_tokens", "completion_tokens")}


# ----------------------------------------------------------------------------- the stages
class PromptRewriter(MethodModel):
    """BPO: ``rewriter`` rewrites the request; the wrapped model answers the rewritten request."""

    backend = "bpo"
    method = "bpo"

    def __init__(self, base: Any, rewriter: Any, layout: Layout) -> None:
        super().__init__(base)
        self.rewriter, self.layout = rewriter, layout
        # a joining request would first need its rewrite, run while the batch waits: scheduled in batches
        self.capabilities = replace(base.capabilities, continuous_batching=False)

    # the wrapped model's own cleaning still applies (e.g. urial's answer block)
    def clean(self, text: str) -> str:
        return self.base.clean(text) if isinstance(self.base, MethodModel) else text

    def stream_cleaner(self) -> StreamCleaner:
        return self.base.stream_cleaner() if isinstance(self.base, MethodModel) else super().stream_cleaner()

    def children(self) -> list[tuple[str, Any]]:
        return [("model", self.base), ("rewriter", self.rewriter)]

    def rewrite(self, prompts: Sequence[Prompt]) -> list[tuple[str, dict[str, Any]]]:
        """``(rewritten request, stage record)`` per prompt; an empty or runaway rewrite keeps the original."""
        originals = [user_text(p) for p in prompts]
        requests = [self.layout.request(prompt=t) for t in originals]

        # the rewriter decodes as its own method recommends (e.g. in-context alignment's repetition penalty),
        # then as its layout says (a published checkpoint's sampling)
        cfg = self.layout.config(GenerationConfig(repetition_penalty=recommended_repetition_penalty(self.rewriter)))
        comps = _run_stage("bpo", self.rewriter, lambda: self.rewriter.generate(requests, cfg))
        out = []
        for original, request, comp in zip(originals, requests, comps):
            text, fallback = comp.text.strip(), None
            if not text:
                fallback = "empty rewrite: the original request was kept"
            elif comp.finish_reason == "length":
                fallback = "the rewrite hit its token limit (a runaway): the original request was kept"
            record = {"stage": "rewrite", "method": "bpo", "model": self.rewriter.spec,
                      "model_method": self.rewriter.method, "layout": self.layout.provenance(), "input": original,
                      "request": request, "output": text, "usage": own_usage(comp)}
            if fallback:
                record["fallback"] = fallback
            out.append((original if fallback else text, record))
        return out

    def prepare_batch(self, prompts: Sequence[Prompt], configs: Sequence[GenerationConfig]) -> list[Prepared]:
        return [Prepared(with_user_text(p, text), (), {"route": [record]})
                for p, (text, record) in zip(prompts, self.rewrite(prompts))]

    def prepare(self, prompt: Prompt, config: GenerationConfig) -> Prepared:
        return self.prepare_batch([prompt], [config])[0]

    def finish(self, completion: Completion, prepared: Prepared, text: str) -> Completion:
        comp = super().finish(completion, prepared, text)
        route = list((comp.meta or {}).get("route") or [])
        if not any(r["stage"] == "answer" for r in route):
            route.append({"stage": "answer", "model": self.base.spec, "method": getattr(self.base, "method", None),
                          "input": user_text(prepared.prompt), "output": text, "usage": own_usage(completion)})
        return replace(comp, meta={**(comp.meta or {}), "route": route, "usage": total_usage(route)})

    def stage_prompts(self, prompt: Prompt, config: GenerationConfig) -> list[tuple[str, str]]:
        """What each stage sees (the rewriter runs, so the next stage's prompt can be shown)."""
        text, record = self.rewrite([prompt])[0]
        return [("rewriter " + self.rewriter.spec, self.rewriter.render(record["request"])),
                *inner_prompts(self.base, with_user_text(prompt, text), config)]

    def method_info(self) -> dict[str, Any]:
        return {"route": _route_info(self)}

    def info(self) -> dict[str, Any]:
        return {**self.base.info(), "method": _route_name(self), "route": _route_info(self)}

    def close(self) -> None:
        super().close()
        self.rewriter.close()


class AnswerCorrector(MethodModel):
    """Aligner: the upstream route answers; ``corrector`` (the wrapped model here) writes the corrected answer."""

    backend = "aligner"
    method = "aligner"

    def __init__(self, upstream: Any, corrector: Any, layout: Layout) -> None:
        super().__init__(corrector)
        self.upstream, self.corrector, self.layout = upstream, corrector, layout
        self.spec = upstream.spec
        caps = corrector.capabilities
        # it answers what the upstream route answers; its scores are the corrector's
        # (a joining request would first need its upstream answer, run while the batch waits: scheduled in batches)
        self.capabilities = replace(caps, chat_template=upstream.capabilities.chat_template, continuous_batching=False)
        self._upstream_memo: dict[str, str] = {}  # request -> the upstream answer last corrected for it

    def children(self) -> list[tuple[str, Any]]:
        return [("corrector", self.corrector), ("model", self.upstream)]

    @property
    def recommended(self) -> dict[str, Any]:  # the request's decoding is for the upstream answer it corrects
        return dict(getattr(self.upstream, "recommended", None) or {})

    # the corrected answer is an answer: trimmed, and cleaned by the corrector's method where it has a layout
    def _own_layout(self) -> bool:
        return isinstance(self.corrector, MethodModel) and self.corrector.method not in ("none",)

    def clean(self, text: str) -> str:
        return (self.corrector.clean(text) if self._own_layout() else text).strip()

    def stream_cleaner(self) -> StreamCleaner:
        if self._own_layout():
            inner = self.corrector.stream_cleaner()
            return StreamCleaner(self.clean, hold=lambda t: len(t[: inner.safe_length(t)].rstrip()), lstrip=True)
        return StreamCleaner(self.clean, hold=lambda t: len(t.rstrip()), lstrip=True)

    def prepare_batch(self, prompts: Sequence[Prompt], configs: Sequence[GenerationConfig]) -> list[Prepared]:
        answers = _run_stage("upstream", self.upstream, lambda: self.upstream.generate(list(prompts), list(configs)))
        for p, c in zip(prompts, answers):
            if len(self._upstream_memo) >= 4096:
                self._upstream_memo.pop(next(iter(self._upstream_memo)))
            self._upstream_memo[repr(p)] = c.text
        return self._prepared(prompts, answers)

    def _prepared(self, prompts: Sequence[Prompt], answers: Sequence[Completion]) -> list[Prepared]:
        out = []
        for p, c in zip(prompts, answers):
            route = list((c.meta or {}).get("route") or [])
            if not any(r["stage"] == "answer" for r in route):
                route.append({"stage": "answer", "model": self.upstream.spec,
                              "method": getattr(self.upstream, "method", None), "input": user_text(p),
                              "output": c.text, "usage": own_usage(c), "finish_reason": c.finish_reason})
            request = self.layout.request(question=user_text(p), answer=c.text)
            out.append(Prepared(request, (), {"route": route, "upstream_answer": c.text, "question": user_text(p)}))
        return out

    def prepare(self, prompt: Prompt, config: GenerationConfig) -> Prepared:
        return self.prepare_batch([prompt], [config])[0]

    def finish(self, completion: Completion, prepared: Prepared, text: str) -> Completion:
        upstream = (prepared.meta or {}).get("upstream_answer", "")
        # an empty correction keeps the upstream answer (said in the record); a runaway correction is kept as
        # it is, with finish_reason "length" like any runaway answer (streaming has already shown it)
        fallback = "empty correction: the upstream answer was kept" if not text.strip() else None
        route = list((prepared.meta or {}).get("route") or [])
        record = {"stage": "correct", "method": "aligner", "model": self.corrector.spec,
                  "model_method": getattr(self.corrector, "method", None), "layout": self.layout.provenance(),
                  "input": {"question": (prepared.meta or {}).get("question"), "answer": upstream},
                  "request": prepared.prompt, "output": text, "usage": own_usage(completion)}
        if fallback:
            record["fallback"] = fallback
        route.append(record)
        meta = {k: v for k, v in (completion.meta or {}).items()
                if k not in ("route", "usage", "upstream_answer", "question")}
        final = upstream if fallback else text
        return replace(completion, text=final, meta={**meta, "route": route, "usage": total_usage(route)})

    def stream(self, prompts, config=None, **kwargs):
        for ev in super().stream(prompts, config, **kwargs):
            if ev.completion is not None and (ev.completion.meta or {}).get("route", [{}])[-1].get("fallback"):
                # the correction was empty (nothing but whitespace was shown): the upstream answer is the answer
                yield replace(ev, text=ev.completion.text)
            else:
                yield ev

    # scoring (e.g. the shift analysis of a route): the corrector's distribution given the upstream answer it
    # corrected when the answer was generated (remembered), else a fresh upstream answer
    def _for_scoring(self, prompts: Sequence[Prompt]) -> list[Prepared]:
        if all(repr(p) in self._upstream_memo for p in prompts):
            answers = [Completion(self._upstream_memo[repr(p)], "stop", 0, 0) for p in prompts]
            return self._prepared(prompts, answers)
        return self.prepare_batch(prompts, [GenerationConfig()] * len(prompts))

    def score(self, prompts, continuations, *, top_k: int = 0, reduce=None):
        prepared = self._for_scoring(prompts) if prompts else []
        return self.corrector.score([p.prompt for p in prepared], continuations, top_k=top_k, reduce=reduce)

    def iter_logprobs(self, prompts, continuations, **kwargs):
        if not hasattr(self.corrector, "iter_logprobs"):
            raise CapabilityError(f"corrector {self.corrector.spec!r} gives no full-vocabulary log-probabilities")
        prepared = self._for_scoring(prompts) if prompts else []
        return self.corrector.iter_logprobs([p.prompt for p in prepared], continuations, **kwargs)

    def iter_lens(self, prompts, continuations, positions, **kwargs):
        if not hasattr(self.corrector, "iter_lens"):
            raise CapabilityError(f"corrector {self.corrector.spec!r} cannot read its layers (the logit lens needs "
                                  "the transformers backend)")
        prepared = self._for_scoring(prompts) if prompts else []
        return self.corrector.iter_lens([p.prompt for p in prepared], continuations, positions, **kwargs)

    def stage_prompts(self, prompt: Prompt, config: GenerationConfig) -> list[tuple[str, str]]:
        up = inner_prompts(self.upstream, prompt, config)
        prepared = self.prepare_batch([prompt], [config])[0]
        return [*up, ("corrector " + self.corrector.spec, self.corrector.render(prepared.prompt))]

    def render(self, prompt: Prompt) -> str:
        return self.corrector.render(self._for_scoring([prompt])[0].prompt)

    def method_info(self) -> dict[str, Any]:
        return {"route": _route_info(self)}

    def info(self) -> dict[str, Any]:
        return {**self.upstream.info(), "method": _route_name(self), "route": _route_info(self)}

    def close(self) -> None:
        self.upstream.close()
        self.corrector.close()


def inner_prompts(model: Any, prompt: Prompt, config: GenerationConfig) -> list[tuple[str, str]]:
    if hasattr(model, "stage_prompts"):
        return model.stage_prompts(prompt, config)
    label = f"{getattr(model, 'method', model.backend)} {model.spec}"
    backend, seen, _, _ = prepared_for_backend(model, prompt, config)
    return [(label, backend.render(seen))]


def _route_info(model: Any) -> list[dict[str, Any]]:
    """The stages of a route, outermost last: what provenance records about how an answer was made."""
    if isinstance(model, PromptRewriter):
        return [{"stage": "rewrite", "method": "bpo", "model": model.rewriter.info(),
                 "layout": model.layout.provenance()}, *_route_info(model.base)]
    if isinstance(model, AnswerCorrector):
        return [*_route_info(model.upstream), {"stage": "correct", "method": "aligner",
                                               "model": model.corrector.info(), "layout": model.layout.provenance()}]
    if getattr(model, "method", None) == "best-of-n":
        return [*_route_info(model.base), {"stage": "select", "method": "best-of-n", "n": model.n,
                                           "scorer": model.scorer.info()}]
    return [{"stage": "answer", "method": getattr(model, "method", None), "model": model.spec}]


def _route_name(model: Any) -> str:
    names = {"rewrite": "bpo", "correct": "aligner"}
    return " > ".join(names.get(r["stage"]) or (f"best-of-{r['n']}" if r["stage"] == "select" else str(r["method"]))
                      for r in _route_info(model))


# ----------------------------------------------------------------------------- the nodes
def _stage_child(children: dict[str, Any], slot: str, stage: str, node: Any, layout_name: str | None,
                 resources: Any) -> tuple[Any, Layout]:
    """A stage's model and its layout. The layout is chosen from the model itself (the one under any method
    wrapping: its trained layout or published checkpoint); a bare model is asked in its layout's method."""
    model = children[slot]
    layout = layout_for(answering_backend(model), stage, layout_name)
    if is_bare(node, slot):
        model = build(make_node(layout.method, model=model), resources)
    return model, layout


def build_rewrite(options: Any, children: dict[str, Any], resources: Any, node: Any) -> PromptRewriter:
    """The ``rewrite`` node (BPO): its ``rewriter`` rewrites each request before its ``model`` answers it."""
    rewriter, layout = _stage_child(children, "rewriter", "rewrite", node, options.layout, resources)
    return PromptRewriter(children["model"], rewriter, layout)


def build_correct(options: Any, children: dict[str, Any], resources: Any, node: Any) -> AnswerCorrector:
    """The ``correct`` node (Aligner): its ``corrector`` rewrites each answer of its ``model``."""
    corrector, layout = _stage_child(children, "corrector", "correct", node, options.layout, resources)
    return AnswerCorrector(children["model"], corrector, layout)
