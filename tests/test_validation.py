"""Data validation: one malformed database per check, lazy reporting, rules, report files."""

from __future__ import annotations

import json
import shutil
import sqlite3
from contextlib import closing

import numpy as np
import pandera.pandas as pa
import pytest

from plusultra.data.datasets.panel import read_tables
from plusultra.data.io.fixture import generate_fixture
from plusultra.data.validation.checks import (
    FAILURE_COLUMNS,
    ValidationRules,
    check_tables,
    iso8601_check,
    validate_database,
    validate_tables,
)
from plusultra.errors import ConfigError, DataError

# SYM000, SYM002, SYM003: 60 business days 2012-01-03..2012-03-26; SYM001 lists 2012-01-17.
ROW = "symbol='SYM002' AND timestamp='2012-02-01'"


@pytest.fixture(scope="module")
def clean_db(tmp_path_factory):
    return generate_fixture(tmp_path_factory.mktemp("val") / "x.sqlite", 4, 60, seed=1)


@pytest.fixture
def db(clean_db, tmp_path):
    path = tmp_path / "db.sqlite"
    shutil.copy(clean_db, path)
    return path


def _sql(path, *statements: str) -> None:
    with closing(sqlite3.connect(path)) as con:
        for statement in statements:
            con.execute(statement)
        con.commit()


def _relax(table: str) -> list[str]:
    """Statements that recreate `table` without its primary key (to insert duplicates)."""
    return [
        f"CREATE TABLE relaxed AS SELECT * FROM {table}",
        f"DROP TABLE {table}",
        f"ALTER TABLE relaxed RENAME TO {table}",
    ]


def _where(report) -> set[tuple[str, str, str]]:
    f = report.failures
    return set(zip(f["table"], f["column"], f["check"], strict=True))


def _failure(report, table: str, column: str, check: str) -> dict:
    f = report.failures
    hit = f[(f["table"] == table) & (f["column"] == column) & (f["check"] == check)]
    assert len(hit) == 1, f"no failure {table}.{column} {check!r}:\n{report.table()}"
    return hit.iloc[0].to_dict()


def test_clean_database_passes_with_every_rule_on(clean_db):
    report = validate_database(clean_db, ValidationRules(max_gap_days=4, max_stale_bars=1))
    assert report.ok, report.table()
    assert report.n_rows == {"assets": 4, "series": 230, "indicators": 230, "corporate_actions": 3}
    assert list(report.failures.columns) == FAILURE_COLUMNS
    assert "passed validation" in report.summary()
    report.raise_if_failed()


