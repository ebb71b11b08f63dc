"""The batched trading environment: E episodes over S symbols at once, as torch tensors.

Timing (``plusultra.execution``, issue 6). Step ``k`` of an episode starting at bar ``t0`` is
the decision at bar ``t = t0 + k``'s close. The observation holds the W-bar feature window ending
at ``t`` (data up to ``t`` only). The action's targets fill at bar ``t + lag`` (``next_open``:
``t + 1``'s open, the default where the data has opens; ``next_close``: ``t + 1``'s close;
``same_close``: ``t``'s close, optimistic) and are held to the next fill, so the reward of step
``k`` is the P&L of the filled book from its fill on, never bar ``t``'s own move, net of the cost
of the trade at the fill.

Accounting per step, per env (fractions of the equity ``X`` at the decision):

1. Targets ``w`` (continuous: the action clipped to [-1, 1]; discrete: ``action - 1``), 0 where
   the symbol cannot be held (``EnvMarket.holdable``: a held position there is closed), scaled
   by ``max_gross / sum|w|`` when ``sum|w| > max_gross`` (the gross exposure cap).
2. Trade ``dw = |w - p|`` against the drifted holdings ``p``; cost
   ``c = sum dw * (commission_bps + half_spread_bps) / 1e4 + sum impact * dw^1.5 * sqrt(X)``.
3. Net return ``r = sum w * R - c`` with ``R`` the execution returns; equity grows by ``1 + r``;
   holdings drift to ``p' = w (1 + R) / (1 + r)`` by the next fill (what the next trade is
   measured against). The observation's ``position`` is ``w``, the book right after the fill,
   and ``cash = 1 - sum w``: the drift to the next fill price happens after the next decision's
   close (under next-bar execution), so showing it would leak that price.
4. Reward: ``RewardShaper`` of ``r`` and the turnover ``sum dw`` (``rl.rewards``).

An episode is truncated after ``episode_len`` steps and terminated if its equity reaches 0. Start
bars are drawn uniformly (seeded) so that every decision bar, fill bar and return bar of the
episode lies in the segment's decision bars ``[lo, hi]`` (the feature window reaches back
``W - 1`` bars before ``lo``, as supervised windows do; the embargo keeps it off the previous
segment). Ended envs are reset inside ``step`` (``plusultra.rl.protocol``). A curriculum phase
(`TradingEnv.set_phase`, `plusultra.rl.schedule`) changes the episode length, scales every cost
and restricts the start bars to allowed ones; without one the draws are the plain ones above.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from plusultra.errors import ConfigError, DataError
from plusultra.execution import EXECUTION_MODES
from plusultra.rl.market import EnvMarket
from plusultra.rl.protocol import ACTION_KINDS, LazyWindows, Observation
from plusultra.rl.rewards import RewardConfig, RewardShaper

SEGMENTS = ("train", "val", "test")


@dataclass(frozen=True)
class EnvConfig:
    """Settings of `TradingEnv` (checked on creation; errors name ``env.<key>``)."""

    n_envs: int = 16  # E, episodes stepped in parallel
    episode_len: int = 64  # steps (decision bars) per episode
    action_kind: str = "continuous"  # continuous (target in [-1, 1]) | discrete (sell/hold/buy)
    execution: str | None = None  # next_open | next_close | same_close (optimistic); None: by data
    commission_bps: float = 1.0  # commission, basis points of traded notional
    half_spread_bps: float = 2.0  # half the bid-ask spread, basis points of traded notional
    impact_coef: float = 0.0  # square-root impact (the realistic simulator's); 0: none
    initial_cash: float = 1_000_000.0  # equity at an episode's start, currency (sizes impact)
    max_gross: float = 1.0  # cap on sum |w|: targets scaled down beyond it
    seed: int = 0  # seeds the start bars

    def __post_init__(self) -> None:
        for key in ("n_envs", "episode_len"):
            v = getattr(self, key)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise ConfigError(f"env.{key} must be an integer >= 1, got {v!r}")
        if self.execution is not None and self.execution not in EXECUTION_MODES:
            raise ConfigError(
                f"env.execution={self.execution!r}; valid: {EXECUTION_MODES} or None (by data)"
            )
        if self.action_kind not in ACTION_KINDS:
            raise ConfigError(f"env.action_kind={self.action_kind!r}; valid: {ACTION_KINDS}")
        for key in ("commission_bps", "half_spread_bps", "impact_coef", "initial_cash"):
            v = getattr(self, key)
            ok = isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)
            if not ok or v < 0 or (key == "initial_cash" and v == 0):
                raise ConfigError(f"env.{key} must be a finite number >= 0, got {v!r}")
        g = self.max_gross
        if not isinstance(g, int | float) or isinstance(g, bool) or not 0 < g < math.inf:
            raise ConfigError(f"env.max_gross must be a finite number > 0, got {g!r}")
        if not isinstance(self.seed, int) or self.seed < 0:
            raise ConfigError(f"env.seed must be an integer >= 0, got {self.seed!r}")

    @classmethod
    def from_simulator(cls, simulator, **overrides) -> EnvConfig:
        """The run's cost model: a ``RealisticSimulator`` (or its ``SimulatorConfig``) gives its
        commission, half spread, impact, initial cash, gross cap and execution; a
        ``FrictionlessSimulator`` gives zero costs and its execution. ``overrides`` win."""
        cfg = getattr(simulator, "config", simulator)
        if hasattr(cfg, "commission_bps"):
            base = dict(
                commission_bps=cfg.commission_bps,
                half_spread_bps=cfg.half_spread_bps,
                impact_coef=cfg.impact_coef,
                initial_cash=cfg.initial_cash,
                max_gross=min(cfg.max_gross_leverage, 1e12),
                execution=cfg.execution,
            )
        else:
            base = dict(commission_bps=0.0, half_spread_bps=0.0, impact_coef=0.0)
            base["execution"] = getattr(simulator, "execution", None)
        return cls(**{**base, **overrides})


class TradingEnv:
    """E trading episodes over S symbols at once (`plusultra.rl.protocol.BatchedEnv`).

    Args:
        market: the aligned market tensors (`EnvMarket.build`); their device is the env's.
        segment: (lo, hi) inclusive decision bars episodes live in.
        window: W, bars per observation window.
        config: environment settings.
        reward: reward shaping (default: net P&L only).

    Raises:
        ConfigError: the episode does not fit the segment (names env.episode_len).
    """

    def __init__(
        self,
        market: EnvMarket,
        segment: tuple[int, int],
        window: int,
        config: EnvConfig | None = None,
        reward: RewardConfig | None = None,
    ) -> None:
        self.market, self.config = market, config or EnvConfig()
        c = self.config
        self.device = market.returns.device
        self.n_envs, self.n_symbols = c.n_envs, market.returns.shape[1]
        self.window, self.n_features = int(window), market.features.shape[2]
        self.action_kind, self.episode_len, self.segment = c.action_kind, c.episode_len, segment
        if self.window != market.window:
            raise ConfigError(f"env window={window} but the market was built for {market.window}")
        lo, hi = int(segment[0]), int(segment[1])
        self.first_start = max(lo, self.window - 1)
        self.last_start = min(hi, market.n_bars - 1) - market.lag - c.episode_len
        if self.last_start < self.first_start:
            raise ConfigError(
                f"env.episode_len={c.episode_len} does not fit the segment's decision bars "
                f"{lo}..{hi} (window {self.window}, fill lag {market.lag}: an episode needs "
                f"episode_len + {market.lag + 1} bars after its first decision bar)"
            )
        self._lo, self._hi = lo, hi
        self.cost_scale = 1.0  # set_phase: multiplies every simulated cost
        self.cost_rate = (c.commission_bps + c.half_spread_bps) * 1e-4
        self._starts: torch.Tensor | None = None  # set_phase: allowed start bars; None: all
        self.shaper = RewardShaper(reward or RewardConfig(), c.n_envs, c.episode_len, self.device)
        self.generator = torch.Generator().manual_seed(c.seed)
        e, s = c.n_envs, self.n_symbols
        self.t = torch.zeros(e, dtype=torch.long, device=self.device)  # decision bar
        self.k = torch.zeros(e, dtype=torch.long, device=self.device)  # step in episode
        self.position = torch.zeros(e, s, device=self.device)  # drifted to the next fill
        self.filled = torch.zeros(e, s, device=self.device)  # right after the last fill
        self.equity = torch.ones(e, device=self.device)  # relative to the episode's start
        # Windows as an overlapping view of the (S, T, F) features: row r is the W * F
        # contiguous floats from bar row r on (symbol s, bar b at row s * T + b), so a window
        # is one contiguous block and an observation's features one gather of E * S blocks.
        # Observations hold row indices into it (lazy), so it must never be written to.
        n_t, wf = market.n_bars, self.window * self.n_features
        flat = market.features.reshape(-1)
        self._windows = flat.as_strided((s * n_t - self.window + 1, wf), (self.n_features, 1))
        self._offsets = (torch.arange(s, device=self.device) * n_t)[None, :]  # (1, S)
        empty = torch.zeros(0, dtype=torch.long, device=self.device)
        self._no_rows = Observation(  # final_observation of a step where no episode ended
            self._lazy(torch.zeros(0, s, dtype=torch.long, device=self.device)),
            torch.zeros(0, s, device=self.device),
            torch.zeros(0, device=self.device),
            market.observable[empty],
        )
        self.reset()

    @classmethod
    def from_datamodule(
        cls,
        dm,
        segment: str = "train",
        config: EnvConfig | None = None,
        reward: RewardConfig | None = None,
        symbols: list[str] | None = None,
        device: torch.device | str = "cpu",
    ) -> TradingEnv:
        """An environment over a set-up `SQLiteDataModule`'s features, prices and segments.

        Args:
            dm: the data module (``setup()`` done).
            segment: train, val or test.
            symbols: a subset of ``dm.panel.symbols`` (default all).

        Raises:
            ConfigError: unknown segment or symbol.
        """
        if segment not in SEGMENTS:
            raise ConfigError(f"env segment={segment!r}; valid: {SEGMENTS}")
        names = list(dm.panel.symbols)
        missing = [x for x in symbols or [] if x not in names]
        if missing:
            raise ConfigError(f"env symbols {missing} are not in the data; have {names}")
        cols = [names.index(x) for x in symbols] if symbols else list(range(len(names)))
        cfg = config or EnvConfig()
        market = EnvMarket.from_datamodule(dm, cfg.execution, cfg.impact_coef, cols, device)
        return cls(market, getattr(dm.segments, segment), dm.window, cfg, reward)

    # ----------------------------------------------------------------- protocol
    def reset(self, seed: int | None = None) -> Observation:
        """Start a new episode in every env; ``seed`` reseeds the start-bar draws."""
        if seed is not None:
            self.generator.manual_seed(int(seed))
        self._restart(torch.arange(self.n_envs, device=self.device))
        return self.observe()

    def step(
        self, action: torch.Tensor
    ) -> tuple[Observation, torch.Tensor, torch.Tensor, torch.Tensor, dict]:
        """One decision in every env (see the module docstring); auto-resets ended envs.

        Returns:
            next_obs, reward (E,), terminated (E,), truncated (E,), info with (E,) tensors
            ``net_return``, ``cost``, ``turnover``, ``gross`` (sum |w| after the cap),
            ``equity`` (relative, after the step), ``terms`` (the unweighted reward terms), and
            ``final_observation`` / ``done_index`` for the envs that ended (always present;
            K = 0 rows when none did).
        """
        w = self._targets(action)  # (E, S)
        m, t = self.market, self.t
        ret = m.returns.index_select(0, t)  # (E, S); index_select: 2x [t] on CPU
        trade = (w - self.position).abs()  # (E, S)
        turnover = trade.sum(-1)
        cost = self.cost_rate * turnover
        if self.config.impact_coef > 0:
            scale = (self.equity * self.config.initial_cash).sqrt()  # equity >= 0 always
            impact = m.impact.index_select(0, t) * trade * trade.sqrt()  # k * trade^1.5
            cost = cost + impact.sum(-1) * (scale * self.cost_scale)
        net = (w * ret).sum(-1) - cost  # (E,)
        growth = 1.0 + net
        alive = growth > 0
        if bool(alive.all()):  # the common step: no env ruined, no masking needed
            self.position = w * (1.0 + ret) / growth[:, None]
            self.filled = w
            self.equity = self.equity * growth
        else:
            safe = torch.where(alive, growth, 1.0)[:, None]
            self.position = torch.where(alive[:, None], w * (1.0 + ret) / safe, 0.0)
            self.filled = torch.where(alive[:, None], w, 0.0)
            self.equity = self.equity * growth.clamp(min=0.0)
        reward, terms = self.shaper(net, turnover)
        self.t, self.k = t + 1, self.k + 1
        terminated = ~alive
        truncated = (self.k >= self.episode_len) & alive
        info = {
            "net_return": net,
            "cost": cost,
            "turnover": turnover,
            "gross": w.abs().sum(-1),
            "equity": self.equity.clone(),
            "terms": terms,
        }
        rows = torch.nonzero(terminated | truncated).squeeze(1)  # (K,), K = 0 most steps
        info["final_observation"] = self.observe(rows) if rows.numel() else self._no_rows
        info["done_index"] = rows
        if rows.numel():
            self._restart(rows)
        return self.observe(), reward, terminated, truncated, info

    def set_phase(
        self,
        episode_len: int | None = None,
        cost_scale: float = 1.0,
        start_ok: torch.Tensor | None = None,
        name: str = "phase",
    ) -> None:
        """Switch to a curriculum phase (`plusultra.rl.schedule`); the caller then resets.

        No argument restores the env's own settings (``config.episode_len``, full costs, every
        start bar): with no phase set, start bars are drawn exactly as before (one ``randint``
        over ``first_start .. last_start``).

        Args:
            episode_len: steps per episode; None: ``config.episode_len``.
            cost_scale: multiplies every simulated cost (commission, half spread, impact).
            start_ok: (T,) bool over the market's bars: bars an episode may start at (drawn
                uniformly among those that fit the segment); None: every fitting bar.
            name: the phase, named in errors (e.g. ``schedule[1]``).

        Raises:
            ConfigError: the episode does not fit the segment, ``start_ok`` has the wrong
                shape, or it allows no start bar that fits.
        """
        length = self.config.episode_len if episode_len is None else int(episode_len)
        if length < 1:
            raise ConfigError(f"{name}.episode_len={episode_len!r} must be >= 1")
        scale = float(cost_scale)
        if not math.isfinite(scale) or scale < 0:
            raise ConfigError(f"{name}.cost_scale={cost_scale!r} must be a finite number >= 0")
        m = self.market
        last = min(self._hi, m.n_bars - 1) - m.lag - length
        if last < self.first_start:
            raise ConfigError(
                f"{name}.episode_len={length} does not fit the segment's decision bars "
                f"{self._lo}..{self._hi} (window {self.window}, fill lag {m.lag}: an episode "
                f"needs episode_len + {m.lag + 1} bars after its first decision bar)"
            )
        starts = None
        if start_ok is not None:
            ok = torch.as_tensor(start_ok, dtype=torch.bool).cpu()
            if tuple(ok.shape) != (m.n_bars,):
                raise ConfigError(
                    f"{name}: start_ok has shape {tuple(ok.shape)}, expected ({m.n_bars},)"
                )
            starts = torch.nonzero(ok[self.first_start : last + 1]).squeeze(1) + self.first_start
            if starts.numel() == 0:
                raise ConfigError(
                    f"{name}: no allowed start bar among the segment's bars "
                    f"{self.first_start}..{last} where an episode of {length} steps fits "
                    "(its regimes never hold there); widen the regimes or shorten the episode"
                )
        self.episode_len, self.last_start, self._starts = length, last, starts
        self.cost_scale = scale
        self.cost_rate = (self.config.commission_bps + self.config.half_spread_bps) * 1e-4 * scale
        c = self.shaper.config
        self.shaper = RewardShaper(c, self.n_envs, length, self.device)

    # ----------------------------------------------------------------- internals
    def observe(self, rows: torch.Tensor | None = None) -> Observation:
        """The observation of every env (or of ``rows``) at its current decision bar. Its
        windows are lazy (`protocol.LazyWindows`): the (K, S) rows of the windows view, which
        nothing overwrites, gathered only when ``features`` is read."""
        t = self.t if rows is None else self.t[rows]
        pos = self.filled if rows is None else self.filled[rows]
        first = (t - self.window + 1)[:, None] + self._offsets  # (K, S) first bar's row
        mask = self.market.observable.index_select(0, t)
        return Observation(self._lazy(first), pos.clone(), 1.0 - pos.sum(-1), mask)

    def observe_bars(self, bars: torch.Tensor) -> Observation:
        """Observations at decision bars ``bars`` (K,) with a flat book (position 0, cash 1):
        the market an episode sees at those bars, for offline data (`plusultra.rl.feedback`).
        Every bar must be ``>= window - 1``."""
        bars = bars.to(device=self.device, dtype=torch.long)
        first = (bars - self.window + 1)[:, None] + self._offsets  # (K, S)
        k = bars.numel()
        flat = torch.zeros(k, self.n_symbols, device=self.device)
        mask = self.market.observable.index_select(0, bars)
        return Observation(self._lazy(first), flat, torch.ones(k, device=self.device), mask)

    def _lazy(self, first: torch.Tensor) -> LazyWindows:
        """The windows starting at rows ``first`` (K, S) of the windows view, not gathered."""
        return LazyWindows(self._windows, first, self.window, self.n_features)

    def _targets(self, action: torch.Tensor) -> torch.Tensor:
        """(E, S) target weights after the holdable mask and the gross cap."""
        shape = (self.n_envs, self.n_symbols)
        if tuple(action.shape) != shape:
            raise DataError(f"env.step: action has shape {tuple(action.shape)}, expected {shape}")
        if self.action_kind == "discrete":
            w = action.to(device=self.device, dtype=torch.long).clamp(0, 2).float() - 1.0
        else:
            w = action.to(device=self.device, dtype=torch.float32).nan_to_num(0.0).clamp(-1, 1)
        w = torch.where(self.market.holdable.index_select(0, self.t), w, 0.0)
        cap = self.config.max_gross
        return w * (cap / w.abs().sum(-1, keepdim=True).clamp(min=cap))  # 1 within the cap

    def _restart(self, rows: torch.Tensor) -> None:
        """New episodes in ``rows``: seeded start bars, flat book, equity 1."""
        n = rows.numel()
        if self._starts is None:  # every bar that fits (the draws of an env without a phase)
            starts = torch.randint(
                self.first_start, self.last_start + 1, (n,), generator=self.generator
            )
        else:  # uniform among the phase's allowed start bars
            pick = torch.randint(0, self._starts.numel(), (n,), generator=self.generator)
            starts = self._starts[pick]
        self.t[rows] = starts.to(self.device)
        self.k[rows] = 0
        self.position[rows] = 0.0
        self.filled[rows] = 0.0
        self.equity[rows] = 1.0
        self.shaper.reset(rows)
