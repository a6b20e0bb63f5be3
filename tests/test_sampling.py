"""The one seeded iteration sampler (pretrain/sampling.py) that orders the batches of pretraining and of every
transfer training: epochs, views, ranks' shares, resumption at any iteration, and independence of worker count."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest
import torch
from torch.utils.data import DataLoader

from pretrain.sampling import IterationBatchSampler, SampleKey, derive_seed


def _entries(sampler: IterationBatchSampler) -> list[tuple[int, int]]:
    return [(k.item, k.view) for batch in sampler for k in batch]


@pytest.mark.parametrize("views", [1, 2])
def test_every_item_once_in_every_view_per_epoch(views: int) -> None:
    size, batch = 7, 3
    epoch = size * views
    # 5 epochs' worth of entries, in batches that straddle the epoch boundaries (21 / 3 and 14 / 3)
    entries = _entries(IterationBatchSampler(size, batch, 0, 5 * epoch // batch + 1, seed=4, views=views))
    for e in range(5):
        assert Counter(entries[e * epoch : (e + 1) * epoch]) == Counter(
            (i, v) for i in range(size) for v in range(views)
        )
    orders = {tuple(entries[e * epoch : (e + 1) * epoch]) for e in range(5)}
    assert len(orders) == 5  # each epoch its own permutation


def test_ranks_share_each_global_batch_disjointly() -> None:
    size, world, per_rank, iterations = 10, 2, 3, 8
    single = list(IterationBatchSampler(size, per_rank * world, 0, iterations, seed=1, views=2))
    shares = [list(IterationBatchSampler(size, per_rank, 0, iterations, 1, r, world, views=2)) for r in range(world)]
    for i in range(iterations):
        keys = [k for r in range(world) for k in shares[r][i]]
        assert len(keys) == per_rank * world and len({k.seed for k in keys}) == len(keys)
        # the ranks together see exactly the entries of the single-process global batch, rank 0 first
        assert [(k.item, k.view) for k in keys] == [(k.item, k.view) for k in single[i]]
        assert all(
            k.seed == derive_seed(1, "augment", i, r, j) for r in range(world) for j, k in enumerate(shares[r][i])
        )


def test_the_batch_of_an_iteration_does_not_depend_on_where_the_run_started() -> None:
    whole = list(IterationBatchSampler(9, 4, 0, 12, seed=2, rank=1, world_size=3, views=2))
    for start in (1, 5, 11):
        resumed = IterationBatchSampler(9, 4, start, 12, seed=2, rank=1, world_size=3, views=2)
        assert len(resumed) == 12 - start and list(resumed) == whole[start:]
        assert resumed.batch(3) == whole[3]  # any iteration, in any order
    assert list(IterationBatchSampler(9, 4, 0, 12, seed=3)) != list(IterationBatchSampler(9, 4, 0, 12, seed=2))


def test_bad_shapes_are_refused() -> None:
    with pytest.raises(ValueError, match="empty dataset"):
        IterationBatchSampler(0, 2, 0, 1, seed=0)
    with pytest.raises(ValueError, match="rank 2 of 2"):
        IterationBatchSampler(4, 2, 0, 1, seed=0, rank=2, world_size=2)


def test_keys_and_augmentation_do_not_depend_on_worker_count(voc_root: Path) -> None:
    """A real training dataset (classification views: random scale, crop and flip) loaded by 0 and by 2 worker
    processes from a sampler started at iteration 2 gives the same tensors."""
    from transfer.classification import ClassificationConfig, VOCClassificationTrain, load_classification_items
    from transfer.voc import VOC_CLASSES, resolve_year_dir

    items, _ = load_classification_items(resolve_year_dir(voc_root, "2007"), "trainval", VOC_CLASSES)
    dataset = VOCClassificationTrain(items, ClassificationConfig(crop_size=48, input_norm="minus1to1"))

    def images(workers: int) -> list[torch.Tensor]:
        sampler = IterationBatchSampler(len(items), 3, 2, 5, seed=0)
        loader = DataLoader(dataset, batch_sampler=sampler, num_workers=workers, generator=torch.Generator())
        return [x for x, _ in loader]

    torch.manual_seed(0)
    alone = images(0)
    torch.manual_seed(123)  # the global RNG plays no part
    with_workers = images(2)
    assert len(alone) == 3 and all(torch.equal(a, b) for a, b in zip(alone, with_workers))
    key = IterationBatchSampler(len(items), 3, 0, 5, seed=0).batch(2)[0]
    assert isinstance(key, SampleKey) and torch.equal(dataset[key][0], alone[0][0])
