"""Run lifecycle: unique run dirs, exclusive creation, durable atomic writes, signal handling."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pandas as pd
import pytest
from omegaconf import OmegaConf

from plusultra import io
from plusultra.errors import ConfigError
from plusultra.lifecycle import (
    UID_RESOLVER,
    Interrupted,
    RunDirCallback,
    RunDirTaken,
    claim_dir,
    handle_signals,
    unique_id,
)
from tests.conftest import compose_config


def test_unique_ids_never_collide_within_one_second() -> None:
    ids = [unique_id() for _ in range(5000)]
    assert len(set(ids)) == len(ids)
    assert all(i.startswith(f"{os.getpid()}-") for i in ids)


def test_run_dir_pattern_is_unique_sortable_and_stable_within_a_config() -> None:
    dirs = []
    for _ in range(3):
        cfg = compose_config(["paths.output_dir=/o"])
        first = str(cfg.hydra.run.dir)
        assert str(cfg.hydra.run.dir) == first  # cached: one run, one name
        dirs.append(first)
    assert len(set(dirs)) == 3
    for d in dirs:
        day, stamp = d.removeprefix("/o/runs/").split("/")
        assert len(day) == 10 and stamp[:8].count("-") == 2 and stamp[8] == "_"
    sweep = compose_config(["paths.output_dir=/o"]).hydra.sweep
    assert str(sweep.dir).startswith("/o/multiruns/")
    assert OmegaConf.to_container(sweep)["subdir"] == "${hydra.job.num}"
    # every interpolation of one config shares the id (the sweeper copies this cache to its jobs)
    cfg = OmegaConf.create({"a": f"${{{UID_RESOLVER}:}}", "b": f"${{{UID_RESOLVER}:}}"})
    assert cfg.a == cfg.b


def test_claim_dir_refuses_an_existing_directory(tmp_path: Path) -> None:
    path = claim_dir(tmp_path / "runs" / "day" / "10-00-00_1-abc", "hydra.run.dir")
    assert path.is_dir() and path.is_absolute()
    with pytest.raises(ConfigError, match=r"hydra.run.dir: .* already exists"):
        claim_dir(path, "hydra.run.dir")


def test_run_dir_callback_claims_run_and_sweep_dirs(tmp_path: Path) -> None:
    cfg = compose_config([f"hydra.run.dir={tmp_path / 'r'}", f"hydra.sweep.dir={tmp_path / 's'}"])
    callback = RunDirCallback()
    callback.on_run_start(cfg)
    callback.on_multirun_start(cfg)
    assert (tmp_path / "r").is_dir() and (tmp_path / "s").is_dir()
    # Hydra turns a callback's Exception into a warning: the refusal must be a BaseException
    with pytest.raises(RunDirTaken) as caught:
        callback.on_run_start(cfg)
    assert not isinstance(caught.value, Exception)
    assert isinstance(caught.value.error, ConfigError)


def test_atomic_writes_fsync_the_file_before_the_rename_and_then_the_dir(
    tmp_path: Path, monkeypatch
) -> None:
    events: list[str] = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd: int) -> None:
        events.append("fsync-dir" if os.path.isdir(f"/proc/self/fd/{fd}") else "fsync-file")
        real_fsync(fd)

    def replace(src, dst) -> None:
        events.append("rename")
        real_replace(src, dst)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    writers = [
        lambda p: io.write_text_atomic(p / "a.txt", "x"),
        lambda p: io.write_json_atomic(p / "m.json", {"v": float("nan")}),
        lambda p: io.write_parquet_atomic(p / "f.parquet", pd.DataFrame({"a": [1]})),
        lambda p: io.write_sqlite_atomic(p / "d.sqlite", "CREATE TABLE t(a)", [("t", 1, [(1,)])]),
    ]
    for write in writers:
        events.clear()
        path = write(tmp_path)
        assert events == ["fsync-file", "rename", "fsync-dir"], (path, events)
        assert path.is_file()
    assert (tmp_path / "m.json").read_text() == '{\n  "v": null\n}\n'
    assert not list(tmp_path.glob(".*.tmp"))


def test_a_signal_raises_interrupted_once_and_handlers_are_restored() -> None:
    before = signal.getsignal(signal.SIGTERM)
    with handle_signals() as handler:
        with pytest.raises(Interrupted) as caught:
            os.kill(os.getpid(), signal.SIGTERM)
        assert (caught.value.exit_code, caught.value.signal_name) == (143, "SIGTERM")
        assert handler.received == signal.SIGTERM
        os.kill(os.getpid(), signal.SIGINT)  # a second signal while unwinding: ignored
    assert signal.getsignal(signal.SIGTERM) is before
    assert Interrupted(signal.SIGINT, "/r").exit_code == 130
    assert str(Interrupted(signal.SIGINT, "/r")) == (
        "interrupted (SIGINT); run dir /r kept with its checkpoints"
    )