# One case per check: SQL that breaks it, the failure (table, column, check) it must produce,
# and text its examples must show (symbol and timestamp of a bad row).
CASES = {
    "missing column": (
        ["ALTER TABLE series DROP COLUMN volume"],
        ("series", "volume", "column present"),
        "columns: symbol, timestamp",
    ),
    "not coercible": (
        ["UPDATE series SET close = 'n/a'"],
        ("series", "close", "coercible to float"),
        "timestamp='2012-01-03', close='n/a'",
    ),
    "not null": (
        [f"UPDATE series SET close = NULL WHERE {ROW}"],
        ("series", "close", "not null"),
        "symbol='SYM002', timestamp='2012-02-01', close=NULL",
    ),
    "bad ISO timestamp": (
        [f"UPDATE series SET timestamp = '02/01/2012' WHERE {ROW}"],
        ("series", "timestamp", "ISO-8601"),
        "symbol='SYM002', timestamp='02/01/2012'",
    ),
    "bad ISO ex_date": (
        ["UPDATE corporate_actions SET ex_date = '2012-02-30' WHERE symbol = 'SYM000'"],
        ("corporate_actions", "ex_date", "ISO-8601"),
        "ex_date='2012-02-30'",
    ),
    "bad ISO listed": (
        ["UPDATE assets SET listed = 'yesterday' WHERE symbol = 'SYM003'"],
        ("assets", "listed", "ISO-8601"),
        "symbol='SYM003', listed='yesterday'",
    ),
    "duplicate (symbol, timestamp)": (
        [*_relax("series"), f"INSERT INTO series SELECT * FROM series WHERE {ROW}"],
        ("series", "(symbol, timestamp)", "unique"),
        "symbol='SYM002', timestamp='2012-02-01')\nrow",
    ),
    "duplicate after parsing": (
        [
            "INSERT INTO series SELECT symbol, '2012-02-01T00:00:00Z', open, high, low, close, "
            f"volume FROM series WHERE {ROW}"
        ],
        ("series", "(symbol, timestamp)", "unique after parsing"),
        "timestamp='2012-02-01')\nrow 230 (symbol='SYM002', timestamp='2012-02-01T00:00:00Z')",
    ),
    "duplicate indicator after parsing (time zone)": (
        [
            "INSERT INTO indicators SELECT symbol, '2012-02-01T01:00:00+01:00', name, value "
            f"FROM indicators WHERE {ROW}"
        ],
        ("indicators", "(symbol, timestamp, name)", "unique after parsing"),
        "timestamp='2012-02-01T01:00:00+01:00'",
    ),
    "duplicate asset": (
        [*_relax("assets"), "INSERT INTO assets SELECT * FROM assets WHERE symbol = 'SYM001'"],
        ("assets", "symbol", "unique"),
        "symbol='SYM001'",
    ),
    "non-finite price": (
        [f"UPDATE series SET high = 9e999 WHERE {ROW}"],
        ("series", "high", "finite"),
        "symbol='SYM002', timestamp='2012-02-01', high=inf",
    ),
    "non-positive price": (
        [f"UPDATE series SET low = 0 WHERE {ROW}"],
        ("series", "low", "> 0"),
        "symbol='SYM002', timestamp='2012-02-01', low=0.0",
    ),
    "high < max(open, close)": (
        [f"UPDATE series SET open = high * 1.01 WHERE {ROW}"],
        ("series", "high", "high >= max(open, close)"),
        "symbol='SYM002', timestamp='2012-02-01', high=",
    ),
    "low > min(open, close)": (
        [f"UPDATE series SET low = MIN(open, close) * 1.001 WHERE {ROW}"],
        ("series", "low", "low <= min(open, close)"),
        "symbol='SYM002', timestamp='2012-02-01', low=",
    ),
    "negative volume": (
        [f"UPDATE series SET volume = -1 WHERE {ROW}"],
        ("series", "volume", ">= 0"),
        "symbol='SYM002', timestamp='2012-02-01', volume=-1.0",
    ),
    "non-finite indicator": (
        [f"UPDATE indicators SET value = -9e999 WHERE {ROW} AND name = 'sentiment'"],
        ("indicators", "value", "finite"),
        "symbol='SYM002', timestamp='2012-02-01', name='sentiment', value=-inf",
    ),
    "unknown action": (
        ["INSERT INTO corporate_actions VALUES ('SYM003', '2012-02-01', 'merger', 1.0)"],
        ("corporate_actions", "action", "in {split, dividend}"),
        "symbol='SYM003', ex_date='2012-02-01', action='merger'",
    ),
    "non-positive action value": (
        ["UPDATE corporate_actions SET value = -2 WHERE action = 'split'"],
        ("corporate_actions", "value", "> 0"),
        "symbol='SYM002', ex_date='2012-01-17', action='split', value=-2.0",
    ),
    "orphan in series": (
        ["INSERT INTO series VALUES ('GHOST', '2012-01-03', 1, 1, 1, 1, 1)"],
        ("series", "symbol", "symbol in assets"),
        "symbol='GHOST' missing from assets (1 row(s), first row 230, timestamp='2012-01-03')",
    ),
    "orphan in indicators": (
        [
            "INSERT INTO indicators VALUES ('GHOST', '2012-01-03', 'sentiment', 0.1)",
            "INSERT INTO indicators VALUES ('GHOST', '2012-01-04', 'sentiment', 0.2)",
        ],
        ("indicators", "symbol", "symbol in assets"),
        "symbol='GHOST' missing from assets (2 row(s), first row 230, timestamp='2012-01-03')",
    ),
    "orphan in corporate_actions": (
        ["INSERT INTO corporate_actions VALUES ('GHOST', '2012-01-05', 'split', 2.0)"],
        ("corporate_actions", "symbol", "symbol in assets"),
        "symbol='GHOST' missing from assets (1 row(s), first row 3, ex_date='2012-01-05')",
    ),
    "all-null column": (
        ["UPDATE assets SET currency = NULL"],
        ("assets", "currency", "not all null"),
        "all 4 values NULL",
    ),
}


