"""The service's two seams onto other parts: the guardrails (`plusultra.guardrails`) and the
feature drift monitor (`plusultra.evaluation.drift`).

`LoadedModel` receives factories, so tests and other deployments can pass their own; the
defaults build the run's own guardrails and drift monitor, imported only when the run
configures them (a run without a `guardrails` config or without `drift_reference.parquet` is
served without them).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import Any

# (run config, universe, symbol -> sector, bars per year) -> a `Guardrails` (or an object with
# its `active`, `history`, `factor_series`, `new_state`, `warm_up` and `step`), or None
GuardrailsFactory = Callable[[Any, list[str], dict[str, str | None], float], Any]
# (run dir, window of recent rows) -> (a `DriftMonitor`, the feature names it compares), or None
DriftFactory = Callable[[Path, int], tuple[Any, list[str]] | None]


def default_guardrails(cfg, universe: list[str], sectors: dict, periods_per_year: float):
    """The run's guardrails (its `guardrails` config, `GuardrailConfig` keys), or None when the
    run has no guardrails config or every rule is off."""
    from omegaconf import OmegaConf

    node = OmegaConf.select(cfg, "guardrails", default=None)
    if node is None:
        return None
    from plusultra.guardrails import GuardrailConfig, Guardrails

    values = OmegaConf.to_container(node, resolve=True)
    names = {f.name for f in dataclasses.fields(GuardrailConfig)}
    config = GuardrailConfig(**{k: v for k, v in values.items() if k in names})
    known = {s: sec for s, sec in sectors.items() if sec is not None}
    guard = Guardrails(config, list(universe), known, periods_per_year)
    return guard if guard.active else None


def default_drift(run_dir: Path, window: int):
    """A `DriftMonitor` over the run's drift_reference.parquet (the train segment's model
    inputs) and its feature names, or None when the run has none."""
    if not (Path(run_dir) / "drift_reference.parquet").is_file():
        return None
    from plusultra.evaluation.drift import DriftMonitor, load_reference

    reference, names = load_reference(run_dir)
    return DriftMonitor(reference, names, window=window), list(names)
