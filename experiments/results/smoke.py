"""The smoke recipe's regression guard: a fixed set of metrics per smoke run, stored and compared.

``python -m experiments.results --smoke --write-expected`` stores them in
``tests/data/results_smoke.json``; tests/test_results_recipe.py (slow) re-runs the smoke recipe
and compares with :func:`compare`. A run is keyed by its overrides without ``experiment=``
(sorted, so the key does not depend on the order Hydra records them in).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

EXPECTED = Path(__file__).resolve().parents[2] / "tests" / "data" / "results_smoke.json"
MODEL = ("sharpe", "ic", "rank_ic", "max_drawdown", "turnover")  # the model's, val and test
BASELINES = ("buyhold", "equal_weight", "momentum", "mean_reversion", "ridge", "lightgbm")
# Two consecutive smoke runs on one machine agree to the last bit (docs/results.md,
# "Reproducing"); the tolerance allows for a different CPU's or library build's rounding,
# amplified through a few training steps.
RTOL = 1e-3
ATOL = 1e-4


def metric_names() -> list[str]:
    """The guarded catalogue columns: the model's and each baseline's Sharpe, val and test."""
    names = [f"{seg}_{m}" for seg in ("val", "test") for m in MODEL]
    return names + [f"{seg}_{b}_sharpe" for seg in ("val", "test") for b in BASELINES]


def run_key(overrides: str) -> str:
    """A smoke run's key: its overrides minus ``experiment=...``, sorted."""
    return " ".join(sorted(o for o in overrides.split() if not o.startswith("experiment=")))


def collect(catalogue: Path, best: tuple[str, int, int] | None) -> dict:
    """``{"best": [family, depth, horizon], "runs": {key: {metric: value}}}`` of a catalogue.

    Only columns present with a value are kept (a baseline the checkout lacks is absent).
    """
    from plusultra.catalogue.query import connect

    con = connect(catalogue)
    columns = {r[0] for r in con.execute("DESCRIBE runs").fetchall()}
    names = [n for n in metric_names() if n in columns]
    select = ", ".join(["overrides", *(f'"{n}"' for n in names)])
    rows = con.execute(f"SELECT {select} FROM runs WHERE status = 'completed'").fetchall()
    runs: dict[str, dict[str, float]] = {}
    for overrides, *values in rows:
        runs[run_key(overrides)] = {
            n: float(v)
            for n, v in zip(names, values, strict=True)
            if v is not None and not math.isnan(float(v))
        }
    return {"best": list(best) if best else None, "runs": dict(sorted(runs.items()))}


def compare(actual: dict, expected: dict, rtol: float = RTOL, atol: float = ATOL) -> list[str]:
    """Every difference between two :func:`collect` results, as readable lines (empty: equal)."""
    problems = []
    if actual["best"] != expected["best"]:
        problems.append(f"best family {actual['best']} != expected {expected['best']}")
    for key in sorted(set(actual["runs"]) | set(expected["runs"])):
        if key not in actual["runs"] or key not in expected["runs"]:
            where = "expected only" if key in expected["runs"] else "new, not expected"
            problems.append(f"run {key!r}: {where}")
            continue
        got, want = actual["runs"][key], expected["runs"][key]
        for name in sorted(set(got) | set(want)):
            if name not in got or name not in want:
                problems.append(f"run {key!r}: metric {name} only in one of them")
            elif not math.isclose(got[name], want[name], rel_tol=rtol, abs_tol=atol):
                problems.append(f"run {key!r}: {name} = {got[name]!r}, expected {want[name]!r}")
    return problems


def write_expected(data: dict, path: Path = EXPECTED) -> Path:
    """Store a :func:`collect` result as the guard's expected values."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=1, sort_keys=True) + "\n")
    return path
