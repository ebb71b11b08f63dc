"""Analysis behind the run report: P&L attribution and model-vs-buy-and-hold scenarios.

Computes, from a finished run's tables (no I/O, no formatting): attribution of P&L by symbol and
by sector (`attribution`), model vs buy-and-hold by calendar year, volatility regime and the worst
buy-and-hold windows (`scenarios`, with `high_vol_mask` and `worst_windows`), and per
walk-forward block (`walk_forward_blocks`). `plusultra.evaluation.report.render` renders them.

Returns are simple per-bar returns: `strategy_return[t]` is earned from the close of decision
bar *t* to the next close. Regimes are defined causally: at bar *t* only returns known at its
close (bars before *t*) enter the trailing volatility and its trailing median.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from plusultra.guardrails import RULES

VOL_BARS = 21  # trailing window of buy-and-hold volatility defining the high-volatility regime
CRASH_BARS = 5  # length of a crash window
N_CRASHES = 5  # worst buy-and-hold windows shown


def _contribution_table(contrib: pd.DataFrame, key: str) -> pd.DataFrame:
    """pnl (sum), share of the total, hit rate and held bars per `key`, sorted by pnl."""
    grouped = contrib.groupby(key)["pnl"]
    total = contrib["pnl"].sum()
    held = contrib[contrib["pnl"] != 0]
    out = pd.DataFrame(
        {
            "pnl": grouped.sum(),
            "share": grouped.sum() / total if total != 0 else np.nan,
            "hit_rate": held.groupby(key)["pnl"].apply(lambda s: (s > 0).mean()),
            "bars_held": held.groupby(key)["pnl"].size(),
        }
    )
    out["bars_held"] = out["bars_held"].fillna(0).astype(int)
    return out.sort_values("pnl", ascending=False)


def attribution(
    preds: pd.DataFrame, sectors: dict[str, str | None]
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """P&L attribution by symbol and by sector.

    A symbol's contribution at bar *t* is `position[t] * realized_return[t]` (fraction of
    equity; NaN returns count 0); contributions add up to the frictionless, non-compounded
    portfolio return. `hit_rate` is the share of positive contributions among non-zero ones.

    Args:
        preds: predictions with `symbol`, `position`, `realized_return`.
        sectors: symbol -> sector; missing or None -> "unknown".

    Returns:
        (by_symbol, by_sector): index symbol / sector; columns `pnl`, `share` (of the total
        pnl), `hit_rate`, `bars_held` (bars with a non-zero contribution); sorted by pnl.
    """
    pnl = (preds["position"].fillna(0.0) * preds["realized_return"]).fillna(0.0)
    contrib = pd.DataFrame({"symbol": preds["symbol"].astype(str), "pnl": pnl.to_numpy()})
    contrib["sector"] = [sectors.get(s) or "unknown" for s in contrib["symbol"]]
    by_symbol = _contribution_table(contrib, "symbol")
    by_sector = _contribution_table(contrib, "sector")
    by_symbol.insert(0, "sector", [sectors.get(s) or "unknown" for s in by_symbol.index])
    return by_symbol, by_sector


def compound_return(r: pd.Series) -> float:
    """Compounded simple return of a series of per-bar returns (NaN bars count as 0)."""
    return float((1.0 + r.fillna(0.0)).prod() - 1.0)


def annual_sharpe(r: pd.Series, periods_per_year: float) -> float:
    """Annualised Sharpe (x sqrt(periods_per_year)) of per-bar returns; NaN without dispersion."""
    r = r.dropna()
    sd = r.std(ddof=1) if len(r) > 1 else math.nan
    if not sd or not math.isfinite(sd):
        return math.nan
    return float(r.mean() / sd * math.sqrt(periods_per_year))


def _period_row(model: pd.Series, bench: pd.Series | None, ppy: float) -> dict[str, float]:
    row = {
        "bars": len(model),
        "model_return": compound_return(model),
        "model_sharpe": annual_sharpe(model, ppy),
    }
    if bench is not None:
        row["buyhold_return"] = compound_return(bench)
        row["buyhold_sharpe"] = annual_sharpe(bench, ppy)
    return row


def high_vol_mask(bench: pd.Series, window: int = VOL_BARS) -> pd.Series:
    """Causal high-volatility flag per bar (NaN during warm-up).

    At decision bar *t* the known returns are those of bars before *t* (`bench[t]` is earned
    over *t*→*t+1*), so vol_t = std(bench[t-window .. t-1]); the bar is "high" when vol_t is
    above the median of vol_0..vol_t (expanding, so also causal).
    """
    vol = bench.shift(1).rolling(window, min_periods=window).std()
    median = vol.expanding(min_periods=1).median()
    return (vol > median).where(vol.notna())


def worst_windows(bench: pd.Series, n: int = N_CRASHES, length: int = CRASH_BARS) -> list[int]:
    """Start positions of the `n` worst non-overlapping compounded `length`-bar windows."""
    growth = (1.0 + bench.fillna(0.0)).to_numpy()
    if len(growth) < length:
        return []
    windows = np.array([growth[i : i + length].prod() - 1 for i in range(len(growth) - length + 1)])
    taken = np.zeros(len(growth), bool)
    starts: list[int] = []
    for i in np.argsort(windows, kind="stable"):
        if len(starts) == n:
            break
        if not taken[i : i + length].any():
            starts.append(int(i))
            taken[i : i + length] = True
    return starts


def scenarios(backtest: pd.DataFrame, periods_per_year: float) -> dict[str, pd.DataFrame]:
    """Model vs buy-and-hold in scenarios; Sharpe ratios annualised with `periods_per_year`.

    Returns:
        `by_year` (index year): bars, compounded model/buy-and-hold return, annualised Sharpe;
        `volatility` (index regime: high volatility / normal / warm-up): the same per regime
        (see `high_vol_mask`); `crashes` (the worst buy-and-hold 5-bar windows): start, end,
        buy-and-hold and model return over the window. Without a `buyhold_return` column
        only `by_year` (model columns) is returned.
    """
    model = backtest["strategy_return"]
    bench = backtest["buyhold_return"] if "buyhold_return" in backtest.columns else None
    years = backtest.index.year
    by_year = pd.DataFrame(
        {
            y: _period_row(
                model[years == y], None if bench is None else bench[years == y], periods_per_year
            )
            for y in sorted(set(years))
        }
    ).T
    by_year.index.name = "year"
    by_year["bars"] = by_year["bars"].astype(int)
    out = {"by_year": by_year}
    if bench is None:
        return out
    flag = high_vol_mask(bench)
    regime = np.where(flag.isna(), "warm-up", np.where(flag == 1.0, "high volatility", "normal"))
    rows = {
        name: _period_row(model[regime == name], bench[regime == name], periods_per_year)
        for name in ("high volatility", "normal", "warm-up")
        if (regime == name).any()
    }
    volatility = pd.DataFrame(rows).T
    volatility.index.name = "regime"
    volatility["bars"] = volatility["bars"].astype(int)
    out["volatility"] = volatility
    crash_rows = []
    for i in worst_windows(bench):
        sl = slice(i, i + CRASH_BARS)
        crash_rows.append(
            {
                "start": backtest.index[i].date().isoformat(),
                "end": backtest.index[i + CRASH_BARS - 1].date().isoformat(),
                "buyhold_return": compound_return(bench.iloc[sl]),
                "model_return": compound_return(model.iloc[sl]),
            }
        )
    out["crashes"] = pd.DataFrame(
        crash_rows, columns=["start", "end", "buyhold_return", "model_return"]
    )
    return out


def walk_forward_blocks(
    backtest: pd.DataFrame, blocks: pd.DataFrame, periods_per_year: float
) -> pd.DataFrame:
    """Model vs buy-and-hold per walk-forward block: the block's dates, the end of the training
    window its model was fitted on, its test loss, and the `_period_row` figures."""
    model = backtest["strategy_return"]
    bench = backtest["buyhold_return"] if "buyhold_return" in backtest.columns else None
    rows = []
    for b in blocks.itertuples():
        inside = (backtest.index >= b.start) & (backtest.index <= b.end)
        row = {
            "start": pd.Timestamp(b.start).date().isoformat(),
            "end": pd.Timestamp(b.end).date().isoformat(),
            "fitted_to": pd.Timestamp(b.fit_end).date().isoformat(),
            "refit": "yes" if b.refit else "no",
            "test_loss": float(b.test_loss),
        }
        rows.append(
            row
            | _period_row(model[inside], None if bench is None else bench[inside], periods_per_year)
        )
    out = pd.DataFrame(rows)
    out.index = pd.Index(blocks["fold"].to_numpy(), name="block")
    return out


def guardrail_counts(metrics: dict) -> pd.DataFrame | None:
    """Interventions per guardrail rule (in the order they apply) and in all, on the
    validation and test segments, from the ``<segment>_guardrail_<rule>`` metrics; None when
    the run had no guardrails on."""
    rules = [r for r in RULES if any(f"{s}_guardrail_{r}" in metrics for s in ("val", "test"))]
    if not rules:
        return None
    rows = {}
    for name in [*rules, "events"]:
        rows["all" if name == "events" else name] = {
            f"{s}_events": metrics.get(f"{s}_guardrail_{name}", math.nan) for s in ("val", "test")
        }
    out = pd.DataFrame.from_dict(rows, orient="index")
    out.index.name = "rule"
    return out
