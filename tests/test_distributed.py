"""Sharding helpers of the torchrun harnesses (the multi-process behaviour is tested per task with 2 gloo ranks;
the ranks' shares of the training batches in tests/test_sampling.py)."""

from __future__ import annotations

import numpy as np
import pytest

from pretrain.distributed import gather_rows, shard_indices


def test_shards_cover_every_item_once_and_gather_in_item_order() -> None:
    parts = [shard_indices(7, r, 3) for r in range(3)]
    assert sorted(i for p in parts for i in p) == list(range(7)) and parts[1] == [1, 4]
    rows = np.arange(7 * 2).reshape(7, 2)
    mine = shard_indices(7, 0, 1)[::-1]  # a world of one gathering its rows given in another order
    np.testing.assert_array_equal(gather_rows(rows[mine], mine, 7), rows)
    with pytest.raises(RuntimeError, match="computed by no rank"):
        gather_rows(rows[:3], [0, 1, 2], 7)
