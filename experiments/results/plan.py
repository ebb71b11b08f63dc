r"""The runs of issue 15's results recipe: which jobs each part holds, which are done, and how
they are batched into Hydra multiruns.

A job is the set of task overrides of one `plusultra` run (``key=value`` strings, including
``experiment=...`` and ``sweep_name=results/<part>``). The catalogue stores each run's task
overrides as Hydra's sweeper hands them to the job (column ``overrides``, joined by one space;
the sweeper rewrites values: ``true`` -> ``True``, ``${seed}`` -> ``$\{seed\}``), so a job is
finished when a completed row holds exactly its set in that form (:func:`canonical`); the
recipe then starts only the others. Several pending jobs that differ
only in swept keys and form a full Cartesian product over them run as one multirun
(``plusultra -m backbone=a,b seed=0,1 ...``): one process start-up instead of one per job.
"""

from __future__ import annotations

import functools
import itertools
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

FAMILIES = ("hybrid", "transformer", "tcn", "ssm", "moe", "multiscale")
SWEPT = ("backbone", "depth", "horizon", "seed")  # keys a multirun may sweep, outermost first


@functools.cache
def canonical(override: str) -> str:
    """``override`` as Hydra's basic sweeper passes it to a job (and the catalogue stores it)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parsed = OverridesParser.create().parse_overrides([override])[0]
    return f"{parsed.get_key_element()}={parsed.get_value_element_as_str()}"


@dataclass(frozen=True)
class Job:
    """One run: its part (``grid``, ``alpha158``, ...) and its task overrides."""

    part: str
    overrides: tuple[str, ...]  # ``key=value``, no sweep syntax, no spaces

    @property
    def key(self) -> frozenset[str]:
        """What the catalogue's ``overrides`` column holds for this run, as a set."""
        return frozenset(canonical(o) for o in self.overrides)

    def value(self, name: str) -> str | None:
        """The value this job gives ``name`` (None if it does not set it)."""
        for item in self.overrides:
            k, _, v = item.partition("=")
            if k == name:
                return v
        return None


@dataclass(frozen=True)
class Grid:
    """A part's sweep: families x depths x horizons x seeds on top of fixed overrides."""

    part: str
    families: Sequence[str]
    depths: Sequence[int]
    horizons: Sequence[int]
    seeds: Sequence[int]
    fixed: Sequence[str] = field(default_factory=tuple)  # the part's own overrides

    def jobs(self, experiment: str) -> list[Job]:
        """Every job, family-major (a cut-short part has every family's first seeds first)."""
        head = (f"experiment={experiment}", f"sweep_name=results/{self.part}", *self.fixed)
        return [
            Job(
                self.part,
                (*head, f"backbone={b}", f"depth={d}", f"horizon={h}", f"seed={s}"),
            )
            for s, b, d, h in itertools.product(
                self.seeds, self.families, self.depths, self.horizons
            )
        ]


def finished(catalogue: Path) -> set[frozenset[str]]:
    """The override sets of the completed runs in ``catalogue`` (a dir of parquet rows)."""
    from plusultra.catalogue.query import catalogue_files, connect

    if not catalogue.is_dir() or not catalogue_files(catalogue):
        return set()
    rows = connect(catalogue).execute(
        "SELECT overrides FROM runs WHERE status = 'completed' AND overrides IS NOT NULL"
    )
    return {frozenset(o.split()) for (o,) in rows.fetchall()}


def pending(jobs: Iterable[Job], done: set[frozenset[str]]) -> list[Job]:
    """The jobs without a completed catalogue row of the same overrides, in order."""
    return [j for j in jobs if j.key not in done]


def batches(jobs: Sequence[Job], swept: Sequence[str] = SWEPT) -> list[list[Job]]:
    """Split jobs into groups that one multirun each runs exactly (no job twice, none missed).

    Jobs are grouped by their overrides outside ``swept``; a group whose swept values form a
    full Cartesian product is one batch, else it is split on its first swept key and each part
    tried again with the rest (down to single jobs). Order: first appearance of each group.
    """
    out: list[list[Job]] = []
    groups: dict[tuple, list[Job]] = {}
    for job in jobs:
        fixed = tuple(sorted(o for o in job.overrides if o.partition("=")[0] not in swept))
        groups.setdefault((job.part, fixed), []).append(job)
    for group in groups.values():
        out.extend(_product_batches(group, list(swept)))
    return out


def _product_batches(group: list[Job], swept: list[str]) -> list[list[Job]]:
    values = [sorted({j.value(k) for j in group}, key=str) for k in swept]
    mixed = any(None in v and len(v) > 1 for v in values)  # a key some jobs leave unset
    if not mixed and len(group) == _count(values) and len({j.key for j in group}) == len(group):
        return [group]
    first, rest = swept[0], swept[1:]
    out: list[list[Job]] = []
    for v in values[0]:
        sub = [j for j in group if j.value(first) == v]
        out.extend(_product_batches(sub, rest) if rest else [[j] for j in sub])
    return out


def _count(values: list[list]) -> int:
    n = 1
    for v in values:
        n *= len(v)
    return n


def multirun_overrides(batch: Sequence[Job], swept: Sequence[str] = SWEPT) -> list[str]:
    """The command-line overrides of one multirun running ``batch`` (from :func:`batches`)."""
    first = batch[0]
    out = [o for o in first.overrides if o.partition("=")[0] not in swept]
    for k in swept:
        values = list(dict.fromkeys(j.value(k) for j in batch))
        values = [v for v in values if v is not None]
        if values:
            out.append(f"{k}={','.join(values)}")
    return out
