"""Sharding helpers of the torchrun harnesses (the multi-process behaviour is tested per task with 2 gloo ranks)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.utils.data import BatchSampler, RandomSampler

from pretrain.distributed import RankBatches, gather_rows, shard_indices


def test_rank_shares_make_up_each_global_batch() -> None:
    def batches() -> BatchSampler:
        return BatchSampler(RandomSampler(range(10), generator=torch.Generator().manual_seed(3)), 4, True)

    single = [list(b) for b in batches()]
    shares = [list(RankBatches(batches(), rank, 2)) for rank in range(2)]
    assert len(shares[0]) == len(single) == 2
    for k, batch in enumerate(single):
        assert shares[0][k] + shares[1][k] == batch and len(shares[0][k]) == 2
    with pytest.raises(ValueError, match="multiple of the number of processes"):
        list(RankBatches(batches(), 0, 3))


def test_shards_cover_every_item_once_and_gather_in_item_order() -> None:
    parts = [shard_indices(7, r, 3) for r in range(3)]
    assert sorted(i for p in parts for i in p) == list(range(7)) and parts[1] == [1, 4]
    rows = np.arange(7 * 2).reshape(7, 2)
    mine = shard_indices(7, 0, 1)[::-1]  # a world of one gathering its rows given in another order
    np.testing.assert_array_equal(gather_rows(rows[mine], mine, 7), rows)
    with pytest.raises(RuntimeError, match="computed by no rank"):
        gather_rows(rows[:3], [0, 1, 2], 7)
