"""Analyst feedback as offline data for PPO: vetoed positions are pushed away from, approved
ones pulled towards, at the bars they were given for.

An analyst's verdict (`plusultra.service.feedback`, written by ``plusultra-review`` or the
service's ``POST /reviews``) names a decision bar, a symbol and the position a run took there.
The PPO stage (``feedback`` key of `rl.stage.RLStage`) reads the store's vetoes and approvals
for its symbols and keeps those at the bars its training episodes decide at (the train
segment's decision bars whose fill and holding lie in the train segment: the same bars
`TradingEnv` draws episodes over); every other review is ignored and counted in one log line
(outside the train segment, a timestamp or symbol not in the data, a symbol not tradable at the
bar, a flag, a review without a position). Reviews of a run's test segment therefore shape a
later run whose train segment covers those bars (a retrain on fresh data), never the run that
is evaluated on them.

The penalty, added to each PPO minibatch's loss (docs/rl.md, "Analyst feedback as offline
data"); the policy is evaluated on the training environment's observation of the review's bar
with a flat book (`TradingEnv.observe_bars`), the held book of the reviewed run being unknown:

* veto, continuous: ``-log(1 - q)`` with ``q = P(|clip(a, -1, 1) - v| <= band)`` the policy's
  probability of trading within ``band`` of the vetoed position ``v`` (a band reaching past
  +-1 extends to infinity: the clipped action sits on the bound). The std is detached, so only
  the mean moves; the penalty fades once the mean is a few std outside the band (bounded, unlike
  maximising the vetoed action's negative log-likelihood, which diverges).
* veto, discrete: ``-log(1 - pi(a_v))`` with ``a_v`` sell/hold/buy by the sign of ``v``.
* approval: behaviour cloning of the approved position: ``(v - mean)^2 / (2 std^2)`` (std
  detached) or ``-log pi(a_v)``.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from plusultra.errors import ConfigError
from plusultra.service.feedback import ReviewStore, canonical_timestamp

log = logging.getLogger(__name__)

FAR = 1e6  # a band edge past the +-1 clip: the clipped action's whole tail


@dataclass(frozen=True)
class FeedbackSettings:
    """The PPO stage's ``feedback`` keys (errors name ``feedback.<key>``)."""

    db: str | None = None  # the review store (plusultra-review); None: off
    veto_weight: float = 0.0  # weight of the veto penalty in the PPO loss; 0: vetoes unused
    approve_weight: float = 0.0  # weight of cloning approved positions; 0: approvals unused
    veto_band: float = 0.1  # positions within this of a vetoed one count as it (continuous)
    runs: list[str] | None = None  # only reviews of these run ids; None: every run's
    batch_size: int = 256  # reviews drawn per PPO minibatch (all when fewer)

    def __post_init__(self) -> None:
        for key in ("veto_weight", "approve_weight"):
            v = getattr(self, key)
            if isinstance(v, bool) or not isinstance(v, int | float) or not v >= 0:
                raise ConfigError(f"feedback.{key}={v!r} must be a number >= 0")
            if not math.isfinite(v):
                raise ConfigError(f"feedback.{key}={v!r} must be finite")
        band = self.veto_band
        if isinstance(band, bool) or not isinstance(band, int | float) or not 0 < band <= 2:
            raise ConfigError(f"feedback.veto_band={band!r} must be in (0, 2]")
        b = self.batch_size
        if isinstance(b, bool) or not isinstance(b, int) or b < 1:
            raise ConfigError(f"feedback.batch_size={b!r} must be an integer >= 1")
        if self.runs is not None and (
            isinstance(self.runs, str) or not all(isinstance(r, str) for r in self.runs)
        ):
            raise ConfigError(f"feedback.runs={self.runs!r} must be a list of run ids or null")

    @property
    def active(self) -> bool:
        """A store is given and some weight is positive."""
        return self.db is not None and (self.veto_weight > 0 or self.approve_weight > 0)

    def store(self) -> ReviewStore:
        """The review store; it must exist.

        Raises:
            ConfigError: ``feedback.db`` is not a file.
        """
        path = Path(str(self.db))
        if not path.is_file():
            raise ConfigError(
                f"feedback.db={self.db!r}: no such review store (plusultra-review add creates "
                "one; set feedback.db=null to train without feedback)"
            )
        return ReviewStore(path)


