"""Portfolio batches: every symbol's sample for a block of consecutive decision dates.

A risk loss on a portfolio (Sharpe, Sortino, CVaR, drawdown; see ``plusultra.models.losses``)
needs, in one batch, the weights of *all* symbols at *each* date of a stretch of time, in time
order, so that it can form the portfolio return series ``R[t] = sum_s w[t, s] * r[t, s]``. A
shuffled loader of pooled (date, symbol) samples gives neither. ``BlockBatchSampler`` groups a
dataset's samples by decision date, cuts the sorted dates into blocks of consecutive dates, and
yields one batch per block: the indices of every sample whose date is in the block, ordered by
date then symbol. Blocks are shuffled across an epoch (training) or kept in calendar order
(validation, test); the dates inside a block always stay in order.

Block sizes: the ``n`` dates are cut into ``max(1, n // block)`` nearly equal blocks
(``numpy.array_split``), so every block has between ``block`` and ``2 * block - 1`` dates (all
``n`` when ``n < block``): no short remainder block whose Sharpe would rest on a date or two.
Every sample is yielded exactly once per epoch. The batch size is ``dates x symbols`` of the
block, not ``data.batch_size``.

Resumable loaders (exact resume, docs/training.md "Resume"): the order of an epoch depends only
on the sampler's seed and the epoch number, never on the global RNG's history, and
``resume_at(epoch, start)`` makes the next iteration continue epoch ``epoch`` at position
``start``. ``ResumableLoader`` is a DataLoader with Lightning's ``state_dict`` /
``load_state_dict`` interface: Lightning stores its state in every checkpoint and restores it on
resume, so a run killed mid-epoch continues with the next unseen batch. The position it stores is
the one the training loop last *consumed* (``mark``, set by ``training.resume.ResumeCheckpoint``
after each batch), not what the loader has prefetched.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator

import numpy as np
import torch
from torch.utils.data import BatchSampler, DataLoader, Sampler

from plusultra.errors import ConfigError, DataError

log = logging.getLogger(__name__)


def draw_seed() -> int:
    """A sampler seed drawn from torch's global generator (reproducible under
    ``seed_everything``); drawn once, when the sampler is built."""
    return int(torch.empty((), dtype=torch.int64).random_().item())


class EpochSampler(Sampler[int]):
    """Indices ``0..n-1``, in a fresh order each epoch when shuffling, resumable mid-epoch.

    Epoch ``e``'s order is ``numpy.random.default_rng((seed, e)).permutation(n)`` (``0..n-1``
    without shuffling): it depends on nothing but ``(seed, e)``.

    Args:
        n: number of samples.
        shuffle: permute the samples each epoch.
        seed: seed of the permutations; None: drawn once from torch's global generator.

    Lightning calls ``set_epoch`` before each epoch; without it, each iteration moves to the
    next epoch by itself.
    """

    def __init__(self, n: int, shuffle: bool = False, seed: int | None = None) -> None:
        self.n, self.shuffle = int(n), bool(shuffle)
        self.seed = draw_seed() if seed is None and shuffle else int(seed or 0)
        self.epoch, self.start = 0, 0

    def order(self, epoch: int) -> np.ndarray:
        """(n,) int64: the sample indices of ``epoch`` in the order they are yielded."""
        if not self.shuffle:
            return np.arange(self.n, dtype=np.int64)
        return np.random.default_rng((self.seed, int(epoch))).permutation(self.n)

    def set_epoch(self, epoch: int) -> None:
        """Iterate epoch ``epoch`` next (from its start unless `resume_at` chose this epoch)."""
        if int(epoch) != self.epoch:
            self.epoch, self.start = int(epoch), 0

    def resume_at(self, epoch: int, start: int) -> None:
        """The next iteration yields epoch ``epoch``'s order from position ``start`` on."""
        self.epoch, self.start = int(epoch), int(start)

    def __len__(self) -> int:
        return self.n

    def __iter__(self) -> Iterator[int]:
        epoch, start = self.epoch, self.start
        self.epoch, self.start = epoch + 1, 0
        yield from self.order(epoch)[start:].tolist()


def check_block(block: int) -> int:
    """``block`` if it is an int >= 2 (a return series needs two dates), else ConfigError."""
    if isinstance(block, bool) or not isinstance(block, int | np.integer) or block < 2:
        raise ConfigError(
            f"block={block!r}: a portfolio batch needs an integer >= 2 consecutive dates"
        )
    return int(block)


