"""Realistic simulator settings on 500 symbols x 5,000 bars: wall time and peak memory.

    .venv/bin/python -m experiments.benchmarks.simulator_realistic

A seeded random panel (opens, closes, volumes, volatility, a late listing and a delisting per 50
symbols) and dollar-neutral random target weights on every bar, filled at the next bar's open
(the default execution of both simulators). The realistic simulator runs
with every friction on (commission with a minimum, spread, square-root impact, a 5 %
participation cap with carry, latency buckets 0/1/2 bars, borrow, funding, gross and net caps);
the reference in the same run is the frictionless simulator on the same weights. Each engine
runs in a fresh subprocess so that its peak RSS is its own.
"""

from __future__ import annotations

import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from experiments.benchmarks._report import machine, write_section

ROOT = Path(__file__).resolve().parents[2]
T, S = 5000, 500
REALISTIC = {
    "commission_bps": 1.0,
    "min_commission": 1.0,
    "half_spread_bps": 2.0,
    "impact_coef": 0.1,
    "participation_cap": 0.05,
    "unfilled": "carry",
    "latency_probs": (0.6, 0.3, 0.1),
    "borrow_bps_annual": 50.0,
    "funding_bps_annual": 100.0,
    "max_gross_leverage": 1.0,
    "max_net_leverage": 0.5,
}


def panel(seed: int = 0) -> dict[str, np.ndarray]:
    """(T + 2, S) market arrays (decision bars, the last fill bar and the bar after it) and
    (T, S) weights."""
    rng = np.random.default_rng(seed)
    ret = rng.normal(0.0003, 0.02, (T + 2, S))
    close = 50 * np.exp(np.cumsum(ret, axis=0))
    open_ = close * np.exp(rng.normal(0.0, 0.005, close.shape))
    tradable = np.ones((T + 2, S), dtype=bool)
    tradable[: T // 5, ::50] = False  # late listings
    tradable[-T // 5 :, 1::50] = False  # delistings
    close[~tradable] = open_[~tradable] = np.nan
    weights = rng.normal(size=(T, S))
    # flat unless the symbol trades at the decision, at its fill and at the exit fill after it
    weights[~(tradable[:-2] & tradable[1:-1] & tradable[2:])] = np.nan
    weights -= np.nanmean(weights, axis=1, keepdims=True)
    weights /= np.nansum(np.abs(weights), axis=1, keepdims=True)
    return {
        "open": open_,
        "close": close,
        "volume": rng.lognormal(13, 0.5, (T + 2, S)),
        "volatility": np.full((T + 2, S), 0.02),
        "tradable": tradable,
        "weights": np.nan_to_num(weights),
    }


def measure(engine: str) -> dict:
    """Run one engine once (after building inputs) in this process."""
    from plusultra.sim.frictionless import FrictionlessSimulator
    from plusultra.sim.realistic import MarketData, RealisticSimulator

    p = panel()
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    start = time.perf_counter()
    if engine == "realistic":
        market = MarketData(p["close"], p["volume"], p["volatility"], p["tradable"], open=p["open"])
        res = RealisticSimulator(**REALISTIC).run(p["weights"], market=market)
        final, trades = float(res.equity[-1]), len(res.trades)
    else:
        res = FrictionlessSimulator().run(p["weights"], close=p["close"], open=p["open"])
        final, trades = float(res.equity[-1]), 0
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {
        "seconds": seconds,
        "peak_mib": peak,
        "input_mib": base,
        "final": final,
        "trades": trades,
    }


def run(engine: str) -> dict:
    code = (
        "import json; from experiments.benchmarks.simulator_realistic import measure; "
        f"print(json.dumps(measure({engine!r})))"
    )
    res = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True
    )
    return json.loads(res.stdout.strip().splitlines()[-1])


def main() -> None:
    real, free = run("realistic"), run("frictionless")
    md = f"""## Simulator: realistic settings, 500 symbols x 5,000 bars

`python -m experiments.benchmarks.simulator_realistic` — {machine()}

Random dollar-neutral targets on every bar, filled at the next bar's open (the default
execution of both simulators), every friction on ({
        ", ".join(f"{k}={v}" for k, v in REALISTIC.items())
    }); float64, one environment. Each engine runs
once in a fresh process; memory is the process's peak RSS (inputs included: about
{real["input_mib"]:.0f} MiB before the run).

| engine | wall time (s) | peak RSS (MiB) | closed and open trades |
|---|---:|---:|---:|
| realistic | {real["seconds"]:.2f} | {real["peak_mib"]:.0f} | {real["trades"]:,} |
| frictionless (reference) | {free["seconds"]:.2f} | {free["peak_mib"]:.0f} | |
| ratio | {real["seconds"] / free["seconds"]:.0f}x | {real["peak_mib"] / free["peak_mib"]:.2f}x | |

The realistic simulator steps through the 5,000 bars in Python (orders, latency queues and
partial fills make each bar depend on the previous one), vectorised over the 500 symbols.
"""
    print(md)
    write_section("simulator_realistic", md)


if __name__ == "__main__":
    main()
