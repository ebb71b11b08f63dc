"""Run issue 15's results recipe: ``python -m experiments.results [--smoke] [--out DIR] ...``.

The full recipe (about 1.5 to 2 hours on 2 CPU cores) runs into ``outputs/results`` and writes
docs/results.md; ``--smoke`` (minutes) runs a tiny variant into a temporary dir (or ``--out``)
and writes ``<out>/results.md``. Finished runs in the output dir are not rerun.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

from experiments.results import smoke
from experiments.results.recipe import FULL, REPO, SMOKE, run_recipe


def report(out: Path, doc: Path, command: str) -> None:
    """The results page from the catalogue (experiments/results/report.py), else a summary."""
    try:
        from experiments.results.report import write_results
    except ImportError as exc:  # the page writer is not in this checkout
        from plusultra.catalogue.query import connect

        print(f"({exc}; printing the catalogue instead of writing {doc})")
        con = connect(out / "catalogue")
        sql = (
            "SELECT sweep_name, backbone, depth, horizon, features, curriculum, seed, "
            "round(val_sharpe, 3) AS val_sharpe, round(test_sharpe, 3) AS test_sharpe, "
            "round(duration_s) AS seconds FROM runs WHERE status = 'completed' "
            "ORDER BY sweep_name, backbone, depth, horizon, seed"
        )
        print(con.execute(sql).df().to_string(index=False))
        return
    write_results(out, doc, command)
    print(f"wrote {doc}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--smoke", action="store_true", help="the tiny variant (minutes)")
    parser.add_argument(
        "--out",
        type=Path,
        help="runs and catalogue; finished runs there are reused "
        "(default: outputs/results, or a new temporary dir with --smoke)",
    )
    parser.add_argument("--no-run", action="store_true", help="start no run; report --out")
    parser.add_argument("--no-doc", action="store_true", help="write no results page")
    parser.add_argument(
        "--jobs",
        type=int,
        default=None,
        help="runs in parallel (>1: Hydra's joblib launcher, cores // jobs threads each); "
        "default: 2 for the full recipe, 1 with --smoke",
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch/BLAS threads per run (OMP_NUM_THREADS); default: 2 with --smoke, else torch's",
    )
    parser.add_argument(
        "--write-expected",
        action="store_true",
        help=f"with --smoke: store its metrics as the regression guard's ({smoke.EXPECTED})",
    )
    args = parser.parse_args(argv)
    if args.write_expected and not args.smoke:
        parser.error("--write-expected needs --smoke")
    sizes = SMOKE if args.smoke else FULL
    if args.out is None:
        if args.no_run and args.smoke:
            parser.error("--no-run --smoke needs --out (a smoke run's dir)")
        out = (
            Path(tempfile.mkdtemp(prefix="results-smoke-"))
            if args.smoke
            else REPO / "outputs" / "results"
        )
    else:
        out = args.out
    out = out.resolve()
    threads = args.threads if args.threads is not None else (2 if args.smoke else None)
    print(f"output dir: {out}", flush=True)
    jobs = args.jobs if args.jobs is not None else (1 if args.smoke else 2)
    best = run_recipe(sizes, out, run=not args.no_run, jobs=jobs, threads=threads)
    if args.write_expected:
        data = smoke.collect(
            out / "catalogue", None if best is None else (best.family, best.depth, best.horizon)
        )
        print(f"wrote {smoke.write_expected(data)}")
    if not args.no_doc:
        doc = out / "results.md" if args.smoke else REPO / "docs" / "results.md"
        command = "python -m experiments.results" + (" --smoke" if args.smoke else "")
        report(out, doc, command)


if __name__ == "__main__":
    main(sys.argv[1:])
