"""Analyst feedback: the SQLite review store, the /reviews router and plusultra-review
(docs/operations.md, "Analyst feedback (plusultra-review)")."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys

import pandas as pd
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from plusultra.cli.review import main
from plusultra.errors import DataError
from plusultra.service.feedback import (
    COLUMNS,
    ReviewStore,
    canonical_timestamp,
    default_db,
    find_trade,
    review_trade,
)
from plusultra.service.review_api import router

DATES = pd.bdate_range("2024-03-01", periods=5)
RUN_ID = "20261130-140509-a1b2c3d4"


@pytest.fixture
def run_dir(tmp_path):
    """A finished run's directory as far as reviews go: predictions.parquet and run_id.txt."""
    run = tmp_path / "runs" / "14-05-09_48211-a1b2c3"
    run.mkdir(parents=True)
    preds = pd.DataFrame(
        {
            "symbol": ["AAA"] * 5 + ["BBB"] * 5,
            "timestamp": list(DATES) * 2,
            "pred_1": 0.01,
            "position": [0.1, 0.2, -0.3, 0.0, 0.5, -0.1, -0.2, 0.3, 0.4, 0.0],
        }
    )
    preds.to_parquet(run / "predictions.parquet")
    (run / "run_id.txt").write_text(RUN_ID + "\n")
    return run


@pytest.fixture
def store(tmp_path):
    return ReviewStore(tmp_path / "db" / "reviews.sqlite")


# --------------------------------------------------------------------------- the store


def test_store_schema_wal_and_round_trip(store):
    r = store.add("run-1", "AAA", "2024-03-01", "veto", "ana", "too big", 0.5)
    assert r.id == 1 and r.timestamp == "2024-03-01T00:00:00" and r.position == 0.5
    assert store.list() == [r]
    con = sqlite3.connect(store.path)
    try:
        assert con.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        tables = {
            row[0] for row in con.execute("SELECT name FROM sqlite_master WHERE type='table'")
        }
        assert {"reviews", "store_meta"} <= tables
        assert con.execute("SELECT value FROM store_meta").fetchone()[0] == "1"
    finally:
        con.close()


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"verdict": "reject"}, r"verdict='reject'; valid: \['approve', 'veto', 'flag'\]"),
        ({"author": "  "}, "author must be a non-empty string"),
        ({"symbol": ""}, "symbol must be a non-empty string"),
        ({"rationale": ""}, "a veto needs a rationale"),
        ({"timestamp": "yesterday-ish"}, "timestamp='yesterday-ish' is not an ISO-8601"),
        ({"position": float("nan")}, "position=nan must be a finite number"),
    ],
)
def test_store_refuses_bad_rows_naming_the_field(store, kwargs, match):
    row = dict(run_id="run-1", symbol="AAA", timestamp="2024-03-01", verdict="veto",
               author="ana", rationale="why", position=0.1) | kwargs  # fmt: skip
    with pytest.raises(DataError, match=match):
        store.add(**row)
    assert store.list() == []


@pytest.mark.parametrize(
    "values",
    [
        ("r", "AAA", "2024-03-01T00:00:00", 0.1, "reject", "x", "ana"),  # verdict
        ("r", "AAA", "2024-03-01T00:00:00", 0.1, "flag", "x", ""),  # blank author
        ("r", "AAA", "2024-03-01T00:00:00", 0.1, "veto", " ", "ana"),  # veto, no rationale
        ("", "AAA", "2024-03-01T00:00:00", 0.1, "flag", "x", "ana"),  # no run id
    ],
)
def test_the_tables_constraints_hold_for_any_client(store, values):
    store.list()  # creates the schema
    con = sqlite3.connect(store.path)
    sql = (
        "INSERT INTO reviews (run_id, symbol, timestamp, position, verdict, rationale, author, "
        "created_at) VALUES (?, ?, ?, ?, ?, ?, ?, '2026-11-30T00:00:00+00:00')"
    )
    try:
        with pytest.raises(sqlite3.IntegrityError, match="CHECK constraint failed"):
            con.execute(sql, values)
    finally:
        con.close()


