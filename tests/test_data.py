"""Data layer: loading, adjustment, validation, segments, normalisation and leakage."""

from __future__ import annotations

import json
import shutil
import sqlite3

import numpy as np
import pandas as pd
import pytest

from plusultra.data.datasets.datamodule import SQLiteDataModule
from plusultra.data.datasets.panel import load_panel
from plusultra.data.datasets.windows import (
    NormStats,
    WindowDataset,
    compute_segments,
    forward_log_returns,
    next_returns,
    sample_index,
    valid_window_mask,
)
from plusultra.data.features.library import BUILTIN_FEATURES
from plusultra.data.features.pipeline import FeaturePipeline
from plusultra.errors import ConfigError, DataError

WINDOW, HORIZON = 16, 3


def _pipeline(**kw) -> FeaturePipeline:
    """The built-in features (the 250-bar families need more than tiny_db's train segment)."""
    return FeaturePipeline([spec.name for spec in BUILTIN_FEATURES], ["sentiment"], **kw)


def _dm(path, **kw) -> SQLiteDataModule:
    dm = SQLiteDataModule(str(path), _pipeline(), WINDOW, HORIZON, **kw)
    dm.setup()
    return dm


# ------------------------------------------------------------------ loading and adjustment
def test_panel_shapes_and_listing(tiny_db):
    panel = load_panel(tiny_db)
    t, s = panel.shape
    assert s == 6 and t == 400
    assert panel.symbols == sorted(panel.symbols)
    assert np.all(np.diff(panel.dates.astype("int64")) > 0)
    with sqlite3.connect(tiny_db) as con:
        n_rows = con.execute("SELECT COUNT(*) FROM series").fetchone()[0]
    assert np.isfinite(panel.fields["close"]).sum() == n_rows
    assert set(panel.indicators) == {"sentiment"}


def test_adjusted_close_compounds_total_return(tiny_db):
    """Adjusted close = first raw close x cumulative (close*split + dividend) / prev close."""
    panel = load_panel(tiny_db)
    with sqlite3.connect(tiny_db) as con:
        series = pd.read_sql("SELECT symbol, timestamp, close FROM series", con)
        actions = pd.read_sql("SELECT * FROM corporate_actions", con)
    assert (actions["action"] == "split").any()
    for j, sym in enumerate(panel.symbols):
        raw = series[series.symbol == sym].sort_values("timestamp")
        acts = actions[actions.symbol == sym]
        split = dict(
            zip(
                acts.ex_date[acts.action == "split"],
                acts.value[acts.action == "split"],
                strict=True,
            )
        )
        div = dict(
            zip(
                acts.ex_date[acts.action == "dividend"],
                acts.value[acts.action == "dividend"],
                strict=True,
            )
        )
        level, prev, expected = None, None, []
        for ts, close in zip(raw.timestamp, raw.close, strict=True):  # naive reference loop
            if level is None:
                level = close
            else:
                level *= (close * split.get(ts, 1.0) + div.get(ts, 0.0)) / prev
            prev = close
            expected.append(level)
        got = panel.fields["close"][:, j]
        np.testing.assert_allclose(got[np.isfinite(got)], expected, rtol=1e-10)
    # no split-sized jump survives adjustment
    r = np.diff(np.log(panel.fields["close"]), axis=0)
    assert np.nanmax(np.abs(r)) < 0.35


def test_next_returns_reference():
    close = np.array([[10.0, np.nan], [11.0, 5.0], [np.nan, 5.5], [12.1, 6.05], [13.31, np.nan]])
    got = next_returns(close)
    expected = np.full_like(close, np.nan)
    for s in range(close.shape[1]):  # naive: carry last close inside the symbol's life
        rows = np.flatnonzero(np.isfinite(close[:, s]))
        last = None
        for t in range(close.shape[0] - 1):
            if np.isfinite(close[t, s]):
                last = close[t, s]
            nxt = close[t + 1, s] if np.isfinite(close[t + 1, s]) else last
            if last is not None and rows[0] <= t < rows[-1]:
                expected[t, s] = nxt / last - 1
    np.testing.assert_allclose(got, expected, equal_nan=True)
    assert got[1, 0] == 0.0 and got[2, 0] == pytest.approx(0.1)


