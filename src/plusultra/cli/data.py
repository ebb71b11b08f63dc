"""`plusultra-data`: make, import, check and describe market databases.

plusultra-data fixture --path market.sqlite --symbols 50 --days 2520 --seed 1
plusultra-data import prices/ --out market.sqlite            # one CSV/parquet per symbol
plusultra-data import long.parquet --out market.sqlite       # long format with a symbol column
plusultra-data import q.csv --out m.sqlite --columns close=Last,volume=Vol --drop-duplicates
plusultra-data sp500 --path sp500.sqlite                     # real S&P 500 / NASDAQ data
plusultra-data sp500_stocks --path stocks.sqlite             # 20 real stocks, closes only
plusultra-data validate market.sqlite --report report.md
plusultra-data features --markdown > docs/features.md
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from plusultra.cli.common import fail


def _fixture(args: argparse.Namespace) -> None:
    from plusultra.data.io.fixture import generate_fixture

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
    from plusultra.data.validation.checks import ValidationRules, validate_database

    rules = ValidationRules(max_gap_days=args.max_gap_days, max_stale_bars=args.max_stale_bars)
    report = validate_database(args.db, rules)
    if args.report:
        report.write(args.report)
    if report.ok:
        rows = ", ".join(f"{t}: {n:,}" for t, n in report.n_rows.items())
        print(f"{args.db}: valid ({rows})")
        return
    print(report.summary(), file=sys.stderr)
    print(report.table(), file=sys.stderr)
    if args.report:
        print(f"full report: {args.report}", file=sys.stderr)
    sys.exit(2)


def _features(args: argparse.Namespace) -> None:
    from plusultra.data.features.pipeline import REGISTRY, registry_markdown

    if args.markdown:
        print(registry_markdown())
        return
    for name in REGISTRY:
        spec = REGISTRY[name]
        print(f"{name:<22} {','.join(spec.tags):<24} {spec.description}")


def _import(args: argparse.Namespace) -> None:
    from plusultra.data.io.importers import import_files, parse_column_map

    summary = import_files(
        args.inputs,
        args.out,
        layout=args.layout,
        symbol_column=args.symbol_column,
        timestamp_column=args.timestamp_column,
        assets=args.assets,
        overwrite=args.overwrite,
        columns=parse_column_map(args.columns),
        drop_duplicates=args.drop_duplicates,
    )
    print(summary)


def _sp500(args: argparse.Namespace) -> None:
    from plusultra.data.io.sp500 import build_sp500_database

    path = build_sp500_database(args.path, include_alternative=not args.no_alternative)
    print(f"wrote {path}")


def _sp500_stocks(args: argparse.Namespace) -> None:
    from plusultra.data.io.sp500_stocks import build_sp500_stocks_database

    path = build_sp500_stocks_database(args.path, include_alternative=not args.no_alternative)
    print(f"wrote {path}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="plusultra-data",
        description="Make, import and check SQLite market databases (docs/sqlite_schema.md).",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=__doc__.split("\n", 1)[1],
    )
    parser.add_argument("--debug", action="store_true", help="show tracebacks of errors")
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

    im = sub.add_parser(
        "import",
        help="import CSV/parquet files into the SQLite contract",
        description="Import one file per symbol (symbol = file name) or long-format files (a "
        "symbol column) into a new database; validated before it is written atomically. Only "
        "close is required: missing open/high/low/volume are stored as NULL.",
    )
    im.add_argument("inputs", nargs="+", type=Path, help="files or directories")
    im.add_argument("--out", required=True, type=Path, help="SQLite file to create")
    im.add_argument(
        "--layout", choices=["auto", "per_symbol", "long"], default="auto", help="file layout"
    )
    im.add_argument("--symbol-column", default="symbol", help="symbol column of long files")
    im.add_argument("--timestamp-column", help="timestamp column (default: date/timestamp/...)")
    im.add_argument("--assets", type=Path, help="CSV with symbol,name,sector,asset_class,currency")
    im.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    im.add_argument(
        "--columns",
        metavar="TARGET=SOURCE,...",
        help="map file columns to contract fields, e.g. close=Last,volume=Vol (targets: "
        "timestamp, symbol, open, high, low, close, volume)",
    )
    im.add_argument(
        "--drop-duplicates",
        action="store_true",
        help="keep the last of duplicate (symbol, timestamp) rows and report how many were "
        "dropped (default: an error naming the rows)",
    )
    im.set_defaults(func=_import)

    sp = sub.add_parser(
        "sp500",
        help="build the real S&P 500 / NASDAQ database shipped by the `arch` package",
        description="Daily S&P 500 and NASDAQ Composite OHLCV 1999-2018 with VIX, WTI, core CPI "
        "and Fama-French factor tables (no download: the data ships in the arch wheel).",
    )
    sp.add_argument("--path", required=True, help="SQLite file to write")
    sp.add_argument("--no-alternative", action="store_true", help="prices only")
    sp.set_defaults(func=_sp500)

    st = sub.add_parser(
        "sp500_stocks",
        help="build the real 20-stock database from the data files of the `skfolio` wheel",
        description="Daily adjusted closes of 20 large US stocks 1990-2022 (close only; "
        "survivorship-biased universe, see docs/data.md) with factor-ETF returns and the S&P "
        "500 index as side tables. Reads skfolio's files without importing it; no download.",
    )
    st.add_argument("--path", required=True, help="SQLite file to write")
    st.add_argument("--no-alternative", action="store_true", help="prices only")
    st.set_defaults(func=_sp500_stocks)

    va = sub.add_parser(
        "validate",
        help="check a database against the contract",
        description="Run every check on every table and list all failures at once; exit code 2 "
        "when any fails.",
    )
    va.add_argument("db", help="SQLite file")
    va.add_argument("--report", type=Path, help="write the full report (.md or .json)")
    va.add_argument("--max-gap-days", type=int, help="flag gaps longer than N calendar days")
    va.add_argument("--max-stale-bars", type=int, help="flag > N identical closes in a row")
    va.set_defaults(func=_validate)

    fe = sub.add_parser(
        "features",
        help="list the feature registry",
        description="List registered features; --markdown prints docs/features.md.",
    )
    fe.add_argument("--markdown", action="store_true", help="print the Markdown reference")
    fe.set_defaults(func=_features)
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except Exception as exc:  # noqa: BLE001 - reported as one message
        if args.debug:
            raise
        fail("plusultra-data", exc)


if __name__ == "__main__":
    main(sys.argv[1:])
