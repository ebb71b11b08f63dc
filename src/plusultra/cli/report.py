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
import logging
import math
import sys
from pathlib import Path

from plusultra.cli.common import fail
from plusultra.errors import DataError, PlusUltraError

log = logging.getLogger(__name__)


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


def catalogue_jobs(sweep) -> list:
    """Jobs of the study's trials that ran in other sweep dirs, from their catalogue rows.

    A resumed study has one sweep dir per invocation; the catalogue (`paths.catalogue_dir` of
    the sweep's jobs) has a row per trial with `optuna.study`, `optuna.trial`, `run_dir` and
    the metrics. Nothing (and a log line) when there is no catalogue or it lacks the columns.
    """
    from plusultra.catalogue.query import query
    from plusultra.evaluation.report.sweep_data import Job

    here = {j.trial for j in sweep.jobs if j.trial is not None}
    wanted = {t.number for t in sweep.study.get_trials(deepcopy=False)} - here
    if not wanted or sweep.catalogue_dir is None or not sweep.catalogue_dir.is_dir():
        return []
    name = sweep.study.study_name.replace("'", "''")
    sql = (
        f"SELECT * FROM runs WHERE \"optuna.study\" = '{name}' AND run_dir IS NOT NULL "
        "ORDER BY finished_at"
    )
    try:
        rows = query(sweep.catalogue_dir, sql)
    except PlusUltraError as exc:  # e.g. no row has the optuna.* columns yet
        log.warning("no catalogue rows for the study's other trials: %s", exc)
        return []
    metrics = [c for c in rows.columns if c.startswith(("val_", "test_"))]
    jobs = {}
    for row in rows.to_dict("records"):
        trial = row["optuna.trial"]
        if trial is None or not math.isfinite(trial) or int(trial) not in wanted:
            continue
        values = {m: float(row[m]) for m in metrics if isinstance(row[m], int | float)}
        num = row.get("job_num")
        jobs[int(trial)] = Job(
            num=int(num) if num is not None and math.isfinite(num) else -1,
            run_dir=Path(row["run_dir"]),
            overrides=str(row.get("overrides") or "").split(),
            metrics={k: v for k, v in values.items() if math.isfinite(v)},
            study=sweep.study.study_name,
            trial=int(trial),
        )
    return list(jobs.values())


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
            from plusultra.evaluation.report.sweep_data import load_sweep

            sweep = load_sweep(path)
            if sweep.study is not None:
                sweep.elsewhere = catalogue_jobs(sweep)
            html_path, md_path = write_sweep_reports(sweep, args.out, args.top or TOP_TRIALS)
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
