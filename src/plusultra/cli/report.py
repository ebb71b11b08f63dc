"""`plusultra-report`: the HTML and Markdown report of a finished run, or of a multirun sweep.

  plusultra-report outputs/runs/2026-11-21/10-00-00
  plusultra-report outputs/runs/2026-11-21/10-00-00 --out /tmp/report-10-00
  plusultra-report outputs/multiruns/2026-11-21/10-00-00_123-abcdef
  plusultra-report outputs/multiruns/2026-11-21/10-00-00_123-abcdef --top 20

A run dir (it has metrics.json or .hydra/): writes report.html (self-contained: plots
embedded, inline CSS) and report.md with its plots as PNG files in report/, next to it. Every
run writes these at its end; this command rebuilds them. Reads only the run directory.

A sweep dir (multirun.yaml, or job dirs 0/, 1/, ...): writes sweep_report.html and
sweep_report.md (plots in sweep_report/). For an Optuna sweep (hydra/sweeper=plusultra_optuna):
the study (name, storage, directions, trials by state, search space), optimisation history,
fANOVA parameter importance, the Pareto front (several objectives) or the objective against
its most important parameter, and the top trials ranked on the validation objective with
validation and test metrics side by side. A plain grid (-m seed=1,2,3): its jobs and their
metrics. Reads the job dirs and the study's storage. docs/sweeps.md, "Sweep report".
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from plusultra.cli.common import fail
from plusultra.errors import DataError


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="plusultra-report",
        description="HTML and Markdown report of a finished run, or of a multirun sweep.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=__doc__.split("\n", 1)[1],
    )
    parser.add_argument(
        "path",
        type=Path,
        metavar="RUN_DIR|SWEEP_DIR",
        help="a finished run directory (has metrics.json) or a multirun sweep directory",
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=None,
        help="directory to write the report files to (default: the given directory)",
    )
    parser.add_argument(
        "--top",
        type=int,
        default=None,
        help="sweep report: rows of the top-trials table (default 10)",
    )
    return parser


def is_run_dir(path: Path) -> bool:
    """A single run's dir: its own metrics.json or .hydra/ (a sweep dir has neither)."""
    return (path / "metrics.json").is_file() or (path / ".hydra").is_dir()


def main(argv: list[str] | None = None) -> None:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.top is not None and args.top < 1:
        parser.error(f"--top must be >= 1, got {args.top}")
    try:
        from plusultra.evaluation.report.sweep_data import is_sweep_dir

        path = args.path
        if not path.is_dir():
            raise DataError(f"{path}: not a directory")
        if is_run_dir(path):
            if args.top is not None:
                raise DataError(f"{path} is a run dir; --top applies to a sweep dir only")
            from plusultra.evaluation.report.render import write_reports

            html_path, md_path = write_reports(path, args.out)
        elif is_sweep_dir(path):
            from plusultra.evaluation.report.sweep import TOP_TRIALS, write_sweep_reports

            html_path, md_path = write_sweep_reports(path, args.out, args.top or TOP_TRIALS)
        else:
            raise DataError(
                f"{path} is neither a run dir (metrics.json, .hydra/) nor a multirun sweep dir "
                "(multirun.yaml, job dirs 0/, 1/, ... with .hydra/)"
            )
    except Exception as exc:  # noqa: BLE001 - reported as one message
        fail("plusultra-report", exc)
    print(f"wrote {html_path}")
    print(f"wrote {md_path}")


if __name__ == "__main__":
    main(sys.argv[1:])
