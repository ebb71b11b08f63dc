"""`plusultra-retrain`: steps, resume, the champion pointer, and validation-only promotion.

Fast tests drive the real pipeline and CLI with the expensive steps (validate, train,
backtest) replaced by small in-file fakes that write what the real ones write; the slow tests
run the whole thing on the tiny fixture database (real `plusultra` runs in subprocesses).
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from plusultra.cli.retrain import main
from plusultra.errors import ConfigError, DataError
from plusultra.io import write_json_atomic
from plusultra.retrain import steps
from plusultra.retrain.champion import read_pointer, write_pointer
from plusultra.retrain.compare import decide
from plusultra.retrain.pipeline import run_pipeline
from plusultra.retrain.report import write_report
from plusultra.retrain.rescore import rescore
from plusultra.retrain.state import RetrainState, Settings
from tests.conftest import TINY

REAL_BACKTEST = steps.backtest
SEGMENTS = {"train": ["2012-01-03", "2012-06-01"], "val": ["2012-07-02", "2012-09-03"],
            "test": ["2012-10-01", "2012-12-03"]}  # fmt: skip


def _exit(argv: list[str], capsys) -> tuple[int, str]:
    with pytest.raises(SystemExit) as code:
        main(argv)
    return code.value.code, capsys.readouterr().err


# ------------------------------------------------------------------ compare (validation only)
def test_no_champion_promotes_the_first_challenger():
    d = decide("val_sharpe", "maximize", 0.1, {"val_sharpe": -0.5}, None)
    assert d.promote and d.champion is None and "no champion" in d.reason


@pytest.mark.parametrize(
    ("new", "old", "margin", "direction", "promote"),
    [
        (1.25, 1.0, 0.1, "maximize", True),
        (1.05, 1.0, 0.1, "maximize", False),  # better, but not by the margin
        (1.5, 1.0, 0.5, "maximize", False),  # by exactly the margin: not more than it
        (0.5, 1.0, 0.1, "maximize", False),
        (0.5, 1.0, 0.1, "minimize", True),  # e.g. val_turnover: lower is better
        (1.0, 1.0, 0.0, "maximize", False),  # a tie never replaces the champion
    ],
)
def test_margin_and_direction(new, old, margin, direction, promote):
    d = decide("val_sharpe", direction, margin, {"val_sharpe": new}, {"val_sharpe": old})
    assert d.promote is promote
    assert d.improvement == pytest.approx((new - old) * (1 if direction == "maximize" else -1))


def test_decide_refuses_test_figures_and_test_metrics():
    with pytest.raises(ConfigError, match="validation figures only"):
        decide("val_sharpe", "maximize", 0.1, {"val_sharpe": 1.0, "test_sharpe": 9.0}, None)
    with pytest.raises(ConfigError, match="val_"):
        decide("test_sharpe", "maximize", 0.1, {"test_sharpe": 1.0}, None)
    with pytest.raises(ConfigError, match="no such validation backtest metric"):
        decide("val_loss", "minimize", 0.0, {"val_loss": 1.0}, {"val_sharpe": 1.0})


# ---------------------------------------------------------------------- champion pointer
def test_pointer_keeps_the_previous_one_level_deep(tmp_path):
    path = tmp_path / "champion.json"
    assert read_pointer(path) is None
    first = write_pointer(path, tmp_path / "a", "val_sharpe", 1.0, None)
    second = write_pointer(path, tmp_path / "b", "val_sharpe", 1.5, first)
    third = write_pointer(path, tmp_path / "c", "val_sharpe", 2.0, second)
    assert read_pointer(path) == third
    assert third["previous"]["run_dir"] == str(tmp_path / "b")
    assert third["previous"]["previous"] is None  # one level: the file stays small
    assert set(third) >= {"run_dir", "promoted_at", "metric", "value", "previous"}


def test_pointer_is_always_complete_json(tmp_path, monkeypatch):
    """A reader polling the pointer while it is rewritten never sees a partial file, and a
    write that fails before its rename leaves the old pointer as it was."""
    path = tmp_path / "champion.json"
    write_pointer(path, tmp_path / "run0", "val_sharpe", 0.0, None)
    seen, errors, stop = set(), [], threading.Event()

    def reader():
        while not stop.is_set():
            try:
                seen.add(json.loads(path.read_text())["run_dir"])
            except Exception as exc:  # noqa: BLE001 - any failure is what we look for
                errors.append(exc)

    thread = threading.Thread(target=reader)
    thread.start()
    previous = read_pointer(path)
    for i in range(1, 60):
        previous = write_pointer(path, tmp_path / f"run{i}", "val_sharpe", float(i), previous)
    stop.set()
    thread.join()
    assert not errors and len(seen) > 1
    before = path.read_bytes()

    def broken_replace(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr("plusultra.io.os.replace", broken_replace)
    with pytest.raises(OSError):
        write_pointer(path, tmp_path / "other", "val_sharpe", 9.0, previous)
    assert path.read_bytes() == before
    assert not list(tmp_path.glob(".champion.json*"))  # no temporary file left behind


def test_a_bad_pointer_is_a_clear_error(tmp_path):
    path = tmp_path / "champion.json"
    path.write_text('{"run_dir": "/x"}')
    with pytest.raises(Exception, match="missing key"):
        read_pointer(path)


# ---------------------------------------------------- the pipeline with fake heavy steps
class Fakes:
    """validate / train / backtest stand-ins writing what the real steps write; the real
    compare, promote and report run on their outputs."""

    def __init__(self, val: float, test: float, champion_val: float = 1.0, champion_test=1.0):
        self.calls: list[str] = []
        self.val, self.test = val, test
        self.champion_val, self.champion_test = champion_val, champion_test
        self.fail: set[str] = set()

    def install(self, monkeypatch) -> Fakes:
        for name in ("validate", "train", "backtest"):
            monkeypatch.setattr(steps, name, getattr(self, name))
        return self

    def _enter(self, name: str) -> None:
        self.calls.append(name)
        if name in self.fail:
            self.fail.discard(name)
            raise RuntimeError(f"{name} killed")

    def validate(self, state):
        self._enter("validate")
        return {"report": "validation.md"}

    def train(self, state):
        self._enter("train")
        run = state.workdir / "outputs" / "runs" / "d" / f"t{len(self.calls)}"
        run.mkdir(parents=True)
        write_json_atomic(run / "metrics.json", {"val_sharpe": self.val, "test_sharpe": self.test})
        return {"run_dir": str(run)}

    def backtest(self, state):
        run = state.output("train", "backtest")["run_dir"]
        self._enter("backtest")
        pointer = read_pointer(state.settings.champion)
        figures = {
            "challenger": {"run_dir": run, "metrics": {"val_sharpe": self.val,
                                                       "test_sharpe": self.test}},
            "champion": None if pointer is None else {
                "run_dir": pointer["run_dir"],
                "metrics": {"val_sharpe": self.champion_val, "test_sharpe": self.champion_test},
            },
            "segments": SEGMENTS,
            "pointer": pointer,
        }  # fmt: skip
        return {"file": str(write_json_atomic(state.workdir / "backtest.json", figures))}


@pytest.fixture
def settings(tmp_path) -> Settings:
    db = tmp_path / "new.sqlite"
    db.write_bytes(b"")
    return Settings(db=str(db), champion=str(tmp_path / "champion.json"), margin=0.1)


def test_pipeline_promotes_then_keeps(settings, tmp_path, monkeypatch):
    Fakes(val=0.4, test=0.1).install(monkeypatch)
    run_pipeline(tmp_path / "w1", settings)
    pointer = read_pointer(settings.champion)
    assert pointer["value"] == 0.4 and pointer["previous"] is None
    report = json.loads((tmp_path / "w1" / "report.json").read_text())
    assert report["promoted"] and report["figures"]["test_sharpe"]["challenger"] == 0.1

    before = Path(settings.champion).read_bytes()
    Fakes(val=1.05, test=5.0, champion_val=1.0).install(monkeypatch)  # better, not by 0.1
    run_pipeline(tmp_path / "w2", settings)
    assert Path(settings.champion).read_bytes() == before
    md = (tmp_path / "w2" / "report.md").read_text()
    assert "KEPT the champion" in md and "| test_sharpe | 5 | 1 |" in md

    Fakes(val=1.3, test=-2.0, champion_val=1.0).install(monkeypatch)
    run_pipeline(tmp_path / "w3", settings)
    pointer = read_pointer(settings.champion)
    assert pointer["value"] == 1.3
    assert pointer["previous"]["value"] == 0.4  # the pointer it replaced


def test_decision_does_not_read_test_figures(settings, tmp_path, monkeypatch):
    """Same validation figures, wildly different test figures: the same decision."""
    decisions = []
    for i, (test, champion_test) in enumerate([(5.0, -5.0), (-5.0, 5.0), (float("nan"), 0.0)]):
        write_pointer(settings.champion, tmp_path / "champ", "val_sharpe", 1.0, None)
        Fakes(val=1.2, test=test, champion_val=1.0, champion_test=champion_test).install(
            monkeypatch
        )
        state = run_pipeline(tmp_path / f"w{i}", settings)
        decisions.append(state.data["outputs"]["compare"])
    assert all(d == decisions[0] for d in decisions) and decisions[0]["promote"]


def test_a_failed_step_resumes_without_redoing_earlier_ones(settings, tmp_path, monkeypatch):
    fakes = Fakes(val=0.4, test=0.1).install(monkeypatch)
    fakes.fail = {"backtest"}
    with pytest.raises(RuntimeError, match="backtest killed"):
        run_pipeline(tmp_path / "w", settings)
    state = RetrainState.open(tmp_path / "w", None)
    assert state.completed == ["validate", "train"] and state.data["running"] == "backtest"
    assert read_pointer(settings.champion) is None

    run_pipeline(tmp_path / "w", None)  # a rerun with the workdir only
    assert fakes.calls == ["validate", "train", "backtest", "backtest"]
    assert read_pointer(settings.champion)["value"] == 0.4
    run_pipeline(tmp_path / "w", None)  # everything done: nothing runs again
    assert fakes.calls == ["validate", "train", "backtest", "backtest"]


def test_cli_resumes_after_a_failure_with_exit_code_1(settings, tmp_path, monkeypatch, capsys):
    fakes = Fakes(val=0.4, test=0.1).install(monkeypatch)
    real = steps.compare

    def killed(state):
        raise RuntimeError("compare killed")

    monkeypatch.setattr(steps, "compare", killed)
    w = str(tmp_path / "w")
    argv = ["--db", settings.db, "--workdir", w, "--champion", settings.champion]
    code, err = _exit(argv, capsys)
    assert code == 1 and "compare killed" in err
    monkeypatch.setattr(steps, "compare", real)
    main(["--workdir", w])
    assert "resuming at step compare (validate, train, backtest done)" in capsys.readouterr().out
    assert fakes.calls == ["validate", "train", "backtest"]
    assert read_pointer(settings.champion) is not None


def test_step_commands_and_missing_inputs(settings, tmp_path, monkeypatch, capsys):
    fakes = Fakes(val=0.4, test=0.1).install(monkeypatch)
    w = str(tmp_path / "w")
    start = ["--db", settings.db, "--champion", settings.champion]
    code, err = _exit(["step", "backtest", "--workdir", w, *start], capsys)
    assert code == 2
    assert "step backtest: needs the output of step train" in err
    assert "plusultra-retrain step train --workdir" in err
    for name in ("train", "backtest", "compare", "promote", "report"):
        main(["step", name, "--workdir", w])
    assert fakes.calls == ["train", "backtest"]
    assert read_pointer(settings.champion)["value"] == 0.4
    main(["step", "compare", "--workdir", w])  # rerunning a step forgets the later ones
    assert RetrainState.open(w, None).completed == ["train", "backtest", "compare"]
    code, err = _exit(["step", "report", "--workdir", w], capsys)
    assert code == 2 and "step report: needs the output of step promote" in err


def test_cli_bad_input_exits_2(settings, tmp_path, capsys):
    w = str(tmp_path / "w")
    code, err = _exit(["--db", str(tmp_path / "nope.sqlite"), "--workdir", w], capsys)
    assert code == 2 and "no such file" in err
    code, err = _exit(["--db", settings.db, "--workdir", w, "--", "data.path=x.sqlite"], capsys)
    assert code == 2 and "sets it itself" in err
    code, err = _exit(["--db", settings.db, "--workdir", w, "--metric", "test_sharpe"], capsys)
    assert code == 2 and "val_" in err
    code, err = _exit(["--db", settings.db, "--workdir", w, "--margin", "-1"], capsys)
    assert code == 2 and "--margin" in err
    code, err = _exit(["--workdir", str(tmp_path / "empty")], capsys)
    assert code == 2 and "give --db" in err
    RetrainState.open(w, settings)
    code, err = _exit(["--db", settings.db, "--workdir", w, "--margin", "0.5"], capsys)
    assert code == 2 and "other settings" in err and "margin" in err


def test_backtest_refuses_a_pointer_to_an_unfinished_run(settings, tmp_path, monkeypatch):
    Fakes(val=0.4, test=0.1).install(monkeypatch)
    monkeypatch.setattr(steps, "backtest", REAL_BACKTEST)
    write_pointer(settings.champion, tmp_path / "gone", "val_sharpe", 1.0, None)
    with pytest.raises(DataError, match="step backtest: champion pointer .* not a finished run"):
        run_pipeline(tmp_path / "w", settings)
    assert RetrainState.open(tmp_path / "w", None).completed == ["validate", "train"]


def test_report_shows_drift_rows_when_the_run_has_them(settings, tmp_path):
    figures = {
        "challenger": {"run_dir": "/c", "metrics": {"val_sharpe": 1.0, "test_max_psi": 0.3}},
        "champion": {"run_dir": "/p", "metrics": {"val_sharpe": 0.5}},
        "segments": SEGMENTS,
    }
    decision = decide("val_sharpe", "maximize", 0.1, {"val_sharpe": 1.0}, {"val_sharpe": 0.5})
    md, _ = write_report(tmp_path, settings, figures, decision.as_dict(), {"promoted": True})
    text = md.read_text()
    assert "| test_max_psi | 0.3 | – |" in text and "val_max_psi" not in text
    assert "| val_sharpe (decides) | 1 | 0.5 |" in text and "PROMOTED" in text


def test_train_resumes_an_interrupted_run(settings, tmp_path, monkeypatch):
    """An earlier attempt's unfinished run with a checkpoint: plusultra gets resume=true."""
    state = RetrainState.open(tmp_path / "w", settings)
    killed = state.workdir / "outputs" / "runs" / "2026-01-01" / "10-00-00_1-abc"
    (killed / "checkpoints").mkdir(parents=True)
    (killed / "checkpoints" / "last.ckpt").write_bytes(b"x")
    commands = []

    def fake_call(cmd):
        commands.append(cmd)
        write_json_atomic(killed / "metrics.json", {"val_sharpe": 1.0})
        return 0

    monkeypatch.setattr(steps, "run_child", fake_call)
    out = steps.train(state)
    assert commands[0][-1] == "resume=true" and f"data.path={settings.db}" in commands[0]
    assert out == {"run_dir": str(killed.resolve()), "resumed": True}
    monkeypatch.setattr(steps, "run_child", lambda cmd: 2)
    with pytest.raises(steps.TrainingFailed) as failed:
        steps.train(state)
    assert failed.value.exit_code == 2


