"""A retrain workdir's settings and progress: `<workdir>/state.json`, written atomically.

The file records the settings the retrain was started with (database, champion pointer,
margin, metric, `plusultra` overrides), the steps completed in order, and each completed
step's outputs (the inputs of the later steps). A step whose inputs are not recorded stops
with an error naming the step that produces them.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from plusultra.catalogue.objective import objective_direction
from plusultra.errors import ConfigError, DataError
from plusultra.io import write_json_atomic

STEPS = ("validate", "train", "backtest", "compare", "promote", "report")
STATE_FILE = "state.json"
# overrides the pipeline sets itself: the database, where runs go, resuming, multirun
RESERVED = ("data=", "data.path=", "paths.output_dir=", "resume=", "hydra.run.dir=", "-m")


@dataclass(frozen=True)
class Settings:
    """What one retrain does.

    Attributes:
        db: the new SQLite database (absolute).
        champion: the champion pointer file (absolute; need not exist yet).
        margin: promote only when the challenger beats the champion by more than this, in the
            metric's units (>= 0).
        metric: the `val_*` metric of metrics.json the decision compares.
        overrides: `plusultra` overrides of the challenger's run (e.g. curriculum=full).
    """

    db: str
    champion: str
    margin: float = 0.1
    metric: str = "val_sharpe"
    overrides: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not Path(self.db).is_file():
            raise DataError(f"--db {self.db}: no such file")
        if not (isinstance(self.margin, int | float) and self.margin >= 0):
            raise ConfigError(f"--margin {self.margin!r}: must be a number >= 0")
        objective_direction(self.metric)  # a val_* metric whose direction its name says
        for arg in self.overrides:
            bare = arg.lstrip("+~")
            if bare.startswith(RESERVED) or arg in ("-m", "--multirun"):
                raise ConfigError(
                    f"override {arg!r}: plusultra-retrain sets it itself (--db gives the "
                    "database, the run goes under <workdir>/outputs, resume is automatic)"
                )

    @property
    def direction(self) -> str:
        """maximize or minimize, from the metric's name."""
        return objective_direction(self.metric)


class RetrainState:
    """The state file of one workdir."""

    def __init__(self, workdir: Path, settings: Settings, data: dict) -> None:
        self.workdir, self.settings, self.data = workdir, settings, data

    @property
    def path(self) -> Path:
        return self.workdir / STATE_FILE

    @classmethod
    def open(cls, workdir: str | os.PathLike, settings: Settings | None) -> RetrainState:
        """The workdir's state; created from `settings` when there is none yet.

        Raises:
            ConfigError: no state and no settings (the first step needs --db), or `settings`
                differ from those the workdir was started with.
        """
        workdir = Path(workdir).resolve()
        path = workdir / STATE_FILE
        if not path.is_file():
            if settings is None:
                raise ConfigError(
                    f"--workdir {workdir}: no {STATE_FILE} (not started); give --db to start "
                    "a retrain there"
                )
            state = cls(workdir, settings, {"settings": asdict(settings), "completed": []})
            state.data["outputs"], state.data["created_at"] = {}, _now()
            state.save()
            return state
        try:
            data = json.loads(path.read_text())
            saved = Settings(**data["settings"])
        except (ValueError, KeyError, TypeError) as exc:
            raise DataError(f"{path}: not a retrain state file ({exc})") from None
        if settings is not None and settings != saved:
            diff = [
                f"{k}: {v!r} (workdir) vs {asdict(settings)[k]!r} (given)"
                for k, v in asdict(saved).items()
                if asdict(settings)[k] != v
            ]
            raise ConfigError(
                f"--workdir {workdir} was started with other settings ({'; '.join(diff)}); "
                "use a new workdir for a new retrain"
            )
        return cls(workdir, saved, data)

    def save(self) -> None:
        write_json_atomic(self.path, self.data)

    @property
    def completed(self) -> list[str]:
        return list(self.data["completed"])

    def done(self, step: str) -> bool:
        return step in self.data["completed"]

    def start(self, step: str) -> None:
        """Mark `step` as running; forget it and every later step as completed (a rerun of a
        step makes what was built on it stale)."""
        later = STEPS[STEPS.index(step) :]
        self.data["completed"] = [s for s in self.data["completed"] if s not in later]
        for s in later:
            self.data["outputs"].pop(s, None)
        self.data.setdefault("attempts", {})[step] = self.data.get("attempts", {}).get(step, 0) + 1
        self.data["running"] = step
        self.save()

    def complete(self, step: str, outputs: dict) -> None:
        """Record `step` as completed with its outputs (atomic)."""
        self.data["outputs"][step] = outputs
        self.data["completed"] = [s for s in STEPS if s in self.data["completed"] or s == step]
        self.data["running"] = None
        self.data.setdefault("completed_at", {})[step] = _now()
        self.save()

    def output(self, step: str, needed_by: str) -> dict:
        """The recorded outputs of `step`, which `needed_by` reads.

        Raises:
            ConfigError: `step` has not completed in this workdir.
        """
        if not self.done(step):
            raise ConfigError(
                f"step {needed_by}: needs the output of step {step}, which has not completed "
                f"in {self.workdir}; run `plusultra-retrain step {step} --workdir "
                f"{self.workdir}` first"
            )
        return self.data["outputs"][step]


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")
