"""The docs site's generated pages, from the code and the committed result files.

    python scripts/docs_pages.py           # rewrite them
    python scripts/docs_pages.py --check   # exit 1, naming each page, when one differs (make docs runs this)
    python scripts/docs_pages.py --check --root COPY   # the same for a copy of the repository's docs/

- ``docs/reference/cli.md``: every command's ``--help``, from the parsers (``alignkit.cli.reference``).
- ``docs/results/NAME.md`` for every ``docs/results/NAME.json``: what it measured, the command that rewrites
  it, when and where, and every figure the file holds; ``docs/results/index.md`` lists them all.

A result file without an entry in ``RESULTS`` below (title, what it measures, the command) fails the build:
a figure without the command that rewrites it does not get into the docs.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"

# name -> (title, what it measures, the command that rewrites docs/results/NAME.json)
RESULTS: dict[str, tuple[str, str, str]] = {
    "best_of_n": ("Best-of-N", "Best-of-4 under URIAL as one batch vs 24 single generations; scorer throughput.",
                  "python bench/best_of_n.py --reward runs/rewarded/rm"),
    "data_methods": ("Data construction, measured", "Instruction back-translation (SFT on the seed alone, with "
                     "the curated pairs, with every pair), critique and revise (SFT on original vs revised answers) "
                     "with judge-free metrics on held-out instructions, and weak-to-strong generalisation (PGR) on a "
                     "true/false knowledge task.",
                     "python bench/data_methods.py --part w2s && python bench/data_methods.py --part revise && "
                     "python bench/data_methods.py --part backtranslate"),
    "dera_cost": ("DeRa's cost", "DeRa's two models in lockstep vs one model and vs running the two one after "
                  "another, on two copies of the embedded base.", "python bench/dera_cost.py"),
    "dera_cost-siblings": ("DeRa's cost on the tuned siblings", "The same, between the SFT and DPO siblings.",
                           "python bench/dera_cost.py --ref runs/siblings/sft --aligned runs/siblings/dpo"),
    "engines": ("Engines: transformers and llama.cpp", "One URIAL batch on each in-process engine; llama.cpp "
                "through alignkit vs llama-cpp-python directly; shift agreement.",
                "python bench/engines.py --engines hf,llamacpp"),
    "engines-vllm": ("Engines: vLLM's CPU build", "The same URIAL batch on vLLM's offline engine.",
                     "VLLM_ENABLE_V1_MULTIPROCESSING=0 VLLM_CPU_KVCACHE_SPACE=2 HF_HUB_OFFLINE=1 "
                     ".venv-vllm/bin/python bench/engines.py --engines hf,vllm"),
    "engines_command": ("Engines from the command line", "`alignkit generate` on each engine as a user runs it.",
                        "python bench/engines_command.py"),
    "grammar_libs": ("Structured-output libraries", "llguidance vs xgrammar replaying valid JSON on Gemma-3's "
                     "vocabulary (needs `pip install xgrammar==0.2.8`).", "python bench/grammar_libs.py"),
    "gpu_check": ("The transformers backend on a GPU, at 7B", "A randomly initialised Llama-2-7B-shaped base and "
                  "noisy sibling built on one H200 in bf16 (no download): generation with prefix reuse against "
                  "recomputation, the queries alone and transformers' own generate; the exact shift pass against its "
                  "floor (needs a CUDA GPU; the device tool's machine).", "python bench/gpu_check.py --profile"),
    "gpu_check_float32": ("The transformers backend on a GPU, at 7B, float32", "The generation part in float32: "
                          "prefix reuse, recomputation and transformers' generate token for token.",
                          "python bench/gpu_check.py --dtype float32 --parts generation --json "
                          "docs/results/gpu_check_float32.json"),
    "judge_concurrency": ("Judges over an API, concurrently", "32 judge calls to a server with 0.5 s latency, "
                          "one at a time vs 8 in flight.", "python bench/judge_concurrency.py"),
    "lima_recipe": ("The LIMA recipe", "SFT with LIMA's optimiser settings vs alignkit's default, on the "
                    "embedded base.", "python bench/lima_recipe.py"),
    "logit_arithmetic": ("Proxy-tuning's alpha and reward-guided decoding, measured", "The alpha sweep of base + "
                         "alpha * (SFT sibling - base) on the held-out instructions (judge-free metrics, reward, KL "
                         "to the base; alpha 1 against the SFT sibling alone), and ARGS against best-of-N and the "
                         "greedy answer under URIAL, rated by the reward model.",
                         "make siblings rewarded && python bench/logit_arithmetic.py --part sweep && python "
                         "bench/logit_arithmetic.py --part args"),
    "mix_cost": ("Logit arithmetic's cost", "DeRa and a proxy-tuning route in lockstep vs one model; the proxy "
                 "route's tokens vs arithmetic done by hand.", "python bench/mix_cost.py"),
    "prefix_cache": ("Prefix reuse", "16 requests sharing a ~1,000-token prefix: reused, recomputed, absent.",
                     "python bench/prefix_cache.py"),
    "refusal_detector": ("The refusal detector", "Precision, recall and F1 of the refusal classifier and of "
                         "XSTest's string matcher, leave one model out; speed; an LLM judge as detector.",
                         "python bench/refusal_detector.py --judge llamacpp:smollm2-135m-instruct --judge-rows 60"),
    "rewarded": ("A reward model, ranked pairs and DPO on them", "`make rewarded`: times, held-out accuracy, "
                 "the DPO sibling trained on ranked pairs vs the earlier one, a DeRa sweep scored by reward.",
                 "make rewarded"),
    "route_cost": ("Routes' cost", "BPO rewrite, Aligner correction and both around URIAL vs URIAL alone.",
                   "python bench/route_cost.py"),
    "routes-eval": ("Routes, evaluated", "`make routes`: every route side by side under the judge-free metrics; "
                    "the BPO and Aligner data and training.", "make routes"),
    "served_judge": ("A judge served over the API", "The same judge served by `alignkit serve` and run in "
                     "process: structured replies, fallbacks, weighted scores.", "python bench/served_judge.py"),
    "serve_peers": ("alignkit's server against the engines' own", "One load (28 conversations under URIAL, 16 clients "
                    "× 6 requests, 64 tokens, greedy) on `alignkit serve` over vLLM's async and offline engines, "
                    "transformers and llama.cpp, and on vLLM's and llama-cpp-python's own servers; answers compared "
                    "where the engine is the same.", "python bench/serve_peers.py"),
    "serve_paths": ("The transformers and llama.cpp serving paths, before and after", "alignkit's server from an "
                    "earlier commit and from this one, side by side on the serve_peers load, answers compared; "
                    "where the time goes (py-spy).", "python bench/serve_paths.py --before cd8abb6 --profile"),
    "serve_paths_slots": ("The transformers serving path: the running batch's cache in slots", "alignkit's server "
                          "before (83a6052) and after the running batch's key/values were kept in slots, side by side "
                          "on the serve_peers load, answers compared; where the time goes now (py-spy).",
                          "python bench/serve_paths.py --before 83a6052 --backends hf --profile --name "
                          "serve_paths_slots"),
    "serve_peers_float32": ("alignkit's server against vLLM's own, float32", "The same load with both engines in "
                            "float32, where vLLM's CPU build is batch-invariant: answers compared one by one.",
                            "python bench/serve_peers.py --servers vllm,alignkit-vllm --dtype float32 --rounds 1"),
    "server_load": ("Server under load", "16 clients: continuous batching vs static batches vs one at a time.",
                    "python bench/server_load.py"),
    "sharded_generate": ("Sharded generation", "`alignkit shards` with 1 and 2 workers on the 2 cores.",
                         "python bench/sharded_generate.py"),
    "shift-gemma-urial": ("Token shift: the embedded base vs itself under URIAL", "The shift analysis of "
                          "URIAL K=3 answers (plain greedy, 256 tokens) to the 20 instructions, exact mode.",
                          "alignkit shift --base gemma-3-270m --aligned gemma-3-270m --aligned-method urial "
                          "--input examples/instructions-20.jsonl --output runs/shift-urial.jsonl --json "
                          "> docs/results/shift-gemma-urial.json"),
    "shift_floor": ("The shift analysis' floor", "Exact analysis vs the two forward passes it cannot avoid.",
                    "python bench/shift_floor.py --answers 8"),
    "shift_headline": ("Token shift on alignkit's instruction set", "The SFT sibling's and URIAL's shift over "
                       "every instruction of alignkit-eval, by task type.",
                       "python bench/shift_headline.py --row sft"),
    "shift_layers": ("Reading the layers", "`shift --layers` (the logit lens of both models) against the plain exact "
                     "analysis on the same URIAL answers: every 4th layer and all 18.", "python bench/shift_layers.py"),
    "shift_layers_headline": ("Where in the network the shift arises", "`shift --layers all` on every 10th "
                              "instruction of the headline set (27): the base against its SFT sibling, and against "
                              "itself under URIAL; by layer, the share of positions whose answer token is each "
                              "model's lens's top-1, the KL between the lenses, split by shift class and token class.",
                              "make siblings && python bench/shift_layers_headline.py --row sft && python "
                              "bench/shift_layers_headline.py --row urial && python bench/shift_layers_headline.py "
                              "--figures"),
    "shift_speed": ("The shift analysis' speed and memory", "One pass per answer vs one per prefix; peak memory.",
                    "python bench/shift_speed.py"),
    "shift_token_classes": ("Shifted tokens by class", "Style, function and content tokens among shifted "
                            "positions (the rule of `analysis/tokens.py`).",
                            "python bench/shift_token_classes.py runs/siblings/shift-sft.jsonl"),
    "siblings": ("The tuned siblings", "`make siblings`: SFT and DPO siblings of the embedded base, their "
                 "times, their answers checked, their shift.", "make siblings"),
    "structured": ("Structured output", "100 requests under a JSON schema vs unconstrained: validity and cost "
                   "per token.", "python bench/structured.py"),
    "train_overhead": ("Training overhead", "`alignkit train sft` vs TRL's trainer called directly on the same "
                       "records.", "python bench/train_overhead.py"),
    "train_processes": ("Training in two processes", "One process vs two (gloo) at the same global batch.",
                        "python bench/train_processes.py"),
    "tool_choice": ("Tool calls under auto, measured", "Does the embedded base under URIAL call a tool when a "
                    "request needs one, and not otherwise? 24 labelled requests, three tools, tool_choice auto.",
                    "python bench/tool_choice.py"),
    "urial_ablation": ("URIAL ablation", "Templates and K side by side under the judge-free metrics on 46 "
                       "instructions.", "python bench/urial_ablation.py"),
    "urial_selfstop": ("URIAL stops by itself", "Three decodings of URIAL K=3 on the embedded base: stopping, "
                       "leaks, refusals.", "python bench/urial_selfstop.py"),
    "urial_throughput": ("URIAL's preamble reuse", "16 instructions with the K=3 preamble computed once vs per "
                         "request.", "python bench/urial_throughput.py"),
    "vllm_scale": ("vLLM: scale out", "vLLM's CPU build: tensor parallelism, Ray data parallelism, what cannot "
                   "run here.", "VLLM_ENABLE_V1_MULTIPROCESSING=0 VLLM_CPU_KVCACHE_SPACE=2 .venv-vllm/bin/python "
                   "bench/vllm_scale.py"),
}

MAX_ROWS = 120  # figures listed per page; the rest stay in the file, which the page links
MAX_TEXT = 100  # longer strings (answers, prompts) stay in the file


def _leaves(obj: Any, path: str = "") -> list[tuple[str, str]]:
    if isinstance(obj, dict):
        return [leaf for k, v in obj.items() for leaf in _leaves(v, f"{path} › {k}" if path else str(k))]
    if isinstance(obj, list):
        if all(isinstance(x, (int, float, bool)) or x is None for x in obj) and len(obj) <= 12:
            return [(path, ", ".join(_cell(x) for x in obj))]
        return [leaf for i, v in enumerate(obj) for leaf in _leaves(v, f"{path} › {i}")]
    text = _cell(obj)
    return [(path, text)] if len(text) <= MAX_TEXT else []


def _cell(x: Any) -> str:
    if isinstance(x, float):
        x = round(x, 6)
    return str(x).replace("|", "\\|").replace("\n", "\\n")


def result_page(name: str, data: Any) -> str:
    """One result file's page: what it measured, the command that rewrites it, every figure it holds."""
    title, what, command = RESULTS[name]
    lines = [f"# {title}", "", "<!-- generated by scripts/docs_pages.py from docs/results/"
             f"{name}.json: do not edit -->", "", what, "", f"Rewrite it: `{command}`", ""]
    measured = data.get("_measured") if isinstance(data, dict) else None
    if isinstance(measured, dict):
        when = ", ".join(f"{k} {measured[k]}" for k in ("date", "machine", "cpus") if k in measured)
        if when:
            lines += [f"Measured: {when}.", ""]
    leaves = [(p, v) for p, v in _leaves(data) if not p.startswith("_measured")]
    lines += [f"The file: [`docs/results/{name}.json`]({name}.json). Its figures "
              f"(source: `docs/results/{name}.json`):", "", "| figure | value |", "|---|---|"]
    lines += [f"| {p} | {v} |" for p, v in leaves[:MAX_ROWS]]
    if len(leaves) > MAX_ROWS:
        lines += ["", f"… and {len(leaves) - MAX_ROWS} more figures in the file."]
    return "\n".join(lines) + "\n"


