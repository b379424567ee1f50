"""The result of an evaluation in Python: the summary the report is written from, a table per contestant and
aspect, every record, and the HTML report."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any


class EvalReport:
    """What :func:`alignkit.evaluate` returns: ``summary`` (report.json's), ``folder`` (answers, judgments, report.md,
    report.html, radar.png)."""

    def __init__(self, report: dict[str, Any], folder: Path) -> None:
        self.report, self.folder = report, folder

    @property
    def summary(self) -> dict[str, Any]:
        return self.report.get("summary", {})

    @property
    def records(self) -> dict[str, list[dict[str, Any]]]:
        """Each contestant's answer records (id, answer, finish_reason, metrics, route ...), from its answers file."""
        out: dict[str, list[dict[str, Any]]] = {}
        for path in sorted((self.folder / "answers").glob("*.jsonl")):
            lines = path.read_text(encoding="utf-8").splitlines()
            out[path.stem] = [json.loads(x) for x in lines if x.strip()]
        return out

    def table(self) -> Any:
        """A pandas DataFrame, one row per contestant: the judge's mean per aspect (when judged) and the judge-free
        metrics (answers, self-stopped share, refusals, mean tokens ...)."""
        import pandas as pd

        rows = []
        cheap = self.report.get("cheap", {})
        for name in sorted(set(self.summary) | set(cheap)):
            row: dict[str, Any] = {"contestant": name}
            for aspect, v in (self.summary.get(name, {}).get("mean") or {}).items():
                row[aspect] = v
            for k, v in (cheap.get(name) or {}).items():
                if isinstance(v, (int, float, str)) or v is None:
                    row[k] = v
            rows.append(row)
        return pd.DataFrame(rows).set_index("contestant") if rows else pd.DataFrame()

    def to_html(self, path: str | Path) -> Path:
        """Copy the HTML report to ``path``."""
        return Path(shutil.copyfile(self.folder / "report.html", path))

    def _repr_html_(self) -> str:
        return self.table()._repr_html_()
