"""Alternative data: point-in-time as-of joins, lags, ffill limits, validation, SQL safety."""

from __future__ import annotations

import hashlib
import sqlite3

import numpy as np
import pandas as pd
import pytest
from pandera.errors import SchemaErrors

from plusultra.data.features.altdata import (
    AlternativeDataSpec,
    alt_schema,
    asof_join,
    load_alternative,
    specs_from_config,
)
from plusultra.errors import ConfigError, DataError

NAN = np.nan
# 10 bars: Mon 2024-01-01 .. Fri 01-05, weekend, Mon 01-08 .. Fri 01-12.
DATES = pd.bdate_range("2024-01-01", periods=10).to_numpy()
SYMBOLS = ["A", "B", "C"]


def _db(path, macro_rows=None, funding_rows=None):
    """A small database: a `series` table (injection target) plus two side tables."""
    con = sqlite3.connect(path)
    con.execute("CREATE TABLE series(symbol TEXT, timestamp TEXT, close REAL)")
    con.execute("INSERT INTO series VALUES ('A', '2024-01-01', 1.0)")
    con.execute("CREATE TABLE macro(timestamp TEXT, cpi REAL, note TEXT)")
    con.execute("CREATE TABLE funding(symbol TEXT, timestamp TEXT, rate REAL)")
    if macro_rows is None:
        macro_rows = [
            ("2024-01-02", 1.0, "tue"),
            ("2024-01-06", 2.0, "sat"),  # weekend observation
            ("2024-01-10", 3.0, "wed"),
        ]
    con.executemany("INSERT INTO macro VALUES (?, ?, ?)", macro_rows)
    con.executemany("INSERT INTO funding VALUES (?, ?, ?)", funding_rows or [])
    con.commit()
    con.close()
    return path


def _join(path, **spec):
    spec = AlternativeDataSpec(**{"table": "macro", "columns": ["cpi"], **spec})
    out = load_alternative(path, [spec], DATES, SYMBOLS)
    (name,) = out
    return out[name]


def _digest(path) -> str:
    return hashlib.sha256(open(path, "rb").read()).hexdigest()


# ------------------------------------------------------------------ as-of semantics by hand
@pytest.mark.parametrize(
    "spec, expected",
    [
        # lag 0: same-day availability; the Saturday value shows on Monday.
        ({}, [NAN, 1, 1, 1, 1, 2, 2, 3, 3, 3]),
        # lag 2D: Tue -> Thu; Sat -> Mon; Wed -> Fri.
        ({"publication_lag": "2D"}, [NAN, NAN, NAN, 1, 1, 2, 2, 2, 2, 3]),
        # a value is carried 1 bar after the bar where it first showed.
        ({"ffill_limit": 1}, [NAN, 1, 1, NAN, NAN, 2, 2, 3, 3, NAN]),
        ({"ffill_limit": 0}, [NAN, 1, NAN, NAN, NAN, 2, NAN, 3, NAN, NAN]),
        # lag 2D and limit 1: Tue's value first shows Thu (bar 3), kept on Fri (bar 4).
        ({"publication_lag": "2D", "ffill_limit": 1}, [NAN, NAN, NAN, 1, 1, 2, 2, NAN, NAN, 3]),
    ],
)
def test_asof_by_hand(tmp_path, spec, expected):
    got = _join(_db(tmp_path / "a.sqlite"), **spec)
    assert got.shape == (10, 3)
    for s in range(3):  # market-wide: broadcast to every symbol
        np.testing.assert_array_equal(got[:, s], expected)


def test_friday_value_with_one_day_lag_waits_for_monday(tmp_path):
    path = _db(tmp_path / "a.sqlite", [("2024-01-05", 7.0, None)])
    got = _join(path, publication_lag="1D")[:, 0]
    np.testing.assert_array_equal(got, [NAN] * 5 + [7.0] * 5)  # bar 5 = Mon 2024-01-08


