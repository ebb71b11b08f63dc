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
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch
from torch.utils.data import Sampler

from plusultra.errors import ConfigError, DataError


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
        if seed is None:
            seed = int(torch.empty((), dtype=torch.int64).random_().item())
        self.seed, self.epoch = int(seed), 0

    def set_epoch(self, epoch: int) -> None:
        """Use the block order of ``epoch`` on the next iteration."""
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.blocks)

    def __iter__(self) -> Iterator[list[int]]:
        order = np.arange(len(self.blocks))
        if self.shuffle:
            order = np.random.default_rng(self.seed + self.epoch).permutation(len(self.blocks))
        self.epoch += 1
        for b in order:
            yield self.blocks[b].tolist()
