"""A fixed set of commands on the tiny models whose records must not change when the core is rebuilt: generate
under each method and route, shift, a judge-free eval, a DeRa sweep and a served request. Their records, with
the provenance left out (its layout may change), were written by the code *before* the route-tree core
(commit 14d9ed6) into ``tests/data/golden.json``; ``tests/test_unchanged.py`` runs the same commands now and
compares.

Regenerate (only when a change of behaviour is intended, and say so in the commit)::

    .venv/bin/python -m tests.support.golden tests/data/golden.json
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

PROMPTS = ["Name a colour.", "Tell me a fact", "The quick brown", "How do I boil an egg?"]
TEMPLATE = "id: golden\npreamble: Be kind.\nexamples:\n  - query: Hi\n    answer: Hello!\n"
#: fields that say when or how fast, not what
VOLATILE = {"provenance", "created", "id_", "seconds", "elapsed", "tokens_per_second", "system_fingerprint"}


def _clean(x: Any) -> Any:
    if isinstance(x, dict):
        return {k: _clean(v) for k, v in x.items() if k not in VOLATILE}
    if isinstance(x, list):
        return [_clean(v) for v in x]
    if isinstance(x, float):
        return round(x, 6)
    return x


def _jsonl(path: Path) -> list[Any]:
    return [_clean(json.loads(line)) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def run_all(tiny: dict[str, Path], work: Path) -> dict[str, Any]:
    """Run every command of the set in ``work`` on the tiny models; their cleaned records by command name."""
    from alignkit.cli.main import main

    base, aligned, judge = str(tiny["base"]), str(tiny["aligned"]), str(tiny["judge"])
    work.mkdir(parents=True, exist_ok=True)
    tpl = work / "t.yaml"
    tpl.write_text(TEMPLATE)
    inp = work / "in.jsonl"
    inp.write_text("".join(json.dumps({"id": f"q{i}", "prompt": p}) + "\n" for i, p in enumerate(PROMPTS)))
    common = ["--input", str(inp), "--max-new-tokens", "6", "--dtype", "float64", "--quiet"]
    runs: dict[str, list[str]] = {
        "none": ["--model", base, "--method", "none"],
        "template": ["--model", aligned, "--method", "template"],
        "urial": ["--model", base, "--method", "urial", "--template", str(tpl)],
        "auto": ["--model", aligned, "--method", "auto"],
        "sampled": ["--model", aligned, "--method", "template", "--temperature", "0.9", "--seed", "4"],
        "dera": ["--model", aligned, "--method", "dera", "--ref", base, "--lam", "0.5", "--aligned-method",
                 "template"],
        "dera-urial-side": ["--model", base, "--method", "dera", "--ref", base, "--lam", "1.5", "--aligned-method",
                            "urial", "--template", str(tpl)],
        "rewrite-correct": ["--model", base, "--method", "urial", "--template", str(tpl), "--rewriter", aligned,
                            "--corrector", aligned],
        "best-of-n": ["--model", aligned, "--method", "template", "--scorer", f"geval:{judge}", "--n", "2",
                      "--seed", "9"],
    }
    out: dict[str, Any] = {}
    for name, args in runs.items():
        path = work / f"gen-{name}.jsonl"
        code = main(["generate", *args, "--output", str(path), *common])
        out[f"generate {name}"] = _jsonl(path) if code == 0 else {"exit": code}
    shift_in = work / "shift.jsonl"
    shift_in.write_text("".join(json.dumps({"id": f"s{i}", "instruction": p}) + "\n" for i, p in enumerate(PROMPTS)))
    code = main(["shift", "--base", base, "--aligned", aligned, "--aligned-method", "template", "--input",
                 str(shift_in), "--output", str(work / "shift-out.jsonl"), "--max-new-tokens", "6", "--dtype",
                 "float64", "--quiet", "--json"])
    out["shift"] = _jsonl(work / "shift-out.jsonl") if code == 0 else {"exit": code}
    out["eval"] = _eval(main, base, aligned, tpl, work)
    code = main(["dera", "sweep", "--ref", base, "--aligned", aligned, "--aligned-method", "template", "--lams",
                 "0,0.5,1", "--input", str(inp), "--output", str(work / "sweep"), "--max-new-tokens", "6",
                 "--dtype", "float64", "--quiet"])
    out["dera sweep"] = ({lam: _jsonl(work / "sweep" / f"lam-{lam}.jsonl") for lam in ("0", "0.5", "1")}
                         if code == 0 else {"exit": code})
    out["served"] = _served(aligned)
    return out


def _eval(main, base: str, aligned: str, tpl: Path, work: Path) -> Any:
    import yaml

    inst = work / "inst.jsonl"
    inst.write_text("".join(json.dumps({"id": f"i{i}", "instruction": p, "type": "t", "topic": "x",
                                        "safety": i == 3}) + "\n" for i, p in enumerate(PROMPTS)))
    cfg = work / "eval.yaml"
    cfg.write_text(yaml.safe_dump({
        "instructions": str(inst), "judge": "none", "max_new_tokens": 6, "output": str(work / "eval"),
        "contestants": [{"name": "urial", "model": base, "method": "urial", "template": str(tpl)},
                        {"name": "chat", "model": aligned, "method": "template"}]}))
    code = main(["eval", "--config", str(cfg), "--quiet"])
    if code != 0:
        return {"exit": code}
    report = json.loads((work / "eval" / "report.json").read_text())
    return {"answers": {n: _jsonl(work / "eval" / "answers" / f"{n}.jsonl") for n in ("urial", "chat")},
            "summary": _clean(report["summary"]), "cheap": _clean(report["cheap"])}


def _served(aligned: str) -> Any:
    from fastapi.testclient import TestClient

    from alignkit.methods import MethodOptions, apply_method
    from alignkit.models.registry import load_model
    from alignkit.server.app import build_app
    from alignkit.server.service import Service

    model = apply_method(load_model(aligned, dtype="float64"), MethodOptions(method="template"))
    with TestClient(build_app([Service(model, "chat")])) as client:
        r = client.post("/v1/chat/completions", json={
            "model": "chat", "messages": [{"role": "user", "content": "Name a colour."}], "max_tokens": 6,
            "temperature": 0})
        body = r.json()
    return {"status": r.status_code, "choices": _clean(body.get("choices")), "usage": body.get("usage")}


def normalise(result: dict[str, Any], tiny: dict[str, Path], work: Path) -> dict[str, Any]:
    """The result with this run's folders written as ``<base>``, ``<aligned>``, ``<judge>``, ``<work>``."""
    text = json.dumps(result, sort_keys=True, ensure_ascii=False)
    for name, path in sorted(tiny.items(), key=lambda kv: -len(str(kv[1]))):
        text = text.replace(str(path), f"<{name}>")
    return json.loads(text.replace(str(work), "<work>"))


def main(argv: list[str]) -> int:
    import tempfile

    from tests.support import tiny

    with tempfile.TemporaryDirectory() as d:
        root = Path(d)
        tok = tiny.build_tokenizer()
        models = {
            "base": tiny.save_model(root / "base", tiny.build_model(tok, seed=1), tok),
            "aligned": tiny.save_model(root / "aligned", tiny.build_model(tok, seed=2), tok, tiny.CHAT_TEMPLATE),
            "judge": tiny.save_model(root / "judge", tiny.build_model(tok, seed=5, arch="llama", positions=4096), tok,
                                     tiny.CHAT_TEMPLATE),
        }
        result = normalise(run_all(models, root / "work"), models, root / "work")
    Path(argv[0]).parent.mkdir(parents=True, exist_ok=True)
    Path(argv[0]).write_text(json.dumps(result, indent=1, sort_keys=True, ensure_ascii=False) + "\n")
    print(f"wrote {argv[0]}: {len(result)} commands")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