def test_a_sigterm_to_retrain_is_forwarded_to_the_training_run(tmp_path):
    """An orchestrator stopping plusultra-retrain stops the run cleanly (it can resume)."""
    ready = tmp_path / "ready"
    child = (
        "import pathlib, signal, sys, time\n"
        "signal.signal(signal.SIGTERM, lambda *a: sys.exit(143))\n"
        f"pathlib.Path({str(ready)!r}).touch()\n"
        "time.sleep(60)\n"
    )

    def stop_us():
        while not ready.exists():
            time.sleep(0.02)
        os.kill(os.getpid(), signal.SIGTERM)

    before = signal.getsignal(signal.SIGTERM)
    threading.Thread(target=stop_us, daemon=True).start()
    assert steps.run_child([sys.executable, "-c", child]) == 143  # the child got it, not us
    assert signal.getsignal(signal.SIGTERM) is before  # our handler restored


# -------------------------------------------------------------- real runs (slow)
REAL = [*TINY, "evaluation.bootstrap=0"]


def _perturb_test_prices(src: Path, dst: Path, first_test_day: str) -> Path:
    """A copy of `src` whose bars from `first_test_day` on have OHLC scaled by a random
    factor per bar (a valid database: the same factor for open, high, low and close)."""
    with sqlite3.connect(src) as a, sqlite3.connect(dst) as b:
        a.backup(b)
    with sqlite3.connect(dst) as con:
        rows = con.execute(
            "SELECT rowid FROM series WHERE timestamp >= ?", (first_test_day,)
        ).fetchall()
        factors = np.random.default_rng(0).uniform(0.9, 1.1, len(rows))
        con.executemany(
            "UPDATE series SET open = open * ?, high = high * ?, low = low * ?, "
            "close = close * ? WHERE rowid = ?",
            [(f, f, f, f, r) for f, (r,) in zip(factors, rows, strict=True)],
        )
    return dst


