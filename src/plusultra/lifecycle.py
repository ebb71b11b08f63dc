"""Run lifecycle: unique run directories, claimed exclusively, and interruption by a signal.

Run and sweep directories are named ``<date>/<time>_<pid>-<6 hex>`` (conf/hydra/default.yaml):
the ``plusultra.uid`` resolver adds this process's id and a random suffix to the second-resolution
time, so two runs started in the same second, in one process or many, on one host or on a
shared file system, get different names, and names still sort by start time. ``RunDirCallback``
then creates the directory with ``os.mkdir`` before Hydra touches it: an existing directory
(e.g. a ``hydra.run.dir=...`` given twice) stops the run with a ``ConfigError`` (exit code 2)
before anything is written, instead of mixing two runs' checkpoints, logs and metrics.

``resume=true`` (docs/training.md, "Resume") is the one exception: ``RunDirCallback`` then picks
the most recent unfinished run of the same config (``training.resume_config.find_resumable_run``)
and points ``hydra.run.dir`` at it, so the run continues in its own directory (TensorBoard,
checkpoints, catalogue row).

``handle_signals`` turns SIGINT and SIGTERM into ``Interrupted``, raised in the main thread.
Inside a job it is an ordinary exception for Hydra (which records the job: the catalogue row
gets ``status=interrupted``); ``plusultra.cli.common.fail`` prints one line and exits with
``128 + signal`` (130 for SIGINT, 143 for SIGTERM). Lightning composes its own SIGTERM handler
with ours during ``fit`` and restores ours afterwards, so the same holds inside and outside
training. Checkpoints written before the signal stay in the run directory.

A job of an Optuna sweep that its pruner stops (``optuna.TrialPruned``, see
``plusultra.training.pruning``) ends with ``pruned.json`` in its run dir instead of
``metrics.json``: ``{"status": "pruned", "metric", "pruned_value", "pruned_epoch", "study",
"trial"}``, written by ``write_pruned`` before the exception leaves training; its catalogue row
gets ``status='pruned'`` with the ``pruned_value`` and ``pruned_epoch`` columns.

``check_no_ddp_in_multirun`` refuses a multirun whose trainer would start Lightning DDP with
subprocesses: Lightning relaunches each extra rank with this process's command line, ``-m`` and
sweep included, so every rank would run the whole sweep (docs/sweeps.md, "One trial per GPU").
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import signal
import sys
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from hydra.core.hydra_config import HydraConfig
from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf, open_dict, read_write

from plusultra.distributed import is_rank_zero
from plusultra.errors import ConfigError
from plusultra.io import write_json_atomic

UID_RESOLVER = "plusultra.uid"
PRUNED_FILE = "pruned.json"  # in the run dir of a job its Optuna pruner stopped
SIGNALS = (signal.SIGINT, signal.SIGTERM)


_issued: set[str] = set()


def unique_id() -> str:
    """``<pid>-<6 hex>``: never repeated by this process, unique among the live processes of a
    host (the pid), random across hosts (and exclusive creation catches the rest)."""
    while True:
        uid = f"{os.getpid()}-{secrets.token_hex(3)}"
        if uid not in _issued:
            _issued.add(uid)
            return uid


if not OmegaConf.has_resolver(UID_RESOLVER):
    # use_cache: every interpolation of one config (run.dir, sweep.dir, paths.run_dir, and the
    # per-job configs of a sweep, which copy the cache) sees the same id.
    OmegaConf.register_new_resolver(UID_RESOLVER, unique_id, use_cache=True)


def claim_dir(path: str | os.PathLike, key: str) -> Path:
    """Create ``path`` (absolute, parents as needed); refuse one that already exists.

    Args:
        path: the run or sweep directory.
        key: the config key that named it, for the message (``hydra.run.dir``).

    Raises:
        ConfigError: ``path`` exists (another run's directory, or a path given twice).
    """
    path = Path(os.path.abspath(path))
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        path.mkdir()
    except FileExistsError:
        raise ConfigError(
            f"{key}: {path} already exists; a run never reuses a directory "
            "(leave hydra.run.dir / hydra.sweep.dir at their unique default, or pick a new path)"
        ) from None
    return path


class RunDirTaken(BaseException):
    """Carries the ``ConfigError`` of ``claim_dir`` (or of ``check_no_ddp_in_multirun``) out of
    a Hydra callback.

    A BaseException because Hydra turns an ``Exception`` raised by a callback into a warning
    and goes on; ``plusultra.run.main`` unwraps it (``error``) and reports it as bad input.
    """

    def __init__(self, error: ConfigError) -> None:
        super().__init__(str(error))
        self.error = error


class RunDirCallback(Callback):
    """Claims the run (or sweep) directory before Hydra creates it with ``exist_ok=True``.

    Raises:
        RunDirTaken: the directory exists.
    """

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        """Resolve ``hydra.run.dir`` (cached for the job) and create it exclusively; with
        ``resume=true``, point it at the run to continue instead."""
        if OmegaConf.select(config, "resume", default=False) is True:
            self._resume(config)
            return
        self._claim(config, "hydra.run.dir")

    @staticmethod
    def _resume(config: DictConfig) -> None:
        if os.environ.get("LOCAL_RANK", "0") != "0":
            return
        from plusultra.training.resume_config import find_resumable_run, flat_config

        HydraConfig.instance().set_config(config)
        try:
            output_dir = OmegaConf.select(config, "paths.output_dir")
            run = find_resumable_run(output_dir, flat_config(config))
        except ConfigError as exc:
            raise RunDirTaken(exc) from None
        # run_job reads this same object: the job's output dir becomes the run to continue
        with read_write(config.hydra), read_write(config.hydra.run), open_dict(config.hydra.run):
            config.hydra.run.dir = str(run)

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        """Refuse DDP and ``resume=true`` in a multirun, then resolve ``hydra.sweep.dir`` and
        create it exclusively; jobs get subdirs inside."""
        if OmegaConf.select(config, "resume", default=False) is True:
            raise RunDirTaken(
                ConfigError(
                    "resume=true continues one killed run and cannot be used with -m; a sweep "
                    "continues through its Optuna storage (docs/sweeps.md), a job with "
                    "ckpt_path=RUN/checkpoints/last.ckpt"
                )
            )
        trainer = OmegaConf.select(config, "trainer", default=None)
        if isinstance(trainer, DictConfig):  # before the sweep dir, study or any trial exists
            try:
                check_no_ddp_in_multirun(OmegaConf.to_container(trainer), multirun=True)
            except ConfigError as exc:
                raise RunDirTaken(exc) from None
        self._claim(config, "hydra.sweep.dir")

    @staticmethod
    def _claim(config: DictConfig, key: str) -> None:
        if not is_rank_zero():
            return  # a DDP worker Lightning relaunched into rank 0's run dir: joins, not claims
        HydraConfig.instance().set_config(config)  # for ${hydra:...} in the directory name
        try:
            claim_dir(str(OmegaConf.select(config, key)), key)
        except ConfigError as exc:
            raise RunDirTaken(exc) from None


# Lightning strategies that start their extra ranks without re-running the command line
# (multiprocessing spawn / fork); every other multi-device strategy does re-run it.
NO_RELAUNCH = ("spawn", "fork", "notebook")


def device_count(devices: Any, accelerator: Any) -> int:
    """How many devices a Lightning ``Trainer(devices=..., accelerator=...)`` would use.

    ``-1`` / ``"auto"`` on an accelerator other than ``cpu`` count the visible CUDA devices.
    """
    if isinstance(devices, list | tuple):
        return len(devices)
    text = str(devices).strip()
    if text in ("-1", "auto"):
        if str(accelerator) == "cpu":
            return 1
        import torch

        return torch.cuda.device_count()
    if "," in text:
        return len([d for d in text.split(",") if d.strip()])
    return int(text) if text.lstrip("-").isdigit() else 1


def check_no_ddp_in_multirun(trainer: Mapping[str, Any], multirun: bool) -> None:
    """Refuse a multirun job whose trainer would launch DDP ranks as new processes.

    Lightning (2.6, ``_SubprocessScriptLauncher``) starts each extra rank as
    ``python <sys.argv>``: inside ``plusultra -m`` that command is the whole multirun, so every
    rank would start its own sweep (and, with the Optuna sweeper, ask its own trials).
    Lightning issue: https://github.com/Lightning-AI/pytorch-lightning/pull/15737 (multirun
    support removed), fix pending in https://github.com/Lightning-AI/pytorch-lightning/pull/18175.

    Args:
        trainer: the ``trainer`` config node (``devices``, ``accelerator``, ``num_nodes``,
            ``strategy``; missing keys take Lightning's defaults).
        multirun: whether the job is part of a Hydra multirun (``-m``).

    Raises:
        ConfigError: a multirun with more than one device or node and a strategy that
            relaunches the command line.
    """
    if not multirun:
        return
    strategy = trainer.get("strategy", "auto")
    name = strategy if isinstance(strategy, str) else str(strategy.get("_target_", ""))
    if isinstance(strategy, Mapping):  # e.g. {_target_: ...DDPStrategy, start_method: spawn}
        name += f" (start_method={strategy.get('start_method', 'popen')})"
    if any(word in name.lower() for word in NO_RELAUNCH):
        return
    devices = device_count(trainer.get("devices", "auto"), trainer.get("accelerator", "auto"))
    nodes = int(trainer.get("num_nodes", 1) or 1)
    if devices > 1 or nodes > 1:
        raise ConfigError(
            f"trainer.strategy={name} with trainer.devices={trainer.get('devices')} "
            f"(trainer.num_nodes={nodes}) under -m: Lightning would relaunch the whole multirun "
            "in every DDP rank. Sweep with one trial per GPU instead: trainer.devices=1 with "
            "hydra/launcher=joblib_gpus (one host) or hydra/launcher=submitit_slurm "
            "hydra.launcher.gpus_per_node=1 (docs/sweeps.md, 'One trial per GPU')"
        )


class Interrupted(Exception):
    """A run ended by SIGINT or SIGTERM.

    Attributes:
        signum: the signal number; exit_code: ``128 + signum``; run_dir: the job's output
        directory when the signal arrived inside a job, else None.
    """

    def __init__(self, signum: int, run_dir: str | None = None) -> None:
        self.signum, self.run_dir = int(signum), run_dir
        self.exit_code = 128 + self.signum
        self.signal_name = signal.Signals(self.signum).name
        where = f"; run dir {run_dir} kept with its checkpoints" if run_dir else ""
        super().__init__(f"interrupted ({self.signal_name}){where}")


def _current_run_dir() -> str | None:
    try:
        return str(HydraConfig.get().runtime.output_dir)
    except Exception:  # noqa: BLE001 - no job running (composition, or not under Hydra)
        return None


class _Handler:
    """Raises ``Interrupted`` on the first signal; later signals are ignored while it unwinds
    (so a second Ctrl-C cannot cut the catalogue row short)."""

    def __init__(self) -> None:
        self.received: int | None = None

    def __call__(self, signum: int, frame: Any) -> None:
        if self.received is not None:
            return
        self.received = signum
        raise Interrupted(signum, _current_run_dir())


@contextlib.contextmanager
def handle_signals() -> Iterator[_Handler]:
    """Within the block, SIGINT and SIGTERM raise ``Interrupted`` in the main thread.

    Yields the handler: ``handler.received`` is the signal number if one arrived (also when
    some code swallowed the exception), else None. The previous handlers are restored on exit.
    """
    handler = _Handler()
    previous = {s: signal.signal(s, handler) for s in SIGNALS}
    try:
        yield handler
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


def is_pruned(error: object) -> bool:
    """Whether a job's exception is Optuna's ``TrialPruned`` (a job that never imported optuna
    cannot have been pruned, so optuna is not imported here)."""
    optuna = sys.modules.get("optuna")
    return optuna is not None and isinstance(error, optuna.TrialPruned)


def write_pruned(
    run_dir: str | os.PathLike, metric: str, value: float, epoch: int, study: str, trial: int
) -> Path:
    """Write ``<run_dir>/pruned.json``: the run was stopped by its sweep's pruner.

    Args:
        run_dir: the job's output directory.
        metric: the objective (``optimized_metric``) whose per-epoch value was reported.
        value: its last reported value (NaN is written as null).
        epoch: the step it was reported at (0-based epoch of the run's training).
        study: the Optuna study; trial: the trial number in it.
    """
    record = {
        "status": "pruned",
        "metric": metric,
        "pruned_value": float(value),  # NaN: null
        "pruned_epoch": int(epoch),
        "study": study,
        "trial": int(trial),
    }
    return write_json_atomic(Path(run_dir) / PRUNED_FILE, record)


def read_pruned(run_dir: str | os.PathLike) -> dict[str, Any]:
    """The catalogue columns of a pruned run (``pruned_value``, ``pruned_epoch``) from its
    ``pruned.json``; {} when the file is absent or unreadable."""
    try:
        record = json.loads((Path(run_dir) / PRUNED_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    if not isinstance(record, dict):
        return {}
    return {k: record.get(k) for k in ("pruned_value", "pruned_epoch")}