@pytest.mark.parametrize("statements, where, example", CASES.values(), ids=list(CASES))
def test_each_check_reports_its_failure(db, statements, where, example):
    _sql(db, *statements)
    report = validate_database(db)
    failure = _failure(report, *where)
    assert example in failure["examples"]
    assert 1 <= len(failure["examples"].split("\n")) <= 5
    assert not report.ok
    with pytest.raises(DataError, match="failed validation") as info:
        report.raise_if_failed()
    assert f"{where[0]}.{where[1]}" in str(info.value) and where[2] in str(info.value)


def test_missing_required_table_is_a_failure_with_the_rest(db):
    _sql(db, "DROP TABLE assets", "UPDATE series SET volume = -1")
    report = validate_database(db)
    assert {("assets", "*", "table present"), ("series", "volume", ">= 0")} <= _where(report)
    assert "assets" not in report.n_rows
    # the loader's reader still refuses the database outright
    with pytest.raises(DataError, match=r"lacks required table\(s\) assets"):
        read_tables(db)


def test_missing_series_in_check_tables(clean_db):
    tables = read_tables(clean_db)
    del tables["series"], tables["indicators"]  # an optional table may be absent
    report = check_tables(tables, "mem")
    assert _where(report) == {("series", "*", "table present")}


def test_count_and_five_examples_with_every_row_bad(db):
    _sql(db, "UPDATE series SET close = 'n/a'")
    failure = _failure(validate_database(db), "series", "close", "coercible to float")
    assert failure["count"] == 230
    assert len(failure["examples"].split("\n")) == 5


def test_null_timestamp_is_not_null_not_iso(db):
    _sql(db, *_relax("series"), f"UPDATE series SET timestamp = NULL WHERE {ROW}")
    where = _where(validate_database(db))
    assert ("series", "timestamp", "not null") in where
    assert ("series", "timestamp", "ISO-8601") not in where


def test_delisted_may_be_all_null(db):
    _sql(db, "UPDATE assets SET delisted = NULL")
    assert validate_database(db).ok


def test_gap_rule(db):
    _sql(db, "DELETE FROM series WHERE symbol = 'SYM003' AND timestamp BETWEEN '2012-02-01' AND "
         "'2012-02-14'")  # fmt: skip
    assert validate_database(db).ok  # off by default
    assert validate_database(db, ValidationRules(max_gap_days=20)).ok
    report = validate_database(db, ValidationRules(max_gap_days=5))
    failure = _failure(report, "series", "timestamp", "gap <= 5 days")
    assert failure["count"] == 1
    assert failure["examples"] == "symbol='SYM003' from='2012-01-31' to='2012-02-15' (15 days)"


def test_stale_rule(db):
    _sql(
        db,
        "UPDATE series SET open = 10, high = 10, low = 10, close = 10 WHERE symbol = 'SYM000' "
        "AND timestamp BETWEEN '2012-02-01' AND '2012-02-07'",  # 5 bars
    )
    assert validate_database(db).ok  # off by default
    assert validate_database(db, ValidationRules(max_stale_bars=5)).ok
    report = validate_database(db, ValidationRules(max_stale_bars=4))
    failure = _failure(report, "series", "close", "stale run <= 4 bars")
    assert failure["count"] == 1
    assert failure["examples"] == "symbol='SYM000' from='2012-02-01' (5 bars at close=10.0)"


