"""The one seeded iteration sampler of the suite: which item every training step of every process sees, and with
which augmentation, as a function of ``(seed, iteration, rank)`` alone.

Pretraining and all four transfer trainings (classification, detection on either engine, segmentation on either
engine) draw their batches from :class:`IterationBatchSampler`. A key (:class:`SampleKey`) names an item, a view of
it (detection's flipped copy of an image; 0 elsewhere) and a 63-bit augmentation seed from :func:`derive_seed`. The
datasets draw every random choice of an item (crop, flip, RoI sample) from the key's seed, never from a global or
worker RNG, so the data a step sees does not depend on the number of DataLoader workers or on any generator state:
``--resume`` needs only the iteration number. ``transfer/`` imports this module; it imports nothing above it.
"""

from __future__ import annotations

import contextlib
import hashlib
import random
from collections.abc import Iterator
from typing import NamedTuple

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler


def derive_seed(seed: int, stream: str, *parts: int) -> int:
    """A 63-bit seed for one random stream of one iteration/rank, independent of every other stream."""
    text = ":".join([str(seed), stream, *(str(p) for p in parts)])
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "little") & ((1 << 63) - 1)


@contextlib.contextmanager
def seeded_rngs(seed: int) -> Iterator[None]:
    """Run a block with all global CPU RNGs seeded by ``seed``, restoring their previous states afterwards.

    Only the CPU generators are seeded (``torch.manual_seed`` would also queue a CUDA seeding call, recording a
    stack trace each time while CUDA is not initialised: a third of the per-image cost of the data loader; and the
    CUDA state is not restored by ``fork_rng(devices=[])``). The CPU draws are the same as with ``torch.manual_seed``.
    """
    np_state, py_state = np.random.get_state(), random.getstate()
    with torch.random.fork_rng(devices=[]):
        torch.default_generator.manual_seed(seed)
        np.random.seed(seed % (1 << 32))
        random.seed(seed)
        try:
            yield
        finally:
            np.random.set_state(np_state)
            random.setstate(py_state)


class SampleKey(NamedTuple):
    """What a dataset needs to produce one training sample: the item, which view of it (``0`` unless the sampler
    has several views per item, e.g. ``1`` = detection's mirrored copy) and the seed of its random augmentation."""

    item: int
    view: int
    seed: int


class IterationBatchSampler(Sampler[list[SampleKey]]):
    """Batches of :class:`SampleKey` for iterations ``start .. end-1`` of one rank.

    The stream of entries is a sequence of epochs, epoch ``e`` a permutation of the ``size * views`` entries drawn
    from ``(seed, "epoch", e)``; entry ``k`` is item ``k % size`` in view ``k // size``, so an epoch holds every item
    once in every view. The global batch of iteration ``i`` is positions ``[i*B*W, (i+1)*B*W)`` of that stream and
    rank ``r`` takes its ``B`` consecutive positions (a distributed sampler without padding: every rank computes the
    same permutation, the ranks' shares are disjoint and make up the global batch). Epochs run on across batch
    boundaries (no entry is dropped). Slot ``j`` of rank ``r`` in iteration ``i`` is augmented with
    ``(seed, "augment", i, r, j)``. The batch of any iteration is computable without replaying the earlier ones,
    which is all ``--resume`` needs; ``batch_size`` is per rank.
    """

    def __init__(
        self,
        size: int,
        batch_size: int,
        start: int,
        end: int,
        seed: int,
        rank: int = 0,
        world_size: int = 1,
        views: int = 1,
    ) -> None:
        if size <= 0:
            raise ValueError("cannot sample from an empty dataset")
        if batch_size <= 0 or views <= 0 or not 0 <= rank < world_size:
            raise ValueError(f"bad sampler shape: batch {batch_size}, views {views}, rank {rank} of {world_size}")
        self.size, self.batch_size, self.start, self.end = size, batch_size, start, end
        self.seed, self.rank, self.world_size, self.views = seed, rank, world_size, views
        self._epoch, self._perm = -1, torch.empty(0, dtype=torch.long)

    def _entry(self, position: int) -> int:
        epoch, offset = divmod(position, self.size * self.views)
        if epoch != self._epoch:
            gen = torch.Generator().manual_seed(derive_seed(self.seed, "epoch", epoch))
            self._epoch, self._perm = epoch, torch.randperm(self.size * self.views, generator=gen)
        return int(self._perm[offset])

    def batch(self, iteration: int) -> list[SampleKey]:
        """This rank's keys of ``iteration``."""
        first = (iteration * self.world_size + self.rank) * self.batch_size
        keys = []
        for j in range(self.batch_size):
            view, index = divmod(self._entry(first + j), self.size)
            keys.append(SampleKey(index, view, derive_seed(self.seed, "augment", iteration, self.rank, j)))
        return keys

    def __iter__(self) -> Iterator[list[SampleKey]]:
        for iteration in range(self.start, self.end):
            yield self.batch(iteration)

    def __len__(self) -> int:
        return max(0, self.end - self.start)


class SeededDataset(Dataset[torch.Tensor]):
    """Wraps a dataset that augments with the global RNGs so that key ``(index, view, seed)`` is augmented with
    RNGs seeded by ``seed``: the same crop and flip whichever worker process loads it (the view is unused)."""

    def __init__(self, dataset: Dataset[torch.Tensor]) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, key: SampleKey) -> torch.Tensor:
        index, _, seed = key
        with seeded_rngs(seed):
            return self.dataset[index]