@pytest.fixture(scope="module")
def first(tiny_db, tmp_path_factory):
    """The first retrain on the tiny database: no champion yet."""
    tmp = tmp_path_factory.mktemp("retrain")
    champion = tmp / "champion.json"
    main(["--db", str(tiny_db), "--workdir", str(tmp / "w1"), "--champion", str(champion),
          "--", *REAL])  # fmt: skip
    return tmp, champion


@pytest.mark.slow
def test_first_retrain_promotes_and_rescoring_reproduces_the_run(first, tiny_db):
    tmp, champion = first
    pointer = read_pointer(champion)
    report = json.loads((tmp / "w1" / "report.json").read_text())
    run = Path(report["challenger"]["run_dir"])
    assert report["promoted"] and pointer["run_dir"] == str(run)
    metrics = json.loads((run / "metrics.json").read_text())
    assert pointer["value"] == metrics["val_sharpe"] and pointer["previous"] is None
    # the champion re-scoring path on the run itself gives the run's own figures
    scored = rescore(run, run, str(tiny_db), tmp)
    assert scored.val.metrics["sharpe"] == pytest.approx(metrics["val_sharpe"], rel=1e-9)
    assert scored.test.metrics["sharpe"] == pytest.approx(metrics["test_sharpe"], rel=1e-9)


