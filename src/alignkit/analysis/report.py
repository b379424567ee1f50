"""The shift report: one self-contained HTML file (figures inline, no network assets) plus the figures as
PNG files, and every answer with its tokens coloured by category; hover or click a token for both models'
top-k."""

from __future__ import annotations

import base64
import html
import io
import json
from pathlib import Path
from typing import Any

from alignkit.analysis.metrics import CATEGORIES

COLORS = {"unshifted": "#e8eef7", "marginal": "#ffd76e", "shifted": "#ff7b6b"}


def short_label(label: str) -> str:
    """``method:/long/path/to/model`` -> ``method:model`` for figure legends."""
    method, sep, spec = label.partition(":")
    if not sep:
        return label
    return f"{method}:{Path(spec.rstrip('/')).name or spec}"


def figures(summary: dict[str, Any]) -> dict[str, bytes]:
    """PNG figures: category shares, and curves over answer position of KL, base probability and shifted share."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    summary = {short_label(k): v for k, v in summary.items()}
    labels = list(summary)
    out: dict[str, bytes] = {}

    fig, ax = plt.subplots(figsize=(7, 1.2 + 0.6 * len(labels)))
    left = [0.0] * len(labels)
    for c in CATEGORIES:
        vals = [summary[lab][c] * 100 for lab in labels]
        ax.barh(labels, vals, left=left, color=COLORS[c], edgecolor="#555", label=c)
        for i, v in enumerate(vals):
            if v >= 4:
                ax.text(left[i] + v / 2, i, f"{v:.1f}%", ha="center", va="center", fontsize=9)
        left = [a + b for a, b in zip(left, vals)]
    ax.set_xlim(0, 100)
    ax.set_xlabel("share of answer positions (%)")
    ax.legend(ncol=3, loc="lower center", bbox_to_anchor=(0.5, 1.0), frameon=False)
    out["shares.png"] = _png(fig, plt)

    for key, title, ylabel in (
        ("mean_kl", "KL(aligned ‖ base) by answer position", "mean KL (nats)"),
        ("mean_p_base", "base probability of the aligned token", "mean P_base(o_t)"),
        ("shifted", "share of shifted tokens by answer position", "shifted share"),
        ("mean_base_rank", "base rank of the aligned token (capped at 1000)", "mean base rank"),
        ("mean_base_rank_cap50", "base rank of the aligned token (capped at 50, as Re-Align)", "mean base rank"),
        ("median_base_rank", "median base rank of the aligned token (no cap)", "median base rank"),
    ):
        fig, ax = plt.subplots(figsize=(7, 3))
        for lab in labels:
            cur = summary[lab]["curves"]
            ax.plot(cur["t"], cur[key], label=lab, linewidth=1.3)
        ax.set_title(title)
        ax.set_xlabel("answer position t")
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
        if len(labels) > 1:
            ax.legend(fontsize=8)
        out[f"{key}_by_position.png"] = _png(fig, plt)

    first = labels[0] if labels else None
    if first and summary[first]["top_shifted_tokens"]:
        toks = summary[first]["top_shifted_tokens"][:20][::-1]
        fig, ax = plt.subplots(figsize=(7, 0.3 * len(toks) + 1))
        ax.barh([repr(t)[1:-1] or "␣" for t, _ in toks], [n for _, n in toks], color=COLORS["shifted"])
        ax.set_title(f"most frequent shifted tokens ({first})")
        ax.set_xlabel("count")
        out["top_shifted_tokens.png"] = _png(fig, plt)
    return out


def _png(fig, plt) -> bytes:
    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    return buf.getvalue()


def _esc(s: Any) -> str:
    return html.escape(str(s), quote=True)


def _kl(v: Any) -> str:
    return "n/a" if v is None else f"{v:.3f}"


def _summary_table(summary: dict[str, Any]) -> str:
    head = ("<tr><th>aligned model</th><th>mode</th><th>answers</th><th>positions</th><th>unshifted</th>"
            "<th>marginal</th><th>shifted</th><th>mean KL(aligned ‖ base) / KL(base ‖ aligned)</th>"
            "<th>in base top-1 / 3 / 5</th>"
            "<th>shifted in first fifth</th><th>answer token = aligned top-1</th></tr>")
    rows = []
    for lab, s in summary.items():
        rows.append(
            f"<tr><td>{_esc(lab)}</td><td>{_esc(', '.join(s['mode']))}</td><td>{s['answers']}</td>"
            f"<td>{s['positions']}</td><td>{s['unshifted']:.1%}</td><td>{s['marginal']:.1%}</td>"
            f"<td><b>{s['shifted']:.1%}</b></td><td>{s['mean_kl']:.3f} / {_kl(s.get('mean_kl_base_aligned'))}</td>"
            f"<td>{s['base_top1']:.1%} / {s['base_top3']:.1%} / {s['base_top5']:.1%}</td>"
            f"<td>{s['shifted_in_first_fifth']:.1%}</td>"
            f"<td>{'n/a' if s['aligned_top1'] is None else format(s['aligned_top1'], '.1%')}</td></tr>")
    return f"<table class='sum'>{head}{''.join(rows)}</table>"


def _category_tables(summary: dict[str, Any]) -> str:
    parts = []
    for lab, s in summary.items():
        if not s["by_category"]:
            continue
        rows = "".join(
            f"<tr><td>{_esc(c)}</td><td>{v['positions']}</td><td>{v['unshifted']:.1%}</td><td>{v['marginal']:.1%}"
            f"</td><td>{v['shifted']:.1%}</td><td>{v['mean_kl']:.3f}</td></tr>" for c, v in s["by_category"].items())
        parts.append(f"<h3>By instruction category: {_esc(lab)}</h3><table class='sum'><tr><th>category</th>"
                     f"<th>positions</th><th>unshifted</th><th>marginal</th><th>shifted</th><th>mean KL</th></tr>"
                     f"{rows}</table>")
    return "".join(parts)


def _token_lists(summary: dict[str, Any]) -> str:
    parts = []
    for lab, s in summary.items():
        items = "".join(f"<li><code>{_esc(repr(t)[1:-1])}</code> × {n}</li>" for t, n in s["top_shifted_tokens"][:30])
        classes = ""
        tc = s.get("token_classes")
        if tc:
            sh, al = tc["shifted"], tc["all"]
            classes = (f"<p>Shifted positions by token class (the stated rule of <code>alignkit/analysis/tokens.py"
                       f"</code>): markup {sh['markup']:.0%}, function/discourse words {sh['function']:.0%}, content "
                       f"{sh['content']:.0%} &mdash; among all positions: {al['markup']:.0%} / {al['function']:.0%} / "
                       f"{al['content']:.0%}.</p>")
        parts.append(f"<div class='toks'><h3>Most frequent shifted tokens: {_esc(lab)}</h3>{classes}<ol>{items}</ol>"
                     "</div>")
    return "".join(parts)


def _visible(token: str) -> str:
    """Token text as shown: line breaks and tabs get a visible mark (they are often the shifted tokens)."""
    if token == "":
        return "∅"
    return token.replace("\t", "→\t").replace("\n", "↵\n")


def _layer_section(summary: dict[str, Any]) -> str:
    """shift --layers: by layer, the share of read positions whose answer token is top-1 in each model's lens and
    the KL between the lenses, by shift class and by token class; the activation-difference lens' top tokens."""
    parts = []
    for label, s in summary.items():
        lay = s.get("layers")
        if not lay:
            continue
        parts.append(f"<h3>{_esc(label)}: {lay['all']['positions']} positions read</h3>")
        for title, views in (("by shift class", lay["by_shift_class"]), ("by token class", lay["by_token_class"])):
            head = "".join(f"<th colspan=3>{_esc(c)} ({v['positions']})</th>" for c, v in views.items())
            sub = "<th>base top-1</th><th>aligned top-1</th><th>KL</th>" * len(views)
            rows = "".join(
                f"<tr><td>{layer}</td>" + "".join(
                    f"<td>{v['base_top1'][j]:.0%}</td><td>{v['aligned_top1'][j]:.0%}</td><td>{v['mean_kl'][j]:.3f}</td>"
                    for v in views.values()) + "</tr>"
                for j, layer in enumerate(lay["layers"]))
            parts.append(f"<p>{title}: the share of positions whose answer token is the top choice of the base's and "
                         f"of the aligned model's lens at each layer, and the mean KL(aligned lens ‖ base lens)</p>"
                         f"<table class='sum layers'><tr><th rowspan=2>layer</th>{head}</tr><tr>{sub}</tr>{rows}</table>")
        for group, per_layer in lay.get("difference_lens", {}).items():
            rows = "".join(f"<tr><td>{_esc(layer)}</td><td style='text-align:left'>"
                           f"{_esc(' '.join(repr(t) for t, _ in toks[:8]))}</td></tr>"
                           for layer, toks in per_layer.items())
            parts.append(f"<p>activation-difference lens ({'the first answer positions' if group == 'first' else 'the shifted positions'}): "
                         f"the tokens the aligned-minus-base residual stream reads as, most often among the answers' "
                         f"top 8</p><table class='sum'><tr><th>layer</th><th>tokens</th></tr>{rows}</table>")
    return ("<h2 id='layers'>Layers</h2>" + "".join(parts)) if parts else ""