def test_forward_log_returns_reference():
    rng = np.random.default_rng(0)
    close = np.exp(np.cumsum(rng.normal(0, 0.01, (30, 3)), axis=0))
    y = forward_log_returns(close, 4)
    for t in range(30):
        for k in range(1, 5):
            want = np.log(close[t + k] / close[t]) if t + k < 30 else np.full(3, np.nan)
            np.testing.assert_allclose(y[t, :, k - 1], want, equal_nan=True)


def test_excess_targets_reference():
    from plusultra.data.datasets.windows import make_targets

    rng = np.random.default_rng(2)
    close = np.exp(np.cumsum(rng.normal(0, 0.01, (25, 4)), axis=0))
    close[:6, 2] = np.nan  # listed late
    got = make_targets(close, 3, "excess")
    raw = forward_log_returns(close, 3)
    for t in range(25):
        for k in range(3):
            row = raw[t, :, k]
            ok = np.isfinite(row)
            if ok.any():  # naive: subtract the mean of the defined labels of that bar
                np.testing.assert_allclose(got[t, ok, k], row[ok] - row[ok].mean())
    assert np.isnan(got[:6, 2]).all() and np.isnan(got[-1]).all()
    np.testing.assert_array_equal(make_targets(close, 3, "raw"), raw)
    with pytest.raises(ConfigError, match=r"data.target='nope'; valid: \['excess', 'raw'\]"):
        make_targets(close, 3, "nope")
    with pytest.raises(ConfigError, match="at least 2 symbols"):
        make_targets(close[:, :1], 3, "excess")


# ------------------------------------------------------------------ validation errors
def _copy(tiny_db, tmp_path):
    path = tmp_path / "db.sqlite"
    shutil.copy(tiny_db, path)
    return path


def test_missing_file():
    with pytest.raises(DataError, match="not found: /nope.sqlite"):
        load_panel("/nope.sqlite")


def test_missing_required_table(tiny_db, tmp_path):
    path = _copy(tiny_db, tmp_path)
    with sqlite3.connect(path) as con:
        con.execute("DROP TABLE assets")
    with pytest.raises(DataError, match=r"lacks required table\(s\) assets"):
        load_panel(path)


def test_bad_rows_are_all_reported(tiny_db, tmp_path):
    path = _copy(tiny_db, tmp_path)
    with sqlite3.connect(path) as con:
        con.execute("UPDATE series SET close = -1 WHERE symbol='SYM001' AND timestamp='2012-02-01'")
        con.execute(
            "UPDATE series SET high = low / 2 WHERE symbol='SYM002' AND timestamp < '2012-01-10'"
        )
        con.execute("INSERT INTO series VALUES ('GHOST', '2012-01-03', 1, 1, 1, 1, 1)")
    with pytest.raises(DataError) as info:
        load_panel(path)
    msg = str(info.value)
    assert "series.close" in msg and "SYM001" in msg and "2012-02-01" in msg
    assert "high >= max(open, close)" in msg
    assert "missing from assets" in msg and "GHOST" in msg


def test_unknown_symbol_in_config(tiny_db):
    with pytest.raises(DataError, match=r"data.symbols: \['NOPE'\]"):
        load_panel(tiny_db, symbols=["SYM000", "NOPE"])


# ------------------------------------------------------------------ segments
def test_segments_are_embargoed(tiny_db):
    dm = _dm(tiny_db)
    seg = dm.segments
    assert seg.embargo == WINDOW + HORIZON
    # the last bar any train sample touches (its label) precedes the first val input bar
    assert seg.train[1] + HORIZON < seg.val[0] - WINDOW + 1
    assert seg.val[1] + HORIZON < seg.test[0] - WINDOW + 1
    for name in ("train", "val", "test"):
        t = dm._dataset(name).index[:, 0].numpy()
        lo, hi = getattr(seg, name)
        assert t.min() >= lo and t.max() <= hi