def test_all_failures_are_reported_at_once(db):
    _sql(
        db,
        f"UPDATE series SET close = -1 WHERE {ROW}",
        "UPDATE series SET volume = -5 WHERE symbol = 'SYM003' AND timestamp < '2012-01-10'",
        "INSERT INTO corporate_actions VALUES ('GHOST', '2012-01-05', 'split', 2.0)",
    )
    report = validate_database(db)
    assert {
        ("series", "close", "> 0"),
        ("series", "volume", ">= 0"),
        ("corporate_actions", "symbol", "symbol in assets"),
    } <= _where(report)
    assert _failure(report, "series", "volume", ">= 0")["count"] == 5
    summary = report.summary()
    assert "corporate_actions: 1" in summary and str(db) in summary


def test_validate_tables_raises_summary_and_table(db):
    _sql(db, f"UPDATE series SET close = -1 WHERE {ROW}")
    with pytest.raises(DataError) as info:
        validate_tables(read_tables(db), source="market.sqlite")
    first, header, row = str(info.value).split("\n")[:3]
    assert first.startswith("database market.sqlite failed validation: 2 problem(s)")
    assert header.split() == ["where", "check", "count", "examples"]
    assert row.split()[:4] == ["series.close", ">", "0", "1"]


def _alt_schema(strict: bool = True) -> pa.DataFrameSchema:
    return pa.DataFrameSchema(
        {
            "symbol": pa.Column(str),
            "published": pa.Column(str, iso8601_check()),
            "score": pa.Column(float, pa.Check.in_range(-1, 1, error="in [-1, 1]")),
        },
        unique=["symbol", "published"],
        strict=strict,
    )


def test_extra_schema_for_an_alternative_table(db):
    _sql(
        db,
        "CREATE TABLE news(symbol TEXT, published TEXT, score REAL, source TEXT)",
        "INSERT INTO news VALUES ('SYM000', '2012-01-03', 0.5, 'wire')",
        "INSERT INTO news VALUES ('SYM000', '2012-01-04', 3.0, 'wire')",
        "INSERT INTO news VALUES ('GHOST', 'soon', 0.1, 'wire')",
        "INSERT INTO news VALUES ('SYM000', '2012-01-03 00:00:00Z', 0.5, 'wire')",
    )
    report = validate_database(db, extra_schemas={"news": _alt_schema()})
    assert _where(report) == {
        ("news", "score", "in [-1, 1]"),
        ("news", "published", "ISO-8601"),
        ("news", "(symbol, published)", "unique after parsing"),
        ("news", "source", "column allowed"),
        ("news", "symbol", "symbol in assets"),
    }
    assert "row 1 (symbol='SYM000', published='2012-01-04', score=3.0)" in report.table()
    assert report.n_rows["news"] == 4
    # a declared table that is missing is a failure; a clean one passes
    missing = validate_database(db, extra_schemas={"flows": _alt_schema()})
    assert _where(missing) == {("flows", "*", "table present")}
    _sql(db, "DELETE FROM news WHERE rowid > 1", "UPDATE news SET source = NULL")
    report = validate_database(db, extra_schemas={"news": _alt_schema(strict=False)})
    assert _where(report) == {("news", "source", "not all null")}


def test_a_broken_extra_check_is_reported_not_raised(db):
    _sql(db, "CREATE TABLE news(symbol TEXT, score REAL)", "INSERT INTO news VALUES ('SYM000', 1)")

    def broken(s):
        raise ValueError("boom")

    schema = pa.DataFrameSchema({"score": pa.Column(float, pa.Check(broken, error="custom"))})
    report = validate_database(db, extra_schemas={"news": schema})
    failure = _failure(report, "news", "score", "could not run")
    assert "'custom' raised ValueError('boom')" in failure["examples"]


@pytest.mark.parametrize("name", ["series", "bad-name", "x; DROP TABLE assets"])
def test_bad_extra_table_name(clean_db, name):
    with pytest.raises(ConfigError, match="alternative-data table"):
        validate_database(clean_db, extra_schemas={name: _alt_schema()})