@dataclass
class FeedbackData:
    """Reviews placed on the environment's calendar (N used reviews).

    Attributes:
        bars: (N,) long decision bars.
        symbols: (N,) long symbol columns.
        positions: (N,) float32 reviewed positions.
        veto: (N,) bool, True for a veto, False for an approval.
        counts: every review read, by what became of it (``veto``, ``approve`` used; the rest
            ignored).
    """

    bars: torch.Tensor
    symbols: torch.Tensor
    positions: torch.Tensor
    veto: torch.Tensor
    counts: dict[str, int] = field(default_factory=dict)

    def __len__(self) -> int:
        return int(self.bars.numel())

    def summary(self) -> str:
        """One line: what was used and what was ignored, and why."""
        c = self.counts
        ignored = [f"{v} {k.replace('_', ' ')}" for k, v in c.items() if k not in USED and v]
        return (
            f"used {c.get('veto', 0)} veto(es) and {c.get('approve', 0)} approval(s) at train "
            f"bars of {sum(c.values())} review(s) of the run's symbols; ignored: "
            + (", ".join(ignored) or "none")
        )


USED = ("veto", "approve")


def place_reviews(
    reviews: pd.DataFrame,
    dates,
    symbols: list[str],
    first: int,
    last: int,
    observable: np.ndarray,
    use: tuple[str, ...] = USED,
) -> FeedbackData:
    """Map reviews to (bar, symbol) of the calendar, keeping those at decision bars
    ``first..last`` where the symbol is tradable.

    Args:
        reviews: rows with ``symbol``, ``timestamp`` (ISO), ``position``, ``verdict``.
        dates: (T,) the calendar.
        symbols: the S symbols, in the market's column order.
        first, last: the decision bars reviews may be used at (inclusive).
        observable: (T, S) bool, tradable with a full window at the bar.
        use: the verdicts to keep (a weight of 0 drops its verdict).

    Returns:
        The used reviews and the counts of every outcome (a review is counted once, by the first
        reason it is ignored for: ``flag``, ``unused_verdict``, ``no_position``,
        ``not_in_data``, ``outside_train``, ``not_tradable``).
    """
    index = {canonical_timestamp(d): i for i, d in enumerate(pd.DatetimeIndex(dates))}
    column = {s: j for j, s in enumerate(symbols)}
    counts = dict.fromkeys(
        ("veto", "approve", "flag", "unused_verdict", "no_position", "not_in_data",
         "outside_train", "not_tradable"),
        0,
    )  # fmt: skip
    kept: list[tuple[int, int, float, bool]] = []
    for sym, ts, pos, verdict in reviews[["symbol", "timestamp", "position", "verdict"]].itertuples(
        index=False
    ):
        bar, col = index.get(canonical_timestamp(ts)), column.get(sym)
        if verdict == "flag":
            reason = "flag"
        elif verdict not in use:
            reason = "unused_verdict"
        elif pos is None or not math.isfinite(float(pos)):
            reason = "no_position"
        elif bar is None or col is None:
            reason = "not_in_data"
        elif not first <= bar <= last:
            reason = "outside_train"
        elif not observable[bar, col]:
            reason = "not_tradable"
        else:
            reason = verdict
            kept.append((bar, col, float(pos), verdict == "veto"))
        counts[reason] += 1
    bars, cols, pos, veto = zip(*kept, strict=True) if kept else ((), (), (), ())
    return FeedbackData(
        torch.tensor(bars, dtype=torch.long),
        torch.tensor(cols, dtype=torch.long),
        torch.tensor(pos, dtype=torch.float32),
        torch.tensor(veto, dtype=torch.bool),
        counts,
    )


# ------------------------------------------------------------------------------- penalties


def discrete_action(position: torch.Tensor) -> torch.Tensor:
    """sell (0) / hold (1) / buy (2) by the sign of a position (N,)."""
    return torch.sign(position).long() + 1


def veto_penalty_continuous(
    mean: torch.Tensor, log_std: torch.Tensor, vetoed: torch.Tensor, band: float
) -> torch.Tensor:
    """(N,) ``-log(1 - q)``, q the Gaussian policy's probability that its clipped action lies
    within ``band`` of ``vetoed`` (a band edge past +-1 reaches to infinity); std detached."""
    sigma = log_std.detach().exp()
    lo = torch.where(vetoed - band <= -1, -FAR, vetoed - band)
    hi = torch.where(vetoed + band >= 1, FAR, vetoed + band)
    below = torch.special.log_ndtr((lo - mean) / sigma)  # log P(a < lo)
    above = torch.special.log_ndtr((mean - hi) / sigma)  # log P(a > hi)
    return -torch.logaddexp(below, above)


