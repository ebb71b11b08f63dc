"""`plusultra-serve`: a finished run (a forecaster, or a PPO run's policy) as an HTTP service.

  plusultra-serve outputs/runs/2026-11-21/10-00-00
  plusultra-serve --champion outputs/champion.json --port 8000 --api-key-env PLUSULTRA_API_KEY

Endpoints: POST /predict (recent bars in the body, or symbols read from the run's own
database), GET /health, GET /model, GET /metrics (Prometheus), POST /reload (needs the API key
when one is set). Binds 127.0.0.1 unless --host says otherwise. With --champion the service
follows the pointer file and loads a newly promoted run without a restart. Positions in a
response are decisions at the close of its last bar, to be filled at the next bar. A PPO run
(curriculum=rl, full) is served by its policy: the last bar of plusultra-predict's greedy
rollout over the request's data (the run's database: rolled out at start-up and cached).
See docs/operations.md, "Service (plusultra-serve)".
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from plusultra.cli.common import fail
from plusultra.errors import ConfigError


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="plusultra-serve",
        description="Serve a finished run's forecasts, guarded positions and telemetry over HTTP.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=__doc__.split("\n", 1)[1],
    )
    parser.add_argument("run_dir", nargs="?", type=Path, help="a finished run directory")
    parser.add_argument(
        "--champion", type=Path, help="a champion pointer (JSON with run_dir) to follow instead"
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    parser.add_argument(
        "--api-key-env",
        metavar="NAME",
        help="environment variable holding the API key that POST /reload requires "
        "(X-API-Key header); default: no key",
    )
    parser.add_argument("--device", help="cpu, cuda, ... (default: the run's trainer.accelerator)")
    parser.add_argument("--precision", help="a Lightning precision (default: the run's)")
    parser.add_argument("--max-symbols", type=int, default=500, help="symbols per request")
    parser.add_argument("--max-bars", type=int, default=5000, help="bars per symbol per request")
    parser.add_argument(
        "--max-body-bytes", type=int, default=8_000_000, help="request body size limit (bytes)"
    )
    parser.add_argument(
        "--drift-window", type=int, default=500, help="recent decision rows the drift uses"
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch intra-op threads of the forward pass (default 1: one window's operations "
        "are too small to split, and spinning threads slow a shared CPU; scale out with "
        "processes; raise it for requests of many symbols)",
    )
    parser.add_argument(
        "--compile",
        action="store_true",
        help="torch.compile the forward pass of one window at warm-up (seconds to minutes, "
        "needs a C++ compiler on CPU); requests of one symbol then use it, larger ones the "
        "eager model (docs/operations.md)",
    )
    parser.add_argument(
        "--review-db",
        type=Path,
        default=None,
        help="analyst-review store behind /reviews (default: $PLUSULTRA_OUTPUT_DIR/"
        "reviews.sqlite, else outputs/reviews.sqlite)",
    )
    parser.add_argument("--log-level", default="info", help="uvicorn log level")
    return parser


def make_app(args: argparse.Namespace):
    """The app the arguments describe (the model loaded and warmed up)."""
    from plusultra.service.app import create_app
    from plusultra.service.model import ServiceLimits
    from plusultra.service.review_api import router as reviews

    if (args.run_dir is None) == (args.champion is None):
        raise ConfigError("give a run directory or --champion FILE (exactly one)")
    if args.threads < 1:
        raise ConfigError(f"--threads {args.threads}: need at least 1")
    import torch

    torch.set_num_threads(args.threads)  # process-wide: the CLI owns the process
    api_key = None
    if args.api_key_env:
        api_key = os.environ.get(args.api_key_env)
        if not api_key:
            raise ConfigError(f"--api-key-env {args.api_key_env}: that variable is unset or empty")
    limits = ServiceLimits(args.max_symbols, args.max_bars, args.max_body_bytes, args.drift_window)
    app = create_app(
        run_dir=args.run_dir,
        champion=args.champion,
        api_key=api_key,
        limits=limits,
        device=args.device,
        precision=args.precision,
        compile=args.compile,
        routers=[reviews],  # POST /reviews (API key), GET /reviews
    )
    app.state.review_db = args.review_db  # None: the store's default
    return app


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    try:
        app = make_app(args)
    except Exception as exc:  # noqa: BLE001 - reported as one message
        fail("plusultra-serve", exc)
    import uvicorn

    uvicorn.run(app, host=args.host, port=args.port, log_level=args.log_level)


if __name__ == "__main__":
    main(sys.argv[1:])
