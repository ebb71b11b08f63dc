"""Catalogue compaction: one file, the same rows, safe against readers and a second compactor."""

from __future__ import annotations

import fcntl
import logging
import os
import shutil
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from hydra.core.utils import JobReturn, JobStatus
from omegaconf import OmegaConf

from plusultra.catalogue import compact as compaction
from plusultra.catalogue import rows
from plusultra.catalogue.callback import CatalogueCallback
from plusultra.catalogue.query import query
from plusultra.cli import catalogue as cli

T0 = datetime(2025, 1, 2, 3, 4, 5, tzinfo=UTC)


def write(cat: Path, i: int, **kw: object) -> Path:
    """Row ``i``: a different column set on odd rows, so compaction must union by name."""
    args: dict[str, object] = dict(
        run_id=f"20250102-030405-{i:08d}",
        run_dir=f"/runs/{i}",
        status="completed",
        error=None,
        started_at=T0 + timedelta(seconds=i),
        finished_at=T0 + timedelta(seconds=i + 60),
        git_rev="abc",
        overrides=[f"seed={i}"],
        choices={"backbone": "hybrid"},
        config={"seed": i, **({"extra": {"depth": i}} if i % 2 else {})},
        metrics={"val_loss": 1.0 / (i + 1), "test_sharpe": float(i)},
    )
    args.update(kw)
    return rows.write_row(cat, rows.build_row(**args))  # type: ignore[arg-type]


SQL = 'SELECT run_id, seed, "extra.depth", val_loss, test_sharpe, status FROM runs ORDER BY run_id'


def test_compaction_keeps_every_row_in_one_file(tmp_path: Path) -> None:
    cat = tmp_path / "cat"
    for i in range(7):
        write(cat, i)
    before = query(cat, SQL)
    merged = compaction.compact(cat)
    assert merged is not None and merged.name.startswith(compaction.PREFIX)
    assert compaction.row_files(cat) == [merged]
    after = query(cat, SQL)
    assert after.equals(before)
    assert after["extra.depth"].isna().sum() == 4  # the even rows lack the column
    write(cat, 7)  # new rows land beside the compacted file and are read with it
    assert len(query(cat, SQL)) == 8
    again = compaction.compact(cat)  # the next compaction folds the old compacted file in
    assert compaction.row_files(cat) == [again]
    assert query(cat, SQL).iloc[:7].equals(before)


def test_a_row_in_two_files_is_read_once_the_latest_kept(tmp_path: Path) -> None:
    """A compaction killed between writing its file and deleting the inputs leaves duplicates."""
    cat = tmp_path / "cat"
    for i in range(3):
        write(cat, i)
    copies = tmp_path / "copies"
    shutil.copytree(cat, copies)
    compaction.compact(cat)
    for f in copies.glob("*.parquet"):  # the inputs are back, as if never deleted
        shutil.copy(f, cat / f.name)
    # and run 1 was recorded again later with another status: the later row wins
    write(cat, 1, status="failed", finished_at=T0 + timedelta(hours=1))
    got = query(cat, SQL)
    assert list(got["run_id"]) == sorted(got["run_id"]) and len(got) == 3
    assert list(got["status"]) == ["completed", "failed", "completed"]


def test_a_second_compactor_skips_and_stale_temporaries_go(tmp_path: Path) -> None:
    cat = tmp_path / "cat"
    for i in range(3):
        write(cat, i)
    stale = cat / f".{compaction.PREFIX}x.parquet.tmp"
    stale.write_bytes(b"half written")
    fd = os.open(cat / compaction.LOCK_FILE, os.O_RDWR | os.O_CREAT)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)  # another process is compacting
        assert compaction.compact(cat) is None
        assert len(compaction.row_files(cat)) == 3
    finally:
        os.close(fd)
    assert compaction.compact(cat) is not None
    assert not stale.exists()
    assert compaction.compact(cat) is None  # one file: nothing to do


def test_a_failed_compaction_deletes_nothing(tmp_path: Path) -> None:
    cat = tmp_path / "cat"
    for i in range(3):
        write(cat, i)
    (cat / "broken.parquet").write_bytes(b"not parquet")
    with pytest.raises(Exception, match="broken.parquet"):
        compaction.compact(cat)
    assert len(compaction.row_files(cat)) == 4
    assert not list(cat.glob(".*.tmp"))


def test_jobs_compact_once_enough_files_pile_up(tmp_path: Path, monkeypatch, caplog) -> None:
    cat = tmp_path / "cat"
    monkeypatch.setattr(compaction, "AUTO_COMPACT_FILES", 4)
    for i in range(3):
        write(cat, i)
    run = tmp_path / "run"
    run.mkdir()
    cfg = OmegaConf.create(
        {
            "seed": 1,
            "hydra": {
                "mode": "RUN",
                "runtime": {"output_dir": str(run), "cwd": str(tmp_path), "choices": {}},
                "overrides": {"task": []},
                "job": {"num": 0},
            },
        }
    )
    callback = CatalogueCallback(catalogue_dir=str(cat))
    callback.on_job_start(cfg)
    with caplog.at_level(logging.INFO, logger="plusultra.catalogue.compact"):
        callback.on_job_end(cfg, JobReturn(status=JobStatus.COMPLETED, _return_value=0.0))
    assert len(compaction.row_files(cat)) == 1
    assert len(query(cat, "SELECT * FROM runs")) == 4
    assert "compacted 4 files" in caplog.text


def test_cli_compact(tmp_path: Path, capsys) -> None:
    cat = tmp_path / "cat"
    for i in range(5):
        write(cat, i)
    assert cli.main(["--catalogue", str(cat), "--compact"]) == 0
    assert "compacted 5 files" in capsys.readouterr().err
    assert len(compaction.row_files(cat)) == 1
    assert cli.main(["--catalogue", str(cat), "--compact"]) == 0
    assert "nothing to compact" in capsys.readouterr().err
    assert cli.main(["--catalogue", str(tmp_path / "missing"), "--compact"]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert cli.main(["--catalogue", str(cat), "--compact", "SELECT 1"]) == 2
    assert "--compact takes no query" in capsys.readouterr().err