def _answers(records: list[dict[str, Any]]) -> tuple[str, list[Any]]:
    cards = []
    for ri, r in enumerate(records):
        spans = []
        for pi, p in enumerate(r["positions"]):
            spans.append(f"<span class='t {p['category']}' data-r='{ri}' data-p='{pi}'>{_esc(_visible(p['token']))}</span>")
        n_shift = sum(p["category"] == "shifted" for p in r["positions"])
        note = " (truncated)" if r.get("truncated") else ""
        cat = f" · {_esc(r['category'])}" if r.get("category") else ""
        cards.append(
            f"<div class='card' data-aligned='{_esc(r['aligned'])}' data-shifted='{n_shift}'>"
            f"<div class='meta'>#{_esc(r['id'])} · {_esc(r['aligned'])}{cat} · {len(r['positions'])} tokens, "
            f"{n_shift} shifted · mean KL {r['summary']['mean_kl']:.3f}{note}</div>"
            f"<div class='q'>{_esc(r['instruction'])}</div><div class='a'>{''.join(spans) or '<i>(empty answer)</i>'}</div></div>")
    detail = [[[p["token"], p["base_rank"], p["rank_exact"], p["p_base"], p["p_aligned"], p["kl"], p["top_base"],
                p["top_aligned"], p["category"],
                [p["lens"][k] for k in ("layers", "base_rank", "aligned_rank", "kl")] if p.get("lens") else None]
               for p in r["positions"]] for r in records]
    return "".join(cards), detail


