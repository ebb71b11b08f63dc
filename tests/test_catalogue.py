"""Tests of the run catalogue: rows, atomic writes, the DuckDB view, the CLI and the callback."""

from __future__ import annotations

import json
import logging
import math
import os
import subprocess
import sys
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq
import pytest
from hydra.core.utils import JobReturn, JobStatus
from omegaconf import OmegaConf

from plusultra.catalogue import rows
from plusultra.catalogue.callback import CatalogueCallback, recorded_run_ids
from plusultra.catalogue.query import CatalogueError, connect, query
from plusultra.catalogue.trials import TRIAL_COLUMNS
from plusultra.cli import catalogue as cli
from plusultra.errors import PlusUltraError

T0 = datetime(2025, 1, 2, 3, 4, 5, tzinfo=UTC)


def make_row(run_id: str, **kw: object) -> dict[str, object]:
    """A completed row with small defaults; keyword arguments override build_row's."""
    args: dict[str, object] = dict(
        run_id=run_id,
        run_dir=f"/runs/{run_id}",
        status="completed",
        error=None,
        started_at=T0,
        finished_at=T0 + timedelta(seconds=90),
        git_rev="abc123",
        overrides=["seed=1"],
        choices={"backbone": "hybrid", "hydra/launcher": "basic"},
        config={"seed": 1, "depth": 2, "trainer": {"max_epochs": 3}},
        metrics={"val_loss": 0.25, "test_sharpe": 1.5, "n_params": 1234},
    )
    args.update(kw)
    return rows.build_row(**args)  # type: ignore[arg-type]


# --------------------------------------------------------------------------- rows


def test_new_run_id_is_stamped_unique_and_utc() -> None:
    ids = {rows.new_run_id(T0) for _ in range(200)}
    assert len(ids) == 200
    assert all(rows.RUN_ID_PATTERN.match(i) and i.startswith("20250102-030405-") for i in ids)
    plus_two = datetime(2025, 1, 2, 5, 4, 5, tzinfo=timezone(timedelta(hours=2)))
    assert rows.new_run_id(plus_two).startswith("20250102-030405-")
    assert rows.RUN_ID_PATTERN.match(rows.new_run_id())