@pytest.mark.slow
def test_worse_challenger_keeps_the_pointer_and_test_prices_do_not_decide(
    first, tiny_db, monkeypatch
):
    """seed=5 on the same db and on a copy whose TEST prices are perturbed: the validation
    figures (both sides) and the decision agree, the test figures differ; a margin no
    challenger can beat keeps the pointer byte for byte, also across a failure and resume."""
    tmp, champion = first
    before = champion.read_bytes()
    seg = json.loads((tmp / "w1" / "backtest.json").read_text())["segments"]
    perturbed = _perturb_test_prices(tiny_db, tmp / "perturbed.sqlite", seg["test"][0])
    results = []
    for name, db in (("same", tiny_db), ("perturbed", perturbed)):
        pointer = tmp / f"champion_{name}.json"
        pointer.write_bytes(before)
        w = tmp / f"w_{name}"
        main(["--db", str(db), "--workdir", str(w), "--champion", str(pointer),
              "--margin", "0", "--", *REAL, "seed=5"])  # fmt: skip
        results.append(json.loads((w / "report.json").read_text()))
    same, pert = results
    assert same["decision"]["promote"] == pert["decision"]["promote"]
    for key in ("challenger", "champion"):
        assert same["decision"][key] == pytest.approx(pert["decision"][key], rel=1e-9)
    for side in ("challenger", "champion"):
        a, b = same[side]["metrics"], pert[side]["metrics"]
        assert a["val_sharpe"] == pytest.approx(b["val_sharpe"], rel=1e-9)
        assert a["test_sharpe"] != pytest.approx(b["test_sharpe"], rel=1e-6)

    # a worse challenger (margin 1e6): the compare step fails once, the rerun resumes there
    w = tmp / "w_keep"
    real = steps.compare
    monkeypatch.setattr(steps, "compare", lambda state: (_ for _ in ()).throw(OSError("x")))
    with pytest.raises(SystemExit):
        main(["--db", str(tiny_db), "--workdir", str(w), "--champion", str(champion),
              "--margin", "1e6", "--", *REAL, "seed=5"])  # fmt: skip
    monkeypatch.setattr(steps, "compare", real)
    monkeypatch.setattr(steps, "train", lambda state: pytest.fail("train ran again"))
    main(["--workdir", str(w)])
    report = json.loads((w / "report.json").read_text())
    assert not report["promoted"] and champion.read_bytes() == before
    assert len(list((w / "outputs").glob("runs/*/*/metrics.json"))) == 1