def test_intraday_and_time_zone_timestamps_are_compared_exactly(tmp_path):
    rows = [
        ("2024-01-03T15:30:00Z", 1.0, None),  # during Wed -> usable from Thu's bar
        ("2024-01-08T23:30:00-05:00", 2.0, None),  # = Tue 04:30 UTC -> usable from Wed's bar
    ]
    got = _join(_db(tmp_path / "a.sqlite", rows))[:, 0]
    np.testing.assert_array_equal(got, [NAN, NAN, NAN, 1, 1, 1, 1, 2, 2, 2])


def test_null_value_lets_the_previous_observation_show(tmp_path):
    rows = [("2024-01-02", 1.0, None), ("2024-01-04", None, None), ("2024-01-08", 3.0, None)]
    got = _join(_db(tmp_path / "a.sqlite", rows), ffill_limit=2)[:, 0]
    # Tue's value first shows at bar 1 and is kept for 2 more bars; Thu's NULL is no observation.
    np.testing.assert_array_equal(got, [NAN, 1, 1, 1, NAN, 3, 3, 3, NAN, NAN])


def test_per_symbol_join_and_unknown_symbols(tmp_path):
    funding = [
        ("A", "2024-01-01", 0.1),
        ("A", "2024-01-04", 0.2),
        ("B", "2024-01-03", -0.5),
        ("ZZZ", "2024-01-01", 9.9),  # not in the panel: ignored
    ]
    path = _db(tmp_path / "a.sqlite", funding_rows=funding)
    spec = AlternativeDataSpec("funding", ["rate"], symbol_column="symbol", prefix="f_")
    got = load_alternative(path, [spec], DATES, SYMBOLS)["f_rate"]
    np.testing.assert_array_equal(got[:, 0], [0.1, 0.1, 0.1, 0.2, 0.2, 0.2, 0.2, 0.2, 0.2, 0.2])
    np.testing.assert_array_equal(got[:, 1], [NAN, NAN, -0.5] + [-0.5] * 7)
    assert np.isnan(got[:, 2]).all()  # C has no rows


def test_feature_names_and_several_columns(tmp_path):
    path = _db(tmp_path / "a.sqlite")
    specs = specs_from_config(
        [
            {"table": "macro", "columns": ["cpi"]},
            {"table": "macro", "columns": ["cpi"], "prefix": ""},
        ]
    )
    out = load_alternative(path, specs, DATES, SYMBOLS)
    assert list(out) == ["macro_cpi", "cpi"]
    assert all(a.dtype == np.float64 and a.shape == (10, 3) for a in out.values())
    assert load_alternative(path, [], DATES, SYMBOLS) == {}


# ------------------------------------------------------------------ no look-ahead
def _reference(time, group, value, dates, n_groups, limit):
    """Per-bar loop: the latest observation with time <= bar; age from its first bar."""
    out = np.full((len(dates), n_groups), np.nan)
    for t, bar in enumerate(dates):
        for g in range(n_groups):
            seen = (group == g) & (time <= bar)
            if not seen.any():
                continue
            k = np.flatnonzero(seen)[np.argmax(time[seen])]
            first = np.flatnonzero(dates >= time[k])[0]
            if limit is None or t - first <= limit:
                out[t, g] = value[k]
    return out


@pytest.mark.parametrize("limit", [None, 0, 3])
def test_vectorised_join_matches_naive_reference(limit):
    rng = np.random.default_rng(0)
    dates = np.sort(rng.choice(np.arange(400), 120, replace=False)).astype("datetime64[D]")
    dates = dates.astype("datetime64[ns]")
    n, groups = 150, 4
    group = rng.integers(0, groups, n)
    time = (rng.integers(-20, 420, n).astype("datetime64[D]")).astype("datetime64[ns]")
    time += rng.integers(0, 3, n) * np.timedelta64(8, "h")  # some intraday times
    keep = ~pd.DataFrame({"g": group, "t": time}).duplicated().to_numpy()
    time, group, value = time[keep], group[keep], rng.normal(size=keep.sum())
    got = asof_join(time, group, value, dates, groups, limit)
    np.testing.assert_array_equal(got, _reference(time, group, value, dates, groups, limit))


