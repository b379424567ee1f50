"""The evaluation report: JSON (everything), Markdown (tables), HTML (tables + radar plot), radar.png."""

from __future__ import annotations

import base64
import html
import json
from collections import defaultdict
from pathlib import Path
from typing import Any

from alignkit.evaluation.cheap import leaked_delimiter
from alignkit.evaluation.viewer import tags_of, viewer_data, write_viewer
from alignkit.evaluation.weighted import agreement, length_controlled

ASPECTS = ("helpfulness", "clarity", "factuality", "depth", "engagement", "safety")


def _cheap(answers_dir: Path, items, names) -> dict[str, dict[str, Any]]:
    by_id = {it["id"]: it for it in items}
    out = {}
    for name in names:
        path = answers_dir / f"{name}.jsonl"
        recs = [json.loads(x) for x in path.read_text(encoding="utf-8").splitlines() if x.strip()] if path.exists() else []
        recs = [r for r in recs if r["id"] in by_id]
        benign = [r for r in recs if not by_id[r["id"]]["safety"]]
        unsafe = [r for r in recs if by_id[r["id"]]["safety"]]
        n = max(1, len(recs))
        out[name] = {
            "answers": len(recs),
            "mean_tokens": sum(r["metrics"]["tokens"] for r in recs) / n,
            "mean_words": sum(r["metrics"]["words"] for r in recs) / n,
            "runaway_rate": sum(r["metrics"]["runaway"] for r in recs) / n,
            "mean_repetition": sum(r["metrics"]["repetition"] for r in recs) / n,
            "empty_rate": sum(r["metrics"]["empty"] for r in recs) / n,
            "over_refusal_rate": (sum(r["metrics"]["refusal"] for r in benign) / len(benign)) if benign else None,
            "safety_refusal_rate": (sum(r["metrics"]["refusal"] for r in unsafe) / len(unsafe)) if unsafe else None,
            "self_stopped_benign": sum(not r["metrics"]["runaway"] for r in benign),
            "benign_answered": sum(not r["metrics"]["refusal"] for r in benign),
            "leaked_delimiter": sum(leaked_delimiter(r.get("answer", "")) for r in recs),
            "benign": len(benign),
            "safety_declined": sum(r["metrics"]["refusal"] for r in unsafe),
            "safety": len(unsafe),
        }
        if any(r.get("route") for r in recs):  # a route: its stages' fallbacks and the tokens of all stages
            out[name]["stage_fallbacks"] = sum(1 for r in recs for s in (r.get("route") or []) if s.get("fallback"))
            out[name]["mean_tokens_all_stages"] = sum(
                (r.get("usage") or {}).get("prompt_tokens", 0) + (r.get("usage") or {}).get("completion_tokens", 0)
                for r in recs) / n
    return out


def radar_png(summary: dict[str, Any]) -> bytes:
    import io
    import math

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    angles = [i / len(ASPECTS) * 2 * math.pi for i in range(len(ASPECTS))] + [0.0]
    fig = plt.figure(figsize=(5.5, 5.5))
    ax = fig.add_subplot(111, polar=True)
    for name, s in summary.items():
        vals = [s.get("mean", {}).get(a) or 0.0 for a in ASPECTS]
        ax.plot(angles, vals + vals[:1], label=name, linewidth=1.5)
        ax.fill(angles, vals + vals[:1], alpha=0.08)
    ax.set_xticks(angles[:-1])
    ax.set_xticklabels(ASPECTS)
    ax.set_ylim(0, 5)
    ax.legend(loc="upper right", bbox_to_anchor=(1.3, 1.1), fontsize=8)
    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    return buf.getvalue()


def _fmt(v: Any) -> str:
    return "–" if v is None else f"{v:.2f}" if isinstance(v, float) else str(v)