CSS = """
body{font:15px/1.5 system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:0;color:#1d2330;background:#fafbfc}
header{background:#1d2330;color:#fff;padding:18px 28px}header h1{margin:0;font-size:22px}
header p{margin:4px 0 0;color:#c9d1e0;font-size:13px}
main{padding:8px 28px 60px;max-width:1200px}
h2{margin-top:28px;border-bottom:1px solid #dde2ea;padding-bottom:4px}
table.sum{border-collapse:collapse;margin:10px 0;font-size:14px}
table.sum td,table.sum th{border:1px solid #dde2ea;padding:4px 10px;text-align:right}
table.sum td:first-child,table.sum th:first-child{text-align:left}
.figs{display:flex;flex-wrap:wrap;gap:14px}.figs img{max-width:560px;width:100%;background:#fff;border:1px solid #dde2ea}
.toks{display:inline-block;vertical-align:top;margin-right:40px}.toks ol{columns:2;font-size:13px}
.controls{position:sticky;top:0;background:#fafbfc;padding:10px 0;border-bottom:1px solid #dde2ea;z-index:5}
.controls label{margin-right:18px}
.card{background:#fff;border:1px solid #dde2ea;border-radius:6px;padding:10px 14px;margin:12px 0}
.meta{font-size:12px;color:#667}.q{font-weight:600;margin:4px 0 8px}
.a{white-space:pre-wrap;font-family:ui-monospace,Menlo,Consolas,monospace;font-size:13.5px;line-height:1.9}
.t{border-radius:3px;cursor:pointer}.t.unshifted{background:#e8eef7}.t.marginal{background:#ffd76e}
.t.shifted{background:#ff7b6b}.t.sel{outline:2px solid #1d2330}
body.dim .t.unshifted{background:none;color:#9aa3b2}
.legend span{padding:1px 8px;border-radius:3px;margin-right:6px}
#tip{position:fixed;display:none;background:#fff;border:1px solid #1d2330;border-radius:6px;padding:10px;
box-shadow:0 4px 18px rgba(0,0,0,.18);font-size:12.5px;z-index:10;max-width:460px}
#tip table{border-collapse:collapse}#tip td,#tip th{padding:1px 8px;text-align:left}
#tip .k{color:#667}#tip table.lens{margin-top:6px;font-size:11px}#tip table.lens td{padding:0 3px;text-align:right}
"""