def test_list_filters(store):
    store.add("run-1", "AAA", "2024-03-01", "veto", "ana", "x", 0.5)
    store.add("run-1", "BBB", "2024-03-04", "approve", "bo", "", -0.2)
    store.add("run-2", "AAA", "2024-03-05T00:00:00Z", "flag", "ana", "odd fill", 0.0)
    ids = lambda **kw: [r.id for r in store.list(**kw)]  # noqa: E731
    assert ids() == [1, 2, 3]
    assert ids(run_id="run-1") == [1, 2] and ids(symbol="AAA") == [1, 3]
    assert ids(verdict="veto") == [1] and ids(author="ana") == [1, 3]
    assert ids(since="2024-03-04") == [2, 3] and ids(until="2024-03-04") == [1, 2]
    assert ids(symbols=["BBB", "CCC"]) == [2] and ids(symbols=[]) == []
    assert ids(limit=2) == [1, 2] and ids(run_id="run-1", symbol="AAA") == [1]
    assert store.list()[2].timestamp == "2024-03-05T00:00:00"  # tz-aware: UTC, naive
    with pytest.raises(DataError, match="verdict='nope'"):
        store.list(verdict="nope")
    with pytest.raises(DataError, match="since='March'"):
        store.list(since="March")


@pytest.mark.parametrize("suffix", ["csv", "parquet", "json"])
def test_export_round_trip(store, tmp_path, suffix):
    store.add("run-1", "AAA", "2024-03-01", "veto", "ana", 'says "no", twice\nreally', 0.5)
    store.add("run-1", "BBB", "2024-03-04", "approve", "bo", "", None)
    out, n = store.export(tmp_path / "out" / f"reviews.{suffix}", verdict=None)
    assert n == 2
    back = {
        "csv": lambda p: pd.read_csv(p, keep_default_na=False, na_values={"position": [""],
                                                                         "run_dir": [""]}),
        "parquet": pd.read_parquet,
        "json": lambda p: pd.DataFrame(json.loads(p.read_text())),
    }[suffix](out)  # fmt: skip
    expected = store.frame()
    assert list(back.columns) == list(COLUMNS)
    pd.testing.assert_frame_equal(
        back.astype(object).where(back.notna(), None),
        expected.astype(object).where(expected.notna(), None),
        check_dtype=False,
    )
    assert [p.name for p in out.parent.iterdir()] == [out.name]  # no temporary left behind
    vetoes, _ = store.export(tmp_path / "v.parquet", verdict="veto")
    assert len(pd.read_parquet(vetoes)) == 1
    with pytest.raises(DataError, match=r"cannot tell the export format from the suffix '\.xlsx'"):
        store.export(tmp_path / "x.xlsx")


def test_a_file_that_is_not_a_store_is_a_clear_error(tmp_path):
    bad = tmp_path / "reviews.sqlite"
    bad.write_text("not sqlite at all, just some text that is long enough" * 20)
    with pytest.raises(DataError, match="not a usable review store"):
        ReviewStore(bad).list()


def test_default_db_follows_the_output_dir(monkeypatch, tmp_path):
    monkeypatch.setenv("PLUSULTRA_OUTPUT_DIR", str(tmp_path))
    assert default_db() == tmp_path / "reviews.sqlite"
    monkeypatch.delenv("PLUSULTRA_OUTPUT_DIR")
    assert str(default_db()) == "outputs/reviews.sqlite"


# --------------------------------------------------------------------- a run's trades


def test_a_review_is_of_a_position_the_run_took(store, run_dir, tmp_path):
    r = review_trade(store, run_dir, "AAA", "2024-03-05", "veto", "ana", "short into news")
    assert (r.run_id, r.position, r.timestamp) == (RUN_ID, -0.3, "2024-03-05T00:00:00")
    assert r.run_dir == str(run_dir.resolve())
    with pytest.raises(DataError, match=r"traded no symbol 'ZZZ'; it traded \['AAA', 'BBB'\]"):
        find_trade(run_dir, "ZZZ", "2024-03-05")
    with pytest.raises(DataError, match=r"no position in 'AAA' at 2024-03-09T00:00:00; its "
                       r"decision bars for 'AAA' run from 2024-03-01T00:00:00 to "
                       r"2024-03-07T00:00:00 \(5 bars\)"):  # fmt: skip
        find_trade(run_dir, "AAA", "2024-03-09")
    with pytest.raises(DataError, match="does not exist"):
        find_trade(tmp_path / "nowhere", "AAA", "2024-03-05")
    (run_dir / "run_id.txt").unlink()  # no catalogue id: the directory's name
    assert find_trade(run_dir, "AAA", "2024-03-01").run_id == run_dir.name
    assert canonical_timestamp(pd.Timestamp("2024-03-01 15:30", tz="US/Eastern")) == (
        "2024-03-01T20:30:00"
    )