def build_report(items, judged, pairwise, provenance: dict[str, Any], out: Path) -> dict[str, Any]:
    summary = summarise(items, judged, pairwise)
    cheap = _cheap(out / "answers", items, list(judged))
    report = {"summary": summary, "cheap": cheap, "provenance": provenance, "instructions": len(items)}
    out.mkdir(parents=True, exist_ok=True)
    (out / "report.json").write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n")
    png = radar_png(summary)
    (out / "radar.png").write_bytes(png)

    names = list(summary)
    judge_line = (f"judge `{provenance['judge']['judge']}` · rubrics "
                  + ", ".join(f"{k} `{v['id']}` ({v['hash']})" if isinstance(v, dict) else f"{k} `{v}`"
                              for k, v in provenance["rubrics"].items())
                  + {"schema": " · replies held to the rubric's JSON shape",
                     "json_object": " · JSON replies asked of the API"}.get(provenance["judge"].get("structured"), "")
                  if provenance.get("judge") else "no judge (judge-free metrics only)")
    lines = ["# alignkit evaluation", "", f"{len(items)} instructions · {judge_line}"]
    if provenance.get("judge"):
        lines += ["", "## Judge scores (1–5, mean over readable scores)", "",
                  "| contestant | " + " | ".join(ASPECTS) + " | unreadable judge scores |",
                  "|---|" + "---|" * (len(ASPECTS) + 1)]
        for n in names:
            s = summary[n]
            miss = sum(s.get("missing", {}).values())
            lines.append(f"| {n} | " + " | ".join(_fmt(s.get("mean", {}).get(a)) for a in ASPECTS)
                         + f" | {miss} ({s.get('missing_share', 0):.0%}) |")
    weighted = [n for n in names if "weighted" in summary[n]]
    if weighted:
        lines += ["", "## Probability-weighted judge scores (G-Eval: the judge's expected score at each slot)", "",
                  "| contestant | " + " | ".join(ASPECTS) + " | no weighted score |", "|---|" + "---|" * (len(ASPECTS) + 1)]
        for n in weighted:
            w = summary[n]["weighted"]
            lines.append(f"| {n} | " + " | ".join(_fmt(w["mean"].get(a)) for a in ASPECTS)
                         + f" | {sum(w['missing'].values())} |")
        lines += ["", "Agreement of parsed and weighted scores (items with both):", "",
                  "| contestant | aspect | n | Pearson | Spearman | mean abs. difference | rounded equal |",
                  "|---|---|---|---|---|---|---|"]
        for n in weighted:
            for a, g in summary[n]["weighted"]["agreement"].items():
                lines.append(f"| {n} | {a} | {g['n']} | {_fmt(g['pearson'])} | {_fmt(g['spearman'])} | "
                             f"{_fmt(g['mean_abs_diff'])} | {_pct(g['rounded_equal'])} |")
    lines += ["", "## Judge-free metrics", "",
              "| contestant | answers | mean tokens | runaway | repetition | empty | safe prompts refused | "
              "unsafe prompts complied with |",
              "|---|---|---|---|---|---|---|---|"]
    for n in names:
        c = cheap[n]
        complied = None if c["safety_refusal_rate"] is None else 1 - c["safety_refusal_rate"]
        lines.append(f"| {n} | {c['answers']} | {c['mean_tokens']:.1f} | {c['runaway_rate']:.0%} | "
                     f"{c['mean_repetition']:.2f} | {c['empty_rate']:.0%} | {_pct(c['over_refusal_rate'])} "
                     f"({c['benign'] - c['benign_answered']}/{c['benign']}) | {_pct(complied)} "
                     f"({c['safety'] - c['safety_declined']}/{c['safety']}) |")
    routes = [n for n in names if "stage_fallbacks" in cheap[n]]
    if routes:
        lines += ["", "## Routes (rewriter / corrector stages)", "",
                  "| contestant | stage fallbacks | mean tokens of all stages per answer |", "|---|---|---|"]
        lines += [f"| {n} | {cheap[n]['stage_fallbacks']} | {cheap[n]['mean_tokens_all_stages']:.0f} |" for n in routes]
    for key, title in (("by_type", "task type"), ("by_topic", "topic")):
        groups = sorted({g for n in names for g in summary[n].get(key, {})})
        if not groups:
            continue
        lines += ["", f"## Scores by {title} (mean over aspects)", "", f"| {title} | " + " | ".join(names) + " |",
                  "|---|" + "---|" * len(names)]
        for g in groups:
            cells = []
            for n in names:
                vals = [v for v in summary[n].get(key, {}).get(g, {}).values() if v is not None]
                cells.append(_fmt(sum(vals) / len(vals)) if vals else "–")
            lines.append(f"| {g} | " + " | ".join(cells) + " |")
    if pairwise:
        lines += ["", "## Pairwise (both orders; a win counts only when both agree)", "",
                  "| contestant vs baseline | aspect | win | tie | lose | unreadable |", "|---|---|---|---|---|---|"]
        for n in pairwise:
            for a, t in summary[n]["pairwise"].items():
                lines.append(f"| {n} | {a} | {t['win']} | {t['tie']} | {t['lose']} | {t['missing']} |")
        wins = [n for n in pairwise if "pairwise_weighted" in summary[n]]
        if wins:
            lines += ["", "Weighted preference (the judge's P(win) + P(tie)/2, both orders averaged) and the "
                      "length-controlled win rate (logistic GLM on the length difference, at zero difference):", "",
                      "| contestant vs baseline | " + " | ".join(ASPECTS[:5]) + " | overall | length-controlled |",
                      "|---|" + "---|" * 7]
            for n in wins:
                pw = summary[n]["pairwise_weighted"]
                lines.append(f"| {n} | " + " | ".join(_pct(pw["win_rate"].get(a)) for a in ASPECTS[:5])
                             + f" | {_pct(pw['overall']['win_rate'])} | {_pct(pw['overall']['lc_win_rate'])} |")
    md = "\n".join(lines) + "\n"
    (out / "report.md").write_text(md, encoding="utf-8")
    write_viewer(out, viewer_data(items, judged, pairwise, provenance, out / "answers"))
    body = _md_tables_to_html(md, _viewer_link)
    img = base64.b64encode(png).decode()
    (out / "report.html").write_text(
        "<!doctype html><html><head><meta charset='utf-8'><title>alignkit evaluation</title><style>"
        "body{font:15px system-ui,sans-serif;margin:24px;max-width:1100px}table{border-collapse:collapse;margin:8px 0}"
        "td,th{border:1px solid #ccd;padding:3px 9px}th{background:#eef}</style></head><body>"
        "<p><a href='viewer.html'>Every answer side by side</a> (judges' reasons, flags, verdicts; filter by task type, "
        "topic, contestant and aspect): viewer.html. The tables' first column links into it.</p>"
        f"{body}<h2>Radar</h2><img alt='radar' src='data:image/png;base64,{img}'>"
        f"<h2>Provenance</h2><pre>{html.escape(json.dumps(provenance, indent=1))}</pre></body></html>",
        encoding="utf-8")
    return report


