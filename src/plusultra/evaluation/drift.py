"""Feature drift against the training data: PSI, KS, drift levels and regime-shift warnings.

Definitions (docs/evaluation.md, "Drift"):

- **PSI** (population stability index) of one feature: the reference's ``bins``-quantiles
  (``k / bins``, k = 1 .. bins - 1, linear interpolation) are the inner bin edges, the outer
  edges are -inf and +inf, so every value falls in a bin. A value equal to an edge goes to the
  bin above it (``searchsorted(edges, x, side="right")``). With ``r_b``, ``c_b`` the reference's
  and the current sample's shares of bin b, each floored at ``EPS`` (an empty bin would make the
  log infinite; the shares are not renormalised)::

      PSI = sum_b (c_b - r_b) * ln(c_b / r_b)

  Repeated quantiles (a discrete or constant feature) make empty bins on both sides, which add
  exactly 0, so no deduplication is needed. PSI has a sampling bias of roughly
  ``(bins - 1) * (1 / n_reference + 1 / n_current)`` on identical distributions: about 0.09 at
  100 current values with 10 bins, which is why ``MIN_VALUES`` is 100.
- **KS**: the two-sample Kolmogorov-Smirnov statistic and p-value (``scipy.stats.ks_2samp``);
  `drift_table` uses the asymptotic p-value (exact ones cost O(n * m) on samples of thousands).
- **Levels** from PSI: ``none`` (PSI < 0.1), ``moderate`` (0.1 <= PSI < 0.25), ``major``
  (PSI >= 0.25), and ``insufficient`` where either side has fewer than ``MIN_VALUES`` finite
  values (PSI and KS are then NaN).
- **Non-finite values** (NaN, +-inf) are dropped per feature before anything is computed.

`drift_table` is vectorised over features (one quantile pass, one comparison against the edges,
one bincount); `psi_ref` and `drift_table_ref` are the per-feature loops it is tested against.
Regime-shift warnings (`regime_warnings`) and the streaming `DriftMonitor` of the service follow.
"""

from __future__ import annotations

import math
import os
import threading
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from scipy.stats import ks_2samp

from plusultra.errors import DataError

EPS = 1e-4  # floor of a bin's share in PSI (an empty bin would make ln(c / r) infinite)
MIN_VALUES = 100  # finite values each side needs; fewer: level "insufficient", NaN PSI and KS
MODERATE, MAJOR = 0.1, 0.25  # PSI thresholds of the levels
LEVELS = ("none", "moderate", "major")  # by PSI: < MODERATE, < MAJOR, >= MAJOR
INSUFFICIENT = "insufficient"  # the level of a feature with too few finite values
RANGE = (0.01, 0.99)  # reference quantiles bounding the "range" of the volatility warning
MAJOR_SHARE = 0.25  # share of major-drift features above which a regime shift is warned
VOLATILITY_PREFIX = "volatility_"  # realised-volatility features (registry: volatility_20)
REFERENCE_FILE = "drift_reference.parquet"  # in a run dir: the train-segment reference sample
META_COLUMNS = ("timestamp", "symbol")  # columns of the reference file that are not features
COLUMNS = [  # drift_table's columns
    "feature", "psi", "ks_stat", "ks_pvalue", "level",
    "n_reference", "n_current", "current_median", "reference_q01", "reference_q99",
]  # fmt: skip


def _as_2d(x: np.ndarray) -> np.ndarray:
    """float64 (N, F) copy with non-finite values as NaN; a 1-D array is one feature."""
    x = np.array(x, dtype=np.float64)
    x = x[:, None] if x.ndim == 1 else x
    x[~np.isfinite(x)] = np.nan
    return x


def level(value: float) -> str:
    """The drift level of one PSI value (NaN: ``insufficient``)."""
    if not math.isfinite(value):
        return INSUFFICIENT
    return LEVELS[0] if value < MODERATE else LEVELS[1] if value < MAJOR else LEVELS[2]