def index_page(names: list[str]) -> str:
    lines = ["# Results", "", "<!-- generated by scripts/docs_pages.py from docs/results/*.json: do not edit -->",
             "", "Every figure in the README and these pages comes from a result file committed under "
             "`docs/results/` and the command that rewrites it (`make bench` runs them all; a test checks "
             "every measured table against the file it cites). The figures were taken on the 2-core CPU "
             "machines this project is built on unless a page says otherwise.", "",
             "| result | what it measures | rewrite it |", "|---|---|---|"]
    for name in names:
        title, what, command = RESULTS[name]
        lines.append(f"| [{title}]({name}.md) | {what} | `{command}` |")
    lines += ["", "The measurements explained in prose are in the guides (each table cites its file) and in "
              "[More measurements](measured.md)."]
    return "\n".join(lines) + "\n"


def pages(docs: Path = DOCS) -> dict[Path, str]:
    """Every generated page of the docs folder ``docs``: its path and the text it must have."""
    from alignkit.cli.reference import render

    out = {docs / "reference" / "cli.md": render() + "\n"}
    names = sorted(p.stem for p in (docs / "results").glob("*.json"))
    unknown = [n for n in names if n not in RESULTS]
    if unknown:
        raise SystemExit(f"docs/results/{unknown[0]}.json has no entry in scripts/docs_pages.py RESULTS "
                         "(title, what it measures, the command that rewrites it)")
    gone = sorted(set(RESULTS) - set(names))
    if gone:
        raise SystemExit(f"scripts/docs_pages.py RESULTS names docs/results/{gone[0]}.json, which is not committed")
    for name in names:
        data = json.loads((docs / "results" / f"{name}.json").read_text(encoding="utf-8"))
        out[docs / "results" / f"{name}.md"] = result_page(name, data)
    out[docs / "results" / "index.md"] = index_page(names)
    return out


def stale(generated: dict[Path, str]) -> list[Path]:
    return [p for p, text in generated.items()
            if not p.is_file() or p.read_text(encoding="utf-8") != text]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--check", action="store_true", help="fail when a generated page differs; write nothing")
    ap.add_argument("--root", type=Path, default=ROOT, help="the repository (or a copy) whose docs/ to check or write")
    args = ap.parse_args(argv)
    generated = pages(args.root / "docs")
    bad = stale(generated)
    if args.check:
        for p in bad:
            print(f"stale: {p.relative_to(args.root)} (regenerate: python scripts/docs_pages.py)", file=sys.stderr)
        return 1 if bad else 0
    for p in bad:
        p.write_text(generated[p], encoding="utf-8")
        print(f"wrote {p.relative_to(args.root)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