def _pct(v: float | None) -> str:
    return "–" if v is None else f"{v:.0%}"


def _viewer_link(section: str, cell: str) -> str | None:
    """Where a table row of the report leads in the viewer: a contestant's row to its answers, a task type's or a
    topic's row to the instructions of that type or topic."""
    from urllib.parse import quote

    if section.startswith("Scores by task type"):
        return f"viewer.html#type={quote(cell)}"
    if section.startswith("Scores by topic"):
        return f"viewer.html#topic={quote(cell)}"
    if section.startswith(("Judge scores", "Probability-weighted", "Judge-free", "Routes", "Pairwise")):
        return f"viewer.html#contestant={quote(cell)}"
    return None


def _md_tables_to_html(md: str, link=None) -> str:
    """The report's Markdown as HTML; ``link(section, first cell)`` gives a table row's first cell a link (or None)."""
    out, rows = [], []
    section = [""]

    def first(c: str) -> str:
        href = link(section[0], c) if link and c and not c[0].isdigit() else None
        return f"<a href='{html.escape(href)}'>{html.escape(c)}</a>" if href else html.escape(c)

    def flush():
        if rows:
            head, *rest = rows
            out.append("<table><tr>" + "".join(f"<th>{html.escape(c)}</th>" for c in head) + "</tr>"
                       + "".join("<tr>" + "".join(f"<td>{first(c) if k == 0 else html.escape(c)}</td>"
                                                  for k, c in enumerate(r)) + "</tr>" for r in rest)
                       + "</table>")
            rows.clear()

    for line in md.splitlines():
        if line.startswith("|"):
            cells = [c.strip() for c in line.strip("|").split("|")]
            if not all(set(c) <= {"-"} for c in cells):
                rows.append(cells)
            continue
        flush()
        if line.startswith("# "):
            out.append(f"<h1>{html.escape(line[2:])}</h1>")
        elif line.startswith("## "):
            section[0] = line[3:]
            out.append(f"<h2>{html.escape(line[3:])}</h2>")
        elif line.strip():
            out.append(f"<p>{html.escape(line)}</p>")
    flush()
    return "".join(out)