def test_git_revision_outside_a_repo_is_unknown(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("GIT_CEILING_DIRECTORIES", str(tmp_path.parent))
    assert rows.git_revision(tmp_path) == "unknown"
    assert rows.git_revision(tmp_path / "does-not-exist") == "unknown"


@pytest.mark.parametrize(
    ("head", "status", "expected"),
    [
        ((0, "abc\n"), (0, ""), "abc"),
        ((0, "abc\n"), (0, " M src/x.py\n"), "abc-dirty"),
        ((0, "abc\n"), (128, ""), "abc"),
        ((128, ""), (0, ""), "unknown"),
        (OSError("git not installed"), None, "unknown"),
        (subprocess.TimeoutExpired("git", 10), None, "unknown"),
    ],
)
def test_git_revision_reads_head_and_porcelain_status(monkeypatch, head, status, expected) -> None:
    calls: list[list[str]] = []

    def fake_run(cmd, **kw):
        calls.append(cmd)
        answer = head if cmd[1] == "rev-parse" else status
        if isinstance(answer, BaseException):
            raise answer
        return subprocess.CompletedProcess(cmd, answer[0], stdout=answer[1], stderr="")

    monkeypatch.setattr(rows.subprocess, "run", fake_run)
    assert rows.git_revision("/somewhere") == expected
    assert calls[0] == ["git", "rev-parse", "HEAD"]
    if len(calls) > 1:
        assert calls[1] == ["git", "status", "--porcelain"]


def test_flatten_config_dotted_names_and_json_leaves() -> None:
    cfg = {
        "seed": 7,
        "backbone": {"_target_": "pkg.Hybrid", "depth": 4, "dims": [8, 16], "opts": {}},
        "trainer": {"max_epochs": 3, "callbacks": {"early": {"patience": 2}}},
        "name": None,
        "flag": True,
        "ratio": 0.5,
        "grid": [{"a": 1}, 2],
    }
    assert rows.flatten_config(cfg) == {
        "seed": 7,
        "backbone._target_": "pkg.Hybrid",
        "backbone.depth": 4,
        "backbone.dims": "[8, 16]",
        "backbone.opts": "{}",
        "trainer.max_epochs": 3,
        "trainer.callbacks.early.patience": 2,
        "name": None,
        "flag": True,
        "ratio": 0.5,
        "grid": '[{"a": 1}, 2]',
    }


def test_build_row_column_order_types_and_rules(caplog) -> None:
    started = datetime(2025, 1, 2, 5, 4, 5, tzinfo=timezone(timedelta(hours=2)))  # = T0
    with caplog.at_level(logging.WARNING, logger="plusultra.catalogue.rows"):
        row = make_row(
            "20250102-030405-0000000a",
            started_at=started,
            overrides=["backbone=tcn", "depth=8"],
            choices={
                "backbone": "tcn",
                "a/b": "opt1",
                "backbone@enc": "hybrid",
                "nothere": None,
                "hydra/launcher": "basic",
                "hydra/callbacks": None,
                "data": "synthetic",
            },
            config={
                "data": "shadowed by the choice",
                "depth": 8,
                "status": "shadowed by the core column",
                "n_params": 1,
                "backbone": {"_target_": "x.Tcn", "depth": 8},
            },
            metrics={"val_loss": 0.5, "test_sharpe": None, "n_params": 99},
            multirun=True,
            job_num=3,
        )
    assert list(row)[: len(rows.CORE_COLUMNS)] == list(rows.CORE_COLUMNS)
    assert row["started_at"] == T0 and row["started_at"].tzinfo == UTC
    assert row["duration_s"] == 90.0
    assert row["overrides"] == "backbone=tcn depth=8"
    assert (row["multirun"], row["job_num"]) == (True, 3)
    assert (row["status"], row["error"]) == ("completed", None)
    assert not any(k.startswith("hydra") for k in row)
    assert row["backbone"] == "tcn" and row["a/b"] == "opt1" and row["backbone@enc"] == "hybrid"
    assert row["nothere"] is None
    assert row["data"] == "synthetic"  # the choice wins over a root scalar of the same name
    assert row["status"] == "completed"  # core columns win over everything
    assert row["n_params"] == 99  # a metric wins over a config key
    assert row["backbone._target_"] == "x.Tcn" and row["backbone.depth"] == 8
    assert math.isnan(row["test_sharpe"])
    assert list(row)[-3:] == ["val_loss", "test_sharpe", "n_params"]
    assert "'data'" in caplog.text and "'status'" in caplog.text and "'n_params'" in caplog.text
    with pytest.raises(ValueError, match="status"):
        make_row("20250102-030405-0000000b", status="crashed")


def test_write_row_round_trip_types(tmp_path: Path) -> None:
    row = make_row("20250102-030405-0000000c", metrics={"val_loss": None, "n_params": 5})
    path = rows.write_row(tmp_path / "cat", row)
    assert path == tmp_path / "cat" / "20250102-030405-0000000c.parquet"
    assert sorted(p.name for p in path.parent.iterdir()) == [path.name]
    table = pq.read_table(path)
    assert table.column_names == list(row)
    schema = table.schema
    assert str(schema.field("started_at").type) == "timestamp[us, tz=UTC]"
    assert str(schema.field("job_num").type) == "int64"
    assert str(schema.field("val_loss").type) == "double"
    got = table.to_pylist()[0]
    assert got["val_loss"] is None  # NaN / null metric -> SQL NULL
    assert got["n_params"] == 5 and got["started_at"] == T0 and got["job_num"] is None


@pytest.mark.parametrize("where", ["write_table", "replace"])
def test_write_row_is_atomic(tmp_path: Path, monkeypatch, where: str) -> None:
    catalogue = tmp_path / "cat"
    rows.write_row(catalogue, make_row("20250102-030405-00000001"))

    def broken_write(table, fh, **kw):
        fh.write(b"PAR1 partial")
        raise OSError("disk full")

    def broken_replace(src, dst):
        raise OSError("rename failed")

    if where == "write_table":
        monkeypatch.setattr(rows.pq, "write_table", broken_write)
    else:
        monkeypatch.setattr(rows.os, "replace", broken_replace)
    with pytest.raises(OSError):
        rows.write_row(catalogue, make_row("20250102-030405-00000002"))
    assert sorted(p.name for p in catalogue.iterdir()) == ["20250102-030405-00000001.parquet"]
    assert len(query(catalogue, "SELECT * FROM runs")) == 1


def test_temp_files_are_not_read_by_the_view(tmp_path: Path) -> None:
    rows.write_row(tmp_path, make_row("20250102-030405-00000003"))
    (tmp_path / ".20250102-030405-00000004.parquet.tmp").write_bytes(b"PAR1 half-written")
    assert query(tmp_path, "SELECT count(*) AS n FROM runs")["n"].tolist() == [1]


def test_write_row_rejects_unusable_run_id(tmp_path: Path) -> None:
    for bad in (None, "", "../escape", ".hidden"):
        with pytest.raises(ValueError, match="run_id"):
            rows.write_row(tmp_path, {"run_id": bad})


def test_record_failed_invocation(tmp_path: Path) -> None:
    error = ValueError("could not compose: no option 'foo' in group backbone")
    path = rows.record_failed_invocation(tmp_path, ["backbone=foo"], error, cwd=tmp_path)
    got = pq.read_table(path).to_pylist()[0]
    assert list(got) == list(rows.CORE_COLUMNS)
    assert got["status"] == "failed" and got["run_dir"] is None
    assert got["error"] == "ValueError: could not compose: no option 'foo' in group backbone"
    assert got["overrides"] == "backbone=foo" and got["multirun"] is False
    assert error._plusultra_recorded is True
    path2 = rows.record_failed_invocation(tmp_path, [], "plain message", cwd=tmp_path)
    assert pq.read_table(path2).column("error").to_pylist() == ["plain message"]
    path3 = rows.record_failed_invocation(
        tmp_path, [], "stop", cwd=tmp_path, status="interrupted", run_dir="/r"
    )
    got = pq.read_table(path3).to_pylist()[0]
    assert (got["status"], got["run_dir"]) == ("interrupted", "/r")


# --------------------------------------------------------------------------- query


def test_view_unions_rows_with_different_columns_and_types(tmp_path: Path) -> None:
    rows.write_row(tmp_path, make_row("20250102-030405-00000010"))
    rows.write_row(
        tmp_path,
        make_row(
            "20250102-030406-00000011",
            status="failed",
            error="RuntimeError: diverged",
            choices={"backbone": "moe", "head": "quantile"},
            config={"seed": 2, "trainer": {"max_epochs": 2.5}, "moe": {"experts": 4}},
            metrics={},
        ),
    )
    con = connect(tmp_path)
    try:
        types = {name: typ for name, typ, *_ in con.sql("DESCRIBE runs").fetchall()}
    finally:
        con.close()
    assert types["trainer.max_epochs"] == "DOUBLE"
    assert types["started_at"] == "TIMESTAMP WITH TIME ZONE"
    df = query(
        tmp_path,
        'SELECT run_id, status, backbone, head, "trainer.max_epochs", "moe.experts", '
        "test_sharpe, n_params FROM runs ORDER BY run_id",
    )
    assert df["run_id"].tolist() == ["20250102-030405-00000010", "20250102-030406-00000011"]
    assert df["status"].tolist() == ["completed", "failed"]
    assert df["backbone"].tolist() == ["hybrid", "moe"]
    assert df["trainer.max_epochs"].tolist() == [3.0, 2.5]
    assert pd.isna(df["head"][0]) and pd.isna(df["moe.experts"][0])
    assert df["test_sharpe"][0] == 1.5 and pd.isna(df["test_sharpe"][1])
    assert df["n_params"][0] == 1234 and pd.isna(df["n_params"][1])
    started = query(tmp_path, "SELECT started_at FROM runs LIMIT 1")["started_at"][0]
    assert started == pd.Timestamp(T0)


def test_empty_catalogue_has_core_columns_and_missing_dir_is_an_error(tmp_path: Path) -> None:
    df = query(tmp_path, "SELECT * FROM runs")
    assert df.empty and list(df.columns) == [*rows.CORE_COLUMNS, *TRIAL_COLUMNS]
    with pytest.raises(CatalogueError, match="does not exist") as info:
        connect(tmp_path / "nope")
    assert isinstance(info.value, PlusUltraError) and str(tmp_path / "nope") in str(info.value)


def test_query_errors_carry_duckdb_message(tmp_path: Path) -> None:
    rows.write_row(tmp_path, make_row("20250102-030405-00000020"))
    with pytest.raises(CatalogueError, match='Referenced column "nope" not found'):
        query(tmp_path, "SELECT nope FROM runs")
    with pytest.raises(CatalogueError, match="must be double-quoted") as info:
        query(tmp_path, "SELECT trainer.max_epochs FROM runs")
    assert "\n" not in str(info.value)
    with pytest.raises(CatalogueError, match="syntax error"):
        query(tmp_path, "SELEC 1")


# --------------------------------------------------------------------------- CLI


@pytest.fixture
def catalogue(tmp_path: Path) -> Path:
    cat = tmp_path / "catalogue"
    rows.write_row(cat, make_row("20250102-030405-00000030"))
    rows.write_row(
        cat,
        make_row(
            "20250102-030407-00000031",
            started_at=T0 + timedelta(seconds=2),
            choices={"backbone": "transformer"},
            config={"seed": 2, "depth": 12, "trainer": {"max_epochs": 10}},
            metrics={"val_loss": 0.125, "test_sharpe": -0.123456789, "n_params": 98765432},
        ),
    )
    return cat


def run_cli(*args: str, cwd: Path | None = None, env: dict | None = None):
    return subprocess.run(
        [sys.executable, "-m", "plusultra.cli.catalogue", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        env={**os.environ, **(env or {})},
        timeout=60,
    )


SQL = 'SELECT run_id, backbone, depth, "trainer.max_epochs", n_params, test_sharpe FROM runs'


@pytest.mark.parametrize("fmt", ["table", "csv", "json"])
def test_cli_formats(catalogue: Path, fmt: str) -> None:
    proc = run_cli(SQL + " ORDER BY started_at", "--catalogue", str(catalogue), "--format", fmt)
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    if fmt == "table":
        lines = out.splitlines()
        words = [" ".join(line.split()) for line in lines]
        assert words == [
            "run_id backbone depth trainer.max_epochs n_params test_sharpe",
            "20250102-030405-00000030 hybrid 2 3 1234 1.5",
            "20250102-030407-00000031 transformer 12 10 98765432 -0.123457",
        ]
        assert len({len(line) for line in lines}) == 1  # aligned columns
    elif fmt == "csv":
        df = pd.read_csv(pd.io.common.StringIO(out))
        assert df["trainer.max_epochs"].tolist() == [3, 10]
        assert df["test_sharpe"].tolist() == [1.5, -0.123456789]
    else:
        records = json.loads(out)
        assert [r["backbone"] for r in records] == ["hybrid", "transformer"]
        assert records[1]["n_params"] == 98765432 and records[0]["depth"] == 2


def test_cli_default_query_env_dir_and_out_file(
    catalogue: Path, tmp_path: Path, monkeypatch, capsys
) -> None:
    monkeypatch.setenv("PLUSULTRA_OUTPUT_DIR", str(catalogue.parent))
    assert cli.main(["SELECT * FROM runs ORDER BY started_at"]) == 0
    out = capsys.readouterr().out
    assert "run_id" in out and "git_revision" in out and "2025-01-02 03:04:05+00:00" in out
    assert " NULL " in out and "None" not in out  # SQL NULLs print alike whatever the dtype
    assert out.index("20250102-030405-00000030") < out.index("20250102-030407-00000031")
    assert cli.main([]) == 0  # no query: the curated view
    out = capsys.readouterr().out
    assert out.split("\n")[0].split() == [
        "run_id",
        "status",
        "started",
        "backbone",
        "depth",
        "n_params",
        "val_loss",
        "test_sharpe",
    ]  # the fixture's rows have no head, loss, val_sharpe ... columns: left out, no error
    assert "2025-01-02 03:04:05 " in out and "git_revision" not in out
    target = tmp_path / "export.json"
    assert cli.main(["SELECT run_id FROM runs ORDER BY run_id", "--out", str(target)]) == 0
    assert capsys.readouterr().out == ""
    assert [r["run_id"] for r in json.loads(target.read_text())][0] == "20250102-030405-00000030"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["catalogue", "export.json"]


def test_cli_errors_exit_2_without_traceback(catalogue: Path, tmp_path: Path, capsys) -> None:
    proc = run_cli("SELECT nope FROM runs", "--catalogue", str(catalogue))
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.startswith("plusultra-catalogue: error: query failed")
    assert '"nope"' in proc.stderr and "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
    assert cli.main(["--catalogue", str(tmp_path / "missing")]) == 2
    assert "does not exist" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert cli.main(["--catalogue", str(tmp_path / "empty")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("plusultra-catalogue: error:") and "is empty" in err
    assert cli.main(["--catalogue", str(catalogue), "--out", str(tmp_path / "no/dir/x.csv")]) == 2


def test_cli_help_explains_quoting() -> None:
    text = cli.build_parser().format_help()
    assert '"trainer.max_epochs"' in text and "--format" in text and "examples:" in text
    assert "quote dotted names" in text and "curated view of the last 20 runs" in text


def test_curated_view_shows_the_last_runs_compactly(tmp_path: Path) -> None:
    cat = tmp_path / "catalogue"
    for i in range(25):
        run_id = f"20250102-0304{i:02d}-{i:08x}"
        rows.write_row(
            cat,
            make_row(
                run_id,
                started_at=T0 + timedelta(seconds=i),
                choices={
                    "data": "synthetic",
                    "backbone": "hybrid",
                    "head": "policy",
                    "loss": "sharpe",
                },
                config={
                    "depth": 2,
                    "d_model": 16,
                    "window": 32,
                    "simulator": {"execution": "next_open"},
                },
                metrics={
                    "val_loss": 0.5,
                    "val_sharpe": 0.1 * i,
                    "test_sharpe": 1.0,
                    "n_params": 99,
                    "test_max_drawdown": -0.2,
                    "test_buyhold_sharpe": 0.3,
                },
            ),
        )
    rows.write_row(
        cat,
        make_row(
            "20250102-030500-000000ff",
            started_at=T0 + timedelta(seconds=60),
            status="failed",
            error="ConfigError: x",
            metrics={},
        ),
    )
    df = query(cat, cli.curated_sql(query(cat, "DESCRIBE runs")["column_name"].tolist()))
    assert list(df.columns) == [
        "run_id",
        "status",
        "started",
        "data",
        "backbone",
        "head",
        "loss",
        "depth",
        "d_model",
        "window",
        "n_params",
        "val_loss",
        "val_sharpe",
        "test_sharpe",
        "test_max_drawdown",
        "execution",
    ]
    assert len(df) == cli.LAST_RUNS
    assert df["started"].is_monotonic_increasing and df["status"].iloc[-1] == "failed"
    assert df["run_id"].iloc[0] == "20250102-030406-00000006"  # the 20 most recent of 26
    assert df["execution"].iloc[0] == "next_open" and df["started"].iloc[0] == "2025-01-02 03:04:11"


# --------------------------------------------------------------------------- callback, unit


def fake_hydra_config(out: Path, cwd: Path) -> object:
    return OmegaConf.create(
        {
            "hydra": {
                "mode": "RUN",
                "runtime": {"output_dir": str(out), "cwd": str(cwd), "choices": {"m": "x"}},
                "overrides": {"task": ["seed=3"]},
                "job": {"num": "???"},
            },
            "seed": 3,
            "missing_env": "${oc.env:PLUSULTRA_TEST_SURELY_UNSET}",
        }
    )


def test_callback_never_raises_and_ignores_stale_metrics(tmp_path: Path, caplog) -> None:
    out = tmp_path / "run"
    out.mkdir()
    (out / "metrics.json").write_text('{"val_loss": 9.0}')  # left over from an earlier run
    config = fake_hydra_config(out, tmp_path)
    ret = JobReturn(status=JobStatus.COMPLETED, _return_value=1.0)

    cb = CatalogueCallback("cat")
    cb.on_job_start(config, task_function=None)
    run_id = (out / "run_id.txt").read_text().strip()
    with caplog.at_level(logging.WARNING):
        cb.on_job_end(config, ret)
    got = pq.read_table(tmp_path / "cat" / f"{run_id}.parquet").to_pylist()[0]
    assert "val_loss" not in got and "predates this job" in caplog.text
    assert got["missing_env"] == "${oc.env:PLUSULTRA_TEST_SURELY_UNSET}"
    assert (got["m"], got["seed"], got["job_num"], got["multirun"]) == ("x", 3, None, False)
    assert recorded_run_ids()[-1] == run_id

    cb.on_job_start(config, task_function=None)
    (out / "metrics.json").write_text('{"val_loss": 0.5}')
    cb.on_job_end(config, ret)
    files = sorted((tmp_path / "cat").glob("*.parquet"))
    assert len(files) == 2
    assert query(tmp_path / "cat", "SELECT max(val_loss) AS v FROM runs")["v"][0] == 0.5

    (tmp_path / "not_a_dir").write_text("")
    blocked = CatalogueCallback(str(tmp_path / "not_a_dir"))
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        blocked.on_job_start(config, task_function=None)
        blocked.on_job_end(config, JobReturn(status=JobStatus.FAILED, _return_value=KeyError("k")))
    assert "could not record this run" in caplog.text


# --------------------------------------------------------------------------- callback, real Hydra

APP = """
import json, os, signal, time
import hydra
from hydra.core.hydra_config import HydraConfig
from plusultra.cli.common import fail, interruption
from plusultra.lifecycle import handle_signals


@hydra.main(version_base="1.3", config_path="conf", config_name="config")
def main(cfg):
    if cfg.fail == "sigterm":  # as `kill <pid>` would, once the job runs
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(30)
    if cfg.fail:
        raise ValueError(f"boom seed={cfg.seed}")
    out = HydraConfig.get().runtime.output_dir
    metrics = {
        "val_loss": 0.5 / cfg.seed + 0.1 * (cfg.sharpe or 0),
        "test_sharpe": cfg.sharpe,
        "test_n_periods": 250,
        "n_params": 1000 + cfg.depth,
    }
    with open(os.path.join(out, "metrics.json"), "w") as fh:
        json.dump(metrics, fh)
    return metrics["val_loss"]


if __name__ == "__main__":
    try:
        with handle_signals():
            main()
    except Exception as exc:
        print("RECORDED", getattr(exc, "_plusultra_recorded", False), flush=True)
        if interruption(exc):
            fail("app", exc, catalogue_dir="cat")
        raise
"""

CONFIG = """
defaults:
  - backbone: hybrid
  - opt/sched: cosine
  - _self_
seed: 1
depth: 2
sharpe: null
fail: false
out_dir: ${hydra:runtime.output_dir}
trainer:
  max_epochs: 3
  devices: [0, 1]
hydra:
  run:
    dir: runs/${now:%H%M%S_%f}
  sweep:
    dir: sweep
    subdir: ${hydra.job.num}
  callbacks:
    catalogue:
      _target_: plusultra.catalogue.callback.CatalogueCallback
      catalogue_dir: cat
"""


@pytest.fixture
def hydra_app(tmp_path: Path) -> Path:
    (tmp_path / "conf" / "backbone").mkdir(parents=True)
    (tmp_path / "conf" / "opt" / "sched").mkdir(parents=True)
    (tmp_path / "app.py").write_text(APP)
    (tmp_path / "conf" / "config.yaml").write_text(CONFIG)
    (tmp_path / "conf" / "backbone" / "hybrid.yaml").write_text(
        "_target_: pkg.Hybrid\ndepth: ${depth}\nkernel_sizes: [3, 5]\n"
    )
    (tmp_path / "conf" / "opt" / "sched" / "cosine.yaml").write_text("warmup: 10\n")
    return tmp_path


def run_app(app_dir: Path, *overrides: str, env: dict | None = None):
    return subprocess.run(
        [sys.executable, "app.py", *overrides],
        cwd=app_dir,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "GIT_CEILING_DIRECTORIES": str(app_dir.parent), **(env or {})},
    )


def test_callback_in_run_mode(hydra_app: Path) -> None:
    proc = run_app(hydra_app, "depth=4", "hydra.job.chdir=true")
    assert proc.returncode == 0, proc.stderr
    df = query(hydra_app / "cat", "SELECT * FROM runs")
    assert len(df) == 1
    row = df.iloc[0]
    (run_dir,) = (hydra_app / "runs").iterdir()
    assert (run_dir / "run_id.txt").read_text().strip() == row["run_id"]
    assert rows.RUN_ID_PATTERN.match(row["run_id"])
    assert row["run_dir"] == str(run_dir) and row["out_dir"] == str(run_dir)
    assert (row["status"], row["overrides"], row["git_revision"]) == (
        "completed",
        "depth=4",
        "unknown",
    )
    assert pd.isna(row["error"]) and not row["multirun"] and pd.isna(row["job_num"])
    assert row["backbone"] == "hybrid" and row["opt/sched"] == "cosine"
    assert not [c for c in df.columns if c.startswith("hydra")]
    assert row["depth"] == 4 and row["backbone.depth"] == 4  # resolved interpolation
    assert row["backbone._target_"] == "pkg.Hybrid" and row["opt.sched.warmup"] == 10
    assert json.loads(row["backbone.kernel_sizes"]) == [3, 5]
    assert row["trainer.devices"] == "[0, 1]" and row["trainer.max_epochs"] == 3
    assert row["val_loss"] == 0.5 and pd.isna(row["test_sharpe"]) and row["n_params"] == 1004
    assert row["finished_at"] >= row["started_at"] and row["duration_s"] >= 0


def test_callback_in_multirun_mode(hydra_app: Path) -> None:
    proc = run_app(hydra_app, "-m", "seed=1,2")
    assert proc.returncode == 0, proc.stderr
    df = query(
        hydra_app / "cat",
        "SELECT run_id, run_dir, multirun, job_num, overrides, seed, val_loss FROM runs "
        "ORDER BY job_num",
    )
    assert df["job_num"].tolist() == [0, 1] and df["multirun"].tolist() == [True, True]
    assert df["overrides"].tolist() == ["seed=1", "seed=2"]
    assert df["seed"].tolist() == [1, 2] and df["val_loss"].tolist() == [0.5, 0.25]
    assert df["run_id"].nunique() == 2
    assert df["run_dir"].tolist() == [str(hydra_app / "sweep" / n) for n in ("0", "1")]
    for run_dir, run_id in zip(df["run_dir"], df["run_id"], strict=True):
        assert (Path(run_dir) / "run_id.txt").read_text().strip() == run_id


def test_multirun_end_logs_the_sweeps_best_trial(hydra_app: Path) -> None:
    proc = run_app(hydra_app, "-m", "sharpe=0.5,1.5,1.0")
    assert proc.returncode == 0, proc.stderr
    df = query(hydra_app / "cat", "SELECT * FROM sweeps ORDER BY job_num")
    assert df["study"].tolist() == ["(defaults)"] * 3  # every override is swept
    assert df["sweep_dir"].tolist() == [str(hydra_app / "sweep")] * 3
    # val_loss = 0.5 + 0.1 * sharpe: the lowest val_loss is job 0, the best test Sharpe job 1
    assert df["n_trials"].tolist() == [3, 3, 3] and df["is_best"].tolist() == [True, False, False]
    best = df.iloc[0]
    line = (
        "catalogue: study (defaults): best of 3 trials (1 sweep) by val_loss (minimize) is "
        f"job 0 of {hydra_app / 'sweep'} ({best.run_id})"
    )
    assert line in proc.stdout + proc.stderr
    assert f"deflated Sharpe {best.deflated_sharpe:.3f}" in proc.stdout + proc.stderr


def test_sigterm_in_a_job_is_recorded_as_interrupted(hydra_app: Path) -> None:
    proc = run_app(hydra_app, "fail=sigterm", env={"HYDRA_FULL_ERROR": "1"})
    assert proc.returncode == 143, proc.stderr
    (run_dir,) = (hydra_app / "runs").iterdir()
    assert f"app: interrupted (SIGTERM); run dir {run_dir} kept" in proc.stderr
    assert "RECORDED True" in proc.stdout
    df = query(hydra_app / "cat", "SELECT * FROM runs")
    assert len(df) == 1  # the callback's row only: the entry point does not add another
    row = df.iloc[0]
    assert (row["status"], row["run_dir"]) == ("interrupted", str(run_dir))
    assert row["error"].startswith("Interrupted: interrupted (SIGTERM)")


def test_callback_records_a_failing_job_and_the_error_propagates(hydra_app: Path) -> None:
    proc = run_app(hydra_app, "fail=true", "seed=5", env={"HYDRA_FULL_ERROR": "1"})
    assert proc.returncode != 0
    assert "ValueError: boom seed=5" in proc.stderr
    assert "RECORDED True" in proc.stdout  # marked so the entry point does not record it twice
    df = query(hydra_app / "cat", "SELECT * FROM runs")
    assert len(df) == 1
    row = df.iloc[0]
    assert (row["status"], row["error"]) == ("failed", "ValueError: boom seed=5")
    assert row["backbone"] == "hybrid" and row["fail"]
    assert "val_loss" not in df.columns and "n_params" not in df.columns


def test_null_config_key_filled_by_a_metric_is_not_a_conflict(caplog) -> None:
    """periods_per_year: null in the config (derived), the run's value in metrics.json."""
    with caplog.at_level(logging.WARNING, logger="plusultra.catalogue.rows"):
        row = make_row(
            "20250102-030405-000000aa",
            config={"periods_per_year": None},
            metrics={"periods_per_year": 52.0},
        )
        assert row["periods_per_year"] == 52.0 and not caplog.records
        row = make_row(
            "20250102-030405-000000ab",
            config={"periods_per_year": 12},
            metrics={"periods_per_year": 52.0},
        )
    assert row["periods_per_year"] == 52.0 and "shadowed" in caplog.text
