"""Slow tier: the real CLI with its default experiment, a multirun sweep, concurrent runs and
interrupted runs."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from plusultra.catalogue.query import query
from tests.browser import assert_renders
from tests.conftest import REPO, TINY, run_cli

pytestmark = pytest.mark.slow


def test_default_experiment_end_to_end(tmp_path):
    """`make demo`: the default config on the built-in synthetic data, as shipped."""
    res = run_cli(["plusultra.run"], tmp_path, timeout=600)
    assert res.returncode == 0, res.stderr[-4000:]
    for label in (
        "Sharpe",
        "max drawdown",
        "test: model",
        "buy & hold",
        "12-1 momentum",
        "run dir:",
        "tensorboard:",
        "report:",
        "catalogue:",
    ):
        assert label in res.stdout, label
    rows = query(tmp_path / "catalogue", "SELECT * FROM runs")
    assert rows["status"].tolist() == ["completed"]
    row = rows.iloc[0]
    assert (row["backbone"], row["data"], row["hardware"]) == ("hybrid", "synthetic", "cpu")
    metrics = json.loads((Path(row["run_dir"]) / "metrics.json").read_text())
    # the synthetic market has a weak predictable component: the model must learn it
    assert metrics["val_loss"] < metrics["val_naive_loss"], metrics
    assert metrics["test_loss"] < metrics["test_naive_loss"], metrics
    assert metrics["test_rank_ic"] > 0.02, metrics
    assert (tmp_path / "cache").is_dir()
    # the investor report: self-contained HTML, every plot embedded, parsable
    from html.parser import HTMLParser

    class Images(HTMLParser):
        def __init__(self):
            super().__init__()
            self.srcs = []

        def handle_starttag(self, tag, attrs):
            if tag == "img":
                self.srcs.append(dict(attrs)["src"])

    parser = Images()
    parser.feed((Path(row["run_dir"]) / "report.html").read_text())
    assert len(parser.srcs) == 7 and all(  # 7: with the training-diagnostics and drift plots
        s.startswith("data:image/png;base64,") for s in parser.srcs
    )
    # and in a real browser: every image decodes, every table lays out
    assert_renders(Path(row["run_dir"]) / "report.html", min_images=6, min_tables=3)


def test_multirun_writes_one_row_per_job(tiny_db, tmp_path):
    res = run_cli(
        ["plusultra.run", "-m", "seed=1,2", *TINY, "data=sqlite", f"data.path={tiny_db}"], tmp_path
    )
    assert res.returncode == 0, res.stderr[-4000:]
    rows = query(
        tmp_path / "catalogue", "SELECT seed, status, multirun, job_num FROM runs ORDER BY seed"
    )
    assert rows["seed"].tolist() == [1, 2]
    assert rows["status"].tolist() == ["completed", "completed"]
    assert rows["multirun"].all() and sorted(rows["job_num"]) == [0, 1]
    assert len(list((tmp_path / "multiruns").rglob("metrics.json"))) == 2
    sweeps = query(tmp_path / "catalogue", "SELECT * FROM sweeps")
    (sweep_dir,) = {p.parent.parent for p in (tmp_path / "multiruns").rglob("metrics.json")}
    assert sweeps["sweep_dir"].tolist() == [str(sweep_dir)] * 2
    assert sweeps["n_trials"].tolist() == [2, 2] and sweeps["is_best"].sum() == 1
    assert sweeps["selected_by"].tolist() == ["val_loss"] * 2  # the config's optimized_metric
    best = sweeps[sweeps["is_best"]].iloc[0]
    assert best["objective"] == sweeps["objective"].min()
    assert not sweeps["normal_moments_assumed"].any()  # test_skew, test_kurtosis recorded
    assert sweeps["deflated_sharpe"].between(0, 1).all()
    assert "catalogue: study " in res.stdout + res.stderr
    # the sweep report of a plain grid: its jobs table, every table well formed
    from tests.test_sweep_report import check_page

    done = run_cli(["plusultra.cli.report", str(sweep_dir)], tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    (jobs,) = check_page(sweep_dir / "sweep_report.html").tables
    assert [row[:2] for row in jobs] == [["job", "seed"], ["0", "1"], ["1", "2"]]
    assert_renders(sweep_dir / "sweep_report.html", min_images=0, min_tables=1)


def test_multirun_with_a_failing_job_records_both(tiny_db, tmp_path):
    res = run_cli(
        [
            "plusultra.run",
            "-m",
            "depth=1,0",
            *[a for a in TINY if a != "depth=1"],
            "data=sqlite",
            f"data.path={tiny_db}",
        ],
        tmp_path,
    )
    assert res.returncode == 2, res.stderr[-4000:]
    rows = query(tmp_path / "catalogue", "SELECT depth, status FROM runs ORDER BY depth")
    assert rows.to_dict("list") == {"depth": [0, 1], "status": ["failed", "completed"]}


def test_real_sp500_with_macro_side_tables(tmp_path):
    """The shipped example: real S&P 500 / NASDAQ from `arch` with VIX, WTI, CPI, Fama-French."""
    res = run_cli(["plusultra.run", "data=sp500_macro", "features=minimal", *TINY], tmp_path)
    assert res.returncode == 0, res.stderr[-4000:]
    row = query(tmp_path / "catalogue", "SELECT * FROM runs").iloc[0]
    assert row["status"] == "completed" and row["data"] == "sp500_macro"
    data = json.loads((Path(row["run_dir"]) / "data.json").read_text())
    columns = data["features"]["columns"]
    for name in ("alt_vix", "alt_wti", "alt_core_cpi", "alt_ff_mkt_rf", "alt_available_vix"):
        assert name in columns, columns
    assert data["segment_dates"]["train"][0] >= "2014"


def _env(out_dir: Path) -> dict[str, str]:
    env = {**os.environ, "PLUSULTRA_OUTPUT_DIR": str(out_dir)}
    env.pop("HYDRA_FULL_ERROR", None)
    return env


def test_four_runs_started_at_once_never_collide(tiny_db, tmp_path):
    """4 processes, same second, same output dir: 4 dirs, 4 rows, each its own metrics.json."""
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "plusultra.run", *TINY, "data=sqlite"]
            + [f"data.path={tiny_db}", f"seed={seed}", "evaluation.bootstrap=0"],
            cwd=REPO,
            env=_env(tmp_path),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        for seed in (11, 12, 13, 14)
    ]
    for proc in procs:
        _, err = proc.communicate(timeout=600)
        assert proc.returncode == 0, err[-4000:]
    dirs = sorted(p.parent for p in (tmp_path / "runs").rglob("metrics.json"))
    assert len(dirs) == 4
    rows = query(tmp_path / "catalogue", "SELECT * FROM runs ORDER BY seed")
    assert rows["seed"].tolist() == [11, 12, 13, 14]
    assert rows["status"].tolist() == ["completed"] * 4
    assert sorted(rows["run_dir"]) == [str(d) for d in dirs]
    for _, row in rows.iterrows():
        run_dir = Path(row["run_dir"])
        metrics = json.loads((run_dir / "metrics.json").read_text())
        for key, value in metrics.items():  # metrics.json writes NaN as null
            expected = math.nan if value is None else value
            assert row[key] == pytest.approx(expected, nan_ok=True), (run_dir, key)
        assert yaml.safe_load((run_dir / "config.yaml").read_text())["seed"] == row["seed"]
        assert (run_dir / "run_id.txt").read_text().strip() == row["run_id"]
        assert (run_dir / "checkpoints" / "best.ckpt").is_file()
    assert len(set(rows["test_sharpe"])) == 4


@pytest.mark.parametrize(("signum", "code"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_a_signal_ends_the_run_as_interrupted_with_checkpoints_kept(
    tiny_db, tmp_path, signum, code
):
    long = [a for a in TINY if not a.startswith("trainer.max_epochs")] + ["trainer.max_epochs=500"]
    proc = subprocess.Popen(
        [sys.executable, "-m", "plusultra.run", *long, "data=sqlite", f"data.path={tiny_db}"],
        cwd=REPO,
        env=_env(tmp_path),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 300
        while not list((tmp_path / "runs").rglob("checkpoints/last.ckpt")):
            assert proc.poll() is None, proc.stderr.read()[-4000:]
            assert time.monotonic() < deadline, "training never wrote a checkpoint"
            time.sleep(0.2)
        proc.send_signal(signum)  # mid-training: epoch 1 of 500 has ended
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    (run_dir,) = (tmp_path / "runs").glob("*/*")
    name = signal.Signals(signum).name
    assert proc.returncode == code, err[-4000:]
    assert f"plusultra: interrupted ({name}); run dir {run_dir} kept" in err
    assert "Traceback" not in err
    rows = query(tmp_path / "catalogue", "SELECT * FROM runs")
    assert rows["status"].tolist() == ["interrupted"]
    assert rows["run_dir"].tolist() == [str(run_dir)]
    assert (run_dir / "checkpoints" / "last.ckpt").is_file()
    assert not (run_dir / "metrics.json").exists()  # not a complete run
