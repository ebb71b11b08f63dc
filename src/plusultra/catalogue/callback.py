"""The Hydra callback that writes one catalogue row per job, completed or failed.

Enable it in the root config::

    hydra:
      callbacks:
        catalogue:
          _target_: plusultra.catalogue.callback.CatalogueCallback
          catalogue_dir: ${oc.env:PLUSULTRA_OUTPUT_DIR,outputs}/catalogue

Hydra instantiates callbacks before it sets ``HydraConfig``, so ``catalogue_dir`` must not use
the ``${hydra:...}`` resolver (the whole run would fail with "HydraConfig was not set"); a
relative path is taken relative to the directory ``plusultra`` was launched from
(``hydra.runtime.cwd``), whatever ``hydra.job.chdir`` says.

Per job it writes ``<output dir>/run_id.txt`` at job start and
``<catalogue_dir>/<run_id>.parquet`` at job end (see ``plusultra.catalogue.rows``), on rank zero
only (the worker ranks of a DDP run write nothing, ``plusultra.distributed``); a job ended
by SIGINT/SIGTERM (``plusultra.lifecycle.Interrupted``) gets ``status='interrupted'``; a job its
Optuna pruner stopped (``optuna.TrialPruned``) gets ``status='pruned'``, no error, and the
``pruned_value`` and ``pruned_epoch`` columns read from its ``pruned.json``. A
multirun job's row carries its ``study``: the ``sweep_name`` config key, else the invocation's
overrides minus the swept ones (read at multirun start), else the sweep directory. At the end of
a multirun it logs one line on the study's best trial by its validation objective
(``optimized_metric``), across every invocation of the study, with that trial's reported test
Sharpe and deflated Sharpe (see ``plusultra.catalogue.sweeps``). A catalogue failure is logged
as a warning and never raised: it must not mask the run's own result or error.
"""

from __future__ import annotations

import copy
import json
import logging
import os
import pathlib
from datetime import UTC, datetime
from typing import Any

from hydra.core.hydra_config import HydraConfig
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.utils import JobReturn, JobStatus
from hydra.experimental.callback import Callback
from omegaconf import DictConfig, ListConfig, OmegaConf, open_dict, read_write
from omegaconf.errors import OmegaConfBaseException

from plusultra.catalogue.compact import maybe_compact
from plusultra.catalogue.query import SWEEPS, connect
from plusultra.catalogue.rows import (
    build_row,
    format_error,
    git_revision,
    mark_recorded,
    new_run_id,
    write_row,
)
from plusultra.catalogue.sweeps import summary_line
from plusultra.data.datasets.statistics import with_dataset_statistics
from plusultra.distributed import is_rank_zero
from plusultra.lifecycle import Interrupted, is_pruned, read_pruned

log = logging.getLogger(__name__)

METRICS_FILE = "metrics.json"
RUN_ID_FILE = "run_id.txt"

_recorded_in_process: list[str] = []


def recorded_run_ids() -> list[str]:
    """Run ids this process has written rows for, oldest first.

    With ``@hydra.main`` a failed job reaches the caller only as ``SystemExit(1)`` (unless
    ``HYDRA_FULL_ERROR=1``), so an entry point can use this to tell "a job ran and was
    recorded" from "Hydra failed before any job started" (e.g. config composition).
    """
    return list(_recorded_in_process)


def _hydra_node(config: DictConfig) -> DictConfig:
    """The ``hydra`` node of the job config, or of ``HydraConfig`` if the config lacks it."""
    if isinstance(config, DictConfig) and "hydra" in config:
        return config.hydra
    return HydraConfig.get()


def _select(node: DictConfig, key: str) -> Any:
    """``OmegaConf.select`` that returns None for missing (``???``) or unresolvable values."""
    try:
        return OmegaConf.select(node, key, default=None, throw_on_missing=False)
    except OmegaConfBaseException:
        return None


def _lenient_container(node: Any) -> Any:
    """Converts a config to plain containers, resolving each value it can.

    Used when resolving the whole config at once fails (e.g. an ``${oc.env:...}`` that is not
    set): a value that does not resolve is kept as its raw ``${...}`` text.
    """
    if isinstance(node, DictConfig):
        out: dict[str, Any] = {}
        for key in node:
            try:
                value = node[key]
            except Exception:  # noqa: BLE001 - keep the raw interpolation text instead
                value = node._get_node(key)._value()  # type: ignore[union-attr]
            out[str(key)] = _lenient_container(value)
        return out
    if isinstance(node, ListConfig):
        items = []
        for index in range(len(node)):
            try:
                value = node[index]
            except Exception:  # noqa: BLE001
                value = node._get_node(index)._value()  # type: ignore[union-attr]
            items.append(_lenient_container(value))
        return items
    return node