def test_segments_by_date_and_errors():
    dates = pd.bdate_range("2015-01-01", periods=300).to_numpy()
    seg = compute_segments(dates, 10, 2, "2015-06-30", "2015-09-30")
    assert pd.Timestamp(dates[seg.train_end]) <= pd.Timestamp("2015-06-30")
    assert pd.Timestamp(dates[seg.train_end + 1]) > pd.Timestamp("2015-06-30")
    with pytest.raises(ConfigError, match="data.embargo=5 must be >= window"):
        compute_segments(dates, 10, 2, 0.5, 0.7, embargo=5)
    with pytest.raises(ConfigError, match="train_end < val_end"):
        compute_segments(dates, 10, 2, 0.7, 0.5)
    with pytest.raises(ConfigError, match="the val segment is empty"):
        compute_segments(dates, 10, 2, 0.5, 0.52)
    with pytest.raises(ConfigError, match="not an ISO date"):
        compute_segments(dates, 10, 2, "June", 0.7)


# ------------------------------------------------------------------ windows
def test_window_dataset_matches_naive_slices():
    rng = np.random.default_rng(1)
    feats = rng.normal(size=(40, 3, 2)).astype(np.float32)
    feats[5, 1] = np.nan
    targets = rng.normal(size=(40, 3, 2)).astype(np.float32)
    mask = valid_window_mask(feats, 8)
    assert not mask[5:13, 1].any() and mask[13, 1] and not mask[6, 0] and mask[7, 0]
    idx = sample_index(mask, 10, 30)
    ds = WindowDataset(feats, idx, 8, targets)
    x, y = ds.__getitems__(list(range(len(ds))))
    for i, (t, s) in enumerate(idx):
        np.testing.assert_array_equal(x[i].numpy(), feats[t - 7 : t + 1, s])
        np.testing.assert_array_equal(y[i].numpy(), targets[t, s])


def test_normalisation_uses_train_bars_only(tiny_db):
    dm = _dm(tiny_db)
    raw, _ = dm.pipeline.compute(dm.panel)
    train = raw[: dm.segments.train_end + 1].reshape(-1, raw.shape[-1])
    np.testing.assert_allclose(dm.norm.mean, np.nanmean(train.astype(np.float64), axis=0))
    all_bars = np.nanmean(raw.reshape(-1, raw.shape[-1]).astype(np.float64), axis=0)
    assert not np.allclose(dm.norm.mean, all_bars)


# ------------------------------------------------------------------ leakage (required)
def _perturb_after(path, cutoff: str, seed: int = 0) -> None:
    """Rewrite every bar and indicator after `cutoff` with different (still valid) values."""
    rng = np.random.default_rng(seed)
    with sqlite3.connect(path) as con:
        rows = con.execute(
            "SELECT rowid, close FROM series WHERE timestamp > ?", (cutoff,)
        ).fetchall()
        for rowid, close in rows:
            c = close * float(np.exp(rng.normal(0, 0.05)))
            con.execute(
                "UPDATE series SET open=?, high=?, low=?, close=?, volume=volume*? WHERE rowid=?",
                (c, c * 1.01, c * 0.99, c, float(rng.uniform(0.5, 2)), rowid),
            )
        con.execute("UPDATE indicators SET value = value + 3 WHERE timestamp > ?", (cutoff,))


def test_future_perturbation_leaves_the_past_bit_identical(tiny_db, tmp_path):
    """Features, labels, normalisation and windows at t <= T ignore every row after T."""
    base = _dm(tiny_db)
    dates = pd.DatetimeIndex(base.panel.dates)
    cut = base.segments.val_end + 10  # T inside the test segment
    cutoff = str(dates[cut].date())
    path = _copy(tiny_db, tmp_path)
    _perturb_after(path, cutoff)
    moved = _dm(path)
    assert not np.array_equal(
        np.nan_to_num(base.features[cut + 1 :]), np.nan_to_num(moved.features[cut + 1 :])
    ), "the perturbation must change the future, or this test proves nothing"
    raw_a, _ = base.pipeline.compute(base.panel)
    raw_b, _ = moved.pipeline.compute(moved.panel)
    np.testing.assert_array_equal(raw_a[: cut + 1], raw_b[: cut + 1])
    assert base.norm == moved.norm
    np.testing.assert_array_equal(base.features[: cut + 1], moved.features[: cut + 1])
    # labels whose horizon ends by T
    np.testing.assert_array_equal(
        base.scaled_targets[: cut + 1 - HORIZON], moved.scaled_targets[: cut + 1 - HORIZON]
    )
    # every window whose decision time is <= T
    ia, ib = base.inference_dataset(), moved.inference_dataset()
    keep_a = ia.index[:, 0] <= cut
    keep_b = ib.index[:, 0] <= cut
    np.testing.assert_array_equal(ia.index[keep_a].numpy(), ib.index[keep_b].numpy())
    xa = ia.__getitems__(np.flatnonzero(keep_a.numpy()).tolist())
    xb = ib.__getitems__(np.flatnonzero(keep_b.numpy()).tolist())
    np.testing.assert_array_equal(xa.numpy(), xb.numpy())