def psi(reference: np.ndarray, current: np.ndarray, bins: int = 10) -> float:
    """PSI of one feature: `current` against bins at `reference`'s quantiles.

    Args:
        reference: (N,) values of the reference (training) sample.
        current: (M,) values to compare.
        bins: number of quantile bins.

    Returns:
        PSI (>= 0), or NaN when either side has fewer than `MIN_VALUES` finite values.
    """
    ref, cur = np.asarray(reference).ravel(), np.asarray(current).ravel()
    return float(drift_table(ref[:, None], cur[:, None], ["x"], bins)["psi"].iloc[0])


def ks(reference: np.ndarray, current: np.ndarray) -> tuple[float, float]:
    """Two-sample KS (statistic, p-value) of the finite values (scipy's default method)."""
    ref, cur = np.asarray(reference, float).ravel(), np.asarray(current, float).ravel()
    ref, cur = ref[np.isfinite(ref)], cur[np.isfinite(cur)]
    if min(len(ref), len(cur)) == 0:
        return math.nan, math.nan
    result = ks_2samp(ref, cur)
    return float(result.statistic), float(result.pvalue)


def drift_table(
    reference: np.ndarray, current: np.ndarray, names: Sequence[str], bins: int = 10
) -> pd.DataFrame:
    """Drift of every feature of `current` against `reference`, vectorised over features.

    Args:
        reference: (N, F) reference rows (the training data's model inputs).
        current: (M, F) rows to compare, same features in the same order.
        names: the F feature names.
        bins: quantile bins of PSI (>= 2).

    Returns:
        One row per feature, in input order: ``feature``, ``psi``, ``ks_stat``, ``ks_pvalue``
        (asymptotic), ``level``, ``n_reference`` / ``n_current`` (finite values used),
        ``current_median`` and the reference's 1st / 99th percentiles ``reference_q01`` /
        ``reference_q99`` (NaN where a side is empty).

    Raises:
        DataError: shapes that disagree with each other or with `names`, or bins < 2.
    """
    ref, cur = _as_2d(reference), _as_2d(current)
    n_feat = len(names)
    if ref.ndim != 2 or cur.ndim != 2 or ref.shape[1] != n_feat or cur.shape[1] != n_feat:
        raise DataError(
            f"drift: reference {ref.shape} and current {cur.shape} must be (rows, {n_feat}) "
            f"for the {n_feat} feature names"
        )
    if bins < 2:
        raise DataError(f"drift: bins={bins} must be >= 2")
    n_ref, n_cur = np.isfinite(ref).sum(0), np.isfinite(cur).sum(0)  # (F,)
    ok = (n_ref >= MIN_VALUES) & (n_cur >= MIN_VALUES)
    out = {
        "psi": np.full(n_feat, np.nan),
        "ks_stat": np.full(n_feat, np.nan),
        "ks_pvalue": np.full(n_feat, np.nan),
    }
    if ok.any():
        r, c = ref[:, ok], cur[:, ok]
        edges = np.nanquantile(r, np.arange(1, bins) / bins, axis=0).T  # (F', bins - 1)
        shares = []
        for x, n in ((r, n_ref[ok]), (c, n_cur[ok])):
            idx = (x[:, :, None] >= edges[None]).sum(-1)  # (rows, F') = searchsorted right
            flat = idx + bins * np.arange(x.shape[1])[None]
            counts = np.bincount(flat[np.isfinite(x)], minlength=x.shape[1] * bins)
            shares.append(np.maximum(counts.reshape(-1, bins) / n[:, None], EPS))  # (F', bins)
        pr, pc = shares
        out["psi"][ok] = ((pc - pr) * np.log(pc / pr)).sum(1)
        test = ks_2samp(r, c, axis=0, nan_policy="omit", method="asymp")
        out["ks_stat"][ok], out["ks_pvalue"][ok] = test.statistic, test.pvalue
    return pd.DataFrame(
        {
            "feature": list(names),
            **out,
            "level": [level(v) for v in out["psi"]],
            "n_reference": n_ref,
            "n_current": n_cur,
            "current_median": _nan_stat(cur, [0.5])[0],
            "reference_q01": _nan_stat(ref, [RANGE[0]])[0],
            "reference_q99": _nan_stat(ref, [RANGE[1]])[0],
        },
        columns=COLUMNS,
    )