# -------------------------------------------------------------------------- the router


def client(run_dir=None, db=None, api_key=None) -> TestClient:
    app = FastAPI()
    app.include_router(router)
    app.state.api_key, app.state.review_db, app.state.run_dir = api_key, db, run_dir
    return TestClient(app)


def test_post_and_get_reviews(run_dir, store):
    c = client(run_dir, store.path, api_key="s3cret")
    body = {"symbol": "BBB", "timestamp": "2024-03-05", "verdict": "veto", "author": "ana",
            "rationale": "against the trend"}  # fmt: skip
    assert c.post("/reviews", json=body).status_code == 401  # no key
    r = c.post("/reviews", json=body, headers={"X-API-Key": "wrong"})
    assert r.status_code == 401 and "X-API-Key" in r.json()["detail"]
    r = c.post("/reviews", json=body, headers={"X-API-Key": "s3cret"})
    assert r.status_code == 201, r.text
    assert r.json()["position"] == 0.3 and r.json()["run_id"] == RUN_ID  # the run's own
    c.post("/reviews", json=body | {"symbol": "AAA", "verdict": "approve", "rationale": ""},
           headers={"X-API-Key": "s3cret"})  # fmt: skip
    got = c.get("/reviews", params={"verdict": "veto"}).json()  # listing needs no key
    assert got["count"] == 1 and got["reviews"][0]["symbol"] == "BBB"
    assert c.get("/reviews", params={"run_id": RUN_ID}).json()["count"] == 2
    assert c.get("/reviews", params={"symbol": "AAA", "limit": 1}).json()["count"] == 1
    assert [x.symbol for x in store.list()] == ["BBB", "AAA"]  # same bar: by id


@pytest.mark.parametrize(
    ("change", "status", "says"),
    [
        ({"verdict": "reject"}, 422, "verdict"),
        ({"author": ""}, 422, "author"),
        ({"author": "   "}, 422, "author: must not be blank"),
        ({"rationale": " "}, 422, "rationale: a veto needs one"),
        ({"timestamp": "2024-13-45"}, 422, "is not an ISO-8601 timestamp"),
        ({"symbol": "ZZZ"}, 404, "traded no symbol 'ZZZ'"),
        ({"timestamp": "2025-01-02"}, 404, "took no position in 'AAA' at 2025-01-02"),
        ({"run_dir": "/no/such/run"}, 404, "run dir '/no/such/run' does not exist"),
        ({"extra": 1, "symbol": None}, 422, "symbol"),
    ],
)
def test_bad_posts_are_4xx_with_clear_bodies(run_dir, store, change, status, says):
    c = client(run_dir, store.path)
    body = {"symbol": "AAA", "timestamp": "2024-03-05", "verdict": "veto", "author": "ana",
            "rationale": "why"} | change  # fmt: skip
    r = c.post("/reviews", json=body)
    assert r.status_code == status and says in r.text, r.text
    assert not store.path.exists() or store.list() == []


def test_post_without_a_run_and_bad_list_queries(store, run_dir):
    c = client(None, store.path)
    body = {"symbol": "AAA", "timestamp": "2024-03-05", "verdict": "flag", "author": "ana"}
    r = c.post("/reviews", json=body)
    assert r.status_code == 422 and "run_dir: required" in r.json()["detail"]
    assert c.post("/reviews", json=body | {"run_dir": str(run_dir)}).status_code == 201
    assert c.get("/reviews", params={"verdict": "nope"}).status_code == 422
    assert c.get("/reviews", params={"limit": 0}).status_code == 422
    r = c.get("/reviews", params={"since": "March"})
    assert r.status_code == 422 and "since='March'" in r.json()["detail"]


# ----------------------------------------------------------------------------- the CLI


def cli(capsys, *args) -> tuple[int, str, str]:
    try:
        main([str(a) for a in args])
        code = 0
    except SystemExit as exc:
        code = exc.code
    out, err = capsys.readouterr()
    return code, out, err


