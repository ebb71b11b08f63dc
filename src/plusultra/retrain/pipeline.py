"""Running the steps: all of them in order, resuming after the last completed one, or one.

A step is recorded as completed only after it returned (state.json written atomically), so
a step that failed or was killed is run again by the next invocation, and the steps before
it are not.
"""

from __future__ import annotations

import os
from pathlib import Path

from plusultra.errors import ConfigError, PlusUltraError
from plusultra.retrain import steps
from plusultra.retrain.state import STEPS, RetrainState, Settings


def run_step(state: RetrainState, name: str) -> dict:
    """Run step `name` now (again, if it had completed: later steps are then forgotten).

    Raises:
        ConfigError: an unknown step name.
        PlusUltraError: the step's own errors, prefixed with `step <name>:`.
    """
    if name not in STEPS:
        raise ConfigError(f"unknown step {name!r}; steps: {', '.join(STEPS)}")
    state.start(name)
    try:
        outputs = getattr(steps, name)(state)
    except PlusUltraError as exc:
        if not str(exc).startswith("step "):
            exc.args = (f"step {name}: {exc}",)
        raise
    state.complete(name, outputs)
    return outputs


def run_pipeline(workdir: str | os.PathLike, settings: Settings | None) -> RetrainState:
    """Run every step not yet completed, in order; returns the final state.

    Args:
        workdir: the retrain's directory (created).
        settings: the retrain's settings; None: those recorded in the workdir (a resume).
    """
    Path(workdir).mkdir(parents=True, exist_ok=True)
    state = RetrainState.open(workdir, settings)
    todo = [s for s in STEPS if not state.done(s)]
    if not todo:
        print(f"plusultra-retrain: {state.workdir}: every step already completed")
    elif len(todo) < len(STEPS):
        print(f"plusultra-retrain: resuming at step {todo[0]} ({', '.join(state.completed)} done)")
    for name in todo:
        print(f"plusultra-retrain: step {name}", flush=True)
        run_step(state, name)
    return state