def job_config(config: DictConfig) -> dict[str, Any]:
    """The resolved job config (everything but the ``hydra`` node) as plain nested dicts.

    ``${hydra:...}`` interpolations resolve only while ``HydraConfig`` is set, as it is during
    callbacks. Values that fail to resolve are kept as their ``${...}`` text.

    Args:
        config: The full config Hydra passes to callbacks.

    Returns:
        Plain nested dicts and lists; enums become their names.
    """
    cfg = copy.deepcopy(config)
    with read_write(cfg), open_dict(cfg):
        if "hydra" in cfg:
            del cfg["hydra"]
    try:
        plain = OmegaConf.to_container(cfg, resolve=True, enum_to_str=True)
    except Exception as exc:  # noqa: BLE001 - fall back to value-by-value resolution
        log.warning("catalogue: config did not fully resolve (%s); keeping raw values", exc)
        plain = _lenient_container(cfg)
    assert isinstance(plain, dict)
    return plain


def _file_signature(path: pathlib.Path) -> tuple[int, int, int] | None:
    try:
        st = path.stat()
    except OSError:
        return None
    return (st.st_mtime_ns, st.st_size, st.st_ino)


_NOT_PART_OF_A_STUDY = ("hydra.", "paths.", "sweep_name=", "+sweep_name=", "++sweep_name=")


def study_of(overrides: list[str]) -> str:
    """The default study of a multirun: its overrides minus the swept ones, sorted.

    Args:
        overrides: The invocation's task overrides as given (``seed=1,2 data=sp500``).

    Returns:
        e.g. ``data=sp500``; ``(defaults)`` when every override is swept or there is none.
        ``hydra.*``, ``paths.*`` and ``sweep_name`` overrides are left out (they move outputs,
        not the experiment).
    """
    parsed = OverridesParser.create().parse_overrides([str(o) for o in overrides])
    fixed = sorted(
        o.input_line
        for o in parsed
        if not o.is_sweep_override()
        and not o.input_line.lstrip("+~").startswith(_NOT_PART_OF_A_STUDY)
    )
    return " ".join(fixed) or "(defaults)"


def read_metrics(path: pathlib.Path) -> dict[str, Any]:
    """Reads a flat ``metrics.json``; returns {} (with a warning) if it is absent or invalid."""
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        log.warning("catalogue: could not read %s (%s); metrics not recorded", path, exc)
        return {}
    if not isinstance(data, dict):
        log.warning("catalogue: %s is not a JSON object; metrics not recorded", path)
        return {}
    return data


