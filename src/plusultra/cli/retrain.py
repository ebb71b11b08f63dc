"""`plusultra-retrain`: retrain on a fresh database and promote the challenger if it is better.

  plusultra-retrain --db new.sqlite --workdir retrain/2026-11-30 -- curriculum=full
  plusultra-retrain --db new.sqlite --workdir W --champion outputs/champion.json --margin 0.1
  plusultra-retrain --workdir W                        # resume after a failure
  plusultra-retrain step validate --workdir W --db new.sqlite -- curriculum=full
  plusultra-retrain step train --workdir W             # then backtest, compare, promote, report

Steps: validate -> train (one `plusultra` run on --db with the overrides after `--`) ->
backtest (the champion re-scored on the challenger's segments of --db) -> compare (on the
VALIDATION window: promote only if the challenger's --metric beats the champion's by more than
--margin; test figures are reported, never used) -> promote (the champion pointer, written
atomically) -> report (report.md, report.json in the workdir). A rerun resumes after the last
completed step (<workdir>/state.json). Exit codes: 0 done, 2 bad input, 1 a failure,
130/143 interrupted.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from plusultra.cli.common import fail


def _common(parser: argparse.ArgumentParser, workdir_required: bool = True) -> None:
    parser.add_argument(
        "--workdir", type=Path, required=workdir_required, help="this retrain's directory"
    )
    parser.add_argument("--db", type=Path, help="the new SQLite database (to start a retrain)")
    parser.add_argument(
        "--champion",
        type=Path,
        help="champion pointer file (default $PLUSULTRA_OUTPUT_DIR/champion.json, else "
        "outputs/champion.json)",
    )
    parser.add_argument(
        "--margin",
        type=float,
        default=0.1,
        help="required improvement of the metric, in its units (default 0.1)",
    )
    parser.add_argument(
        "--metric", default="val_sharpe", help="val_* backtest metric deciding (val_sharpe)"
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="plusultra-retrain",
        usage="plusultra-retrain --workdir DIR [--db DB] [--champion FILE] [--margin M] "
        "[--metric val_*] [-- OVERRIDES ...]\n       plusultra-retrain step NAME --workdir DIR "
        "[...]",
        description="Retrain on a fresh database; promote the challenger only if it beats the "
        "champion on validation by the margin. Overrides for the `plusultra` run follow `--`.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=__doc__.split("\n", 1)[1],
    )
    _common(parser)
    return parser


def build_step_parser() -> argparse.ArgumentParser:
    from plusultra.retrain.state import STEPS

    parser = argparse.ArgumentParser(
        prog="plusultra-retrain step",
        description="Run one step now (for Dagster / Airflow); the first step of a workdir "
        "needs --db (and the overrides after `--`), later ones only --workdir.",
    )
    parser.add_argument("name", choices=STEPS, help="the step")
    _common(parser)
    return parser


def _settings(args: argparse.Namespace, overrides: list[str], given: list[str]):
    """Settings from the arguments, or None when only --workdir was given (resume)."""
    from plusultra.retrain.champion import default_pointer
    from plusultra.retrain.state import Settings

    if args.db is None:
        flags = ("--champion", "--margin", "--metric")
        extra = [f for f in flags if any(a == f or a.startswith(f"{f}=") for a in given)]
        if extra or overrides:
            from plusultra.errors import ConfigError

            raise ConfigError(
                f"{', '.join(extra) or 'overrides'} without --db: settings are given once, "
                "when a retrain starts (a rerun with only --workdir resumes it)"
            )
        return None
    champion = args.champion if args.champion is not None else default_pointer()
    return Settings(
        db=str(args.db.resolve()),
        champion=str(champion.resolve()),
        margin=args.margin,
        metric=args.metric,
        overrides=list(overrides),
    )


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    overrides: list[str] = []
    if "--" in argv:
        cut = argv.index("--")
        argv, overrides = argv[:cut], argv[cut + 1 :]
    step = bool(argv) and argv[0] == "step"
    args = (build_step_parser() if step else build_parser()).parse_args(argv[1:] if step else argv)
    try:
        from plusultra.retrain.pipeline import run_pipeline, run_step
        from plusultra.retrain.state import RetrainState

        settings = _settings(args, overrides, argv)
        if step:
            args.workdir.mkdir(parents=True, exist_ok=True)
            state = RetrainState.open(args.workdir, settings)
            run_step(state, args.name)
            print(f"plusultra-retrain: step {args.name} completed ({state.path})")
        else:
            state = run_pipeline(args.workdir, settings)
            print(f"plusultra-retrain: done ({state.workdir / 'report.md'})")
    except Exception as exc:  # noqa: BLE001 - reported as one message
        fail("plusultra-retrain", exc)


if __name__ == "__main__":
    main(sys.argv[1:])