@pytest.mark.slow
def test_a_retrain_stopped_during_training_resumes_the_run(tiny_db, tmp_path, capsys):
    """SIGTERM to plusultra-retrain once the run has a checkpoint: the run stops cleanly (exit
    143, forwarded), and the rerun continues it with resume=true in the same run dir."""
    w = tmp_path / "w"

    def stop_after_first_checkpoint():
        while not list(w.glob("outputs/runs/*/*/checkpoints/*.ckpt")):
            time.sleep(0.05)
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=stop_after_first_checkpoint, daemon=True).start()
    argv = ["--db", str(tiny_db), "--workdir", str(w), "--champion", str(tmp_path / "c.json")]
    code, err = _exit([*argv, "--", *REAL, "trainer.max_epochs=3"], capsys)
    assert code == 143 and "step train: plusultra exited with code 143" in err
    (killed,) = [p.parent for p in w.glob("outputs/runs/*/*/checkpoints")]
    assert not (killed / "metrics.json").exists()
    main(["--workdir", str(w)])
    out = capsys.readouterr().out
    assert "resuming at step train (validate done)" in out and "resume=true" in out
    state = RetrainState.open(w, None)
    assert state.data["outputs"]["train"] == {"run_dir": str(killed.resolve()), "resumed": True}
    assert read_pointer(tmp_path / "c.json")["run_dir"] == str(killed.resolve())