def test_report_files(db, tmp_path):
    _sql(db, f"UPDATE series SET close = -1 WHERE {ROW}", "UPDATE assets SET currency = NULL")
    report = validate_database(db)
    md = report.write(tmp_path / "out" / "report.md").read_text()
    assert md.startswith(f"# Data validation: {db}")
    assert "| series | close | > 0 | 1 |" in md and "| assets | currency | not all null | 4 |" in md
    assert "- `row 131 (symbol='SYM002', timestamp='2012-02-01', close=-1.0)`" in md
    data = json.loads(report.write(tmp_path / "report.json").read_text())
    assert data["ok"] is False and data["source"] == str(db) and data["n_rows"]["series"] == 230
    close = next(f for f in data["failures"] if f["column"] == "close")
    assert close == {
        "table": "series",
        "column": "close",
        "check": "> 0",
        "count": 1,
        "examples": ["row 131 (symbol='SYM002', timestamp='2012-02-01', close=-1.0)"],
    }
    assert not list(tmp_path.glob("**/*.tmp"))


@pytest.mark.parametrize(
    "kwargs, key",
    [
        ({"max_gap_days": 0}, "max_gap_days"),
        ({"max_gap_days": -3}, "max_gap_days"),
        ({"max_gap_days": 2.5}, "max_gap_days"),
        ({"max_stale_bars": True}, "max_stale_bars"),
        ({"max_stale_bars": "5"}, "max_stale_bars"),
    ],
)
def test_rules_bad_values(kwargs, key):
    with pytest.raises(ConfigError, match=f"data.validation.{key} must be a positive integer"):
        ValidationRules(**kwargs)


def test_rules_from_mapping():
    rules = ValidationRules.from_mapping({"max_gap_days": np.int64(7)})
    assert rules == ValidationRules(max_gap_days=7)
    assert ValidationRules.from_mapping(None) == ValidationRules()
    with pytest.raises(ConfigError, match="unknown key.*max_gaps.*valid: max_gap_days"):
        ValidationRules.from_mapping({"max_gaps": 3})


def test_optional_metadata_may_be_all_null(tmp_path):
    """assets.sector and assets.delisted are optional metadata: all NULL is not a failure."""
    import sqlite3

    from plusultra.data.io.fixture import generate_fixture
    from plusultra.data.validation.checks import validate_database

    db = generate_fixture(tmp_path / "m.sqlite", 4, 60, seed=1)
    with sqlite3.connect(db) as con:
        con.execute("UPDATE assets SET sector = NULL, delisted = NULL")
    report = validate_database(db)
    assert report.ok, report.table()
    with sqlite3.connect(db) as con:
        con.execute("UPDATE assets SET asset_class = NULL")
    assert not validate_database(db).ok


def test_close_only_database_passes(db):
    """open, high, low and volume may be entirely NULL (adjusted closes only); close may not."""
    _sql(db, "UPDATE series SET open = NULL, high = NULL, low = NULL, volume = NULL")
    report = validate_database(db, ValidationRules(max_gap_days=4))
    assert report.ok, report.table()
    _sql(db, f"UPDATE series SET close = -1 WHERE {ROW}")
    assert _where(validate_database(db)) == {("series", "close", "> 0")}


def test_partially_null_bars_are_checked_where_present(db):
    """NULL fields pass; the bar checks still run on the values present in the same table."""
    _sql(
        db,
        "UPDATE series SET open = NULL WHERE symbol = 'SYM000'",
        "UPDATE series SET high = NULL, low = NULL WHERE symbol = 'SYM001'",
        "UPDATE series SET volume = NULL WHERE symbol = 'SYM003' AND timestamp < '2012-02-01'",
    )
    assert validate_database(db).ok
    # SYM000 has no open: high is still compared with the close of the same bar
    _sql(
        db,
        "UPDATE series SET high = close * 0.99 WHERE symbol = 'SYM000' "
        "AND timestamp = '2012-02-01'",
        f"UPDATE series SET low = high * 1.01 WHERE {ROW}",
    )
    report = validate_database(db)
    assert _where(report) == {
        ("series", "high", "high >= max(open, close)"),
        ("series", "low", "low <= min(open, close)"),
    }
    assert (
        "symbol='SYM000', timestamp='2012-02-01'"
        in _failure(report, "series", "high", "high >= max(open, close)")["examples"]
    )