def test_future_rows_never_leak(tmp_path):
    """Inserting or rewriting rows available after bar k leaves bars <= k bit-identical."""
    rng = np.random.default_rng(1)
    days = pd.date_range("2023-12-20", "2024-01-20").strftime("%Y-%m-%d")
    base = [(s, d, float(rng.normal())) for s in ("A", "B") for d in days if rng.random() < 0.6]
    k, lag = 5, pd.Timedelta("2D")  # bar 5 = 2024-01-08
    cutoff = pd.Timestamp(DATES[k])
    future = [
        (s, d, v + 100.0) if pd.Timestamp(d) + lag > cutoff else (s, d, v) for s, d, v in base
    ]
    taken = {(s, d) for s, d, _ in base}
    future += [(s, d, 1e6) for s in "AC" for d in days if (s, d) not in taken and d > "2024-01-06"]
    outputs = []
    for i, rows in enumerate((base, future)):
        path = _db(tmp_path / f"{i}.sqlite", funding_rows=rows)
        spec = AlternativeDataSpec(
            "funding", ["rate"], symbol_column="symbol", publication_lag="2D", ffill_limit=3
        )
        outputs.append(load_alternative(path, [spec], DATES, SYMBOLS)["funding_rate"])
    np.testing.assert_array_equal(outputs[0][: k + 1], outputs[1][: k + 1])
    assert not np.array_equal(outputs[0], outputs[1], equal_nan=True)  # the future did change


# ------------------------------------------------------------------ errors and SQL safety
def test_unknown_table_and_column_name_what_exists(tmp_path):
    path = _db(tmp_path / "a.sqlite")
    with pytest.raises(DataError, match=r"no table 'prices'.*funding, macro, series"):
        load_alternative(path, [AlternativeDataSpec("prices", ["x"])], DATES, SYMBOLS)
    with pytest.raises(DataError, match=r"no column\(s\) 'level'; columns: timestamp, cpi, note"):
        load_alternative(path, [AlternativeDataSpec("macro", ["level"])], DATES, SYMBOLS)
    spec = AlternativeDataSpec("macro", ["cpi"], symbol_column="ticker")
    with pytest.raises(DataError, match=r"data.alternative\[0\].*'ticker'"):
        load_alternative(path, [spec], DATES, SYMBOLS)
    with pytest.raises(DataError, match="not found"):
        load_alternative(tmp_path / "missing.sqlite", [spec], DATES, SYMBOLS)


def _unchecked_spec(**kw) -> AlternativeDataSpec:
    """A spec that skipped __post_init__, to test the database-side checks on their own."""
    spec = object.__new__(AlternativeDataSpec)
    values = {"timestamp_column": "timestamp", "symbol_column": None, "publication_lag": "0D"}
    for key, value in {**values, "ffill_limit": None, "prefix": None, **kw}.items():
        object.__setattr__(spec, key, value)
    return spec