def veto_penalty_discrete(logits: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
    """(N,) ``-log(1 - pi(action))`` from logits (N, 3), computed as the log-sum-exp of the
    other actions' logits minus that of all (exact where pi(action) is near 1)."""
    other = logits.masked_fill(torch.nn.functional.one_hot(action, 3).bool(), -math.inf)
    return -(torch.logsumexp(other, -1) - torch.logsumexp(logits, -1))


def approve_penalty_continuous(
    mean: torch.Tensor, log_std: torch.Tensor, approved: torch.Tensor
) -> torch.Tensor:
    """(N,) ``(approved - mean)^2 / (2 std^2)``, the Gaussian NLL up to a constant (std
    detached)."""
    return (approved - mean) ** 2 / (2 * (2 * log_std.detach()).exp())


def approve_penalty_discrete(logits: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
    """(N,) ``-log pi(action)``."""
    return -torch.log_softmax(logits, -1).gather(-1, action[:, None])[:, 0]


class FeedbackPenalty:
    """The feedback term of the PPO loss over one environment's reviews.

    Args:
        data: the used reviews (`place_reviews`), moved to the environment's device.
        env: the training `TradingEnv` (its ``observe_bars`` builds the observations).
        settings: weights, band and batch size.
    """

    def __init__(self, data: FeedbackData, env, settings: FeedbackSettings) -> None:
        dev = env.device
        self.bars, self.symbols = data.bars.to(dev), data.symbols.to(dev)
        self.positions, self.veto = data.positions.to(dev), data.veto.to(dev)
        self.env, self.settings, self.n = env, settings, len(data)

    def loss(
        self, policy, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The weighted penalty on ``batch_size`` reviews drawn with ``generator`` (all of them
        when fewer), and its unweighted veto / approval means for logging."""
        s = self.settings
        if self.n > s.batch_size:
            dev = generator.device if generator is not None else self.bars.device
            idx = torch.randint(self.n, (s.batch_size,), generator=generator, device=dev)
            idx = idx.to(self.bars.device)
        else:
            idx = torch.arange(self.n, device=self.bars.device)
        bars, cols = self.bars[idx], self.symbols[idx]
        pos, veto = self.positions[idx], self.veto[idx]
        unique, row = torch.unique(bars, return_inverse=True)  # one observation per bar
        out = policy(self.env.observe_bars(unique))
        if policy.action_kind == "continuous":
            mean = out.mean[row, cols]  # (n,)
            v_pen = veto_penalty_continuous(mean, out.log_std, pos, s.veto_band)
            a_pen = approve_penalty_continuous(mean, out.log_std, pos)
        else:
            logits, action = out.logits[row, cols], discrete_action(pos)  # (n, 3), (n,)
            v_pen = veto_penalty_discrete(logits, action)
            a_pen = approve_penalty_discrete(logits, action)
        total = mean_v = mean_a = torch.zeros((), device=bars.device)
        if veto.any():
            mean_v = v_pen[veto].mean()
            total = total + s.veto_weight * mean_v
        if (~veto).any():
            mean_a = a_pen[~veto].mean()
            total = total + s.approve_weight * mean_a
        return total, {"feedback_veto": mean_v.detach(), "feedback_approve": mean_a.detach()}


def feedback_bars(env) -> tuple[int, int]:
    """The decision bars a training episode of ``env`` can decide at: its first start bar to
    the last bar whose fill and holding lie in the segment."""
    m = env.market
    return env.first_start, min(int(env.segment[1]), m.n_bars - 1) - m.lag - 1


def build_penalty(settings: FeedbackSettings, env, dates, symbols: list[str]):
    """The penalty over the store's reviews of ``symbols`` placed on ``env``'s train bars, or
    None when feedback is off or no review is usable (logged either way)."""
    if not settings.active:
        return None
    frame = settings.store().frame(symbols=list(symbols))
    if settings.runs is not None:
        frame = frame[frame["run_id"].isin(list(settings.runs))]
    weights = (("veto", settings.veto_weight), ("approve", settings.approve_weight))
    use = tuple(verdict for verdict, weight in weights if weight > 0)
    first, last = feedback_bars(env)
    observable = env.market.observable.cpu().numpy()
    data = place_reviews(frame, dates, list(symbols), first, last, observable, use)
    log.info("feedback from %s: %s", settings.db, data.summary())
    if len(data) == 0:
        log.warning("feedback: no usable review in %s; training without feedback", settings.db)
        return None
    return FeedbackPenalty(data, env, settings)
