"""A multirun sweep directory, loaded: its jobs, and the Optuna study behind it if there is one.

A sweep dir is what `plusultra -m` writes: `<output_dir>/multiruns/<date>/<time>_<id>/` with
one job dir per job (`0/`, `1/`, ...), each holding Hydra's `.hydra/` (config, hydra config,
overrides) and, once the job completed, `metrics.json`. Hydra's basic sweeper (`-m seed=1,2,3`)
also writes `multirun.yaml`; the `plusultra_optuna` sweeper does not, so the sweeper config is
read from a job's `.hydra/hydra.yaml` (the same `hydra.sweeper` node).

The study is found from the jobs themselves: each trial's job carries `++optuna.study=NAME`
and `++optuna.trial=N` (root keys `optuna.study`, `optuna.trial`); its storage comes from
`hydra.sweeper.storage` / `storage_dir`, resolved against the job's resolved `config.yaml`,
relative paths against the sweep's working directory (`hydra.runtime.cwd`).
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from plusultra.errors import DataError


@dataclass
class Job:
    """One job dir of the sweep.

    Attributes:
        num: the job number (its dir name).
        run_dir: the job dir.
        overrides: the job's overrides as Hydra recorded them (`.hydra/overrides.yaml`).
        metrics: `metrics.json` (NaN where null); empty when the job did not complete.
        study: `optuna.study` of the job's config, None outside an Optuna sweep.
        trial: `optuna.trial`, None outside an Optuna sweep.
        optimized_metric: the job's `optimized_metric`: names of the values it returned.
    """

    num: int
    run_dir: Path
    overrides: list[str]
    metrics: dict[str, float]
    study: str | None = None
    trial: int | None = None
    optimized_metric: list[str] = field(default_factory=list)

    @property
    def completed(self) -> bool:
        return bool(self.metrics)


@dataclass
class Sweep:
    """A loaded sweep dir: its jobs and, for an Optuna sweep, the study it belongs to.

    Attributes:
        sweep_dir: the sweep dir.
        jobs: job dirs, by job number.
        sweeper: the sweeper's `_target_` (Hydra's BasicSweeper for a plain grid).
        study: the Optuna study (None: not an Optuna sweep).
        storage: the study's storage URL without its password.
        catalogue_dir: the jobs' `paths.catalogue_dir` (resolved), if a job recorded it.
        elsewhere: jobs of the study's trials that ran in another sweep dir (a resumed study
            has one per invocation), with their metrics; the caller fills it (the CLI reads
            them from the catalogue) and the report shows them beside this dir's jobs.
    """

    sweep_dir: Path
    jobs: list[Job]
    sweeper: str
    study: object | None = None  # optuna.Study
    storage: str | None = None
    catalogue_dir: Path | None = None
    elsewhere: list[Job] = field(default_factory=list)

    @property
    def optimized_metric(self) -> list[str]:
        """Names of the objective(s), from the jobs' `optimized_metric`."""
        return next((j.optimized_metric for j in self.jobs if j.optimized_metric), [])


def _yaml(path: Path):
    if not path.is_file():
        return None
    try:
        return yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise DataError(f"{path}: not valid YAML ({exc})") from exc


def job_dirs(path: Path) -> list[Path]:
    """The numbered job dirs (`0/`, `1/`, ...) with a `.hydra/` dir, by number."""
    found = [p for p in path.iterdir() if p.is_dir() and p.name.isdigit()]
    return sorted((p for p in found if (p / ".hydra").is_dir()), key=lambda p: int(p.name))


def is_sweep_dir(path: str | os.PathLike) -> bool:
    """A multirun sweep dir: `multirun.yaml`, or numbered job dirs holding `.hydra/`."""
    path = Path(path)
    return path.is_dir() and ((path / "multirun.yaml").is_file() or bool(job_dirs(path)))


def _metric_names(value) -> list[str]:
    if value is None:
        return []
    return [str(v) for v in value] if isinstance(value, list) else [str(value)]


def load_job(run_dir: Path) -> Job:
    """One job dir: overrides, metrics (if it completed) and its Optuna identity."""
    cfg = _yaml(run_dir / ".hydra" / "config.yaml") or {}
    optuna_cfg = cfg.get("optuna") or {}
    metrics_path = run_dir / "metrics.json"
    raw = json.loads(metrics_path.read_text()) if metrics_path.is_file() else {}
    trial = optuna_cfg.get("trial")
    return Job(
        num=int(run_dir.name),
        run_dir=run_dir,
        overrides=[str(o) for o in (_yaml(run_dir / ".hydra" / "overrides.yaml") or [])],
        metrics={k: (math.nan if v is None else v) for k, v in raw.items()},
        study=None if optuna_cfg.get("study") is None else str(optuna_cfg["study"]),
        trial=None if trial is None else int(trial),
        optimized_metric=_metric_names(cfg.get("optimized_metric")),
    )


def _hydra_node(sweep_dir: Path, jobs: list[Job]) -> tuple[dict, Path | None]:
    """(the `hydra` node, as saved, and the job dir it came from; None: multirun.yaml)."""
    for job in jobs:
        node = (_yaml(job.run_dir / ".hydra" / "hydra.yaml") or {}).get("hydra")
        if node:
            return node, job.run_dir
    node = (_yaml(sweep_dir / "multirun.yaml") or {}).get("hydra")
    if not node:
        raise DataError(
            f"{sweep_dir}: no job's .hydra/hydra.yaml nor multirun.yaml has a hydra node"
        )
    return node, None


