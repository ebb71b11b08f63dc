"""The six steps. Each reads the workdir's state (settings, earlier steps' outputs), does its
work, writes its files into the workdir atomically, and returns the outputs the state records.

validate: the new database against the contract (`plusultra-data validate`'s checks).
train: one `plusultra` run on it (a subprocess; resumed with `resume=true` when a previous
    attempt left an unfinished run with a checkpoint under `<workdir>/outputs`).
backtest: the champion re-scored on the challenger's segments (`rescore`); the challenger's
    own figures from its metrics.json.
compare: `compare.decide` on the validation figures.
promote: the champion pointer, when the decision says so.
report: report.md and report.json.
"""

from __future__ import annotations

import json
import logging
import signal
import subprocess
import sys
import threading
from pathlib import Path

from plusultra.errors import ConfigError, DataError, PlusUltraError
from plusultra.io import write_json_atomic, write_parquet_atomic
from plusultra.retrain.champion import read_pointer, write_pointer
from plusultra.retrain.compare import decide, validation_only
from plusultra.retrain.report import write_report
from plusultra.retrain.state import RetrainState

log = logging.getLogger("plusultra")


class TrainingFailed(PlusUltraError):
    """The `plusultra` run of the train step exited non-zero (its own message is above)."""

    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(message)
        self.exit_code = exit_code


def validate(state: RetrainState) -> dict:
    """Check the new database; its report goes to `<workdir>/validation.md`.

    Raises:
        DataError: a check fails (the summary and the report's path).
    """
    from plusultra.data.validation.checks import ValidationRules, validate_database

    db = state.settings.db
    report = validate_database(db, ValidationRules())
    path = report.write(state.workdir / "validation.md")
    if not report.ok:
        raise DataError(f"{db} fails validation: {report.summary()} (full report: {path})")
    return {"report": str(path), "rows": dict(report.n_rows)}


def runs_root(state: RetrainState) -> Path:
    """Where the challenger's run goes: `<workdir>/outputs` (its `paths.output_dir`)."""
    return state.workdir / "outputs"


def unfinished_run(root: Path) -> Path | None:
    """The newest run under `root/runs` without metrics.json but with a checkpoint."""
    runs = sorted(root.glob("runs/*/*"), key=lambda p: (p.parent.name, p.name), reverse=True)
    for run in runs:
        if not (run / "metrics.json").exists() and any((run / "checkpoints").glob("*.ckpt")):
            return run
    return None


def finished_runs(root: Path) -> list[Path]:
    return sorted(p.parent for p in root.glob("runs/*/*/metrics.json"))


def train_command(state: RetrainState, resume: bool) -> list[str]:
    """The `plusultra` command line of the challenger's run."""
    s = state.settings
    return [
        sys.executable,
        "-m",
        "plusultra.run",
        "data=sqlite",
        f"data.path={s.db}",
        f"paths.output_dir={runs_root(state)}",
        *s.overrides,
        *(["resume=true"] if resume else []),
    ]


