"""Deterministic synthetic market database in SQLite: the built-in default dataset.

`generate_fixture` writes the four tables of the SQLite contract (``assets``, ``series``,
``indicators``, ``corporate_actions``) for ``n_symbols`` equities over ``n_days`` business days
(Mon-Fri from ``start``). Everything is drawn from ``np.random.default_rng(seed)`` in a fixed
order, so the same arguments give identical table contents. All arrays are (T, N) = (days,
symbols); only recursions in time (regime chain, AR filters) loop over days, vectorised over
symbols. Returns are daily log returns unless said otherwise.

Structure of the data, with the parameters used:

* Regimes: a Markov chain over calm / normal / stressed (`REGIME_TRANSITION`, expected
  durations ~67 / 50 / 25 days; starts in normal) multiplies the volatility of the market,
  sector and idiosyncratic components of every symbol by `REGIME_VOL` = 0.7 / 1.0 / 1.8.
* Fat tails: every shock is Student-t with `T_DF` = 4 degrees of freedom, scaled to unit
  variance.
* Factor structure: ``r = beta_i * market + sector_{s(i)} + idio_i`` with market drift
  `MARKET_DRIFT` = 6 %/year (252 days) and vol `MARKET_VOL` = 1.0 %/day, beta ~ U(0.7, 1.3),
  sector vol `SECTOR_VOL` = 0.8 %/day (symbol i is in sector ``i % n_sectors``), idiosyncratic
  vol sigma_i ~ U(1.2, 2.2) %/day. Log returns are clipped to +-`LOG_RETURN_CLIP` = 0.3.
* Predictable component (weak but learnable): the idiosyncratic return has expected value
  ``sum_k MEAN_REVERSION[k] * idio_{t-1-k} + alpha_{t-1}``, mean reversion -0.08, -0.04, -0.03,
  -0.02, -0.01 on the previous 1-5 days, and a latent alpha, AR(1) with persistence
  `ALPHA_PERSISTENCE` = 0.97 and stationary std `ALPHA_SD` = 0.10 sigma_i. Together the
  expected return has std ~0.14 sigma_i (daily signal-to-noise ~14 %).
* Indicators: ``sentiment`` on day t is ``alpha_t / (ALPHA_SD * sigma_i) + N(0, 1)``, i.e. a
  noisy reading of information available at the close of t about the return of t+1 (legit
  alternative data, no look-ahead).
* Volume: ``log V = log base_i + VOLUME_K * min(|r| / sigma_tot_i, 10) + VOLUME_NOISE * N(0, 1)``
  with k = 0.4, noise 0.3, base ~ logU(2e5, 2e7) shares and sigma_tot_i the symbol's calm-free
  unconditional vol, so volume rises on big-move days and in stressed regimes. Raw volume is in
  raw shares: it is multiplied by the cumulative split factor.
* OHLC: open = previous close in today's terms * exp(0.3 * r + 0.2 * sigma * z) (small gap
  carrying part of the day's move); high / low extend max / min(open, close) by
  exp(+-0.5 * sigma * |z|), sigma being the regime-scaled idiosyncratic vol.
* Corporate actions: ``max(1, round(n_symbols / 10))`` splits on distinct symbols (ratio 2, 3
  or 4 with probabilities 0.6 / 0.25 / 0.15, value = ratio) and quarterly (every 63 business
  days) cash dividends on half the symbols (rounded up), each paying ~U(0.2, 0.6) % of the
  previous close, rounded to cents. ``series`` holds RAW prices, built so that
  ``(close_t * split_t + dividend_t) / close_{t-1} - 1`` equals the generated simple return
  exactly (to float precision).
* Listing: round(15 %) of symbols list on a day in [1, 0.6 T) and round(10 %) delist on a day in
  [0.7 T, T - 1); symbol 0 always trades over the full range. No rows exist outside a
  symbol's life; ``assets.listed`` / ``delisted`` hold its first / last day (delisted NULL if it
  trades to the end).
"""

from __future__ import annotations

import datetime as dt
import os
import pathlib

import numpy as np
import pandas as pd

from plusultra.errors import ConfigError
from plusultra.io import write_sqlite_atomic

__all__ = ["generate_fixture", "SCHEMA"]