def _nan_stat(x: np.ndarray, q: list[float]) -> np.ndarray:
    """(len(q), F) quantiles of the finite values per column; NaN for an empty column."""
    out = np.full((len(q), x.shape[1]), np.nan)
    has = np.isfinite(x).any(0)
    if has.any():
        out[:, has] = np.nanquantile(x[:, has], q, axis=0)
    return out


# --------------------------------------------------------------------- naive references


def psi_ref(reference: np.ndarray, current: np.ndarray, bins: int = 10) -> float:
    """PSI of one feature written out bin by bin (the reference `drift_table` is tested on)."""
    ref = [float(v) for v in np.ravel(reference) if math.isfinite(v)]
    cur = [float(v) for v in np.ravel(current) if math.isfinite(v)]
    if len(ref) < MIN_VALUES or len(cur) < MIN_VALUES:
        return math.nan
    inner = [float(np.quantile(ref, k / bins)) for k in range(1, bins)]
    edges = [-math.inf, *inner, math.inf]
    total = 0.0
    for lo, hi in zip(edges[:-1], edges[1:], strict=True):  # [lo, hi): values are finite
        r = max(sum(1 for v in ref if lo <= v < hi) / len(ref), EPS)
        c = max(sum(1 for v in cur if lo <= v < hi) / len(cur), EPS)
        total += (c - r) * math.log(c / r)
    return total


def drift_table_ref(
    reference: np.ndarray, current: np.ndarray, names: Sequence[str], bins: int = 10
) -> pd.DataFrame:
    """`drift_table` as a loop over features with `psi_ref` and one `ks_2samp` per feature."""
    rows = []
    for j, name in enumerate(names):
        r = np.asarray(reference, float)[:, j]
        c = np.asarray(current, float)[:, j]
        r, c = r[np.isfinite(r)], c[np.isfinite(c)]
        value = psi_ref(r, c, bins)
        stat = pvalue = math.nan
        if math.isfinite(value):
            test = ks_2samp(r, c, method="asymp")
            stat, pvalue = float(test.statistic), float(test.pvalue)
        rows.append(
            [
                name, value, stat, pvalue, level(value), len(r), len(c),
                float(np.median(c)) if len(c) else math.nan,
                float(np.quantile(r, RANGE[0])) if len(r) else math.nan,
                float(np.quantile(r, RANGE[1])) if len(r) else math.nan,
            ]
        )  # fmt: skip
    return pd.DataFrame(rows, columns=COLUMNS)


# --------------------------------------------------------------------- regime shifts


def regime_warnings(
    table: pd.DataFrame,
    major_share: float = MAJOR_SHARE,
    volatility_prefix: str = VOLATILITY_PREFIX,
) -> list[str]:
    """Regime-shift warnings, as plain sentences, from a `drift_table`.

    Two rules (features whose level is ``insufficient`` take no part):

    1. Broad drift: more than `major_share` of the features have ``major`` drift.
    2. Volatility: a realised-volatility feature (name starting with `volatility_prefix`) has
       its current median outside the reference's [1st, 99th] percentile range.

    Returns:
        One sentence per rule that fires (empty: no regime shift seen).
    """
    found = table[table["level"] != INSUFFICIENT]
    out = []
    major = found[found["level"] == LEVELS[2]].sort_values("psi", ascending=False)
    if len(found) and len(major) / len(found) > major_share:
        names = ", ".join(major["feature"].head(5)) + (", ..." if len(major) > 5 else "")
        out.append(
            f"Regime shift: {len(major)} of {len(found)} features "
            f"({len(major) / len(found):.0%}, more than {major_share:.0%}) show major drift "
            f"from the training data (PSI >= {MAJOR}): {names}."
        )
    for rec in found[found["feature"].str.startswith(volatility_prefix)].itertuples():
        lo, hi, median = rec.reference_q01, rec.reference_q99, rec.current_median
        side = "above" if median > hi else "below" if median < lo else None
        if side:
            edge = hi if side == "above" else lo
            pct = RANGE[1] if side == "above" else RANGE[0]
            out.append(
                f"Regime shift: the median of {rec.feature} ({median:.3g}) lies {side} the "
                f"training data's {pct:.0%} quantile ({edge:.3g}): volatility is "
                f"{'higher' if side == 'above' else 'lower'} than almost anything the model "
                "was trained on."
            )
    return out


