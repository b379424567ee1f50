"""The result of a shift analysis in Python: the figures the CLI prints, a DataFrame per answer position, the top
shifted tokens and the HTML report (also shown inline in a notebook)."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from alignkit.analysis.aggregate import summarize
from alignkit.analysis.report import write_report
from alignkit.analysis.tokens import token_class

#: the columns of :meth:`ShiftResult.positions`
POSITION_COLUMNS = ("aligned", "id", "t", "token", "token_id", "base_rank", "aligned_rank", "p_base", "p_aligned",
                    "kl", "kl_base_aligned", "category", "token_class")


#: the columns of :meth:`ShiftResult.layers`
LAYER_COLUMNS = ("aligned", "id", "t", "token", "category", "token_class", "layer", "base_rank", "aligned_rank",
                 "p_base", "p_aligned", "kl")


class ShiftResult:
    """Per-answer records of :func:`alignkit.shift` (the same records ``alignkit shift`` writes)."""

    def __init__(self, records: list[dict[str, Any]]) -> None:
        self.records = records
        self._summary: dict[str, Any] | None = None

    @property
    def summary(self) -> dict[str, Any]:
        """Per aligned label: answers, positions, the unshifted/marginal/shifted shares, both mean KLs, the most
        frequent shifted tokens, the token classes (what ``alignkit shift --json`` prints, curves included)."""
        if self._summary is None:
            self._summary = summarize(self.records)
        return self._summary

    def positions(self) -> Any:
        """A pandas DataFrame, one row per answer position: aligned label, id, position t, token, base rank and
        probability, aligned rank and probability, KL(aligned || base), KL(base || aligned) (None in approximate
        mode), shift class (unshifted / marginal / shifted) and token class (markup / function / content)."""
        import pandas as pd

        rows = []
        for rec in self.records:
            for p in rec.get("positions") or []:
                rows.append({"aligned": rec.get("aligned"), "id": rec.get("id"), "t": p["t"], "token": p["token"],
                             "token_id": p.get("id"), "base_rank": p["base_rank"], "aligned_rank": p.get("aligned_rank"),
                             "p_base": p["p_base"], "p_aligned": p.get("p_aligned"), "kl": p["kl"],
                             "kl_base_aligned": p.get("kl_base_aligned"), "category": p["category"],
                             "token_class": token_class(p["token"])})
        return pd.DataFrame(rows, columns=list(POSITION_COLUMNS))

    def layers(self) -> Any:
        """With ``layers=`` (``shift --layers``): a pandas DataFrame, one row per read position and layer -- aligned
        label, id, t, token, shift class, token class, layer, the token's rank and probability in the base's and in
        the aligned model's lens, and KL(aligned lens || base lens). Empty without layer readings."""
        import pandas as pd

        rows = []
        for rec in self.records:
            for p in rec.get("positions") or []:
                lens = p.get("lens")
                if not lens:
                    continue
                for j, layer in enumerate(lens["layers"]):
                    rows.append({"aligned": rec.get("aligned"), "id": rec.get("id"), "t": p["t"], "token": p["token"],
                                 "category": p["category"], "token_class": token_class(p["token"]), "layer": layer,
                                 "base_rank": lens["base_rank"][j], "aligned_rank": lens["aligned_rank"][j],
                                 "p_base": lens["p_base"][j], "p_aligned": lens["p_aligned"][j], "kl": lens["kl"][j]})
        return pd.DataFrame(rows, columns=list(LAYER_COLUMNS))

    def tokens(self, n: int = 30) -> Any:
        """The most frequent shifted tokens per aligned label: a DataFrame (aligned, token, count)."""
        import pandas as pd

        rows = [{"aligned": label, "token": tok, "count": c}
                for label, s in self.summary.items() for tok, c in s["top_shifted_tokens"][:n]]
        return pd.DataFrame(rows, columns=["aligned", "token", "count"])

    def to_html(self, path: str | Path) -> Path:
        """Write the HTML report (the one ``alignkit shift --report`` writes) and return its path."""
        labels = sorted({str(r.get("aligned")) for r in self.records})
        return Path(write_report(self.records, self.summary, path, {"aligned": labels, "source": "alignkit.shift"}))

    def _repr_html_(self) -> str:
        with tempfile.TemporaryDirectory() as d:
            return self.to_html(Path(d) / "shift.html").read_text(encoding="utf-8")

    def __repr__(self) -> str:
        parts = [f"{label}: {s['positions']} positions, {s['shifted']:.1%} shifted"
                 for label, s in self.summary.items()]
        return f"ShiftResult({'; '.join(parts) or 'empty'})"