def test_train_segment_ignores_everything_after_train_end(tiny_db, tmp_path):
    """Normalisation is fitted on the train segment: changing val/test data leaves it exact."""
    base = _dm(tiny_db)
    cutoff = str(pd.Timestamp(base.panel.dates[base.segments.train_end]).date())
    path = _copy(tiny_db, tmp_path)
    _perturb_after(path, cutoff, seed=5)
    assert _dm(path).norm == base.norm


def test_norm_stats_roundtrip(tmp_path):
    stats = NormStats([0.0, 1.0], [1.0, 2.0], [0.01], 5.0)
    stats.save(tmp_path / "n.json")
    assert NormStats.load(tmp_path / "n.json") == stats


# ------------------------------------------------------------------ alternative data in the module
def _with_macro(tiny_db, tmp_path, first_day: int):
    """Copy of the tiny database with a market-wide side table starting at bar `first_day`."""
    path = _copy(tiny_db, tmp_path)
    dates = pd.DatetimeIndex(load_panel(path).dates)
    with sqlite3.connect(path) as con:
        con.execute("CREATE TABLE macro(timestamp TEXT, level REAL)")
        con.executemany(
            "INSERT INTO macro VALUES (?, ?)",
            [(str(d.date()), float(i)) for i, d in enumerate(dates[first_day:], first_day)],
        )
    return path, dates


MACRO = [{"table": "macro", "columns": ["level"], "publication_lag": "1D", "ffill_limit": 3}]


def test_alternative_columns_flags_and_fill(tiny_db, tmp_path):
    path, dates = _with_macro(tiny_db, tmp_path, first_day=100)
    dm = _dm(path, alternative=MACRO)
    names = dm.feature_names
    assert names[-2:] == ["alt_macro_level", "alt_available_macro"]
    level, flag = names.index("alt_macro_level"), names.index("alt_available_macro")
    raw = dm.norm.mean[level] + dm.norm.std[level] * dm.features[:, 0, level]
    # published with a 1-day lag: the value dated bar 150 is first usable at bar 151
    assert raw[151] == pytest.approx(150.0, abs=1e-3)
    assert (dm.features[:101, 0, flag] == 0).all() and (dm.features[101:, 0, flag] == 1).all()
    assert (dm.features[:101, 0, level] == 0).all(), "unknown side values are 0 (train mean)"
    assert (dm.norm.mean[flag], dm.norm.std[flag]) == (0.0, 1.0)
    # windows before the side table starts are still sampled
    assert dm._dataset("train").index[:, 0].min() < 101


def test_alternative_table_is_validated(tiny_db, tmp_path):
    path, _ = _with_macro(tiny_db, tmp_path, first_day=100)
    with sqlite3.connect(path) as con:
        con.execute("UPDATE macro SET timestamp = 'soon' WHERE rowid = 3")
    with pytest.raises(DataError, match="macro.timestamp"):
        _dm(path, alternative=MACRO)


def test_feature_without_train_values_is_named(tiny_db, tmp_path):
    path, dates = _with_macro(tiny_db, tmp_path, first_day=395)
    with pytest.raises(DataError, match=r"\['alt_macro_level'.*no value in the train segment"):
        _dm(path, alternative=MACRO)


def test_unknown_builder_and_target():
    valid = r"valid: \['sp500', 'sp500_stocks'\]"
    with pytest.raises(ConfigError, match=rf"data.build='nope'; {valid}"):
        SQLiteDataModule("x.sqlite", _pipeline(), WINDOW, HORIZON, build="nope")
    with pytest.raises(ConfigError, match="data.target='log'"):
        SQLiteDataModule("x.sqlite", _pipeline(), WINDOW, HORIZON, target="log")