class DriftMonitor:
    """Streaming drift of the last `window` scored rows against a reference (the service's).

    A ring buffer holds the last `window` feature rows given to `update`; `table` is their
    `drift_table` against the reference (cached until the next update), `warnings` its
    `regime_warnings`. Thread-safe (the service scores in a threadpool). The rows must be
    what the reference holds: the model's normalised inputs at the decision bar, i.e. the last
    time step ``x[:, -1, :]`` of each (window, F) input scored.

    Args:
        reference: (N, F) reference rows (`load_reference`).
        names: the F feature names.
        window: rows kept (until `MIN_VALUES` rows have arrived every level is
            ``insufficient`` and there are no warnings).
        bins: PSI bins.
        major_share: the broad-drift warning's threshold (`regime_warnings`).
    """

    def __init__(
        self,
        reference: np.ndarray,
        names: list[str],
        window: int = 500,
        bins: int = 10,
        major_share: float = MAJOR_SHARE,
    ) -> None:
        self.reference = _as_2d(reference)
        self.names = list(names)
        if self.reference.ndim != 2 or self.reference.shape[1] != len(self.names):
            raise DataError(
                f"DriftMonitor: reference {self.reference.shape} must be (rows, "
                f"{len(self.names)}) for the {len(self.names)} feature names"
            )
        if window < 1:
            raise DataError(f"DriftMonitor: window={window} must be >= 1")
        self.window, self.bins, self.major_share = int(window), int(bins), float(major_share)
        self._rows = np.full((self.window, len(self.names)), np.nan)
        self._next, self.seen = 0, 0  # next slot to write; rows received in total
        self._lock = threading.Lock()
        self._cached: tuple[int, pd.DataFrame] | None = None  # (seen, table of those rows)

    def update(self, rows: np.ndarray) -> None:
        """Add (K, F) feature rows just scored (a (F,) row is one row); non-finite allowed."""
        rows = np.asarray(rows, dtype=np.float64)
        rows = rows[None] if rows.ndim == 1 else rows
        if rows.ndim != 2 or rows.shape[1] != len(self.names):
            raise DataError(
                f"DriftMonitor.update: rows {rows.shape} must be (K, {len(self.names)})"
            )
        received, rows = len(rows), rows[-self.window :]  # older rows would be overwritten
        with self._lock:
            slots = (self._next + np.arange(len(rows))) % self.window
            self._rows[slots] = rows
            self._next = int((self._next + len(rows)) % self.window)
            self.seen += received

    def _snapshot(self) -> tuple[int, np.ndarray]:
        with self._lock:
            order = (self._next + np.arange(self.window)) % self.window
            held = min(self.seen, self.window)
            return self.seen, self._rows[order][self.window - held :].copy()

    def current(self) -> np.ndarray:
        """(min(seen, window), F) the rows held, oldest first."""
        return self._snapshot()[1]

    def table(self) -> pd.DataFrame:
        """`drift_table` of the rows held against the reference (recomputed only after an
        update)."""
        cached = self._cached
        if cached is not None and cached[0] == self.seen:
            return cached[1].copy()
        seen, rows = self._snapshot()
        table = drift_table(self.reference, rows, self.names, self.bins)
        self._cached = (seen, table)
        return table.copy()

    def warnings(self) -> list[str]:
        """`regime_warnings` of `table` (plain sentences; empty: none)."""
        return regime_warnings(self.table(), self.major_share)


def load_reference(run_dir: str | os.PathLike) -> tuple[np.ndarray, list[str]]:
    """A run's drift reference: ((N, F) float64 rows, the F feature names in model order).

    Raises:
        DataError: the run dir has no readable `drift_reference.parquet`, or it holds no
            feature column.
    """
    path = Path(run_dir) / REFERENCE_FILE
    if not path.is_file():
        raise DataError(f"{path}: missing: not a run dir, or a run older than the drift reference")
    frame = pd.read_parquet(path)
    names = [str(c) for c in frame.columns if c not in META_COLUMNS]
    if not names:
        raise DataError(f"{path}: no feature column")
    return frame[names].to_numpy(dtype=np.float64), names
