"""`plusultra-report`: the HTML and Markdown investor report of a finished run.

  plusultra-report outputs/runs/2026-11-21/10-00-00
  plusultra-report outputs/runs/2026-11-21/10-00-00 --out /tmp/report-10-00

Writes report.html (self-contained: plots embedded, inline CSS) and report.md with its plots
as PNG files in report/, next to it. Every run writes these at its end; this command rebuilds
them, e.g. after an update of the report. Reads only the run directory.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from plusultra.cli.common import fail


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="plusultra-report",
        description="HTML and Markdown report (plots, attribution, scenarios) of a finished run.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=__doc__.split("\n", 1)[1],
    )
    parser.add_argument("run_dir", type=Path, help="a finished run directory (has metrics.json)")
    parser.add_argument(
        "--out",
        type=Path,
        default=None,
        help="directory to write report.html, report.md and report/ to (default RUN_DIR)",
    )
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    try:
        from plusultra.evaluation.report.render import write_reports

        html_path, md_path = write_reports(args.run_dir, args.out)
    except Exception as exc:  # noqa: BLE001 - reported as one message
        fail("plusultra-report", exc)
    print(f"wrote {html_path}")
    print(f"wrote {md_path}")


if __name__ == "__main__":
    main(sys.argv[1:])