def test_cli_add_list_export(run_dir, tmp_path, capsys):
    db = tmp_path / "cli.sqlite"
    code, out, err = cli(capsys, "add", run_dir, "--symbol", "AAA", "--timestamp", "2024-03-04",
                         "--verdict", "veto", "--rationale", "no edge", "--author", "ana",
                         "--db", db)  # fmt: skip
    assert code == 0 and "review 1: veto AAA at 2024-03-04T00:00:00 (position +0.2000)" in out
    cli(capsys, "add", run_dir, "--symbol", "BBB", "--timestamp", "2024-03-01", "--verdict",
        "approve", "--author", "bo", "--db", db)  # fmt: skip
    code, out, _ = cli(capsys, "list", "--db", db, "--verdict", "veto")
    assert code == 0 and "no edge" in out and "approve" not in out
    code, out, _ = cli(capsys, "list", "--db", db, "--run", run_dir, "--format", "json")
    assert code == 0 and [r["author"] for r in json.loads(out)] == ["bo", "ana"]
    code, out, _ = cli(capsys, "export", "--db", db, "--out", tmp_path / "all.csv")
    assert code == 0 and "exported 2 review(s)" in out
    assert len(pd.read_csv(tmp_path / "all.csv")) == 2


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["--symbol", "AAA", "--timestamp", "2030-01-01", "--verdict", "flag"], "took no position"),
        (
            ["--symbol", "AAA", "--timestamp", "2024-03-04", "--verdict", "veto"],
            "needs a rationale",
        ),
        (["--symbol", "QQQ", "--timestamp", "2024-03-04", "--verdict", "flag"], "traded no symbol"),
    ],
)
def test_cli_add_errors_are_one_line_and_exit_2(run_dir, tmp_path, capsys, args, says):
    code, _, err = cli(capsys, "add", run_dir, *args, "--author", "ana", "--db", tmp_path / "d")
    assert code == 2 and says in err and err.startswith("plusultra-review: error:")
    assert len(err.strip().splitlines()) == 1


def test_cli_other_errors(tmp_path, capsys):
    missing = tmp_path / "missing"
    code, _, err = cli(capsys, "add", missing, "--symbol", "A", "--timestamp", "2024-03-01",
                       "--verdict", "flag", "--author", "a", "--db", tmp_path / "d")  # fmt: skip
    assert code == 2 and "does not exist" in err
    code, _, err = cli(capsys, "list", "--db", tmp_path / "none.sqlite")
    assert code == 2 and "no review store yet" in err
    code, _, err = cli(capsys, "add", tmp_path, "--symbol", "A", "--timestamp", "2024-03-01",
                       "--verdict", "maybe", "--author", "a")  # fmt: skip
    assert code == 2 and "invalid choice: 'maybe'" in err


def test_cli_help_in_a_subprocess():
    out = subprocess.run(
        [sys.executable, "-m", "plusultra.cli.review", "add", "--help"],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    assert "--verdict {approve,veto,flag}" in out.stdout and "--db DB" in out.stdout


def test_fuzzed_review_requests_never_get_a_5xx(run_dir, store):
    """schemathesis cases of both operations of the router's OpenAPI schema, valid and edge-case
    bodies and queries: none is a 5xx, every refusal has a JSON detail."""
    import schemathesis
    from hypothesis import HealthCheck, given, settings

    app = client(run_dir, store.path, api_key="k").app
    schema = schemathesis.openapi.from_asgi("/openapi.json", app)
    operations = [result.ok() for result in schema.get_all_operations()]
    assert {(op.method.upper(), op.path) for op in operations} == {
        ("POST", "/reviews"), ("GET", "/reviews")
    }  # fmt: skip
    statuses: set[int] = set()
    for operation in operations:

        @given(case=operation.as_strategy())
        @settings(max_examples=15, deadline=None, derandomize=True,
                  suppress_health_check=list(HealthCheck))  # fmt: skip
        def check(case):
            headers = {"X-API-Key": "k"} if case.method.upper() == "POST" else {}
            response = case.call(headers=headers)
            statuses.add(response.status_code)
            assert response.status_code < 500, (case.path, case.body, response.text[:500])
            if response.status_code >= 400:
                assert response.json()["detail"], (case.path, response.text[:500])

        check()
    assert 200 in statuses and statuses & {404, 422}  # it reached the store and refused some


def test_a_replaced_store_file_gets_its_schema_again(store):
    store.add("run-1", "AAA", "2024-03-01", "flag", "ana")
    store.path.unlink()
    with pytest.raises(DataError, match="no such table"):
        store.list()
    assert store.list() == []  # the next operation recreated the schema
