"""Block sampler: each sample once per epoch, blocks of consecutive dates, deterministic."""

from __future__ import annotations

import numpy as np
import pytest

from plusultra.data.datasets.sampler import BlockBatchSampler, date_blocks
from plusultra.errors import ConfigError


def _dates(seed: int = 0, n_dates: int = 103, n_symbols: int = 6) -> np.ndarray:
    """Decision bar of each sample, (t, s) ordered like `sample_index`, with holes."""
    rng = np.random.default_rng(seed)
    t, s = np.nonzero(rng.random((n_dates + 20, n_symbols)) < 0.8)
    keep = t >= 20  # a segment starting at bar 20
    return t[keep]


def _epoch(sampler: BlockBatchSampler) -> list[list[int]]:
    return list(iter(sampler))


@pytest.mark.parametrize("block", [2, 8, 32, 500])
@pytest.mark.parametrize("shuffle", [False, True])
def test_each_sample_once_per_epoch_in_blocks_of_consecutive_dates(block, shuffle):
    dates = _dates()
    sampler = BlockBatchSampler(dates, block, shuffle=shuffle, seed=3)
    calendar = np.unique(dates)
    orders = []
    for _ in range(4):  # four epochs
        batches = _epoch(sampler)
        assert len(batches) == len(sampler) == max(1, len(calendar) // block)
        flat = np.concatenate(batches)
        assert sorted(flat.tolist()) == list(range(len(dates)))  # every sample exactly once
        for batch in batches:
            d = dates[batch]
            assert (np.diff(d) >= 0).all()  # dates in order inside the block
            seen = np.unique(d)
            lo, hi = np.searchsorted(calendar, [seen[0], seen[-1]])
            np.testing.assert_array_equal(seen, calendar[lo : hi + 1])  # consecutive dates
            assert (dates == seen[0]).sum() + (dates == seen[-1]).sum() == (
                (d == seen[0]).sum() + (d == seen[-1]).sum()
            )  # all symbols of its first and last date
            if len(calendar) >= block:
                assert block <= len(seen) < 2 * block
        orders.append(tuple(dates[b[0]] for b in batches))
    if not shuffle:  # validation and test: blocks in calendar order, every epoch the same
        assert all(o == tuple(sorted(o)) for o in orders) and len(set(orders)) == 1
    elif len(orders[0]) > 2:
        assert len(set(orders)) > 1


def test_shuffle_is_deterministic_by_seed_and_changes_by_epoch():
    dates = _dates()
    a, b = BlockBatchSampler(dates, 4, True, seed=11), BlockBatchSampler(dates, 4, True, seed=11)
    first_a, first_b = _epoch(a), _epoch(b)
    assert first_a == first_b
    assert _epoch(a) != first_a  # the next epoch has another block order
    a.set_epoch(0)
    assert _epoch(a) == first_a  # Lightning's set_epoch reproduces an epoch
    c = BlockBatchSampler(dates, 4, True, seed=12)
    assert _epoch(c) != first_a
    ordered = _epoch(BlockBatchSampler(dates, 4, False))
    assert sorted(map(tuple, first_a)) == sorted(map(tuple, ordered))  # same blocks


def test_date_blocks_hand_example():
    # dates 5, 5, 6, 7, 7, 8, 9: five dates in blocks of 2 -> 5 // 2 = 2 blocks, (5, 6, 7), (8, 9).
    dates = np.array([5, 5, 6, 7, 7, 8, 9])
    blocks = date_blocks(dates, 2)
    assert [b.tolist() for b in blocks] == [[0, 1, 2, 3, 4], [5, 6]]
    # Samples given out of date order come back ordered by date.
    assert [b.tolist() for b in date_blocks(np.array([9, 8, 7, 6]), 2)] == [[3, 2], [1, 0]]
    assert date_blocks(np.array([], dtype=np.int64), 2) == []


@pytest.mark.parametrize("block", [1, 0, 2.5, True, None])
def test_bad_block(block):
    with pytest.raises(ConfigError, match="block"):
        BlockBatchSampler(np.arange(10), block)