JS = """
const D = JSON.parse(document.getElementById('detail').textContent);
const tip = document.getElementById('tip');
function fmt(p){return p===null?'?':(p<0.001?p.toExponential(1):p.toFixed(3));}
function esc(s){return s.replace(/[&<>"']/g,c=>({'&':'&amp;','<':'&lt;','>':'&gt;','"':'&quot;',"'":'&#39;'}[c]));}
function show(el, ev){
  const d = D[+el.dataset.r][+el.dataset.p];
  const rows = () => { let h=''; for(let i=0;i<Math.max(d[6].length,d[7].length);i++){
    const b=d[6][i]||['',null], a=d[7][i]||['',null];
    h+=`<tr><td>${esc(JSON.stringify(b[0]))}</td><td>${fmt(b[1])}</td><td>${esc(JSON.stringify(a[0]))}</td><td>${fmt(a[1])}</td></tr>`;}
    return h; };
  tip.innerHTML = `<div><b>${esc(JSON.stringify(d[0]))}</b> · <b>${d[8]}</b> · base rank ${d[2]?d[1]:'&gt; '+d[1]}</div>`+
    `<div class=k>P_base ${fmt(d[3])} · P_aligned ${fmt(d[4])} · KL ${d[5].toFixed(3)}</div>`+
    `<table><tr><th>base top-k</th><th></th><th>aligned top-k</th><th></th></tr>${rows()}</table>`+
    (d[9] ? `<table class=lens><tr><th>layer</th>${d[9][0].map(l=>`<td>${l}</td>`).join('')}</tr>`+
      `<tr><th>base rank</th>${d[9][1].map(r=>`<td>${r}</td>`).join('')}</tr>`+
      `<tr><th>aligned rank</th>${d[9][2].map(r=>`<td>${r}</td>`).join('')}</tr>`+
      `<tr><th>KL</th>${d[9][3].map(k=>`<td>${k.toFixed(2)}</td>`).join('')}</tr></table>` : '');
  tip.style.display='block';
  const x=Math.min(ev.clientX+14, window.innerWidth-tip.offsetWidth-10), y=Math.min(ev.clientY+14, window.innerHeight-tip.offsetHeight-10);
  tip.style.left=x+'px'; tip.style.top=y+'px';
}
document.querySelectorAll('.t').forEach(el=>{
  el.addEventListener('mouseenter',ev=>show(el,ev));
  el.addEventListener('mouseleave',()=>{ if(!el.classList.contains('sel')) tip.style.display='none'; });
  el.addEventListener('click',ev=>{ document.querySelectorAll('.t.sel').forEach(s=>s.classList.remove('sel'));
    el.classList.add('sel'); show(el,ev); ev.stopPropagation(); });
});
document.addEventListener('click',()=>{ document.querySelectorAll('.t.sel').forEach(s=>s.classList.remove('sel')); tip.style.display='none'; });
function filter(){
  const only=document.getElementById('onlyShifted').checked, model=document.getElementById('model').value;
  document.querySelectorAll('.card').forEach(c=>{
    c.style.display=((!only||+c.dataset.shifted>0)&&(model===''||c.dataset.aligned===model))?'':'none';});
}
document.getElementById('onlyShifted').addEventListener('change',filter);
document.getElementById('model').addEventListener('change',filter);
document.getElementById('dim').addEventListener('change',e=>document.body.classList.toggle('dim',e.target.checked));
"""


def write_report(records: list[dict[str, Any]], summary: dict[str, Any], path: str | Path,
                 provenance: dict[str, Any] | None = None) -> Path:
    """Write the HTML report and its PNG figures (in ``<name>_figures/``)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figs = figures(summary)
    fig_dir = path.with_name(path.stem + "_figures")
    fig_dir.mkdir(exist_ok=True)
    for name, png in figs.items():
        (fig_dir / name).write_bytes(png)
    imgs = "".join(f"<img alt='{_esc(n)}' src='data:image/png;base64,{base64.b64encode(b).decode()}'>"
                   for n, b in figs.items())
    cards, detail = _answers(records)
    detail_json = json.dumps(detail, ensure_ascii=False).replace("</", "<\\/")
    options = "".join(f"<option value='{_esc(lab)}'>{_esc(lab)}</option>" for lab in summary)
    approx = any("approx" in s["mode"] for s in summary.values())
    prov = _esc(json.dumps(provenance or {}, indent=1, ensure_ascii=False))
    legend = "".join(f"<span class='t {c}'>{c}</span>" for c in CATEGORIES)
    doc = f"""<!doctype html><html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1"><title>alignkit token-shift report</title>
<style>{CSS}</style></head><body>
<header><h1>What alignment changed, token by token</h1>
<p>The base model's next-token distribution over each aligned answer. <b>unshifted</b>: the answer token is the base's
top choice; <b>marginal</b>: its 2nd or 3rd; <b>shifted</b>: ranked 4th or lower.
{"<b>Approximate mode (top-k log-probabilities only): ranks beyond k and KL are bounds.</b>" if approx else "Exact over the full vocabulary."}</p></header>
<main>
<h2>Summary</h2>{_summary_table(summary)}
<div class="figs">{imgs}</div>
{_token_lists(summary)}
{_category_tables(summary)}
{_layer_section(summary)}
<h2>Answers</h2>
<div class="controls"><span class="legend">{legend}</span>
<label><input type="checkbox" id="onlyShifted"> only answers with shifted tokens</label>
<label><input type="checkbox" id="dim"> dim unshifted tokens</label>
<label>model <select id="model"><option value="">all</option>{options}</select></label></div>
<div id="answers">{cards}</div>
<h2>Provenance</h2><pre style="font-size:12px;white-space:pre-wrap">{prov}</pre>
</main><div id="tip"></div>
<script type="application/json" id="detail">{detail_json}</script>
<script>{JS}</script></body></html>"""
    path.write_text(doc, encoding="utf-8")
    return path