def date_blocks(dates: np.ndarray, block: int) -> list[np.ndarray]:
    """Sample indices of each block of consecutive dates.

    Args:
        dates: ``(N,)`` decision bar (calendar index) of each sample.
        block: dates per block (>= 2); see the module docstring for the sizes.

    Returns:
        One ``(n_b,)`` int64 array per block, in calendar order; inside a block the indices are
        ordered by date, then by position in ``dates`` (symbol order for ``sample_index``).
    """
    block = check_block(block)
    dates = np.asarray(dates)
    if dates.ndim != 1:
        raise DataError(f"dates must be a 1-D array of decision bars, got shape {dates.shape}")
    if len(dates) == 0:
        return []
    order = np.argsort(dates, kind="stable")  # (N,) by date, ties in input order
    unique, starts = np.unique(dates[order], return_index=True)  # sorted dates, first positions
    bounds = np.append(starts, len(dates))  # samples of date k: order[bounds[k]:bounds[k + 1]]
    n_blocks = max(1, len(unique) // block)
    out = []
    for chunk in np.array_split(np.arange(len(unique)), n_blocks):
        out.append(order[bounds[chunk[0]] : bounds[chunk[-1] + 1]].astype(np.int64))
    return out


class BlockBatchSampler(Sampler[list[int]]):
    """Batches of all samples of ``block`` consecutive decision dates (module docstring).

    Args:
        dates: ``(N,)`` decision bar of each sample of the dataset (``WindowDataset.index[:, 0]``).
        block: dates per batch (>= 2).
        shuffle: shuffle the order of the blocks each epoch (dates inside a block stay ordered).
        seed: seed of the block order; epoch ``e`` uses ``seed + e``. None: drawn once from
            torch's global generator (so ``seed_everything`` makes it reproducible).

    Lightning calls ``set_epoch`` before each epoch; without it, each ``__iter__`` moves to the
    next epoch by itself.
    """

    def __init__(
        self, dates: np.ndarray, block: int, shuffle: bool = False, seed: int | None = None
    ) -> None:
        self.blocks = date_blocks(dates, block)
        self.block, self.shuffle = check_block(block), bool(shuffle)
        self.seed = int(draw_seed() if seed is None else seed)
        self.epoch, self.start = 0, 0

    def set_epoch(self, epoch: int) -> None:
        """Use the block order of ``epoch`` on the next iteration."""
        if int(epoch) != self.epoch:
            self.epoch, self.start = int(epoch), 0

    def resume_at(self, epoch: int, start: int) -> None:
        """The next iteration yields epoch ``epoch``'s blocks from block ``start`` on."""
        self.epoch, self.start = int(epoch), int(start)

    def order(self, epoch: int) -> np.ndarray:
        """(n_blocks,) the block numbers of ``epoch`` in the order they are yielded."""
        if not self.shuffle:
            return np.arange(len(self.blocks))
        return np.random.default_rng(self.seed + int(epoch)).permutation(len(self.blocks))

    def __len__(self) -> int:
        return len(self.blocks)

    def __iter__(self) -> Iterator[list[int]]:
        epoch, start = self.epoch, self.start
        self.epoch, self.start = epoch + 1, 0
        for b in self.order(epoch)[start:]:
            yield self.blocks[b].tolist()


class ResumableLoader(DataLoader):
    """A DataLoader over an `EpochSampler` or a `BlockBatchSampler` that Lightning checkpoints.

    Takes DataLoader's arguments. ``state_dict()`` is ``{"epoch", "batches", "seed"}``: the
    next batch to train on is batch ``batches`` of epoch ``epoch`` (as last set by `mark`);
    ``load_state_dict`` makes the next iteration start there. This is Lightning's ``_Stateful``
    interface: Lightning stores the state in every checkpoint; on resume
    ``training.resume.ResumeCheckpoint`` loads it before the first batch.
    """

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.position: tuple[int, int] | None = None  # (epoch, batches consumed); None: unknown

    def mark(self, epoch: int, batches: int) -> None:
        """Record that the training loop consumed ``batches`` batches of epoch ``epoch``."""
        self.position = (int(epoch), int(batches))

    def _resumable(self) -> tuple[EpochSampler | BlockBatchSampler | None, int]:
        """The sampler holding the order, and how many of its items make one batch."""
        if isinstance(self.batch_sampler, BlockBatchSampler):
            return self.batch_sampler, 1
        if isinstance(self.batch_sampler, BatchSampler) and isinstance(self.sampler, EpochSampler):
            return self.sampler, self.batch_sampler.batch_size
        return None, 0  # e.g. Lightning put a DistributedSampler in under DDP

    def state_dict(self) -> dict[str, int]:
        """``{"epoch", "batches", "seed"}``; only ``seed`` while no position was marked."""
        sampler, _ = self._resumable()
        state = {"seed": -1 if sampler is None else int(sampler.seed)}
        if self.position is not None:
            state |= {"epoch": self.position[0], "batches": self.position[1]}
        return state

    def load_state_dict(self, state: dict[str, int]) -> None:
        """Make the next iteration start at the saved position (with the saved seed)."""
        sampler, unit = self._resumable()
        if sampler is not None and int(state.get("seed", -1)) >= 0 and "epoch" not in state:
            sampler.seed = int(state["seed"])  # no position known: the seed only
            return
        if sampler is None or int(state.get("seed", -1)) < 0:
            log.warning(
                "the train loader's sampler is not resumable (%s): the resumed epoch restarts "
                "from its first batch",
                type(self.sampler).__name__,
            )
            return
        sampler.seed = int(state["seed"])
        sampler.resume_at(state["epoch"], state["batches"] * unit)
        self.position = (int(state["epoch"]), int(state["batches"]))
