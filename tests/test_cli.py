"""The console scripts in subprocesses, as a user runs them."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pandas as pd
import pytest
import torch
from hydra.errors import HydraException, OverrideParseException

from plusultra.catalogue.query import query
from plusultra.cli.overrides import check_appended, explain_composition_error
from plusultra.errors import ConfigError
from tests.conftest import TINY, run_cli

TINY_ARGS = [a for a in TINY if not a.startswith(("depth=", "d_model="))]


def _rows(out: Path) -> pd.DataFrame:
    return query(out / "catalogue", "SELECT * FROM runs ORDER BY started_at")


def test_help_lists_groups_and_examples(tmp_path):
    res = run_cli(["plusultra.run", "--help"], tmp_path)
    assert res.returncode == 0, res.stderr
    groups = dict(line.strip().split(": ", 1) for line in res.stdout.splitlines() if ": " in line)
    assert {"hybrid", "transformer", "tcn", "moe", "multiscale"} <= set(
        groups["backbone"].split(", ")
    )
    assert "plusultra -m seed=1,2,3" in res.stdout


def test_cfg_job_shows_overrides(tmp_path):
    res = run_cli(["plusultra.run", "--cfg", "job", "backbone=transformer", "depth=3"], tmp_path)
    assert res.returncode == 0, res.stderr
    backbone = res.stdout.split("backbone:")[1].split("\nhead:")[0]
    assert "TransformerBackbone" in backbone and "depth: ${depth}" in backbone
    assert "\ndepth: 3" in res.stdout


def _blocks(run_dir: Path) -> int:
    state = torch.load(
        run_dir / "checkpoints" / "best.ckpt", map_location="cpu", weights_only=True
    )["state_dict"]
    return len({k.split(".")[2] for k in state if k.startswith("backbone.blocks.")})


def test_depth_override_changes_layers_and_params(tiny_db, tmp_path):
    for depth in (2, 3):
        res = run_cli(
            [
                "plusultra.run",
                *TINY_ARGS,
                "data=sqlite",
                f"data.path={tiny_db}",
                "backbone=transformer",
                f"depth={depth}",
                "d_model=32",
            ],
            tmp_path,
        )
        assert res.returncode == 0, res.stderr[-3000:]
    rows = query(
        tmp_path / "catalogue",
        'SELECT run_dir, backbone, depth, d_model, "backbone.depth", n_params, status, '
        "test_sharpe FROM runs ORDER BY depth",
    )
    assert rows["status"].tolist() == ["completed", "completed"]
    assert rows["backbone"].tolist() == ["transformer", "transformer"]
    assert rows["depth"].tolist() == [2, 3] and rows["backbone.depth"].tolist() == [2, 3]
    assert rows["d_model"].tolist() == [32, 32]
    assert rows["n_params"].iloc[1] > rows["n_params"].iloc[0]
    assert [_blocks(Path(d)) for d in rows["run_dir"]] == [2, 3]
    res = run_cli(
        [
            "plusultra.cli.catalogue",
            "SELECT depth, n_params FROM runs ORDER BY depth",
            "--format",
            "json",
        ],
        tmp_path,
    )
    assert res.returncode == 0, res.stderr
    assert [r["depth"] for r in json.loads(res.stdout)] == [2, 3]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["backbone=nope"], "no option 'nope' in group 'backbone'"),
        (["trainer.max_epoch=1"], "did you mean `trainer.max_epochs=1`?"),
        (["data=sqlite"], "data.path"),
        (
            ["data=sqlite", "data.path=/no/such/market.sqlite"],
            "database file not found: /no/such/market.sqlite",
        ),
        (["depth=0"], "depth"),
        (["+foo=1"], "+foo=1: nothing reads `foo`"),
        (["optimized_metric=test_sharpe"], "optimized_metric='test_sharpe'"),
    ],
    ids=[
        "unknown-option",
        "unknown-key",
        "missing-path",
        "missing-db",
        "bad-depth",
        "unread-key",
        "test-obj",
    ],
)
def test_bad_input_fails_cleanly_and_is_recorded(args, message, tmp_path):
    res = run_cli(["plusultra.run", *TINY_ARGS, *args], tmp_path)
    assert res.returncode == 2, (res.returncode, res.stderr[-3000:])
    assert res.stderr.startswith("plusultra: error:") or "plusultra: error:" in res.stderr
    assert message in res.stderr
    assert "Traceback" not in res.stderr
    rows = _rows(tmp_path)
    assert len(rows) == 1 and rows["status"].iloc[0] == "failed"
    # the row keeps Hydra's own error; the one-line message above adds the did-you-mean
    recorded = {"backbone=nope": "backbone/nope", "trainer.max_epoch=1": "trainer.max_epoch"}
    assert recorded.get(args[0], message.split(":")[0]) in rows["error"].iloc[0]
    assert not list(tmp_path.rglob("metrics.json")), "a failed run must not look like a result"


def test_an_existing_run_dir_is_refused_before_anything_is_written(tmp_path):
    taken = tmp_path / "taken"
    taken.mkdir()
    (taken / "metrics.json").write_text("{}")
    res = run_cli(["plusultra.run", *TINY_ARGS, f"hydra.run.dir={taken}"], tmp_path)
    assert res.returncode == 2, res.stderr[-3000:]
    assert f"plusultra: error: hydra.run.dir: {taken} already exists" in res.stderr
    assert sorted(p.name for p in taken.iterdir()) == ["metrics.json"]  # untouched: no .hydra
    assert _rows(tmp_path)["status"].tolist() == ["failed"]


def test_unknown_option_lists_valid_choices(tmp_path):
    res = run_cli(["plusultra.run", "backbone=hybird"], tmp_path)
    assert res.returncode == 2
    lines = res.stderr.strip().splitlines()
    assert lines[-1] == (
        "plusultra: error: backbone=hybird: no option 'hybird' in group 'backbone' "
        "(did you mean 'hybrid'?). Options: hybrid, moe, multiscale, ssm, tcn, transformer"
    )


def test_database_without_required_table(tiny_db, tmp_path):
    bad = tmp_path / "bad.sqlite"
    with sqlite3.connect(bad) as con:
        con.execute("CREATE TABLE assets(symbol TEXT PRIMARY KEY)")
    res = run_cli(["plusultra.run", *TINY_ARGS, "data=sqlite", f"data.path={bad}"], tmp_path)
    assert res.returncode == 2
    assert "lacks required table(s) series" in res.stderr
    assert _rows(tmp_path)["status"].tolist() == ["failed"]


def test_data_cli_fixture_and_validate(tmp_path):
    db = tmp_path / "m.sqlite"
    res = run_cli(
        [
            "plusultra.cli.data",
            "fixture",
            "--path",
            str(db),
            "--symbols",
            "3",
            "--days",
            "60",
            "--seed",
            "2",
        ],
        tmp_path,
    )
    assert res.returncode == 0, res.stderr
    with sqlite3.connect(db) as con:
        assert con.execute("SELECT COUNT(DISTINCT symbol) FROM series").fetchone()[0] == 3
    res = run_cli(["plusultra.cli.data", "validate", str(db)], tmp_path)
    assert res.returncode == 0 and "valid (assets: 3" in res.stdout
    with sqlite3.connect(db) as con:
        con.execute("UPDATE series SET low = high * 2 WHERE rowid = 5")
    res = run_cli(["plusultra.cli.data", "validate", str(db)], tmp_path)
    assert res.returncode == 2
    assert "series.<table>" in res.stderr or "low <= min(open, close)" in res.stderr
    res = run_cli(["plusultra.cli.data", "fixture", "--path", str(db), "--days", "5"], tmp_path)
    assert res.returncode == 2 and "n_days" in res.stderr
    res = run_cli(["plusultra.cli.data", "--help"], tmp_path)
    assert res.returncode == 0 and "fixture" in res.stdout and "validate" in res.stdout


def test_predict_cli_help_and_errors(tmp_path):
    res = run_cli(["plusultra.cli.predict", "--help"], tmp_path)
    assert res.returncode == 0 and "--db" in res.stdout
    res = run_cli(["plusultra.cli.predict", str(tmp_path), "--db", "x.sqlite"], tmp_path)
    assert res.returncode == 2 and "not a finished run" in res.stderr


def test_data_cli_validate_report_and_debug(tiny_db, tmp_path):
    import shutil

    db = tmp_path / "bad.sqlite"
    shutil.copy(tiny_db, db)
    with sqlite3.connect(db) as con:
        con.execute("UPDATE series SET close = -5 WHERE rowid IN (3, 4)")
        con.execute("UPDATE series SET volume = -1 WHERE rowid = 9")
    report = tmp_path / "report.md"
    res = run_cli(["plusultra.cli.data", "validate", str(db), "--report", str(report)], tmp_path)
    assert res.returncode == 2 and "Traceback" not in res.stderr
    assert "series" in res.stderr and "close" in res.stderr and "volume" in res.stderr
    text = report.read_text()
    assert "> 0" in text and ">= 0" in text
    res = run_cli(["plusultra.cli.data", "--debug", "validate", "/no/such.sqlite"], tmp_path)
    assert res.returncode == 1 and "Traceback" in res.stderr
    res = run_cli(["plusultra.cli.data", "validate", "/no/such.sqlite"], tmp_path)
    assert res.returncode == 2 and "database file not found" in res.stderr


def test_data_cli_import_and_features(tmp_path):
    rows = (
        "date,open,high,low,close,volume\n"
        "2020-01-02,10,11,9,10.5,100\n2020-01-03,10.5,12,10,11,120\n"
    )
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "acme.csv").write_text(rows)
    (tmp_path / "in" / "bolt.csv").write_text(rows)
    out = tmp_path / "m.sqlite"
    res = run_cli(
        ["plusultra.cli.data", "import", str(tmp_path / "in"), "--out", str(out)], tmp_path
    )
    assert res.returncode == 0, res.stderr
    with sqlite3.connect(out) as con:
        assert sorted(r[0] for r in con.execute("SELECT symbol FROM assets")) == ["ACME", "BOLT"]
    res = run_cli(
        ["plusultra.cli.data", "import", str(tmp_path / "in"), "--out", str(out)], tmp_path
    )
    assert res.returncode == 2 and "overwrite" in res.stderr
    res = run_cli(["plusultra.cli.data", "features", "--markdown"], tmp_path)
    from plusultra.data.features.pipeline import registry_markdown

    assert res.returncode == 0 and res.stdout.strip() == registry_markdown().strip()


# ---------------------------------------------------------------- overrides nothing reads


def _appended(overrides: list[str]) -> None:
    from tests.conftest import compose_config

    cfg = compose_config(overrides)
    check_appended(cfg, overrides, cfg.hydra.runtime.choices)


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("+foo=1", "+foo=1: nothing reads `foo`"),
        ("+sed=1", "did you mean `seed=1`?"),
        ("+data.something_unused=2", "SQLiteDataModule takes no argument `something_unused`"),
        ("+trainer.max_epoch=2", "did you mean `trainer.max_epochs=2`?"),
        ("+data.fixture.x=1", "`data.fixture` has no `_target_`"),
    ],
)
def test_appended_key_that_nothing_reads_is_refused(override, message):
    with pytest.raises(ConfigError) as err:
        _appended([override])
    assert message in str(err.value)


@pytest.mark.parametrize(
    "overrides",
    [
        ["+trainer.gradient_clip_algorithm=norm"],  # a Trainer argument
        ["+loss.reduction=sum"],  # torch.nn.MSELoss(reduction=...)
        [
            "+callbacks.es._target_=lightning.pytorch.callbacks.EarlyStopping",
            "+callbacks.es.monitor=x",
        ],
        ["++foo=1"],  # set-or-add is the explicit escape hatch
        ["seed=3", "backbone=tcn"],  # plain sets and group choices are Hydra's to check
    ],
)
def test_appended_constructor_arguments_are_accepted(overrides):
    _appended(overrides)


def test_composition_errors_become_one_line_with_did_you_mean():
    from hydra.errors import MissingConfigException

    missing = MissingConfigException("long text", "backbone/hybird", ["hybrid", "moe", "tcn"])
    assert explain_composition_error(missing, ["depth=1", "backbone=hybird"]) == (
        "backbone=hybird: no option 'hybird' in group 'backbone' (did you mean 'hybrid'?). "
        "Options: hybrid, moe, tcn"
    )
    unknown = HydraException("Could not override 'trainer.max_epoch'.\nTo append use +...")
    line = explain_composition_error(unknown, ["trainer.max_epoch=1"])
    assert line.startswith("trainer.max_epoch=1: the config has no key `trainer.max_epoch`")
    assert "did you mean `trainer.max_epochs=1`?" in line and "\n" not in line
    group = explain_composition_error(
        HydraException("Could not override 'bakbone'."), ["bakbone=tcn"]
    )
    assert "did you mean `backbone=tcn`?" in group
    assert explain_composition_error(HydraException("something else"), []) is None
    exists = HydraException(
        "Could not append to config. An item is already at 'trainer.max_epochs'.\nEither ..."
    )
    assert explain_composition_error(exists, ["+trainer.max_epochs=2"]) == (
        "+trainer.max_epochs=2: `trainer.max_epochs` already exists; set it without +: "
        "`trainer.max_epochs=2`"
    )
    parse = OverrideParseException("depth=[1", "no viable alternative at input '[1'\nSee docs")
    assert explain_composition_error(parse, ["depth=[1"]) == (
        "depth=[1: no viable alternative at input '[1' (See docs)"
    )


def test_fail_prints_the_hint(capsys):
    from hydra.errors import MissingConfigException

    from plusultra.cli.common import fail

    exc = MissingConfigException("Could not find 'head/quantle'", "head/quantle", ["quantile"])
    with pytest.raises(SystemExit) as code:
        fail("plusultra", exc, overrides=["head=quantle"])
    assert code.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("plusultra: error: head=quantle: no option 'quantle' in group 'head'")
    assert "did you mean 'quantile'?" in err


def test_overrides_conf_dir_is_the_entrypoints():
    from plusultra.cli import overrides
    from plusultra.run import CONF_DIR

    assert overrides.CONF_DIR == CONF_DIR
