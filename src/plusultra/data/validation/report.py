"""The failure report of data validation: collecting failures, summarising and writing them.

`plusultra.data.validation.checks` runs the checks and records each failure through
:class:`_Failures`:
one row per (table, column, check) with how many values fail and up to five example rows
(`MAX_EXAMPLES`), formatted by `_row` as ``row <pos> (col=value, ...)``. The result is a
:class:`ValidationReport`, which renders the failures as a one-paragraph summary, an aligned text
table (the DataError message and the ``plusultra-data validate`` output), Markdown, or JSON
records; ``plusultra-data validate DB --report FILE`` writes Markdown or, for a ``.json``
suffix, JSON.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from plusultra.data.validation.schemas import FAILURE_COLUMNS, MAX_EXAMPLES
from plusultra.errors import DataError
from plusultra.io import write_text_atomic


@dataclass
class ValidationReport:
    """Every failure of every table; `failures` has the columns of `FAILURE_COLUMNS`.

    `examples` holds up to five examples, one per line.
    """

    source: str
    failures: pd.DataFrame
    n_rows: dict[str, int] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.failures.empty

    def summary(self) -> str:
        """One paragraph: the source, and how many problems in which tables."""
        rows = ", ".join(f"{t} {n:,}" for t, n in self.n_rows.items()) or "none"
        if self.ok:
            return f"database {self.source} passed validation (rows checked: {rows})."
        per_table = self.failures.groupby("table", sort=False).size()
        where = ", ".join(f"{t}: {n}" for t, n in per_table.items())
        return (
            f"database {self.source} failed validation: {len(self.failures)} problem(s) in "
            f"{len(per_table)} table(s) ({where}); rows checked: {rows}. Fix the data and run "
            "again; nothing trains on invalid data."
        )

    def table(self) -> str:
        """Aligned text table of the failures, examples one per line."""
        if self.ok:
            return ""
        where = (self.failures["table"] + "." + self.failures["column"]).tolist()
        checks, counts = self.failures["check"].tolist(), self.failures["count"].astype(str)
        w1 = max(len("where"), *map(len, where))
        w2 = max(len("check"), *map(len, checks))
        w3 = max(len("count"), *map(len, counts))
        lines = [f"{'where':<{w1}}  {'check':<{w2}}  {'count':>{w3}}  examples"]
        for a, b, c, ex in zip(where, checks, counts, self.failures["examples"], strict=True):
            first, *rest = ex.split("\n") if ex else [""]
            lines.append(f"{a:<{w1}}  {b:<{w2}}  {c:>{w3}}  {first}".rstrip())
            lines.extend(" " * (w1 + w2 + w3 + 6) + e for e in rest)
        return "\n".join(lines)

    def to_markdown(self) -> str:
        """Full report: summary, rows checked, a failure table, and every failure's examples."""
        out = [f"# Data validation: {self.source}", "", self.summary(), ""]
        out += ["| table | rows checked |", "|---|---:|"]
        out += [f"| {t} | {n} |" for t, n in self.n_rows.items()]
        if not self.ok:
            out += [
                "",
                "## Failures",
                "",
                "| table | column | check | count |",
                "|---|---|---|---:|",
            ]
            for r in self.failures.itertuples(index=False):
                out.append(f"| {r.table} | {_md(r.column)} | {_md(r.check)} | {r.count} |")
            for r in self.failures.itertuples(index=False):
                out += ["", f"### {r.table}.{r.column}: {r.check} ({r.count})", ""]
                out += [f"- `{e}`" for e in r.examples.split("\n") if e] or ["- (no examples)"]
        return "\n".join(out) + "\n"

    def to_records(self) -> dict:
        """JSON-ready dict: source, ok, n_rows and the failures (examples as lists)."""
        failures = [
            {**r, "count": int(r["count"]), "examples": [e for e in r["examples"].split("\n") if e]}
            for r in self.failures.to_dict("records")
        ]
        return {"source": self.source, "ok": self.ok, "n_rows": self.n_rows, "failures": failures}

    def write(self, path: str | os.PathLike) -> Path:
        """Write the full report atomically: JSON records for a ``.json`` suffix, else Markdown."""
        if Path(path).suffix.lower() == ".json":
            return write_text_atomic(path, json.dumps(self.to_records(), indent=2) + "\n")
        return write_text_atomic(path, self.to_markdown())

    def raise_if_failed(self) -> None:
        """Raise DataError(summary + table of failures) unless every check passed."""
        if not self.ok:
            raise DataError(self.summary() + "\n" + self.table())


def _md(text: str) -> str:
    return str(text).replace("|", "\\|")


def _fmt(value: object) -> str:
    if isinstance(value, np.generic):
        value = value.item()
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return "NULL"
    text = repr(value)
    return f"{value:.10g}" if isinstance(value, float) and len(text) > 12 else text


class _Failures:
    """Collects failures of one `check_tables` call as FAILURE_COLUMNS rows."""

    def __init__(self) -> None:
        self.rows: list[dict] = []

    def add(self, table: str, column: str, check: str, count: int, examples: list[str]) -> None:
        text = "\n".join(examples[:MAX_EXAMPLES])
        values = [table, column, check, int(count), text]
        self.rows.append(dict(zip(FAILURE_COLUMNS, values, strict=True)))

    def add_rows(
        self, table: str, column: str, check: str, frame: pd.DataFrame, bad, show: list[str]
    ) -> None:
        """Add a failure for rows where `bad` (bool array) holds, with example rows."""
        bad = np.asarray(bad, dtype=bool)
        n = int(bad.sum())
        if n:
            positions = np.flatnonzero(bad)[:MAX_EXAMPLES]
            self.add(table, column, check, n, [_row(frame, p, show) for p in positions])

    def frame(self) -> pd.DataFrame:
        return pd.DataFrame(self.rows, columns=FAILURE_COLUMNS).astype({"count": "int64"})


def _row(frame: pd.DataFrame, pos: int, show: list[str]) -> str:
    cols = [c for c in dict.fromkeys(show) if c in frame.columns]
    return f"row {pos} (" + ", ".join(f"{c}={_fmt(frame[c].iat[pos])}" for c in cols) + ")"
