"""Several sweeper processes on one study: heartbeats, stale trials, the total, distinct seeds.

Every sweeper process marks the trials it asked with the user attributes ``worker``
(``<host>/<pid namespace>:<pid>``) and ``heartbeat`` (Unix time, seconds), and a daemon thread
refreshes ``heartbeat`` every ``heartbeat_interval`` seconds while the launcher runs the batch.
A RUNNING trial is **stale** (its sweeper is gone) when its sweeper's process is known dead (same
host and PID namespace, PID not alive, or the PID is the checker's own) or its last heartbeat
(else its start) is older than ``grace_period`` seconds. Only stale trials are failed
(``interrupted``) and asked again; trials of live processes count toward ``n_trials``.

User attributes rather than Optuna's own heartbeat table: Optuna 5.0's JournalStorage has no
heartbeat (only RDBStorage implements ``BaseHeartbeat``), and one mechanism serves every storage.
Across hosts the check compares wall clocks, so ``grace_period`` must exceed the clock skew.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

import optuna
from optuna.distributions import BaseDistribution
from optuna.exceptions import UpdateFinishedTrialError
from optuna.samplers import BaseSampler
from optuna.trial import FrozenTrial, TrialState

log = logging.getLogger(__name__)

WORKER = "worker"  # user attr: the sweeper process that asked the trial
HEARTBEAT = "heartbeat"  # user attr: Unix time of that process's last beat for the trial
SURPLUS = "surplus"  # user attr of a trial asked past the total by a racing process, marked FAIL


def host_key() -> str:
    """This machine and PID namespace: two processes with the same key share PIDs."""
    try:
        namespace = os.stat("/proc/self/ns/pid").st_ino
    except OSError:
        namespace = 0
    return f"{socket.gethostname()}/{namespace}"


def worker_id() -> str:
    """``<host>/<pid namespace>:<pid>`` of this process."""
    return f"{host_key()}:{os.getpid()}"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by another user
        return True
    return True


def is_stale(trial: FrozenTrial, grace_period: float, now: float | None = None) -> bool:
    """Whether a RUNNING trial's sweeper is gone (see the module docstring).

    Args:
        trial: A RUNNING trial.
        grace_period: Seconds without a heartbeat after which its sweeper counts as gone.
        now: Unix time of the check (default: now).
    """
    worker = trial.user_attrs.get(WORKER)
    if isinstance(worker, str) and ":" in worker:
        host, _, pid = worker.rpartition(":")
        same_host = host == host_key() and pid.isdigit()
        if same_host and (int(pid) == os.getpid() or not _alive(int(pid))):
            return True  # checked between batches: none of ours is running
    beat = trial.user_attrs.get(HEARTBEAT)
    if isinstance(beat, int | float):
        last = float(beat)
    elif trial.datetime_start is not None:  # asked by an older sweeper, or a beat not yet written
        last = trial.datetime_start.timestamp()
    else:
        return True
    return (time.time() if now is None else now) - last > grace_period


def claim(storage: optuna.storages.BaseStorage, trial_id: int) -> None:
    """Marks a freshly asked trial as this process's, with a first heartbeat."""
    storage.set_trial_user_attr(trial_id, WORKER, worker_id())
    storage.set_trial_user_attr(trial_id, HEARTBEAT, time.time())


def mark_failed(storage: optuna.storages.BaseStorage, trial_id: int, attr: str) -> bool:
    """Sets the user attr ``attr`` and FAIL on a RUNNING trial; False if another process
    finished it first (both may race to fail the same stale trial)."""
    try:
        storage.set_trial_user_attr(trial_id, attr, True)
        return bool(storage.set_trial_state_values(trial_id, state=TrialState.FAIL))
    except UpdateFinishedTrialError:
        return False


class Heartbeat:
    """Context manager: a daemon thread beats for ``trial_ids`` every ``interval`` seconds.

    A failed write (a locked SQLite file, a network blip) is logged and retried at the next
    beat; it never stops the batch.
    """

    def __init__(
        self, storage: optuna.storages.BaseStorage, trial_ids: Sequence[int], interval: float
    ) -> None:
        self.storage, self.trial_ids, self.interval = storage, list(trial_ids), interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="optuna-heartbeat", daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            for trial_id in self.trial_ids:
                try:
                    self.storage.set_trial_user_attr(trial_id, HEARTBEAT, time.time())
                except UpdateFinishedTrialError:
                    pass  # told (or failed by another process) already
                except Exception as exc:  # noqa: BLE001 - retried at the next beat
                    log.warning("heartbeat of trial id %d not written: %s", trial_id, exc)

    def __enter__(self) -> Heartbeat:
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join()


def rank_within_total(
    trials: Sequence[FrozenTrial], number: int, counts: Callable[[FrozenTrial], bool]
) -> int:
    """1-based rank of trial ``number`` among the trials that will count toward the total.

    Counted: RUNNING and WAITING trials, and finished ones for which ``counts`` is true
    (complete, pruned, failed by their job; not interrupted or surplus). Numbers are handed out
    in creation order, so every process ranks a trial the same way and at most ``n_trials``
    trials have a rank <= ``n_trials``.
    """
    return sum(
        1
        for t in trials
        if t.number <= number and (t.state in (TrialState.RUNNING, TrialState.WAITING) or counts(t))
    )


class TrialSeededSampler(BaseSampler):
    """A sampler rebuilt before each trial with ``seed + trial number``.

    Trial numbers are unique across every process of a study, so concurrent processes never
    draw from the same random stream, a resumed study never replays one, and a single-process
    sweep stays reproducible.

    Args:
        build: ``number -> sampler`` seeded with the configured seed plus ``number``.
    """

    def __init__(self, build: Callable[[int], BaseSampler]) -> None:
        self._build = build
        self.inner = build(0)

    def before_trial(self, study: optuna.Study, trial: FrozenTrial) -> None:
        self.inner = self._build(trial.number)
        self.inner.before_trial(study, trial)

    def infer_relative_search_space(
        self, study: optuna.Study, trial: FrozenTrial
    ) -> dict[str, BaseDistribution]:
        return self.inner.infer_relative_search_space(study, trial)

    def sample_relative(
        self, study: optuna.Study, trial: FrozenTrial, search_space: dict[str, BaseDistribution]
    ) -> dict[str, Any]:
        return self.inner.sample_relative(study, trial, search_space)

    def sample_independent(
        self,
        study: optuna.Study,
        trial: FrozenTrial,
        param_name: str,
        param_distribution: BaseDistribution,
    ) -> Any:
        return self.inner.sample_independent(study, trial, param_name, param_distribution)

    def after_trial(
        self,
        study: optuna.Study,
        trial: FrozenTrial,
        state: TrialState,
        values: Sequence[float] | None,
    ) -> None:
        self.inner.after_trial(study, trial, state, values)

    def reseed_rng(self) -> None:
        with contextlib.suppress(NotImplementedError):
            self.inner.reseed_rng()
