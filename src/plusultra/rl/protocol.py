"""The contract between batched trading environments and the agents that step them (PPO).

Shapes: E parallel environments, S symbols, W window bars, F features. Every tensor lives on the
environment's ``device``; a step never goes through numpy.

Timing (``plusultra.execution``): the observation of decision bar ``t`` holds data up to ``t``'s
close only; the action chosen from it is filled at ``t + 1`` (its open by default) and the reward
returned by ``step`` is the P&L of that position from its fill on, net of the fill's costs.

Actions (``action_kind``):

* ``"continuous"``: (E, S) float target positions in [-1, 1] (fractions of equity per symbol).
* ``"discrete"``: (E, S) long in {0, 1, 2} = sell / hold / buy as in
  ``plusultra.models.heads.ACTIONS``; the target position is ``index - 1``.

Auto-reset: envs whose episode ended (terminated or truncated) are reset inside ``step``; their
rows of ``next_obs`` are then the new episode's first observation, ``info["final_observation"]``
holds the ended observation of those rows (an ``Observation`` with K rows) and
``info["done_index"]`` the (K,) long env indices. `plusultra.rl.env.TradingEnv` always sets both
(K = 0 on a step where no episode ended); an agent should not rely on that of every env.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Protocol, runtime_checkable

import torch

ACTION_KINDS = ("continuous", "discrete")


@dataclass(frozen=True)
class LazyWindows:
    """Feature windows held as row indices into a table of windows, gathered on access.

    Attributes:
        table: (N, W * F) float32, row r one window (W bars x F features, bar-major); in
            `plusultra.rl.env.TradingEnv` an overlapping strided view of the market's features
            that nothing ever overwrites, so indices into it stay valid for good.
        rows: (K, S) long, the table row of each env's and symbol's window.
        window: W.
        n_features: F.
    """

    table: torch.Tensor
    rows: torch.Tensor
    window: int
    n_features: int

    @property
    def shape(self) -> tuple[int, int, int, int]:
        """(K, S, W, F), without gathering."""
        return (*self.rows.shape, self.window, self.n_features)

    def gather(self, out: torch.Tensor | None = None) -> torch.Tensor:
        """(K, S, W, F): the windows copied into one contiguous tensor (one gather).

        Args:
            out: where to copy them: a contiguous (K, S, W, F) tensor of the table's dtype and
                device, reused across steps by an agent that keeps its own observation buffer
                (no fresh memory to allocate and fault in per step); None: a fresh tensor.

        Returns:
            ``out`` filled, or the fresh tensor.

        Raises:
            ValueError: ``out`` of another shape, dtype or device, or not contiguous.
        """
        k, s = self.rows.shape
        idx = self.rows.reshape(-1)
        if out is None:
            flat = self.table.index_select(0, idx)  # (K * S, W * F)
            return flat.view(k, s, self.window, self.n_features)
        _check_out(out, self.shape, self.table)
        torch.index_select(self.table, 0, idx, out=out.view(k * s, -1))
        return out

    def index(self, rows: torch.Tensor) -> LazyWindows:
        """The windows of env rows ``rows`` ((K',) long or (K,) bool), still lazy."""
        return replace(self, rows=self.rows[rows])

    @staticmethod
    def cat(parts: list[LazyWindows]) -> LazyWindows | None:
        """The windows of ``parts`` one after another (their rows concatenated), or None when
        they do not all index the same table."""
        first = parts[0]
        same = all(
            p.table is first.table and (p.window, p.n_features) == (first.window, first.n_features)
            for p in parts
        )
        return replace(first, rows=torch.cat([p.rows for p in parts])) if same else None


class Observation:
    """What an agent sees at decision bar t (data up to t's close only).

    Built from an eager (E, S, W, F) tensor of windows (``Observation(features, position,
    cash, mask)``, as the toy environments do) or from `LazyWindows` (as `TradingEnv` does: a
    stored observation then costs its E x S row indices, not E x S x W x F floats). ``features``
    reads the same in both cases; for a lazy observation each access gathers a fresh tensor (it
    is not cached), so a caller that needs the features twice should keep the tensor.

    Attributes:
        features: (E, S, W, F) float32, each symbol's feature window ending at the decision bar t.
        position: (E, S) float32, current holdings as a fraction of equity in [-1, 1] (after the
            last fill).
        cash: (E,) float32, cash as a fraction of equity.
        mask: (E, S) bool, symbol tradable at t (untradable symbols' actions are ignored and
            their positions forced flat).
    """

    __slots__ = ("_features", "position", "cash", "mask")

    def __init__(
        self,
        features: torch.Tensor | LazyWindows,
        position: torch.Tensor,
        cash: torch.Tensor,
        mask: torch.Tensor,
    ) -> None:
        self._features, self.position, self.cash, self.mask = features, position, cash, mask

    @property
    def features(self) -> torch.Tensor:
        """(E, S, W, F) float32 windows (gathered afresh on every access when lazy)."""
        f = self._features
        return f.gather() if isinstance(f, LazyWindows) else f

    def features_into(self, out: torch.Tensor) -> torch.Tensor:
        """The (E, S, W, F) windows copied into ``out``, an agent's own contiguous buffer of
        that shape on the observation's device (reused step after step); returns ``out``.

        Raises:
            ValueError: ``out`` of another shape, dtype or device, or not contiguous.
        """
        f = self._features
        if isinstance(f, LazyWindows):
            return f.gather(out)
        _check_out(out, tuple(f.shape), f)
        return out.copy_(f)

    @property
    def windows(self) -> LazyWindows | None:
        """The lazy windows, or None for an observation holding an eager tensor."""
        f = self._features
        return f if isinstance(f, LazyWindows) else None

    def materialize(self) -> Observation:
        """The same observation with its windows gathered into an eager tensor."""
        return Observation(self.features, self.position, self.cash, self.mask)

    def index(self, rows: torch.Tensor) -> Observation:
        """The observation of env rows ``rows`` ((K,) long or (E,) bool); lazy stays lazy."""
        f = self._features
        feats = f.index(rows) if isinstance(f, LazyWindows) else f[rows]
        return Observation(feats, self.position[rows], self.cash[rows], self.mask[rows])

    def to(self, device: torch.device | str) -> Observation:
        """The same observation on ``device`` (lazy windows stay lazy on their own device and
        are gathered when moved elsewhere)."""
        f, dev = self._features, torch.device(device)
        if isinstance(f, LazyWindows) and not _same_device(f.table.device, dev):
            f = f.gather()
        feats = f if isinstance(f, LazyWindows) else f.to(dev)
        return Observation(feats, self.position.to(dev), self.cash.to(dev), self.mask.to(dev))

    @staticmethod
    def cat(parts: list[Observation]) -> Observation:
        """``parts`` stacked along the env dimension. Lazy observations over one table give a
        lazy observation (their row indices concatenated); any other mix is gathered."""
        lazy = [p.windows for p in parts]
        feats = LazyWindows.cat(lazy) if all(w is not None for w in lazy) else None
        if feats is None:
            feats = torch.cat([p.features for p in parts])
        return Observation(
            feats,
            torch.cat([p.position for p in parts]),
            torch.cat([p.cash for p in parts]),
            torch.cat([p.mask for p in parts]),
        )

    def __repr__(self) -> str:
        kind = "lazy" if self.windows is not None else "eager"
        return f"Observation({kind}, features (E, S, W, F) = {tuple(self._features.shape)})"


def _check_out(out: torch.Tensor, shape: tuple[int, ...], like: torch.Tensor) -> None:
    """ValueError unless ``out`` is a contiguous tensor of ``shape`` with ``like``'s dtype and
    device (the buffer an observation's windows are read into)."""
    if tuple(out.shape) != tuple(shape):
        raise ValueError(f"out has shape {tuple(out.shape)}; the windows are {tuple(shape)}")
    if out.dtype != like.dtype or out.device != like.device:
        raise ValueError(
            f"out is {out.dtype} on {out.device}; the windows are {like.dtype} on {like.device}"
        )
    if not out.is_contiguous():
        raise ValueError("out must be contiguous")


def _same_device(a: torch.device, b: torch.device) -> bool:
    """Whether ``b`` names the device ``a`` of a tensor (plain "cuda": the current one)."""
    if b.type == "cuda" and b.index is None:
        b = torch.device("cuda", torch.cuda.current_device())
    return a == b


@runtime_checkable
class BatchedEnv(Protocol):
    """E trading environments stepped together as torch tensors."""

    n_envs: int  # E
    n_symbols: int  # S
    window: int  # W
    n_features: int  # F
    action_kind: str  # one of ACTION_KINDS (an env also has the ``device`` its tensors are on)

    def reset(self, seed: int | None = None) -> Observation:
        """Start a new episode in every env (seeded when ``seed`` is given); the first obs."""
        ...

    def step(
        self, action: torch.Tensor
    ) -> tuple[Observation, torch.Tensor, torch.Tensor, torch.Tensor, dict]:
        """Apply (E, S) actions.

        Returns:
            (next_obs, reward (E,) float32, terminated (E,) bool, truncated (E,) bool, info).
            Envs whose episode ended are reset automatically; next_obs is then the new
            episode's first observation and info["final_observation"] holds the ended one (an
            Observation of those rows) with info["done_index"] the (K,) env indices.
        """
        ...
