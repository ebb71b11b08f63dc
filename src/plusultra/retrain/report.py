"""The retrain's summary: report.md (for people) and report.json (for machines)."""

from __future__ import annotations

import math
from dataclasses import asdict
from pathlib import Path

from plusultra.io import write_json_atomic, write_text_atomic

# rows of the table beside the decision metric (suffixes of val_* / test_* keys), each shown
# when either side has it (max_psi, drift_features: the drift of a segment's inputs from the
# run's training data, recorded by runs that compute drift)
SHOWN = ("sharpe", "annual_return", "max_drawdown", "turnover", "ic", "max_psi", "drift_features")


def _cell(value) -> str:
    if value is None:
        return "–"
    if isinstance(value, float) and not math.isfinite(value):
        return "n/a"
    return f"{value:.4g}" if isinstance(value, int | float) else str(value)


def figures_table(figures: dict, metric: str) -> dict[str, dict[str, float | None]]:
    """{"val_sharpe": {"challenger": ..., "champion": ...}, "test_sharpe": ...} for the
    decision metric and the usual ones, validation rows then test rows."""
    suffixes = [metric[len("val_") :], *(m for m in SHOWN if f"val_{m}" != metric)]
    champion = (figures.get("champion") or {}).get("metrics", {})
    challenger = figures["challenger"]["metrics"]
    out = {}
    for split in ("val", "test"):
        for suffix in suffixes:
            key = f"{split}_{suffix}"
            if key in challenger or key in champion:
                out[key] = {"challenger": challenger.get(key), "champion": champion.get(key)}
    return out


def write_report(
    workdir: Path, settings, figures: dict, decision: dict, promoted: dict
) -> tuple[Path, Path]:
    """Write `<workdir>/report.md` and `<workdir>/report.json`; returns both paths."""
    table = figures_table(figures, settings.metric)
    champion = figures.get("champion")
    seg = figures["segments"]
    verdict = "PROMOTED" if promoted["promoted"] else "KEPT the champion"
    lines = [
        "# Retrain report",
        "",
        f"- database: `{settings.db}`",
        f"- overrides: `{' '.join(settings.overrides) or '(none)'}`",
        f"- challenger: `{figures['challenger']['run_dir']}`",
        f"- champion: `{champion['run_dir'] if champion else '(none yet)'}`",
        f"- validation window: {seg['val'][0]} to {seg['val'][1]}; "
        f"test window: {seg['test'][0]} to {seg['test'][1]} (the challenger's segments)",
        "",
        f"## Decision: {verdict}",
        "",
        f"{decision['reason']}.",
        "",
        f"Decided on `{settings.metric}` (validation, margin {settings.margin:g}). The test "
        "figures below are reported only; they never decide a promotion.",
        "",
        "| metric | challenger | champion |",
        "|---|---|---|",
        *(
            f"| {k}{' (decides)' if k == settings.metric else ''} | {_cell(v['challenger'])} "
            f"| {_cell(v['champion'])} |"
            for k, v in table.items()
        ),
        "",
        f"Champion pointer `{settings.champion}`: "
        + (
            f"now `{promoted['pointer']['run_dir']}`"
            if promoted.get("pointer")
            else "none (no champion)"
        ),
        "",
    ]
    md = write_text_atomic(workdir / "report.md", "\n".join(lines))
    js = write_json_atomic(
        workdir / "report.json",
        {
            "settings": asdict(settings),
            "segments": seg,
            "challenger": figures["challenger"],
            "champion": champion,
            "decision": decision,
            "promoted": promoted["promoted"],
            "pointer": promoted.get("pointer"),
            "figures": table,
        },
    )
    return md, js