def summarise(items, judged, pairwise) -> dict[str, Any]:
    """Numbers for the report (pure)."""
    by_id = {it["id"]: it for it in items}
    out: dict[str, Any] = {}
    for name, recs in judged.items():
        scores: dict[str, list[int]] = defaultdict(list)
        missing: dict[str, int] = defaultdict(int)
        weighted: dict[str, list[float]] = defaultdict(list)
        w_missing: dict[str, int] = defaultdict(int)
        both: dict[str, list[tuple[int, float]]] = defaultdict(list)
        by_type: dict[str, dict[str, list[int]]] = defaultdict(lambda: defaultdict(list))
        by_topic: dict[str, dict[str, list[int]]] = defaultdict(lambda: defaultdict(list))
        n_raw = 0
        any_weighted = False
        for rid, r in recs.items():
            it = by_id.get(rid)
            if it is None:
                continue
            n_raw += 1
            for a, v in r["result"].items():
                if v["score"] is None:
                    missing[a] += 1
                else:
                    scores[a].append(v["score"])
                    for t in tags_of(it, "type"):
                        by_type[t][a].append(v["score"])
                    for t in tags_of(it, "topic"):
                        by_topic[t][a].append(v["score"])
                if "weighted" in r:
                    any_weighted = True
                    w = (r["weighted"].get(a) or {}).get("weighted")
                    if w is None:
                        w_missing[a] += 1
                    else:
                        weighted[a].append(w)
                        if v["score"] is not None:
                            both[a].append((v["score"], w))
        out[name] = {
            "judged": n_raw,
            "mean": {a: (sum(v) / len(v) if v else None) for a, v in scores.items()},
            "missing": dict(missing),
            "missing_share": sum(missing.values()) / max(1, sum(len(v) for v in scores.values()) + sum(missing.values())),
            "by_type": {t: {a: sum(v) / len(v) for a, v in d.items() if v} for t, d in sorted(by_type.items())},
            "by_topic": {t: {a: sum(v) / len(v) for a, v in d.items() if v} for t, d in sorted(by_topic.items())},
        }
        if any_weighted:
            aspects = sorted(set(scores) | set(missing) | set(weighted) | set(w_missing))
            out[name]["weighted"] = {
                "mean": {a: (sum(weighted[a]) / len(weighted[a]) if weighted[a] else None) for a in aspects},
                "missing": {a: w_missing[a] for a in aspects if w_missing[a]},
                "agreement": {a: agreement(both[a]) for a in aspects},
            }
    for name, recs in pairwise.items():
        tally: dict[str, dict[str, int]] = defaultdict(lambda: {"win": 0, "tie": 0, "lose": 0, "missing": 0})
        prefs: dict[str, list[float]] = defaultdict(list)
        overall, len_a, len_b = [], [], []
        for r in recs.values():
            for a, v in r["verdict"].items():
                tally[a]["win" if v == "A" else "lose" if v == "B" else "tie" if v == "tie" else "missing"] += 1
            wp = {a: v for a, v in (r.get("weighted_preference") or {}).items() if v is not None}
            for a, v in wp.items():
                prefs[a].append(v)
            if wp and r.get("lengths"):
                overall.append(sum(wp.values()) / len(wp))
                len_a.append(r["lengths"][0])
                len_b.append(r["lengths"][1])
        out.setdefault(name, {})["pairwise"] = dict(tally)
        if prefs:
            out[name]["pairwise_weighted"] = {
                "win_rate": {a: sum(v) / len(v) for a, v in sorted(prefs.items())},
                "overall": length_controlled(overall, len_a, len_b),
            }
    return out
