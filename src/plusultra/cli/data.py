"""`plusultra-data`: make, check and describe market databases.

plusultra-data fixture --path market.sqlite --symbols 50 --days 2520 --seed 1
plusultra-data validate market.sqlite
"""

from __future__ import annotations

import argparse
import sys

from plusultra.cli.common import fail


def _fixture(args: argparse.Namespace) -> None:
    from plusultra.data.fixture import generate_fixture

    path = generate_fixture(
        args.path,
        n_symbols=args.symbols,
        n_days=args.days,
        seed=args.seed,
        start=args.start,
        n_sectors=args.sectors,
    )
    print(f"wrote {path} ({args.symbols} symbols x {args.days} business days, seed {args.seed})")


def _validate(args: argparse.Namespace) -> None:
    from plusultra.data.panel import load_panel

    panel = load_panel(args.db, validate=True)
    t, s = panel.shape
    first, last = str(panel.dates[0])[:10], str(panel.dates[-1])[:10]
    print(
        f"{args.db}: valid ({s} symbols, {t} bars, {first}..{last}, "
        f"indicators: {', '.join(sorted(panel.indicators)) or 'none'})"
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="plusultra-data",
        description="Make and check SQLite market databases (see docs/sqlite_schema.md).",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=__doc__.split("\n", 1)[1],
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    fx = sub.add_parser(
        "fixture",
        help="write the synthetic market database (deterministic by seed)",
        description="Write a synthetic market database: regime-switching volatility, fat tails, "
        "sector correlation, volume linked to volatility, splits and dividends, listings and "
        "delistings, and a weak predictable component. Written atomically.",
    )
    fx.add_argument("--path", required=True, help="SQLite file to write (overwritten)")
    fx.add_argument("--symbols", type=int, default=16, help="number of symbols (default 16)")
    fx.add_argument("--days", type=int, default=1260, help="business days (default 1260)")
    fx.add_argument("--seed", type=int, default=0, help="generator seed (default 0)")
    fx.add_argument("--start", default="2012-01-03", help="first business day (ISO date)")
    fx.add_argument("--sectors", type=int, default=4, help="number of sectors (default 4)")
    fx.set_defaults(func=_fixture)
    va = sub.add_parser(
        "validate",
        help="check a database against the contract",
        description="Run every pandera check on every table; list all failures at once.",
    )
    va.add_argument("db", help="SQLite file")
    va.set_defaults(func=_validate)
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except Exception as exc:  # noqa: BLE001 - reported as one message
        fail("plusultra-data", exc)


if __name__ == "__main__":
    main(sys.argv[1:])
