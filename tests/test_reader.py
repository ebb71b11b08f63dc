"""Columnar SQLite reader: equality with pandas.read_sql, SQLite typing pitfalls, security."""

from __future__ import annotations

import hashlib
import shutil
import sqlite3
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from plusultra.data.datasets.panel import load_panel, read_tables
from plusultra.data.io.reader import (
    SQLiteReader,
    affinity,
    quote_identifier,
    read_frame,
    read_sql,
    read_table,
    read_table_reference,
    table_columns,
    table_names,
)
from plusultra.errors import DataError

TABLES = ("assets", "series", "indicators", "corporate_actions")


# pandas' own dtype for a column of text: object on pandas 2, ``str`` (NULL -> NaN) on pandas 3;
# the reader gives what pandas.read_sql gives.
TEXT = pd.Series(["text", None]).dtype


def _pandas(path: Path, sql: str, params: tuple = ()) -> pd.DataFrame:
    with sqlite3.connect(path) as con:
        return pd.read_sql_query(sql, con, params=params)


def _fingerprint(path: Path) -> tuple[str, dict[str, int]]:
    """File hash and row count per table: proof that nothing was written."""
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    with sqlite3.connect(path) as con:
        names = [r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type='table'")]
        counts = {n: con.execute(f'SELECT COUNT(*) FROM "{n}"').fetchone()[0] for n in names}
    return digest, counts


@pytest.fixture
def db(tiny_db, tmp_path) -> Path:
    """A private copy of the tiny fixture (tests below try to damage it)."""
    return Path(shutil.copy(tiny_db, tmp_path / "copy.sqlite"))


@pytest.fixture
def typed_db(tmp_path) -> Path:
    """Columns that trip the driver's first-batch type inference (see reader docstring)."""
    path = tmp_path / "typed.sqlite"
    n = 40
    with sqlite3.connect(path) as con:
        con.execute(
            "CREATE TABLE t(sym TEXT, num NUMERIC, int_then_float INTEGER, real REAL, "
            "null_first REAL, text_null_first TEXT, all_null REAL, all_null_text TEXT, "
            "day DATE, untyped)"
        )
        rows = [
            (
                f"S{i % 3}",
                100 if i < 30 else 100.25,  # NUMERIC stores 100 as an integer
                7 if i < 30 else 7.5,  # INTEGER stores 7.5 as a float
                100 if i < 30 else 0.1 + 0.2,  # REAL stores 100 as 100.0
                None if i < 30 else 1.5,
                None if i < 30 else "late text",
                None,
                None,
                f"2020-01-{i % 28 + 1:02d}",  # DATE (NUMERIC affinity) holding text
                i * 10,
            )
            for i in range(n)
        ]
        con.executemany("INSERT INTO t VALUES (?,?,?,?,?,?,?,?,?,?)", rows)
        con.execute("CREATE TABLE mixed(a TEXT, b)")
        con.executemany(
            "INSERT INTO mixed VALUES (?, ?)",
            [(str(i), 0.1 + 0.2 if i < 30 else "n/a") for i in range(40)]
            + [("x", 1e300), ("y", 123456789012), ("z", None)],
        )
        con.execute("CREATE TABLE empty(a TEXT, b REAL)")
        con.execute("CREATE TABLE blobs(a TEXT, b REAL)")
        con.executemany(
            "INSERT INTO blobs VALUES (?, ?)", [("x", 1.0), (b"\x00\x01", 2.0), ("y", b"zz")]
        )
    return path


# ------------------------------------------------------------ equality with pandas.read_sql
@pytest.mark.parametrize("table", TABLES)
def test_read_table_equals_pandas_read_sql(tiny_db, table):
    fast = read_table(tiny_db, table)
    expected = _pandas(tiny_db, f"SELECT * FROM {table}")
    pd.testing.assert_frame_equal(fast, expected)
    pd.testing.assert_frame_equal(read_table_reference(tiny_db, table), expected)


def test_read_tables_filters_equal_pandas(tiny_db):
    """symbols / start / end restrict every table exactly like the SQL they replace."""
    symbols, start, end = ["SYM001", "SYM004"], "2012-03-01", "2012-09-28"
    tables = read_tables(tiny_db, symbols, start, end)
    assert set(tables) == set(TABLES)
    series = _pandas(
        tiny_db,
        "SELECT * FROM series WHERE symbol IN (?, ?) AND timestamp >= ? "
        "AND substr(timestamp, 1, 10) <= ?",
        (*symbols, start, end),
    )
    pd.testing.assert_frame_equal(tables["series"], series)
    assert set(tables["assets"]["symbol"]) == set(symbols)
    assert tables["indicators"]["timestamp"].between(start, end).all()
    assert len(tables["indicators"]) == len(series)  # one indicator (sentiment) per bar


def test_read_sql_and_read_frame_types(tiny_db):
    arrow = read_sql(
        tiny_db, "SELECT symbol, timestamp, close FROM series WHERE symbol = ?", ["SYM002"]
    )
    assert isinstance(arrow, pa.Table)
    assert arrow.schema.types == [pa.string(), pa.string(), pa.float64()]
    frame = read_frame(tiny_db, "SELECT symbol, volume, 1 AS one FROM series LIMIT 5")
    assert frame.dtypes.tolist() == [TEXT, np.float64, np.float64]
    assert len(frame) == 5 and (frame["one"] == 1.0).all()
    dup = read_frame(tiny_db, "SELECT symbol, symbol FROM assets")
    assert list(dup.columns) == ["symbol", "symbol"]


# ------------------------------------------------------------------- typing pitfalls
def test_type_inference_pitfalls_are_handled(typed_db, monkeypatch):
    """Integers then floats, NULLs then values, all-NULL and DATE-as-text columns.

    batch_rows=8 makes the driver infer from 8 rows, so a 40-row table reproduces what
    BATCH_ROWS does on a large one: the reader must retry with the whole result.
    """
    calls = []
    execute = SQLiteReader._execute

    def spy(self, sql, params, batch_rows):
        calls.append((sql, batch_rows))
        return execute(self, sql, params, batch_rows)

    monkeypatch.setattr(SQLiteReader, "_execute", spy)
    with SQLiteReader(typed_db, batch_rows=8) as reader:
        frame = reader.read_table("t")
        arrow = reader.arrow("SELECT * FROM t")
    assert [b for sql, b in calls if sql.startswith("SELECT count(*)")] == [1, 1]
    assert [b for sql, b in calls if sql.startswith('SELECT "sym"')] == [8, 40]
    reference = read_table_reference(typed_db, "t")
    pd.testing.assert_frame_equal(frame, reference)
    assert frame["num"].iloc[-1] == 100.25 and frame["num"].iloc[0] == 100.0
    assert frame["int_then_float"].iloc[-1] == 7.5
    assert frame["real"].iloc[-1] == 0.1 + 0.2  # exact, not 0.3
    assert frame["null_first"].isna().sum() == 30 and frame["null_first"].iloc[-1] == 1.5
    assert frame["text_null_first"].iloc[-1] == "late text"
    assert pd.isna(frame["text_null_first"].iloc[0])  # None, or NaN in pandas 3's str dtype
    for name in ("num", "int_then_float", "real", "null_first", "all_null", "untyped"):
        assert frame[name].dtype == np.float64, name
    for name in ("sym", "text_null_first", "day"):
        assert frame[name].dtype == TEXT, name
    assert frame["all_null_text"].dtype == object  # no value to infer text from
    assert frame["all_null_text"].isna().all() and frame["all_null"].isna().all()
    assert arrow.schema.field("all_null").type == pa.null()
    assert arrow.schema.field("num").type == pa.float64()


def test_default_batch_without_retry(typed_db):
    """The same table with the default batch (inferred from every row in one pass)."""
    pd.testing.assert_frame_equal(read_table(typed_db, "t"), read_table_reference(typed_db, "t"))


def test_mixed_text_and_numbers_are_exact(typed_db):
    """Numbers in a non-TEXT column holding text are read exactly (the driver would round)."""
    with SQLiteReader(typed_db, batch_rows=8) as reader:
        frame = reader.read_table("mixed")
        driver = reader.arrow("SELECT b FROM mixed").column(0).to_pylist()
    assert driver[0] == "3.000000e-01"  # the driver alone renders numbers with "%e"
    expected = _pandas(typed_db, "SELECT * FROM mixed")
    pd.testing.assert_frame_equal(frame, expected)
    assert frame["b"].iloc[0] == 0.1 + 0.2 and frame["b"].iloc[41] == 123456789012
    assert frame["b"].iloc[30] == "n/a" and frame["b"].iloc[40] == 1e300


def test_blobs_are_read_exactly(typed_db):
    """The driver turns a column with a BLOB into bytes throughout; the reader falls back."""
    expected = _pandas(typed_db, "SELECT * FROM blobs")
    pd.testing.assert_frame_equal(read_table(typed_db, "blobs"), expected)
    assert read_table(typed_db, "blobs")["a"].tolist() == ["x", b"\x00\x01", "y"]


def test_empty_table_keeps_dtypes(typed_db):
    frame = read_table(typed_db, "empty")
    assert frame.empty and frame.dtypes.tolist() == [object, np.float64]


def test_affinity_rules():
    cases = {"INTEGER": "INTEGER", "BIGINT": "INTEGER", "VARCHAR(10)": "TEXT", "TEXT": "TEXT"}
    cases |= {"": "BLOB", "BLOB": "BLOB", "DOUBLE": "REAL", "FLOAT": "REAL", "REAL": "REAL"}
    cases |= {"NUMERIC": "NUMERIC", "DATE": "NUMERIC", "DECIMAL(10,2)": "NUMERIC"}
    assert {k: affinity(k) for k in cases} == cases


# --------------------------------------------------------------------------- errors
def test_missing_and_unreadable_files(tmp_path):
    with pytest.raises(DataError, match="database file not found"):
        read_sql(tmp_path / "nope.sqlite", "SELECT 1")
    junk = tmp_path / "junk.sqlite"
    junk.write_bytes(b"this is not a database" * 100)
    with pytest.raises(DataError, match="not a readable SQLite database"):
        read_tables(junk)


def test_special_characters_in_path(tiny_db, tmp_path):
    folder = tmp_path / "a dir #1 ?x=%20"
    folder.mkdir()
    path = Path(shutil.copy(tiny_db, folder / "my db.sqlite"))
    assert table_names(path) == set(TABLES)
    assert len(read_table(path, "assets")) == 6


def test_unknown_identifiers_name_the_valid_ones(db):
    with pytest.raises(DataError, match="unknown table of .*'prices'.*assets, corporate_actions"):
        table_columns(db, "prices")
    with pytest.raises(DataError, match="unknown column of table series.*'adj_close'.*close"):
        read_table(db, "series", columns=["symbol", "adj_close"])
    assert table_columns(db, "series") == [
        "symbol",
        "timestamp",
        "open",
        "high",
        "low",
        "close",
        "volume",
    ]


# ------------------------------------------------------------------------- security
def test_symbol_injection_is_an_unknown_symbol(db):
    before = _fingerprint(db)
    for evil in (
        "SYM000', 'x'); DROP TABLE series; --",
        "SYM000' OR '1'='1",
        'SYM000") OR 1=1 --',
    ):
        with pytest.raises(DataError, match="not in table assets"):
            load_panel(db, symbols=[evil])
        with pytest.raises(DataError, match="not in table assets"):
            load_panel(db, symbols=["SYM000", evil])
    assert _fingerprint(db) == before
    assert before[1]["series"] > 0 and set(before[1]) == set(TABLES)


def test_date_injection_is_only_a_filter_value(db):
    before = _fingerprint(db)
    full = load_panel(db)
    for start, end in (
        ("x'; DROP TABLE series; --", None),
        (None, "1900-01-01' OR '1'='1"),
        ("2012-01-01') OR 1=1; DELETE FROM series; --", "2999-01-01"),
    ):
        try:
            panel = load_panel(db, start=start, end=end)
        except DataError as exc:
            assert "has no rows" in str(exc)
        else:  # compared as text: a value, never SQL
            assert panel.shape[0] < full.shape[0] or start.startswith("2012-01-01")
    assert _fingerprint(db) == before


def test_identifier_injection_is_rejected(db):
    before = _fingerprint(db)
    names = table_names(db)
    for evil in ("series; DROP TABLE assets", 'series"; DROP TABLE assets; --', "series "):
        with pytest.raises(DataError, match="unknown table") as info:
            quote_identifier(evil, names, "table")
        assert "assets, corporate_actions, indicators, series" in str(info.value)
        with pytest.raises(DataError, match="unknown table"):
            table_columns(db, evil)
        with pytest.raises(DataError, match="unknown table"):
            read_table(db, evil)
    with pytest.raises(DataError, match="unknown column"):
        read_table(db, "series", columns=['close" FROM series; DROP TABLE assets; --'])
    assert quote_identifier("series", names, "table") == '"series"'
    assert quote_identifier('we"ird', ['we"ird'], "column") == '"we""ird"'
    assert _fingerprint(db) == before


def test_quoted_names_round_trip(tmp_path):
    """A real table named with a quote is read through the allow-list and quoting."""
    path = tmp_path / "odd.sqlite"
    with sqlite3.connect(path) as con:
        con.execute('CREATE TABLE "we""ird; x"("a""b" REAL, "c d" TEXT)')
        con.execute('INSERT INTO "we""ird; x" VALUES (1.5, \'z\')')
    frame = read_table(path, 'we"ird; x')
    assert list(frame.columns) == ['a"b', "c d"] and frame.iloc[0].tolist() == [1.5, "z"]


def test_connection_is_read_only(db):
    before = _fingerprint(db)
    with SQLiteReader(db) as reader:
        for sql in ("DELETE FROM series", "DROP TABLE assets", "CREATE TABLE x(a)"):
            with pytest.raises(DataError, match="readonly|read-only|read only"):
                reader.arrow(sql)
        # Only the first statement of a string is run (and the connection is read-only).
        assert reader.arrow("SELECT 1 AS one; DROP TABLE series").to_pylist() == [{"one": 1}]
    assert _fingerprint(db) == before