# ------------------------------------------------------------------ dropped symbols, statistics
def test_symbol_without_a_train_window_is_reported(tiny_db, tmp_path, caplog):
    """A symbol whose indicator is missing never has a complete window: logged with the reason,
    recorded in data.json and counted in the statistics, not lost silently."""
    path = _copy(tiny_db, tmp_path)
    with sqlite3.connect(path) as con:
        gone, late = [r[0] for r in con.execute("SELECT symbol FROM assets ORDER BY symbol")][:2]
        con.execute("DELETE FROM indicators WHERE symbol = ?", (gone,))
    with caplog.at_level("WARNING", logger="plusultra.data.datasets.statistics"):
        dm = _dm(path)
    assert list(dm.dropped) == [gone]
    assert "['ind_sentiment'] undefined" in dm.dropped[gone]
    assert f"{gone} (feature(s) ['ind_sentiment']" in caplog.text and "left out" in caplog.text
    train = dm._dataset("train").index.numpy()
    symbols = set(np.asarray(dm.panel.symbols)[train[:, 1]])
    assert gone not in symbols and late in symbols
    dm.save_artifacts(tmp_path)
    data = json.loads((tmp_path / "data.json").read_text())
    assert data["dropped_symbols"] == dm.dropped
    assert data["statistics"]["n_dropped_symbols"] == 1


def test_every_symbol_dropped_names_the_reasons(tiny_db):
    """return_20 needs 21 bars and the train segment is shorter than its warm-up + window."""
    args = dict(train_end=0.275, val_end=0.7)  # train: decision bars 99 .. ~109
    dm = SQLiteDataModule(str(tiny_db), FeaturePipeline(["return_20"]), 100, 2, **args)
    dm.setup()
    assert len(dm.dropped) == len(dm.panel.symbols)
    with pytest.raises(DataError, match=r"no complete window in the train segment \(.*: no 100"):
        dm.train_dataloader()


def test_statistics_name_the_data_read(tiny_db, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    shutil.copy(tiny_db, tmp_path / "rel.sqlite")
    dm = _dm("rel.sqlite")
    stats = dm.statistics()
    panel = load_panel(tiny_db)
    assert stats == {
        "data_path": str(tmp_path / "rel.sqlite"),  # absolute, though given relative
        "n_symbols": len(panel.symbols),
        "n_dates": len(panel.dates),
        "n_bars": int(np.isfinite(panel.fields["close"]).sum()),
        "data_first_date": str(pd.Timestamp(panel.dates[0]).date()),
        "data_last_date": str(pd.Timestamp(panel.dates[-1]).date()),
        "n_features": dm.n_features,
        "n_dropped_symbols": 0,
    }
    assert stats["n_bars"] < stats["n_symbols"] * stats["n_dates"]  # late listings, delistings


def test_dataset_statistics_reach_the_catalogue_row(tiny_db, tmp_path):
    """The catalogue callback merges data.json's statistics: root columns, resolved data.path."""
    from plusultra.catalogue.rows import build_row
    from plusultra.data.datasets.statistics import with_dataset_statistics

    dm = _dm(tiny_db)
    dm.save_artifacts(tmp_path)
    config = {"seed": 1, "data": {"path": "cache/x.sqlite", "window": WINDOW}}
    merged = with_dataset_statistics(config, tmp_path)
    assert config["data"]["path"] == "cache/x.sqlite"  # not mutated
    now = pd.Timestamp.now(tz="UTC").to_pydatetime()
    row = build_row(
        run_id="r",
        run_dir=str(tmp_path),
        status="completed",
        error=None,
        started_at=now,
        finished_at=now,
        git_rev="x",
        overrides=[],
        choices={},
        config=merged,
        metrics={},
    )
    stats = dm.statistics()
    assert row["data.path"] == str(tiny_db.resolve()) and row["data.window"] == WINDOW
    for key in ("n_symbols", "data_first_date", "data_last_date", "n_bars", "n_features"):
        assert row[key] == stats[key], key
    assert with_dataset_statistics(config, tmp_path / "missing") == config  # failed early


def test_conditioning_label_undefined_in_train_is_refused(tiny_db):
    """tiny_db's train segment is shorter than the regimes' ~270-bar warm-up."""
    with pytest.raises(DataError, match=r"data.conditioning: label\(s\) \['volatility'\]"):
        _dm(tiny_db, conditioning=["volatility"])