SCHEMA = """
CREATE TABLE assets(symbol TEXT PRIMARY KEY, name TEXT, sector TEXT, asset_class TEXT, currency TEXT, listed TEXT, delisted TEXT);
CREATE TABLE series(symbol TEXT NOT NULL, timestamp TEXT NOT NULL, open REAL, high REAL, low REAL, close REAL, volume REAL, PRIMARY KEY(symbol, timestamp));
CREATE TABLE indicators(symbol TEXT NOT NULL, timestamp TEXT NOT NULL, name TEXT NOT NULL, value REAL, PRIMARY KEY(symbol, timestamp, name));
CREATE TABLE corporate_actions(symbol TEXT NOT NULL, ex_date TEXT NOT NULL, action TEXT NOT NULL, value REAL NOT NULL, PRIMARY KEY(symbol, ex_date, action));
"""  # noqa: E501  (the SQLite contract, kept verbatim)

REGIME_TRANSITION = np.array(  # rows: from calm / normal / stressed; columns: to
    [[0.985, 0.015, 0.0], [0.01, 0.98, 0.01], [0.0, 0.04, 0.96]]
)
REGIME_VOL = np.array([0.7, 1.0, 1.8])  # volatility multiplier per regime
T_DF = 4.0  # Student-t degrees of freedom of every shock
MARKET_DRIFT = 0.06 / 252  # daily log drift of the market factor (6 %/year)
MARKET_VOL = 0.010  # daily market factor vol in the normal regime
SECTOR_VOL = 0.008  # daily sector factor vol in the normal regime
BETA_RANGE = (0.7, 1.3)  # uniform range of market betas
IDIO_VOL_RANGE = (0.012, 0.022)  # uniform range of daily idiosyncratic vols
MEAN_REVERSION = np.array([-0.08, -0.04, -0.03, -0.02, -0.01])  # AR on idio lags 1..5
ALPHA_PERSISTENCE = 0.97  # AR(1) coefficient of the latent alpha
ALPHA_SD = 0.10  # stationary std of alpha, in units of idiosyncratic vol
LOG_RETURN_CLIP = 0.3  # |daily log return| cap
VOLUME_K = 0.4  # log-volume response to |return| / vol
VOLUME_NOISE = 0.3  # std of log-volume noise
SPLIT_RATIOS, SPLIT_PROBS = np.array([2.0, 3.0, 4.0]), np.array([0.6, 0.25, 0.15])
DIVIDEND_PERIOD = 63  # business days between dividends (quarterly)
DIVIDEND_YIELD_RANGE = (0.002, 0.006)  # per-payment cash / previous close
LATE_LISTING_FRACTION, DELISTING_FRACTION = 0.15, 0.10


def _student_t(rng: np.random.Generator, shape: int | tuple[int, ...]) -> np.ndarray:
    """Student-t draws with `T_DF` degrees of freedom scaled to unit variance."""
    return rng.standard_t(T_DF, size=shape) * np.sqrt((T_DF - 2.0) / T_DF)


def _ar1(innovations: np.ndarray, phi: float, initial: np.ndarray) -> np.ndarray:
    """x_t = phi * x_{t-1} + innovations_t over axis 0, with x_0 = initial; (T, N) -> (T, N)."""
    out = np.empty_like(innovations)
    out[0] = initial
    for t in range(1, len(out)):
        out[t] = phi * out[t - 1] + innovations[t]
    return out


def _regimes(rng: np.random.Generator, n_days: int) -> np.ndarray:
    """Markov chain of regime indices (0 calm, 1 normal, 2 stressed), shape (T,)."""
    cumulative = np.cumsum(REGIME_TRANSITION, axis=1)
    uniforms = rng.random(n_days)
    states = np.empty(n_days, dtype=np.int64)
    state = 1
    for t in range(n_days):
        state = min(int(np.searchsorted(cumulative[state], uniforms[t], side="right")), 2)
        states[t] = state
    return states


def _returns(rng: np.random.Generator, n_days: int, sector: np.ndarray) -> dict[str, np.ndarray]:
    """Simulate the factor model; returns log returns and helpers, (T, N) or (N,) arrays."""
    n = sector.size
    scale = REGIME_VOL[_regimes(rng, n_days)][:, None]  # (T, 1)
    beta = rng.uniform(*BETA_RANGE, n)
    idio_vol = rng.uniform(*IDIO_VOL_RANGE, n)
    market = MARKET_DRIFT + MARKET_VOL * scale[:, 0] * _student_t(rng, n_days)  # (T,)
    sectors = SECTOR_VOL * scale * _student_t(rng, (n_days, int(sector.max()) + 1))  # (T, S)
    shocks = idio_vol * scale * _student_t(rng, (n_days, n))  # (T, N)
    alpha_sd = ALPHA_SD * idio_vol
    eta = alpha_sd * np.sqrt(1 - ALPHA_PERSISTENCE**2) * rng.standard_normal((n_days, n))
    alpha = _ar1(eta, ALPHA_PERSISTENCE, alpha_sd * rng.standard_normal(n))  # (T, N)

    lags = MEAN_REVERSION.size
    coef = MEAN_REVERSION[::-1]  # so that coef @ idio[t : t + lags] weights lag 1 last
    idio = np.zeros((n_days + lags, n))  # idio[lags + t] is day t
    for t in range(n_days):
        expected = coef @ idio[t : t + lags] + (alpha[t - 1] if t else 0.0)
        idio[lags + t] = expected + shocks[t]
    log_ret = beta * market[:, None] + sectors[:, sector] + idio[lags:]
    total_vol = np.sqrt((beta * MARKET_VOL) ** 2 + SECTOR_VOL**2 + idio_vol**2)
    return {
        "log_ret": np.clip(log_ret, -LOG_RETURN_CLIP, LOG_RETURN_CLIP),
        "alpha": alpha,
        "alpha_sd": alpha_sd,
        "day_vol": idio_vol * scale,  # (T, N) regime-scaled idiosyncratic vol
        "total_vol": total_vol,
    }


