"""Feature drift: PSI and KS by hand, the vectorised table against its loop, the streaming
monitor and its warnings, and a tiny run's reference, metrics and report section."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest
from scipy.stats import ks_2samp

from plusultra.errors import DataError
from plusultra.evaluation.drift import (
    COLUMNS,
    EPS,
    MIN_VALUES,
    DriftMonitor,
    drift_table,
    drift_table_ref,
    ks,
    level,
    load_reference,
    psi,
    psi_ref,
    regime_warnings,
)
from plusultra.evaluation.drift_run import compute_drift, sample_decisions
from plusultra.evaluation.report.drift import drift_section

NAMES = ["a", "b", "volatility_20"]


def _normal(n: int, seed: int, shift: float = 0.0, features: int = 3) -> np.ndarray:
    return np.random.default_rng(seed).normal(shift, 1.0, size=(n, features))


# ----------------------------------------------------------------------------- PSI and KS


def test_psi_by_hand():
    # reference 0..199: with 2 bins the edge is the median 99.5, so each bin holds half of it.
    ref = np.arange(200.0)
    cur = np.r_[np.zeros(150), np.full(50, 150.0)]  # 3/4 below the edge, 1/4 above
    expected = (0.75 - 0.5) * math.log(0.75 / 0.5) + (0.25 - 0.5) * math.log(0.25 / 0.5)
    assert psi(ref, cur, bins=2) == pytest.approx(expected, rel=1e-12)
    assert psi_ref(ref, cur, bins=2) == pytest.approx(expected, rel=1e-12)
    # every current value above the top edge: the other bins are floored at EPS
    top = np.full(200, 1e6)
    by_hand = (1 - 0.25) * math.log(1 / 0.25) + 3 * (EPS - 0.25) * math.log(EPS / 0.25)
    assert psi(ref, top, bins=4) == pytest.approx(by_hand, rel=1e-12)
    # a value equal to an edge goes to the bin above it: edges of 0..199 at 4 bins: 49.75 ...
    on_edge = np.full(200, np.quantile(ref, 0.75))
    assert psi(ref, on_edge, bins=4) == pytest.approx(by_hand, rel=1e-12)


def test_ks_by_hand():
    ref, cur = np.arange(100.0), np.arange(100.0) + 50  # ECDFs differ by at most 1/2
    stat, pvalue = ks(ref, cur)
    assert stat == pytest.approx(0.5)
    assert pvalue == pytest.approx(ks_2samp(ref, cur).pvalue)
    assert ks(np.r_[ref, np.nan, np.inf], cur) == (stat, pvalue)  # non-finite dropped
    assert all(math.isnan(v) for v in ks([np.nan], cur))


def test_identical_is_none_and_one_sd_shift_is_major():
    ref = _normal(10_000, 0)
    same = drift_table(ref, _normal(5_000, 1), NAMES)
    assert (same["psi"] < 0.01).all() and (same["level"] == "none").all()
    assert (same["ks_pvalue"] > 0.001).all()
    assert psi(ref[:, 0], ref[:, 0]) == pytest.approx(0.0, abs=1e-12)
    shifted = drift_table(ref, _normal(5_000, 1, shift=1.0), NAMES)
    assert (shifted["psi"] > 0.25).all() and (shifted["level"] == "major").all()
    assert (shifted["ks_stat"] > 0.3).all() and (shifted["ks_pvalue"] < 1e-10).all()


def test_levels():
    assert [level(v) for v in (0.0, 0.0999, 0.1, 0.2499, 0.25, 3.0, math.nan)] == [
        "none", "none", "moderate", "moderate", "major", "major", "insufficient",
    ]  # fmt: skip


def test_table_matches_the_per_feature_loop():
    rng = np.random.default_rng(5)
    ref = rng.standard_t(4, size=(3_000, 5))
    ref[:, 3] = np.round(ref[:, 3])  # discrete: repeated quantile edges
    ref[:, 4] = 1.0  # constant
    ref[rng.random(ref.shape) < 0.05] = np.nan
    cur = rng.standard_t(4, size=(800, 5)) * [1, 2, 1, 1, 1] + [0, 0, 0.5, 0, 0]
    cur[:, 3] = np.round(cur[:, 3])
    cur[:10, 0] = np.inf
    cur[:, 1][: 800 - MIN_VALUES + 1] = np.nan  # below MIN_VALUES finite: insufficient
    names = list("vwxyz")
    fast, slow = drift_table(ref, cur, names, bins=7), drift_table_ref(ref, cur, names, bins=7)
    assert list(fast.columns) == COLUMNS
    pd.testing.assert_frame_equal(fast, slow, check_dtype=False, rtol=1e-9, atol=1e-12)
    assert fast.loc[1, "level"] == "insufficient" and math.isnan(fast.loc[1, "psi"])
    assert fast.loc[0, "n_current"] == 790  # the inf values dropped
    for j in range(5):
        assert fast.loc[j, "psi"] == pytest.approx(psi(ref[:, j], cur[:, j], 7), nan_ok=True)


def test_bad_shapes_are_named():
    with pytest.raises(DataError, match="3 feature names"):
        drift_table(np.zeros((200, 2)), np.zeros((200, 2)), NAMES)
    with pytest.raises(DataError, match="bins=1"):
        drift_table(np.zeros((200, 3)), np.zeros((200, 3)), NAMES, bins=1)


# ----------------------------------------------------------------------------- warnings


def test_regime_warnings():
    names = ["a", "b", "c", "volatility_20"]
    ref = _normal(5_000, 0, features=4)
    assert regime_warnings(drift_table(ref, _normal(1_000, 1, features=4), names)) == []
    calm = _normal(1_000, 1, features=4)
    calm[:, 3] = -3.0  # volatility far below the reference's 1st percentile (1 of 4 major)
    (sentence,) = regime_warnings(drift_table(ref, calm, names))
    assert "volatility_20" in sentence and "below" in sentence and "1% quantile" in sentence
    broad = _normal(1_000, 1, shift=[2.0, 2.0, 0.0, 0.0], features=4)  # 2 of 4 major > 25 %
    (sentence,) = regime_warnings(drift_table(ref, broad, names))
    assert sentence.startswith("Regime shift: 2 of 4 features (50%, more than 25%)")
    assert "major drift" in sentence and "a, b" in sentence
    assert regime_warnings(drift_table(ref, broad, names), major_share=0.5) == []


# ----------------------------------------------------------------------------- monitor


def test_monitor_keeps_the_last_window_rows():
    ref = _normal(2_000, 0)
    monitor = DriftMonitor(ref, NAMES, window=150)
    assert (monitor.table()["level"] == "insufficient").all() and monitor.warnings() == []
    rows = _normal(400, 2, shift=1.0)
    monitor.update(rows[:100])
    monitor.update(rows[100])  # one row
    monitor.update(rows[101:400])
    np.testing.assert_array_equal(monitor.current(), rows[-150:])
    assert monitor.seen == 400
    pd.testing.assert_frame_equal(monitor.table(), drift_table(ref, rows[-150:], NAMES))
    assert (monitor.table()["level"] == "major").all()
    assert any("3 of 3 features" in w for w in monitor.warnings())
    monitor.update(_normal(150, 3))  # back to the reference's distribution
    assert (monitor.table()["level"] != "major").all() and monitor.warnings() == []
    with pytest.raises(DataError, match=r"\(K, 3\)"):
        monitor.update(np.zeros((2, 4)))
    with pytest.raises(DataError, match="3 feature names"):
        DriftMonitor(ref[:, :2], NAMES)


# ----------------------------------------------------------------------------- a run's drift


def test_compute_drift_samples_each_segment():
    t_bars, symbols, feats = 300, 4, 3
    rng = np.random.default_rng(0)
    features = rng.normal(size=(t_bars, symbols, feats)).astype(np.float32)
    features[200:, :, 0] += 2.0  # the test segment drifts in feature 0
    ok = np.ones((t_bars, symbols), bool)
    ok[:10] = False  # warm-up
    dates = pd.bdate_range("2020-01-01", periods=t_bars)
    segments = {"train": (0, 149), "val": (160, 189), "test": (200, 299)}
    drift = compute_drift(features, ok, segments, dates, list("ABCD"), NAMES, seed=1, max_rows=300)
    ref = drift.reference
    assert list(ref.columns) == ["timestamp", "symbol", *NAMES] and len(ref) == 300
    assert ref["timestamp"].between(dates[10], dates[149]).all()  # train, complete windows only
    assert not ref.duplicated(["timestamp", "symbol"]).any()
    assert ref["timestamp"].is_monotonic_increasing
    t = dates.get_indexer(ref["timestamp"])
    s = pd.Index(list("ABCD")).get_indexer(ref["symbol"])
    np.testing.assert_array_equal(ref[NAMES].to_numpy(), features[t, s])
    again = compute_drift(features, ok, segments, dates, list("ABCD"), NAMES, 1, 300)
    pd.testing.assert_frame_equal(again.reference, ref)  # seeded
    test = drift.table[drift.table["segment"] == "test"].set_index("feature")
    assert test.loc["a", "level"] == "major" and test.loc["b", "level"] != "major"
    assert drift.metrics["test_drift_features"] == 1
    assert drift.metrics["test_max_psi"] == pytest.approx(test["psi"].max())
    assert drift.metrics["val_drift_features"] == 0  # 120 rows: all of val, none drifting
    assert len(sample_decisions(ok, 0, 149, 10_000, rng)[0]) == 140 * 4  # fewer: all of them


@pytest.fixture(scope="module")
def drift_run(tiny_db, tmp_path_factory):
    """One tiny run (the default experiment, shrunk)."""
    from omegaconf import open_dict

    from tests.conftest import TINY, compose_config
    from tests.test_run import run_in_process

    tmp = tmp_path_factory.mktemp("drift")
    cfg = compose_config([*TINY, "data=sqlite", f"data.path={tiny_db}", "seed=5"])
    with open_dict(cfg):
        cfg.paths.output_dir = str(tmp)
        cfg.hydra.runtime.output_dir = str(tmp / "run")
    (tmp / "run").mkdir()
    return run_in_process(cfg)[1]


def test_run_writes_its_reference_and_metrics(drift_run):
    data = json.loads((drift_run / "data.json").read_text())
    names = data["features"]["columns"]
    frame = pd.read_parquet(drift_run / "drift_reference.parquet")
    assert list(frame.columns) == ["timestamp", "symbol", *names]
    first, last = pd.to_datetime(data["segment_dates"]["train"])
    assert frame["timestamp"].between(first, last).all() and len(frame) > MIN_VALUES
    assert np.isfinite(frame[names].to_numpy()).all()
    rows, loaded = load_reference(drift_run)
    assert loaded == names and rows.shape == (len(frame), len(names))
    metrics = json.loads((drift_run / "metrics.json").read_text())
    table = pd.read_parquet(drift_run / "drift.parquet")
    for seg in ("val", "test"):
        part = table[table["segment"] == seg]
        assert list(part["feature"]) == names
        assert metrics[f"{seg}_max_psi"] == pytest.approx(part["psi"].max())
        assert metrics[f"{seg}_drift_features"] == (part["level"] == "major").sum()
        assert f"{seg}_drift_warnings" in metrics


def test_report_renders_the_drift_section(drift_run):
    md = (drift_run / "report.md").read_text()
    html = (drift_run / "report.html").read_text()
    for text in (md, html):
        assert "Feature drift" in text
        assert "Validation: features with the largest PSI" in text
        assert "Test: features with the largest PSI" in text
    assert "![PSI against the train segment" in md and (drift_run / "report/drift.png").is_file()
    blocks, plots = drift_section(drift_run)
    assert [b[1] for b in blocks if b[0] == "h2"] == ["Feature drift"] and set(plots) == {"drift"}
    table = pd.read_parquet(drift_run / "drift.parquet")
    top = table[table["segment"] == "test"].sort_values("psi", ascending=False)
    rows = [b for b in blocks if b[0] == "table"][1][2]
    assert rows[0][0] == top["feature"].iloc[0]  # the test table starts with the largest PSI


def test_report_without_drift_has_no_section(tmp_path):
    assert drift_section(tmp_path) == ([], {})
    with pytest.raises(DataError, match="drift_reference.parquet: missing"):
        load_reference(tmp_path)
