"""The environment curriculum of PPO: phases over episode length, costs and market regimes.

A schedule is a list of `Phase`s run in order. Phase ``i`` lasts ``updates`` PPO updates (every
phase but the last, which runs to the end of training); during it the training environment
(`TradingEnv.set_phase`) uses the phase's episode length, multiplies every simulated cost
(commission, half spread and impact) by ``cost_scale``, and starts episodes only on bars whose
**market regime** is in the phase's classes for every named label.

The market regime of a bar (`market_regime`) is the most common defined class of a regime label
(`plusultra.data.features.regimes`, per symbol, from trailing data only) among the symbols at
that bar; ties go to the higher class, and a bar where no symbol has a defined label is -1 (never
allowed). Since the labels are causal, so is the start-bar filter: it reads nothing after the
start bar. The phase of update ``u`` is a function of ``u`` alone (`EnvSchedule.index`), so a
resumed run finds the same phase as an uninterrupted one.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields

import numpy as np
import torch

from plusultra.data.features.regimes import N_CLASSES, REGIME_LABELS
from plusultra.errors import ConfigError

UNDEFINED = -1  # market regime of a bar where no symbol has a defined label


@dataclass(frozen=True)
class Phase:
    """One phase of the environment curriculum (config keys ``schedule[i].<name>``)."""

    updates: int | None = None  # PPO updates the phase lasts; None only for the last phase
    episode_len: int | None = None  # steps per episode; None: the env's own
    cost_scale: float = 1.0  # multiplies every simulated cost; 0: frictionless
    regimes: dict[str, list[int]] = field(default_factory=dict)  # label -> market classes


def market_regime(labels: np.ndarray) -> np.ndarray:
    """The market-level regime of each bar: the most common defined class among the symbols.

    Args:
        labels: (T, S) int8 per-symbol classes, -1 where undefined.

    Returns:
        (T,) int8: the modal class of the defined labels of each bar, ties to the higher
        class; -1 where no symbol has a defined label.
    """
    labels = np.asarray(labels)
    if labels.ndim != 2:
        raise ConfigError(f"market_regime: labels must be (T, S), got shape {labels.shape}")
    n_t = labels.shape[0]
    k = int(labels.max(initial=UNDEFINED)) + 1  # classes 0..k-1
    if k == 0:
        return np.full(n_t, UNDEFINED, dtype=np.int8)
    counts = (labels[:, :, None] == np.arange(k)).sum(1)  # (T, K)
    top = k - 1 - np.argmax(counts[:, ::-1], axis=1)  # argmax keeps the first: reversed -> higher
    out = top.astype(np.int8)
    out[counts.sum(1) == 0] = UNDEFINED
    return out


def market_regime_reference(labels: np.ndarray) -> np.ndarray:
    """`market_regime` as a plain loop over bars (the reference its test compares with)."""
    out = np.full(len(labels), UNDEFINED, dtype=np.int8)
    for t, row in enumerate(labels):
        counts = Counter(int(x) for x in row if x >= 0)
        if counts:
            best = max(counts.values())
            out[t] = max(c for c, n in counts.items() if n == best)
    return out


def _int(value, low: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= low


def _check_phase(phase: Phase, at: str, last: bool) -> None:
    """Raise ConfigError naming ``<at>.<key>`` on a bad value of ``phase``."""
    updates = phase.updates
    if last and updates is not None:
        raise ConfigError(
            f"{at}.updates={updates!r}: the last phase runs to the end of training; remove it"
        )
    if not last and not _int(updates, 1):
        raise ConfigError(f"{at}.updates={updates!r} must be an integer >= 1")
    length = phase.episode_len
    if length is not None and not _int(length, 1):
        raise ConfigError(f"{at}.episode_len={length!r} must be an integer >= 1 or null")
    scale = phase.cost_scale
    ok = isinstance(scale, int | float) and not isinstance(scale, bool)
    if not ok or not math.isfinite(scale) or scale < 0:
        raise ConfigError(f"{at}.cost_scale={scale!r} must be a finite number >= 0")
    for name, classes in phase.regimes.items():
        if name not in REGIME_LABELS:
            raise ConfigError(f"{at}.regimes.{name}: unknown label; valid: {sorted(REGIME_LABELS)}")
        allowed = list(range(N_CLASSES[name]))
        if not classes or any(isinstance(c, bool) or c not in allowed for c in classes):
            raise ConfigError(
                f"{at}.regimes.{name}={classes!r}: a non-empty list of classes in {allowed}"
            )


class EnvSchedule:
    """Phases in order, the phase of each update, and the phases' allowed start bars.

    Args:
        phases: the phases (every one but the last with ``updates``; checked, errors name
            ``<where>[i].<key>``).
        labels: regime name -> (T, S) per-symbol labels over the env's bars
            (`regime_labels`), one for every label a phase names; None: the phases are only
            validated, and `apply` refuses a phase with regimes.
        where: prefix of error messages (e.g. ``curriculum stage 'ppo': schedule``).
    """

    def __init__(
        self,
        phases: Sequence[Phase],
        labels: Mapping[str, np.ndarray] | None = None,
        where: str = "schedule",
    ) -> None:
        self.phases, self.where = list(phases), where
        if not self.phases:
            raise ConfigError(f"{where}: at least one phase is required")
        for i, phase in enumerate(self.phases):
            _check_phase(phase, f"{where}[{i}]", i == len(self.phases) - 1)
        self.ends = np.cumsum([p.updates for p in self.phases[:-1]], dtype=np.int64)
        self.start_ok: list[torch.Tensor | None] = []
        regimes = {n: market_regime(x) for n, x in (labels or {}).items()}
        for i, phase in enumerate(self.phases):
            ok = None
            for name, classes in phase.regimes.items():
                if labels is None:  # validation only: `apply` refuses the phase
                    break
                if name not in regimes:
                    raise ConfigError(f"{where}[{i}].regimes.{name}: no labels given for it")
                hit = torch.from_numpy(np.isin(regimes[name], list(classes)))
                ok = hit if ok is None else ok & hit
            self.start_ok.append(ok)

    @classmethod
    def from_config(
        cls,
        specs: Sequence[Mapping],
        where: str = "schedule",
        labels: Mapping[str, np.ndarray] | None = None,
    ) -> EnvSchedule:
        """The schedule of a list of phase mappings (``Phase`` keys; errors name
        ``<where>[i].<key>``)."""
        if isinstance(specs, str | bytes | Mapping) or not isinstance(specs, Sequence):
            raise ConfigError(f"{where} must be a list of phase mappings, got {specs!r}")
        valid = [f.name for f in fields(Phase)]
        phases = []
        for i, spec in enumerate(specs):
            at = f"{where}[{i}]"
            if not isinstance(spec, Mapping):
                raise ConfigError(f"{at} must be a mapping with keys {valid}, got {spec!r}")
            unknown = sorted(set(spec) - set(valid))
            if unknown:
                raise ConfigError(f"{at}: unknown key(s) {unknown}; valid: {valid}")
            regimes = spec.get("regimes") or {}
            if not isinstance(regimes, Mapping) or any(
                isinstance(v, str | bytes) or not isinstance(v, Sequence) for v in regimes.values()
            ):
                raise ConfigError(f"{at}.regimes={regimes!r} must map labels to lists of classes")
            phases.append(
                Phase(
                    updates=spec.get("updates"),
                    episode_len=spec.get("episode_len"),
                    cost_scale=spec.get("cost_scale", 1.0),
                    regimes={str(k): list(v) for k, v in regimes.items()},
                )
            )
        return cls(phases, labels, where)

    @property
    def labels_needed(self) -> list[str]:
        """The regime labels the phases name, in first-use order."""
        return list(dict.fromkeys(n for p in self.phases for n in p.regimes))

    def index(self, update: int) -> int:
        """The phase of PPO update ``update`` (0-based): phase i covers updates
        ``sum(updates[:i]) .. sum(updates[:i + 1]) - 1``; the last phase all the rest."""
        return int(np.searchsorted(self.ends, int(update), side="right"))

    def apply(self, env, index: int) -> dict[str, float]:
        """Put phase ``index`` on ``env`` (`TradingEnv.set_phase`; the caller resets the env).

        Returns:
            the values to log: ``phase``, ``cost_scale``, ``episode_len`` (the env's).
        """
        phase = self.phases[index]
        if phase.regimes and self.start_ok[index] is None:
            raise ConfigError(
                f"{self.where}[{index}].regimes: the schedule was built without regime labels "
                "(EnvSchedule(phases, labels=regime_labels(panel, ...)))"
            )
        env.set_phase(
            phase.episode_len, phase.cost_scale, self.start_ok[index], f"{self.where}[{index}]"
        )
        return {
            "phase": float(index),
            "cost_scale": phase.cost_scale,
            "episode_len": float(env.episode_len),
        }

    def check(self, env) -> None:
        """Apply every phase once (each must fit the env and allow a start bar), then restore
        the env's own settings."""
        for i in range(len(self.phases)):
            self.apply(env, i)
        env.set_phase()
