"""``plusultra-review``: approve, veto or flag a run's traded positions; list and export verdicts.

  plusultra-review add outputs/runs/2026-11-30/14-05-09_48211-a1b2c3 --symbol AAPL \\
      --timestamp 2024-03-01 --verdict veto --rationale "long into earnings" --author ana
  plusultra-review list --verdict veto --symbol AAPL
  plusultra-review export --out vetoes.parquet --verdict veto
"""

from __future__ import annotations

import argparse
import sys
import textwrap
from pathlib import Path

from plusultra.errors import DataError
from plusultra.service.feedback import (
    COLUMNS,
    VERDICTS,
    ReviewStore,
    default_db,
    review_trade,
    run_id_of,
)

PROG = "plusultra-review"
LIST_FORMATS = ("table", "csv", "json")

EPILOG = textwrap.dedent(
    """\
    A verdict is about one decision of a finished run: the position it took in SYMBOL at the
    decision bar TIMESTAMP, a row of RUN_DIR/predictions.parquet (the test segment). `add`
    refuses a (symbol, timestamp) the run did not trade, and stores the run's position beside
    the verdict, the run id of the catalogue (RUN_DIR/run_id.txt) and the author. A veto needs
    a rationale. The store is SQLite (table `reviews`), by default
    $PLUSULTRA_OUTPUT_DIR/reviews.sqlite, else outputs/reviews.sqlite; the RL stage reads its
    vetoes and approvals as offline data (curriculum.stages.<ppo>.feedback, docs/rl.md).
    """
)


def _filters(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--run", help="a run id (catalogue) or a run dir")
    parser.add_argument("--symbol", help="only this symbol")
    parser.add_argument("--verdict", choices=VERDICTS, help="only this verdict")
    parser.add_argument("--author", help="only this author")
    parser.add_argument("--since", help="first decision bar (ISO-8601), inclusive")
    parser.add_argument("--until", help="last decision bar (ISO-8601), inclusive")
    parser.add_argument("--limit", type=int, help="at most this many rows")


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--db",
        type=Path,
        default=None,
        help="the review store (default: $PLUSULTRA_OUTPUT_DIR/reviews.sqlite if that is set, "
        "else outputs/reviews.sqlite)",
    )
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Annotate a run's traded positions (approve, veto, flag) and list or "
        "export the verdicts.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="{add,list,export}")
    add = sub.add_parser("add", parents=[common], help="record a verdict on one position")
    add.add_argument("run_dir", type=Path, metavar="RUN_DIR", help="the finished run")
    add.add_argument("--symbol", required=True, help="the symbol traded")
    add.add_argument("--timestamp", required=True, help="the decision bar, ISO-8601")
    add.add_argument("--verdict", required=True, choices=VERDICTS)
    add.add_argument("--rationale", default="", help="why (required for a veto)")
    add.add_argument("--author", required=True, help="who reviews")
    show = sub.add_parser("list", parents=[common], help="print the verdicts")
    _filters(show)
    show.add_argument("--format", choices=LIST_FORMATS, default="table", help="output format")
    export = sub.add_parser("export", parents=[common], help="write the verdicts to a file")
    _filters(export)
    export.add_argument(
        "--out", type=Path, required=True, help="file to write (.csv, .parquet or .json)"
    )
    export.add_argument("--format", choices=("csv", "parquet", "json"), help="default: by suffix")
    return parser


def _filter_kwargs(args: argparse.Namespace) -> dict:
    run = args.run
    if run is not None and Path(run).is_dir():  # a run dir: its catalogue id
        run = run_id_of(run)
    return dict(
        run_id=run, symbol=args.symbol, verdict=args.verdict, author=args.author,
        since=args.since, until=args.until, limit=args.limit,
    )  # fmt: skip


def run(args: argparse.Namespace) -> str:
    """Execute one command; returns what to print."""
    db = args.db if args.db is not None else default_db()
    store = ReviewStore(db)
    if args.command == "add":
        review = review_trade(
            store, args.run_dir, args.symbol, args.timestamp, args.verdict, args.author,
            args.rationale,
        )  # fmt: skip
        return (
            f"review {review.id}: {review.verdict} {review.symbol} at {review.timestamp} "
            f"(position {review.position:+.4f}) of run {review.run_id} by {review.author} "
            f"-> {db}"
        )
    if args.command == "list" and not db.is_file():
        raise DataError(f"{db}: no review store yet (plusultra-review add creates it)")
    if args.command == "list":
        frame = store.frame(**_filter_kwargs(args))
        if args.format == "csv":
            return frame.to_csv(index=False).rstrip("\n")
        if args.format == "json":
            return frame.to_json(orient="records", indent=2)
        if frame.empty:
            return "no reviews match"
        return frame[list(COLUMNS)].drop(columns="run_dir").to_string(index=False)
    if not db.is_file():
        raise DataError(f"{db}: no review store yet (plusultra-review add creates it)")
    path, n = store.export(args.out, args.format, **_filter_kwargs(args))
    return f"exported {n} review(s) to {path}"


def main(argv: list[str] | None = None) -> None:
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "limit", None) is not None and args.limit < 1:
        parser.error(f"--limit must be >= 1, got {args.limit}")
    try:
        print(run(args))
    except DataError as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        sys.exit(exc.exit_code)


if __name__ == "__main__":
    main()
