"""Load + validate + default features + windows on a 500-symbol x 5,000-day database.

    .venv/bin/python -m experiments.benchmarks.data_pipeline

The whole data module setup runs in a fresh subprocess (so its peak RSS is its own), then each
stage is timed in this process. The reference in the same run is the naive loader: pandas
read_sql of the series table and a pandas pivot to (T, S), without validation or features.
Targets from the issue: <= 30 s and <= 4 GB on 2 cores.
"""

from __future__ import annotations

import json
import resource
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

from experiments.benchmarks._report import machine, write_section

ROOT = Path(__file__).resolve().parents[2]
DB = ROOT / "outputs" / "cache" / "bench_sqlite_500x5000_seed0.sqlite"
FEATURES = yaml.safe_load((ROOT / "conf" / "features" / "default.yaml").read_text())
WINDOW, HORIZON = 64, 5


def ensure_db() -> Path:
    if not DB.exists():
        from plusultra.data.io.fixture import generate_fixture

        generate_fixture(DB, 500, 5000, seed=0)
    return DB


def setup_once() -> dict:
    """Time the data module's setup end to end (run in a subprocess)."""
    from plusultra.data.datasets.datamodule import SQLiteDataModule
    from plusultra.data.features.pipeline import FeaturePipeline

    start = time.perf_counter()
    pipeline = FeaturePipeline(FEATURES["names"], FEATURES["indicators"])
    dm = SQLiteDataModule(str(DB), pipeline, WINDOW, HORIZON)
    dm.setup()
    sizes = dm.sizes()
    wall = time.perf_counter() - start
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2  # KiB -> GiB
    t, s = dm.panel.shape
    return {
        "wall_s": wall,
        "peak_rss_gib": rss,
        "bars": t,
        "symbols": s,
        "rows": int(np.isfinite(dm.panel.fields["close"]).sum()),
        "features": dm.n_features,
        **sizes,
    }


def stages() -> dict[str, float]:
    """Per-stage wall time in this process."""
    from plusultra.data.datasets.panel import load_panel, read_tables
    from plusultra.data.datasets.windows import (
        NormStats,
        compute_segments,
        make_targets,
        valid_window_mask,
    )
    from plusultra.data.features.pipeline import FeaturePipeline
    from plusultra.data.validation.checks import check_tables

    out = {}
    t0 = time.perf_counter()
    tables = read_tables(DB)
    out["read (4 tables)"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    check_tables(tables, str(DB))
    out["validate (pandera)"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    panel = load_panel(DB, validate=False)
    out["read + align + adjust"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    raw, _ = FeaturePipeline(FEATURES["names"], FEATURES["indicators"]).compute(panel)
    out["features (default)"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    targets = make_targets(panel.fields["close"], HORIZON, "excess")
    seg = compute_segments(panel.dates, WINDOW, HORIZON, 0.6, 0.8)
    norm = NormStats.fit(raw, targets, seg.train_end)
    valid_window_mask(norm.apply(raw), WINDOW)
    out["targets + segments + normalise + windows"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    with sqlite3.connect(DB) as con:
        naive = pd.read_sql("SELECT * FROM series", con)
    naive.pivot(index="timestamp", columns="symbol", values="close")
    out["reference: pandas read_sql + pivot (series only)"] = time.perf_counter() - t0
    return out


def main() -> None:
    ensure_db()
    res = subprocess.run(
        [
            sys.executable,
            "-c",
            "import json; from experiments.benchmarks.data_pipeline import "
            "setup_once; print(json.dumps(setup_once()))",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    )
    total = json.loads(res.stdout.strip().splitlines()[-1])
    parts = stages()
    ref = parts["reference: pandas read_sql + pivot (series only)"]
    rows = "\n".join(f"| {k} | {v:.2f} |" for k, v in parts.items())
    windows = " / ".join(f"{total[f'{s}_samples']:,}" for s in ("train", "val", "test"))
    ratio = total["wall_s"] / ref
    md = f"""## Data pipeline: 500 symbols x 5,000 days

`python -m experiments.benchmarks.data_pipeline` — {machine()}

Database: {total["rows"]:,} series rows ({total["symbols"]} symbols x {total["bars"]:,} bars;
late listings and delistings), plus indicators and corporate actions. Default features
({total["features"]} columns), window {WINDOW}, horizon {HORIZON}.

| whole `SQLiteDataModule.setup()` (fresh process) | value | target |
|---|---:|---:|
| wall time | {total["wall_s"]:.1f} s | <= 30 s |
| peak RSS | {total["peak_rss_gib"]:.2f} GiB | <= 4 GiB |
| train / val / test windows | {windows} | |
| ratio to the naive pandas loader (series read + pivot only) | {ratio:.2f}x its time | |

| stage (this process) | seconds |
|---|---:|
{rows}

The full pipeline, with validation of every table and every feature, takes
{total["wall_s"] / ref:.1f}x the time pandas needs just to read and pivot the series table.
"""
    print(md)
    write_section("data_pipeline", md)


if __name__ == "__main__":
    main()
