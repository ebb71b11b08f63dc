"""CSV / parquet import into the SQLite contract (`plusultra-data import`)."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from plusultra.data.datasets.panel import load_panel
from plusultra.data.io import importers
from plusultra.data.io.importers import ImportSummary, import_files
from plusultra.errors import ConfigError, DataError

DAYS = pd.bdate_range("2021-01-04", periods=25)


def _bars(n: int = len(DAYS), base: float = 100.0) -> dict[str, np.ndarray]:
    close = base + np.arange(n, dtype=float)
    return {
        "open": close - 0.25,
        "high": close + 1.0,
        "low": close - 1.0,
        "close": close,
        "volume": 1000 + np.arange(n),  # integers, as most CSVs have them
    }


def _series(path: Path) -> pd.DataFrame:
    with sqlite3.connect(path) as con:
        return pd.read_sql_query("SELECT * FROM series ORDER BY symbol, timestamp", con)


def _files(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def test_per_symbol_csvs_round_trip(tmp_path):
    src = tmp_path / "prices"
    src.mkdir()
    for i, sym in enumerate(["aapl", "msft", "spy"]):
        frame = pd.DataFrame({"date": DAYS.strftime("%Y-%m-%d"), **_bars(base=50.0 * (i + 1))})
        suffix = ".csv.gz" if sym == "spy" else ".csv"
        frame.to_csv(src / f"{sym}{suffix}", index=False)
    (src / "notes.txt").write_text("ignored")
    out = tmp_path / "db" / "market.sqlite"
    summary = import_files([src], out)
    assert isinstance(summary, ImportSummary)
    assert summary.symbols == ["AAPL", "MSFT", "SPY"] and summary.rows == 75
    assert (summary.first, summary.last) == ("2021-01-04", "2021-02-05")
    assert list(map(lambda f: Path(f).name, summary.files)) == [
        "aapl.csv",
        "msft.csv",
        "spy.csv.gz",
    ]
    assert set(summary.files.values()) == {25} and summary.indicators == []
    text = str(summary)
    assert "75 rows" in text and "AAPL, MSFT, SPY" in text and "\n" not in text
    series = _series(out)
    spy = series[series.symbol == "SPY"]
    np.testing.assert_array_equal(spy["close"], _bars(base=150.0)["close"])
    assert spy["volume"].iloc[0] == 1000.0
    panel = load_panel(out)
    assert panel.shape == (25, 3) and panel.symbols == ["AAPL", "MSFT", "SPY"]
    assets = panel.assets
    assert assets.loc["MSFT", "listed"] == "2021-01-04" and assets.loc["MSFT", "delisted"] is None
    assert (assets["asset_class"] == "equity").all() and (assets["currency"] == "USD").all()
    assert assets["sector"].isna().all() and (assets["name"] == assets.index).all()
    with sqlite3.connect(out) as con:
        assert con.execute("SELECT COUNT(*) FROM corporate_actions").fetchone() == (0,)
    assert _files(out.parent) == ["market.sqlite"]


def test_long_parquet_with_indicators_and_assets(tmp_path):
    parts = []
    for sym in ("XOM", "CVX"):
        parts.append(
            pd.DataFrame(
                {
                    "Ticker": sym,
                    "Date": DAYS,
                    **_bars(),
                    "sentiment": np.linspace(-1, 1, len(DAYS)),
                    "Short Interest": np.where(np.arange(len(DAYS)) % 5, 0.02, np.nan),
                    "exchange": "NYSE",  # text: ignored
                }
            )
        )
    long = pd.concat(parts, ignore_index=True)
    long.to_parquet(tmp_path / "long.parquet")
    pd.DataFrame({"Symbol": ["XOM"], "Name": ["Exxon"], "Sector": ["Energy"]}).to_csv(
        tmp_path / "assets.csv", index=False
    )
    out = tmp_path / "energy.sqlite"
    summary = import_files(
        [tmp_path / "long.parquet"], out, symbol_column="ticker", assets=tmp_path / "assets.csv"
    )
    assert summary.symbols == ["CVX", "XOM"] and summary.rows == 50
    assert summary.indicators == ["sentiment", "short_interest"]
    panel = load_panel(out)
    assert set(panel.indicators) == {"sentiment", "short_interest"}
    assert np.isnan(panel.indicators["short_interest"][0]).all()  # NaN rows are not stored
    with sqlite3.connect(out) as con:
        n = con.execute("SELECT COUNT(*) FROM indicators WHERE name='short_interest'").fetchone()
    assert n == (40,)
    assert panel.assets.loc["XOM", "name"] == "Exxon"
    assert panel.assets.loc["XOM", "sector"] == "Energy"
    assert panel.assets.loc["CVX", "name"] == "CVX"  # not in assets.csv: derived
    assert pd.isna(panel.assets.loc["CVX", "sector"])


def test_mixed_case_and_aliased_headers(tmp_path):
    bars = _bars()
    frame = pd.DataFrame(
        {
            "Unnamed: 0": np.arange(len(DAYS)),  # a pandas index written to CSV: ignored
            "DATE": DAYS.strftime("%Y-%m-%d"),
            " Open": bars["open"],
            "HIGH": bars["high"],
            "low": bars["low"],
            "Close": bars["close"],
            "Adj Close": bars["close"] - 0.125,  # ignored: close exists
            "Vol": bars["volume"],
        }
    )
    frame.to_csv(tmp_path / "Brk-B.csv", index=False)
    summary = import_files([tmp_path / "Brk-B.csv"], tmp_path / "a.sqlite")
    assert summary.symbols == ["BRK-B"] and summary.indicators == []
    series = _series(tmp_path / "a.sqlite")
    np.testing.assert_array_equal(series["close"], bars["close"])

    only_adj = frame.drop(columns=["Close"])  # adj close becomes close
    only_adj.to_csv(tmp_path / "ADJ.csv", index=False)
    import_files([tmp_path / "ADJ.csv"], tmp_path / "b.sqlite")
    np.testing.assert_array_equal(_series(tmp_path / "b.sqlite")["close"], bars["close"] - 0.125)


def test_intraday_time_zones_become_utc(tmp_path):
    bars = {k: v[:4] for k, v in _bars(4).items()}
    # New York, across the DST change of 2021-03-14 (UTC-5, then UTC-4).
    stamps = [
        "2021-03-12 09:30:00-05:00",
        "2021-03-12 10:30:00-05:00",
        "2021-03-15 09:30:00-04:00",
        "2021-03-15 10:30:00-04:00",
    ]
    pd.DataFrame({"Datetime": stamps, **bars}).to_csv(tmp_path / "NY.csv", index=False)
    tokyo = pd.date_range("2021-03-15 09:00", periods=4, freq="h", tz="Asia/Tokyo")
    pd.DataFrame({"timestamp": tokyo, **bars}).to_parquet(tmp_path / "TK.parquet")
    daily = pd.date_range("2021-03-15", periods=4, freq="D", tz="Asia/Tokyo")  # local midnight
    pd.DataFrame({"date": daily, **bars}).to_parquet(tmp_path / "TD.parquet")
    out = tmp_path / "tz.sqlite"
    import_files([tmp_path / "NY.csv", tmp_path / "TK.parquet", tmp_path / "TD.parquet"], out)
    series = _series(out).groupby("symbol")["timestamp"].apply(list)
    assert series["NY"] == [
        "2021-03-12T14:30:00Z",
        "2021-03-12T15:30:00Z",
        "2021-03-15T13:30:00Z",
        "2021-03-15T14:30:00Z",
    ]
    assert series["TK"][0] == "2021-03-15T00:00:00Z" and series["TK"][3] == "2021-03-15T03:00:00Z"
    assert series["TD"] == ["2021-03-15", "2021-03-16", "2021-03-17", "2021-03-18"]  # dates kept


def test_missing_column_names_file_and_column(tmp_path):
    frame = pd.DataFrame({"date": DAYS.strftime("%Y-%m-%d"), **_bars()}).drop(columns="close")
    frame.to_csv(tmp_path / "NOCLOSE.csv", index=False)
    with pytest.raises(DataError, match=r"NOCLOSE\.csv has no close column.*has 'date', 'open'"):
        import_files([tmp_path / "NOCLOSE.csv"], tmp_path / "out.sqlite")
    frame = pd.DataFrame({"when": DAYS.strftime("%Y-%m-%d"), **_bars()})
    frame.to_csv(tmp_path / "NOTS.csv", index=False)
    with pytest.raises(DataError, match=r"NOTS\.csv has no timestamp column.*has 'when'"):
        import_files([tmp_path / "NOTS.csv"], tmp_path / "out.sqlite")
    assert import_files([tmp_path / "NOTS.csv"], tmp_path / "ok.sqlite", timestamp_column="WHEN")
    with pytest.raises(DataError, match=r"NOTS\.csv has no symbol \('sym'\) column"):
        import_files(
            [tmp_path / "NOTS.csv"], tmp_path / "x.sqlite", layout="long", symbol_column="sym"
        )
    assert not (tmp_path / "out.sqlite").exists() and not (tmp_path / "x.sqlite").exists()


def test_bad_values_name_file_column_and_line(tmp_path):
    frame = pd.DataFrame({"date": DAYS.strftime("%Y-%m-%d"), **_bars()})
    bad = frame.astype(object)
    bad.loc[3, "close"] = "12,5"
    bad.to_csv(tmp_path / "BAD.csv", index=False)
    with pytest.raises(DataError, match=r"BAD\.csv: column 'close' .* line 5: '12,5'"):
        import_files([tmp_path / "BAD.csv"], tmp_path / "out.sqlite")
    bad = frame.astype(object)
    bad.loc[1, "date"] = "01/02/2021"
    bad.to_csv(tmp_path / "US.csv", index=False)
    with pytest.raises(DataError, match=r"US\.csv: column 'date' .*ISO-8601.* line 3"):
        import_files([tmp_path / "US.csv"], tmp_path / "out.sqlite")


def test_duplicate_rows_are_an_error(tmp_path):
    frame = pd.DataFrame({"date": DAYS.strftime("%Y-%m-%d"), **_bars()})
    frame.to_csv(tmp_path / "AAPL.csv", index=False)
    frame.iloc[:3].to_parquet(tmp_path / "aapl.parquet")  # same symbol twice
    with pytest.raises(DataError, match=r"duplicate.*AAPL 2021-01-04 in AAPL\.csv line 2 and"):
        import_files([tmp_path], tmp_path / "out.sqlite")
    pd.concat([frame, frame.iloc[[7]]]).to_csv(tmp_path / "MSFT.csv", index=False)
    with pytest.raises(DataError, match=r"duplicate.*MSFT 2021-01-13 in MSFT\.csv line 9 and "):
        import_files([tmp_path / "MSFT.csv"], tmp_path / "out.sqlite")
    assert not (tmp_path / "out.sqlite").exists()


def test_overwrite_is_refused_unless_asked(tmp_path):
    pd.DataFrame({"date": DAYS.strftime("%Y-%m-%d"), **_bars()}).to_csv(
        tmp_path / "A.csv", index=False
    )
    out = tmp_path / "out.sqlite"
    out.write_bytes(b"precious")
    with pytest.raises(DataError, match="exists; pass overwrite=True"):
        import_files([tmp_path / "A.csv"], out)
    assert out.read_bytes() == b"precious"
    import_files([tmp_path / "A.csv"], out, overwrite=True)
    assert load_panel(out).symbols == ["A"]
    with pytest.raises(ConfigError, match="layout must be one of auto, per_symbol, long"):
        import_files([tmp_path / "A.csv"], out, layout="wide", overwrite=True)


def test_no_partial_file_on_failure(tmp_path, monkeypatch):
    src = tmp_path / "in"
    src.mkdir()
    bars = _bars()
    bars["high"] = bars["high"].copy()
    bars["high"][4] = 1.0  # high < low: fails validation
    pd.DataFrame({"date": DAYS.strftime("%Y-%m-%d"), **bars}).to_csv(src / "A.csv", index=False)
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(
        DataError, match=r"(?s)failed validation.*series\.high.*symbol='A', timestamp='2021-01-08'"
    ):
        import_files([src], out / "m.sqlite")
    assert _files(out) == []

    # A failure while writing (after validation) leaves neither the file nor its temp file,
    # and an existing database being overwritten is kept.
    pd.DataFrame({"date": DAYS.strftime("%Y-%m-%d"), **_bars()}).to_csv(src / "A.csv", index=False)
    (out / "m.sqlite").write_bytes(b"old")

    def broken_replace(*args):
        raise OSError("disk full")

    monkeypatch.setattr(importers.os, "replace", broken_replace)
    with pytest.raises(OSError, match="disk full"):
        import_files([src], out / "m.sqlite", overwrite=True)
    assert _files(out) == ["m.sqlite"] and (out / "m.sqlite").read_bytes() == b"old"
    monkeypatch.undo()
    import_files([src], out / "m.sqlite", overwrite=True)
    assert _files(out) == ["m.sqlite"] and load_panel(out / "m.sqlite").shape == (25, 1)


def test_missing_inputs(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        import_files([tmp_path / "nope.csv"], tmp_path / "out.sqlite")
    (tmp_path / "x.json").write_text("{}")
    with pytest.raises(DataError, match=r"x\.json: unsupported file type"):
        import_files([tmp_path / "x.json"], tmp_path / "out.sqlite")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="has no .csv, .csv.gz, .parquet files"):
        import_files([tmp_path / "empty"], tmp_path / "out.sqlite")


def test_close_only_csv_imports_with_null_fields(tmp_path):
    bars = _bars()
    pd.DataFrame({"Date": DAYS.strftime("%Y-%m-%d"), "Adj Close": bars["close"]}).to_csv(
        tmp_path / "KO.csv", index=False
    )
    frame = pd.DataFrame({"date": DAYS.strftime("%Y-%m-%d"), **bars}).drop(columns="volume")
    frame.to_csv(tmp_path / "NOVOL.csv", index=False)
    summary = import_files([tmp_path], tmp_path / "out.sqlite")
    assert summary.absent == {
        "open": [str(tmp_path / "KO.csv")],
        "high": [str(tmp_path / "KO.csv")],
        "low": [str(tmp_path / "KO.csv")],
        "volume": [str(tmp_path / "KO.csv"), str(tmp_path / "NOVOL.csv")],
    }
    text = str(summary)
    assert "No open, high, low in 1 file(s) (KO.csv): stored as NULL." in text
    assert "No volume in 2 file(s) (KO.csv, NOVOL.csv): stored as NULL." in text
    series = _series(tmp_path / "out.sqlite")
    ko, novol = series[series["symbol"] == "KO"], series[series["symbol"] == "NOVOL"]
    assert ko[["open", "high", "low", "volume"]].isna().all().all()
    np.testing.assert_array_equal(ko["close"], bars["close"])
    assert novol["volume"].isna().all() and novol["open"].notna().all()
    panel = load_panel(tmp_path / "out.sqlite")  # validated on load
    assert np.isnan(panel.fields["open"][:, panel.symbols.index("KO")]).all()


def test_column_mapping(tmp_path):
    bars = _bars()
    frame = pd.DataFrame(
        {"Datum": DAYS.strftime("%Y-%m-%d"), "Last": bars["close"], "Vol": bars["volume"]}
    )
    frame["Close"] = 1.0  # a decoy: the mapping wins over the default name
    frame.to_csv(tmp_path / "X.csv", index=False)
    columns = importers.parse_column_map(" close=Last, volume=Vol ,timestamp=datum")
    assert columns == {"close": "Last", "volume": "Vol", "timestamp": "datum"}
    summary = import_files([tmp_path / "X.csv"], tmp_path / "out.sqlite", columns=columns)
    series = _series(tmp_path / "out.sqlite")
    np.testing.assert_array_equal(series["close"], bars["close"])
    np.testing.assert_array_equal(series["volume"], bars["volume"])
    assert series["timestamp"].iloc[0] == "2021-01-04"
    assert list(summary.absent) == ["open", "high", "low"]
    assert summary.indicators == ["close"]  # the unmapped numeric column is an indicator
    with pytest.raises(ConfigError, match=r"unknown target\(s\) 'adj', 'price'; valid targets"):
        importers.parse_column_map("price=Last,adj=X")
    with pytest.raises(ConfigError, match=r"'close' is not target=source"):
        importers.parse_column_map("close")
    with pytest.raises(ConfigError, match=r"unknown target\(s\) 'last'"):
        import_files([tmp_path / "X.csv"], tmp_path / "b.sqlite", columns={"last": "Last"})
    with pytest.raises(DataError, match=r"X\.csv has no column 'Px' \(mapped to close"):
        import_files([tmp_path / "X.csv"], tmp_path / "b.sqlite", columns={"close": "Px"})


def test_drop_duplicates_keeps_the_last_row(tmp_path):
    frame = pd.DataFrame({"date": DAYS.strftime("%Y-%m-%d"), **_bars(), "sentiment": 0.5})
    later = frame.iloc[[3, 7]].assign(close=[500.0, 600.0], high=700.0, sentiment=[0.9, np.nan])
    pd.concat([frame, later]).to_csv(tmp_path / "MSFT.csv", index=False)
    with pytest.raises(DataError, match=r"4 rows share.*MSFT\.csv line 5 and MSFT\.csv line 27"):
        import_files([tmp_path / "MSFT.csv"], tmp_path / "out.sqlite")
    out = tmp_path / "out.sqlite"
    summary = import_files([tmp_path / "MSFT.csv"], out, drop_duplicates=True)
    assert summary.dropped == 2 and summary.rows == len(DAYS)
    assert "Dropped 2 duplicate (symbol, timestamp) row(s), kept the last." in str(summary)
    series = _series(out).set_index("timestamp")
    assert series.loc[DAYS[3].strftime("%Y-%m-%d"), "close"] == 500.0
    assert series.loc[DAYS[7].strftime("%Y-%m-%d"), "close"] == 600.0
    assert series.loc[DAYS[4].strftime("%Y-%m-%d"), "close"] == _bars()["close"][4]
    with sqlite3.connect(out) as con:
        sentiment = dict(con.execute("SELECT timestamp, value FROM indicators").fetchall())
    # the kept row's indicators: 0.9 replaces 0.5; the kept row had none on DAYS[7]
    assert sentiment[DAYS[3].strftime("%Y-%m-%d")] == 0.9
    assert DAYS[7].strftime("%Y-%m-%d") not in sentiment and len(sentiment) == len(DAYS) - 1


def test_cli_columns_and_drop_duplicates(tmp_path, capsys):
    from plusultra.cli.data import main

    (tmp_path / "QQ.csv").write_text(
        "Date,Last,Vol\n2021-01-04,10,5\n2021-01-05,11,6\n2021-01-05,12,7\n"
    )
    base = ["import", str(tmp_path / "QQ.csv"), "--out", str(tmp_path / "o.sqlite")]
    with pytest.raises(SystemExit) as exit_:
        main([*base, "--columns", "close=Last,volume=Vol"])
    assert exit_.value.code == 2 and "--drop-duplicates" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_:
        main([*base, "--columns", "close=Last,px=Vol", "--drop-duplicates"])
    assert exit_.value.code == 2 and "unknown target(s) 'px'" in capsys.readouterr().err
    main([*base, "--columns", "close=Last,volume=Vol", "--drop-duplicates"])
    assert "Dropped 1 duplicate" in capsys.readouterr().out
    series = _series(tmp_path / "o.sqlite")
    assert series["close"].tolist() == [10.0, 12.0] and series["volume"].tolist() == [5.0, 7.0]