def _life(rng: np.random.Generator, n: int, n_days: int) -> tuple[np.ndarray, np.ndarray]:
    """First and last trading-day index per symbol, (N,) each; symbol 0 trades throughout."""
    first = np.zeros(n, dtype=np.int64)
    last = np.full(n, n_days - 1, dtype=np.int64)
    late = rng.permutation(np.arange(1, n))[: int(round(LATE_LISTING_FRACTION * n))]
    first[late] = rng.integers(1, int(0.6 * n_days), size=late.size)
    gone = rng.permutation(np.arange(1, n))[: int(round(DELISTING_FRACTION * n))]
    last[gone] = rng.integers(int(0.7 * n_days), n_days - 1, size=gone.size)
    return first, last


def _prices(
    rng: np.random.Generator, growth: np.ndarray, first: np.ndarray, last: np.ndarray
) -> dict[str, np.ndarray]:
    """Corporate actions and RAW closes consistent with them, (T, N) each.

    Args:
        growth: 1 + simple total return per day, (T, N).
        first, last: life bounds per symbol, (N,).

    Returns:
        ``split`` (ratio, 1 where none), ``dividend`` (cash per share, 0 where none), ``close``
        (raw) and ``cum_split`` (product of ratios up to and including each day).
    """
    n_days, n = growth.shape
    days = np.arange(n_days)[:, None]
    in_life = (days > first) & (days <= last)  # days an action can apply (not the listing day)
    split = np.ones((n_days, n))
    split_syms = rng.choice(n, size=min(n, max(1, round(n / 10))), replace=False)
    split_days = rng.integers(first[split_syms] + 1, last[split_syms] + 1)
    split[split_days, split_syms] = rng.choice(SPLIT_RATIOS, size=split_syms.size, p=SPLIT_PROBS)
    cum_split = np.cumprod(split, axis=0)

    payer = np.zeros(n, dtype=bool)
    payer[rng.permutation(n)[: (n + 1) // 2]] = True
    phase = rng.integers(0, DIVIDEND_PERIOD, n)
    pays = payer & in_life & ((days - first - phase) % DIVIDEND_PERIOD == 0)
    dividend_yield = np.where(pays, rng.uniform(*DIVIDEND_YIELD_RANGE, n), 0.0)

    # Per-original-share value y follows y_t = growth_t * y_{t-1} - dividend_t * cum_split_{t-1}.
    # Size dividends on the multiplicative approximation, round to cents, then solve exactly.
    listing_price = np.exp(rng.uniform(np.log(10.0), np.log(200.0), n))
    growth_cum = np.cumprod(growth, axis=0)  # (T, N)
    before_listing = np.where(first > 0, growth_cum[first - 1, np.arange(n)], 1.0)
    y0 = listing_price / before_listing
    approx = y0 * np.cumprod(growth - dividend_yield, axis=0)
    prev_cum_split = cum_split / split
    prev_close = np.vstack([y0[None], approx[:-1]]) / prev_cum_split
    dividend = np.round(dividend_yield * prev_close, 2)
    dividend[dividend >= 0.5 * prev_close] = 0.0  # never on a penny stock
    value = growth_cum * (y0 - np.cumsum(dividend * prev_cum_split / growth_cum, axis=0))
    alive = (days >= first) & (days <= last)
    if not np.all(value[alive] > 0):  # cannot happen with the parameters above
        raise RuntimeError("synthetic fixture produced a non-positive price")
    return {
        "split": split,
        "dividend": dividend,
        "close": value / cum_split,
        "cum_split": cum_split,
    }


def _validate(n_symbols: int, n_days: int, seed: int, start: str, n_sectors: int) -> None:
    """Raise ConfigError naming the first invalid argument."""
    for name, value, low in (
        ("n_symbols", n_symbols, 1),
        ("n_days", n_days, 30),
        ("n_sectors", n_sectors, 1),
        ("seed", seed, 0),
    ):
        if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < low:
            raise ConfigError(f"fixture: {name} must be an integer >= {low}, got {value!r}")
    try:
        dt.date.fromisoformat(str(start))
    except ValueError:
        raise ConfigError(
            f"fixture: start must be an ISO date 'YYYY-MM-DD', got {start!r}"
        ) from None


def generate_fixture(
    path: str | os.PathLike,
    n_symbols: int = 16,
    n_days: int = 1260,
    seed: int = 0,
    start: str = "2012-01-03",
    n_sectors: int = 4,
) -> pathlib.Path:
    """Write the synthetic database to `path` atomically and return the path.

    Args:
        path: SQLite file to create or overwrite; parent directories are created.
        n_symbols: number of equities, named ``SYM000``, ``SYM001``, ...
        n_days: number of business days (Mon-Fri) from `start`.
        seed: seed of ``np.random.default_rng``; same arguments give identical tables.
        start: first calendar date, ``YYYY-MM-DD`` (moved to the next business day if needed).
        n_sectors: number of sectors, ``Sector0``, ...; symbol i is in sector ``i % n_sectors``.

    Returns:
        `path` as a ``pathlib.Path``.

    Raises:
        ConfigError: an argument is out of range or `start` is not a date.
    """
    _validate(n_symbols, n_days, seed, start, n_sectors)
    rng = np.random.default_rng(seed)
    days_text = pd.bdate_range(start=str(start), periods=n_days).strftime("%Y-%m-%d")
    dates = np.array(days_text.tolist(), dtype=object)
    width = max(3, len(str(n_symbols - 1)))
    symbols = np.array([f"SYM{i:0{width}d}" for i in range(n_symbols)], dtype=object)
    sector = np.arange(n_symbols) % n_sectors

    sim = _returns(rng, n_days, sector)
    log_ret, day_vol = sim["log_ret"], sim["day_vol"]
    first, last = _life(rng, n_symbols, n_days)
    px = _prices(rng, np.exp(log_ret), first, last)
    close = px["close"]

    shape = (n_days, n_symbols)
    reference = close / np.exp(log_ret)  # previous close in today's (post-action) terms
    open_ = reference * np.exp(0.3 * log_ret + 0.2 * day_vol * rng.standard_normal(shape))
    high = np.maximum(open_, close) * np.exp(0.5 * day_vol * np.abs(rng.standard_normal(shape)))
    low = np.minimum(open_, close) * np.exp(-0.5 * day_vol * np.abs(rng.standard_normal(shape)))
    base_volume = np.exp(rng.uniform(np.log(2e5), np.log(2e7), n_symbols))
    surprise = np.minimum(np.abs(log_ret) / sim["total_vol"], 10.0)
    log_volume = VOLUME_K * surprise + VOLUME_NOISE * rng.standard_normal(shape)
    volume = np.maximum(np.round(base_volume * np.exp(log_volume) * px["cum_split"]), 1.0)
    sentiment = sim["alpha"] / sim["alpha_sd"] + rng.standard_normal(shape)

    days = np.arange(n_days)[:, None]
    sym_idx, day_idx = np.nonzero(((days >= first) & (days <= last)).T)  # symbol-major order
    sym_col, ts_col = symbols[sym_idx].tolist(), dates[day_idx].tolist()

    def column(values: np.ndarray) -> list[float]:
        return values[day_idx, sym_idx].tolist()

    series = zip(sym_col, ts_col, *map(column, (open_, high, low, close, volume)), strict=True)
    indicators = zip(sym_col, ts_col, ["sentiment"] * sym_idx.size, column(sentiment), strict=True)
    actions = []
    for action, values, empty in (("split", px["split"], 1.0), ("dividend", px["dividend"], 0.0)):
        d, s = np.nonzero(values != empty)
        actions += zip(symbols[s], dates[d], [action] * d.size, values[d, s].tolist(), strict=True)
    assets = [
        (
            symbols[i],
            f"Synthetic {symbols[i]} Inc.",
            f"Sector{sector[i]}",
            "equity",
            "USD",
            dates[first[i]],
            dates[last[i]] if last[i] < n_days - 1 else None,
        )
        for i in range(n_symbols)
    ]
    target = pathlib.Path(path)
    write_sqlite_atomic(
        target,
        SCHEMA,
        [
            ("assets", 7, assets),
            ("series", 7, series),
            ("indicators", 4, indicators),
            ("corporate_actions", 4, sorted(actions)),
        ],
    )
    return target