@pytest.mark.parametrize(
    "field, value",
    [
        ("table", "prices; DROP TABLE series;--"),
        ("table", 'series" ; DROP TABLE series; --'),
        ("columns", ['close" FROM series; --']),
        ("columns", ["cpi", "1); DROP TABLE macro; --"]),
        ("timestamp_column", "timestamp FROM macro; DROP TABLE series; --"),
        ("symbol_column", 'x"; DELETE FROM series; --'),
    ],
)
def test_injection_is_rejected_and_database_untouched(tmp_path, field, value):
    path = _db(tmp_path / "a.sqlite")
    before = _digest(path)
    kw = {"table": "macro", "columns": ["cpi"], field: value}
    with pytest.raises(ConfigError, match=field):  # first line of defence: the spec
        AlternativeDataSpec(**kw)
    with pytest.raises(DataError):  # second: names must exist in the database
        load_alternative(path, [_unchecked_spec(**kw)], DATES, SYMBOLS)
    assert _digest(path) == before
    with sqlite3.connect(path) as con:
        tables = {r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        assert tables == {"series", "macro", "funding"}
        assert con.execute("SELECT COUNT(*) FROM series").fetchone()[0] == 1
        assert con.execute("SELECT COUNT(*) FROM macro").fetchone()[0] == 3


@pytest.mark.parametrize(
    "kw, key",
    [
        ({"columns": []}, "columns"),
        ({"columns": "cpi"}, "columns"),
        ({"columns": ["cpi", "cpi"]}, "columns"),
        ({"columns": ["timestamp"]}, "columns"),
        ({"table": "1macro"}, "table"),
        ({"publication_lag": "soon"}, "publication_lag"),
        ({"publication_lag": "45"}, "publication_lag"),  # no unit
        ({"publication_lag": "-1D"}, "publication_lag"),  # would read the future
        ({"publication_lag": 3}, "publication_lag"),
        ({"ffill_limit": -1}, "ffill_limit"),
        ({"ffill_limit": True}, "ffill_limit"),
        ({"ffill_limit": 1.5}, "ffill_limit"),
        ({"prefix": "a-b"}, "prefix"),
        ({"symbol_column": ""}, "symbol_column"),
    ],
)
def test_spec_validation_names_the_key(kw, key):
    entry = {"table": "macro", "columns": ["cpi"], **kw}
    with pytest.raises(ConfigError, match=rf"^data\.alternative\.{key}:"):
        AlternativeDataSpec(**entry)
    ok = {"table": "macro", "columns": ["cpi"]}
    with pytest.raises(ConfigError, match=rf"^data\.alternative\[1\]\.{key}:"):
        specs_from_config([ok, entry])


def test_specs_from_config_structure_errors():
    with pytest.raises(ConfigError, match=r"\[0\]: unknown key\(s\) \['lag'\]"):
        specs_from_config([{"table": "m", "columns": ["x"], "lag": "1D"}])
    with pytest.raises(ConfigError, match=r"\[0\]\.columns: required"):
        specs_from_config([{"table": "m"}])
    with pytest.raises(ConfigError, match=r"\[1\]\.prefix: feature 'm_x' is also produced by"):
        specs_from_config([{"table": "m", "columns": ["x"]}, {"table": "m", "columns": ["x"]}])
    spec = specs_from_config([{"table": "m", "columns": ("x", "y"), "publication_lag": "45D"}])[0]
    assert spec.columns == ["x", "y"] and spec.lag == pd.Timedelta(days=45)
    assert spec.names == ["m_x", "m_y"]


def test_alt_schema_catches_bad_timestamp_and_non_numeric_value():
    spec = AlternativeDataSpec("funding", ["rate"], symbol_column="symbol")
    good = pd.DataFrame({"symbol": ["A", "A"], "timestamp": ["2024-01-01", "2024-01-02"]})
    alt_schema(spec).validate(good.assign(rate=[0.1, None]))
    bad = pd.DataFrame(
        {
            "symbol": ["A", "A", None],
            "timestamp": ["2024-01-01", "yesterday", "2024-01-03"],
            "rate": [0.1, "abc", 0.3],
        }
    )
    with pytest.raises(SchemaErrors) as info:
        alt_schema(spec).validate(bad, lazy=True)
    failed = set(info.value.failure_cases["column"].dropna())
    assert failed == {"timestamp", "rate", "symbol"}


def test_load_alternative_reports_invalid_rows(tmp_path):
    rows = [("2024-01-02", 1.0, None), ("2024-13-45", 2.0, None), ("2024-01-04", "abc", None)]
    path = _db(tmp_path / "a.sqlite", rows)
    with pytest.raises(DataError) as info:
        _join(path)
    message = str(info.value)
    assert "macro.timestamp: check 'ISO-8601 timestamp'" in message and "2024-13-45" in message
    assert "macro.cpi" in message and "abc" in message


def test_duplicate_times_after_utc_conversion_are_rejected(tmp_path):
    rows = [("2024-01-02", 1.0, None), ("2024-01-02T00:00:00Z", 2.0, None)]
    with pytest.raises(DataError, match="several rows for the same timestamp"):
        _join(_db(tmp_path / "a.sqlite", rows))