def _resolved(run_dir: Path | None, hydra: dict, key: str):
    """`hydra.sweeper.<key>` with its interpolations resolved against the job's config."""
    from omegaconf import OmegaConf

    root = (_yaml(run_dir / "config.yaml") if run_dir is not None else None) or {}
    cfg = OmegaConf.create({**root, "hydra": {"sweeper": hydra.get("sweeper") or {}}})
    try:
        return OmegaConf.select(cfg, f"hydra.sweeper.{key}")
    except Exception as exc:  # noqa: BLE001 - an unresolvable interpolation, named
        raise DataError(f"hydra.sweeper.{key} of the sweep cannot be resolved: {exc}") from exc


def _absolute(path: str, cwd: Path) -> Path:
    p = Path(path).expanduser()
    return p if p.is_absolute() else cwd / p


def storage_url(run_dir: Path | None, hydra: dict, study_name: str) -> str:
    """The study's storage URL, with relative SQLite/journal paths made absolute.

    Raises:
        DataError: the SQLite or journal file does not exist (opening it would create an
            empty study).
    """
    from hydra_plugins.plusultra_optuna_sweeper.storage import JOURNAL

    cwd = Path((hydra.get("runtime") or {}).get("cwd") or ".")  # where the sweep ran
    storage = _resolved(run_dir, hydra, "storage")
    if storage is None:
        storage_dir = _resolved(run_dir, hydra, "storage_dir") or "."
        path = _absolute(str(storage_dir), cwd) / f"{study_name}.db"
        url = f"sqlite:///{path}"
    else:
        url = str(storage)
        for prefix in ("sqlite:///", JOURNAL):
            if url.startswith(prefix):
                path = _absolute(url[len(prefix) :], cwd)
                url = f"{prefix}{path}"
    for prefix in ("sqlite:///", JOURNAL):
        if url.startswith(prefix) and not Path(url[len(prefix) :]).is_file():
            raise DataError(
                f"the study {study_name!r} of this sweep was stored in {url[len(prefix) :]}, "
                "which does not exist (moved or deleted?)"
            )
    return url


def load_study(url: str, study_name: str | None):
    """Load the study (by name; None: the storage's only study)."""
    import optuna

    from hydra_plugins.plusultra_optuna_sweeper.storage import describe, open_storage

    storage = open_storage(url)
    names = optuna.get_all_study_names(storage)
    if study_name is None:
        if len(names) != 1:
            raise DataError(
                f"no job of the sweep names its study (optuna.study) and {describe(url)} holds "
                f"{len(names)} studies: {', '.join(names) or 'none'}"
            )
        study_name = names[0]
    if study_name not in names:
        raise DataError(
            f"study {study_name!r} not found in {describe(url)} (it holds: "
            f"{', '.join(names) or 'none'})"
        )
    return optuna.load_study(study_name=study_name, storage=storage)


def load_sweep(sweep_dir: str | os.PathLike) -> Sweep:
    """Load a multirun sweep dir and, for an Optuna sweep, its study.

    Raises:
        DataError: not a sweep dir; the study's storage or the study is missing.
    """
    from hydra_plugins.plusultra_optuna_sweeper.storage import describe

    sweep_dir = Path(sweep_dir)
    if not is_sweep_dir(sweep_dir):
        raise DataError(
            f"{sweep_dir} is not a multirun sweep dir (no multirun.yaml, no job dirs 0/, 1/, ... "
            "with .hydra/)"
        )
    jobs = [load_job(p) for p in job_dirs(sweep_dir)]
    hydra, source = _hydra_node(sweep_dir, jobs)
    cwd = Path((hydra.get("runtime") or {}).get("cwd") or ".")
    paths = ((_yaml(source / "config.yaml") if source else None) or {}).get("paths") or {}
    catalogue = paths.get("catalogue_dir")
    catalogue_dir = _absolute(str(catalogue), cwd) if isinstance(catalogue, str) else None
    target = str((hydra.get("sweeper") or {}).get("_target_", "unknown"))
    names = {j.study for j in jobs if j.study is not None}
    if len(names) > 1:
        raise DataError(f"{sweep_dir}: jobs of several studies ({', '.join(sorted(names))})")
    optuna_sweep = bool(names) or "optuna" in target.lower()
    if not optuna_sweep:
        return Sweep(sweep_dir, jobs, target, catalogue_dir=catalogue_dir)
    study_name = next(iter(names), None) or _resolved(source, hydra, "study_name")
    study_name = None if study_name is None else str(study_name)
    if study_name is None and _resolved(source, hydra, "storage") is None:
        raise DataError(
            f"{sweep_dir}: no job recorded its study (optuna.study) and "
            "hydra.sweeper.study_name is null, so the study's SQLite file cannot be named"
        )
    url = storage_url(source, hydra, study_name or "")
    study = load_study(url, study_name)
    return Sweep(sweep_dir, jobs, target, study, describe(url), catalogue_dir)