def run_child(cmd: list[str]) -> int:
    """Run `cmd`, forwarding SIGINT and SIGTERM to it and waiting for it to stop (so that an
    orchestrator's kill interrupts the run cleanly, leaving it resumable); its exit code."""
    child = subprocess.Popen(cmd)
    if threading.current_thread() is not threading.main_thread():
        return child.wait()  # signal handlers can only be installed in the main thread
    forward = lambda signum, frame: child.send_signal(signum)  # noqa: E731
    previous = {s: signal.signal(s, forward) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        return child.wait()
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


def train(state: RetrainState) -> dict:
    """Run `plusultra` on the new database (output shown as it runs).

    Raises:
        TrainingFailed: the run exited non-zero (exit code kept: 2 bad input, 130/143 a
            signal, 1 a failure).
    """
    root = runs_root(state)
    before = set(finished_runs(root))
    resume = unfinished_run(root) is not None  # an earlier attempt was interrupted
    cmd = train_command(state, resume)
    log.info("train: %s", " ".join(cmd[2:]))
    print(f"plusultra-retrain: train: plusultra {' '.join(cmd[3:])}", flush=True)
    rc = run_child(cmd)
    if rc != 0:
        raise TrainingFailed(
            f"plusultra exited with code {rc} (its message is above; rerun "
            "plusultra-retrain to resume the run)",
            exit_code=rc if rc in (2, 130, 143) else 1,
        )
    new = [p for p in finished_runs(root) if p not in before]
    if len(new) != 1:
        raise DataError(f"{root}/runs: expected one new finished run, found {len(new)}")
    return {"run_dir": str(new[0].resolve()), "resumed": resume}


def _figures(metrics: dict) -> dict:
    """The numeric `val_*` and `test_*` entries of a metrics dict."""
    return {
        k: v
        for k, v in metrics.items()
        if k.startswith(("val_", "test_")) and isinstance(v, int | float)
    }


def backtest(state: RetrainState) -> dict:
    """Both sides' validation and test figures on the challenger's segments of the new db,
    written to `<workdir>/backtest.json` (and the champion's daily returns to parquet)."""
    from plusultra.evaluation.report.summary import segment_metrics
    from plusultra.retrain.rescore import challenger_market, rescore

    challenger = Path(state.output("train", "backtest")["run_dir"])
    if not (challenger / "metrics.json").is_file():
        raise DataError(f"challenger {challenger}: no metrics.json (not a finished run)")
    pointer = read_pointer(state.settings.champion)
    ours = _figures(json.loads((challenger / "metrics.json").read_text()))
    result = {"challenger": {"run_dir": str(challenger), "metrics": ours}, "champion": None}
    if pointer is None:
        segments = challenger_market(challenger, state.settings.db).segment_dates()
    else:
        champion = Path(pointer["run_dir"])
        if not (champion / "metrics.json").is_file():
            raise DataError(
                f"champion pointer {state.settings.champion} points at {champion}, which is "
                "not a finished run (no metrics.json)"
            )
        scored = rescore(champion, challenger, state.settings.db, state.workdir)
        segments = scored.segments
        theirs = segment_metrics("val", scored.val) | segment_metrics("test", scored.test)
        result["champion"] = {"run_dir": str(champion), "metrics": _figures(theirs)}
        write_parquet_atomic(
            state.workdir / "champion_val_backtest.parquet", scored.val.daily, index=True
        )
        write_parquet_atomic(
            state.workdir / "champion_test_backtest.parquet", scored.test.daily, index=True
        )
    result["segments"] = segments
    result["pointer"] = pointer
    path = write_json_atomic(state.workdir / "backtest.json", result)
    return {"file": str(path)}


def _backtest_file(state: RetrainState, needed_by: str) -> dict:
    path = Path(state.output("backtest", needed_by)["file"])
    if not path.is_file():
        raise DataError(f"step {needed_by}: {path} (written by step backtest) is missing")
    return json.loads(path.read_text())


def compare(state: RetrainState) -> dict:
    """The decision, from the validation figures only."""
    figures = _backtest_file(state, "compare")
    s = state.settings
    champion = figures["champion"]
    decision = decide(
        s.metric,
        s.direction,
        s.margin,
        validation_only(figures["challenger"]["metrics"]),
        None if champion is None else validation_only(champion["metrics"]),
    )
    print(f"plusultra-retrain: {'promote' if decision.promote else 'keep'}: {decision.reason}")
    return decision.as_dict() | {"champion_run_dir": champion and champion["run_dir"]}


def promote(state: RetrainState) -> dict:
    """Point the champion pointer at the challenger when the decision says so.

    Raises:
        ConfigError: the pointer changed since the backtest step (someone promoted another
            run): the comparison is stale.
    """
    decision = state.output("compare", "promote")
    challenger = state.output("train", "promote")["run_dir"]
    path = state.settings.champion
    current = read_pointer(path)
    if not decision["promote"]:
        return {"promoted": False, "pointer": current}
    if current is not None and current["run_dir"] == challenger:
        return {"promoted": True, "pointer": current}  # a rerun after the write
    compared = decision["champion_run_dir"]
    now = None if current is None else current["run_dir"]
    if now != compared:
        raise ConfigError(
            f"champion pointer {path} changed since step backtest (it points at {now}, the "
            f"challenger was compared with {compared}); rerun `plusultra-retrain step backtest "
            f"--workdir {state.workdir}` and the steps after it"
        )
    pointer = write_pointer(
        path, challenger, decision["metric"], decision["challenger"], current, state.settings.db
    )
    print(f"plusultra-retrain: promoted {challenger} ({path})")
    return {"promoted": True, "pointer": pointer}


def report(state: RetrainState) -> dict:
    """report.md and report.json in the workdir."""
    figures = _backtest_file(state, "report")
    decision = state.output("compare", "report")
    promoted = state.output("promote", "report")
    md, js = write_report(state.workdir, state.settings, figures, decision, promoted)
    print(f"plusultra-retrain: report {md}")
    return {"markdown": str(md), "json": str(js)}