class CatalogueCallback(Callback):
    """Writes a catalogue row for every Hydra job, in run and multirun mode.

    Args:
        catalogue_dir: Where the per-run parquet files go. Relative paths are relative to
            ``hydra.runtime.cwd`` (the launch directory).
    """

    def __init__(self, catalogue_dir: str = "outputs/catalogue") -> None:
        self.catalogue_dir = str(catalogue_dir)
        # Per output dir: (run_id, started_at, signature of a metrics.json already there).
        self._jobs: dict[str, tuple[str, datetime, tuple[int, int, int] | None]] = {}
        self._study: str | None = None  # of the running multirun, from its overrides

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        """Remembers the study of this multirun (``sweep_name``, else the fixed overrides)."""
        try:
            self._study = self._study_of(config)
        except Exception as exc:  # noqa: BLE001 - never break the run
            log.warning("catalogue: could not name the study: %s: %s", type(exc).__name__, exc)

    def _study_of(self, config: DictConfig) -> str:
        name = _select(config, "sweep_name")
        if name not in (None, ""):
            return str(name)
        overrides = _select(_hydra_node(config), "overrides.task") or []
        return study_of([str(o) for o in overrides])

    def _resolve_dir(self, hydra_cfg: DictConfig) -> pathlib.Path:
        path = pathlib.Path(os.path.expanduser(self.catalogue_dir))
        if not path.is_absolute():
            path = pathlib.Path(_select(hydra_cfg, "runtime.cwd") or os.getcwd()) / path
        return path

    def on_job_start(self, config: DictConfig, **kwargs: Any) -> None:
        """Remembers the start time and run id, and writes ``run_id.txt`` into the run dir."""
        if not is_rank_zero():  # a DDP worker joining rank 0's run: rank 0 records it
            return
        try:
            started = datetime.now(UTC)
            output_dir = _select(_hydra_node(config), "runtime.output_dir") or os.getcwd()
            out = pathlib.Path(output_dir)
            # a resumed run (resume=true) continues in its dir: the same id, so its row replaces
            # the interrupted one
            known = out / RUN_ID_FILE
            resumed = _select(config, "resume") is True and known.is_file()
            run_id = known.read_text().strip() if resumed else new_run_id(started)
            self._jobs[str(out)] = (run_id, started, _file_signature(out / METRICS_FILE))
            out.mkdir(parents=True, exist_ok=True)
            (out / RUN_ID_FILE).write_text(run_id + "\n", encoding="utf-8")
        except Exception as exc:  # noqa: BLE001 - never break the run
            log.warning("catalogue: on_job_start failed: %s: %s", type(exc).__name__, exc)

    def on_job_end(self, config: DictConfig, job_return: JobReturn, **kwargs: Any) -> None:
        """Builds and writes this job's row; logs a warning instead of raising."""
        if not is_rank_zero():  # a DDP worker: the run's one row is rank 0's
            return
        try:
            path = self._record(config, job_return)
            log.info("catalogue: recorded %s", path)
            maybe_compact(path.parent)  # once AUTO_COMPACT_FILES row files pile up
        except Exception as exc:  # noqa: BLE001 - never mask the run's own result or error
            log.warning(
                "catalogue: could not record this run: %s: %s",
                type(exc).__name__,
                exc,
                exc_info=True,
            )

    def _record(self, config: DictConfig, job_return: JobReturn) -> pathlib.Path:
        finished = datetime.now(UTC)
        hydra_cfg = _hydra_node(config)
        output_dir = pathlib.Path(_select(hydra_cfg, "runtime.output_dir") or os.getcwd())
        run_id, started, metrics_sig = self._jobs.pop(
            str(output_dir), (new_run_id(finished), finished, None)
        )

        pruned: dict[str, Any] = {}  # pruned_value, pruned_epoch of a pruned trial
        if job_return.status == JobStatus.COMPLETED:
            status, error = "completed", None
        elif is_pruned(job_return._return_value):  # not an error: the sweep stopped it early
            status, error, pruned = "pruned", None, read_pruned(output_dir)
            mark_recorded(job_return._return_value)
        else:
            exc = job_return._return_value  # .return_value would re-raise it
            status = "interrupted" if isinstance(exc, Interrupted) else "failed"
            error = format_error(exc) if exc is not None else "unknown error"
            mark_recorded(exc)

        mode = _select(hydra_cfg, "mode")
        multirun = getattr(mode, "name", str(mode)) == "MULTIRUN"
        job_num = _select(hydra_cfg, "job.num") if multirun else None
        study = None
        if multirun:
            name = _select(config, "sweep_name")
            study = str(name) if name not in (None, "") else self._study
            study = study or os.path.dirname(os.path.normpath(str(output_dir)))
        choices_node = _select(hydra_cfg, "runtime.choices")
        choices = {} if choices_node is None else OmegaConf.to_container(choices_node)
        overrides = _select(hydra_cfg, "overrides.task")

        metrics_path = output_dir / METRICS_FILE
        if metrics_sig is not None and _file_signature(metrics_path) == metrics_sig:
            log.warning(
                "catalogue: %s predates this job and was not rewritten; ignored", metrics_path
            )
            metrics: dict[str, Any] = {}
        else:
            metrics = read_metrics(metrics_path)

        row = build_row(
            run_id=run_id,
            run_dir=str(output_dir),
            status=status,
            error=error,
            started_at=started,
            finished_at=finished,
            git_rev=git_revision(_select(hydra_cfg, "runtime.cwd") or os.getcwd()),
            overrides=[str(o) for o in (overrides or [])],
            choices=choices,
            config=with_dataset_statistics(job_config(config), output_dir),  # n_symbols, dates..
            metrics={**metrics, **pruned},
            multirun=multirun,
            job_num=None if job_num is None else int(job_num),
            study=study,
        )
        path = write_row(self._resolve_dir(hydra_cfg), row)
        _recorded_in_process.append(run_id)
        run_id_file = output_dir / RUN_ID_FILE
        if not run_id_file.is_file():
            run_id_file.write_text(run_id + "\n", encoding="utf-8")
        return path

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        """Logs the study's best trial and its deflated Sharpe; a warning instead of raising."""
        try:
            line = self._sweep_summary(config)
            if line is not None:
                log.info("catalogue: %s", line)
        except Exception as exc:  # noqa: BLE001 - the sweep itself has finished
            log.warning("catalogue: could not summarise the sweep: %s: %s", type(exc).__name__, exc)

    def _sweep_summary(self, config: DictConfig) -> str | None:
        hydra_cfg = _hydra_node(config)
        study = self._study or self._study_of(config)
        con = connect(self._resolve_dir(hydra_cfg))
        try:
            trials = con.sql(f"SELECT * FROM {SWEEPS}").df()
        finally:
            con.close()
        return summary_line(trials, study)
