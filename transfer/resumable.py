"""Checkpoints of transfer training (classification fine-tuning, Fast R-CNN, FCN), so that a preempted run continues.

``bench transfer --task cls|det|seg`` keeps one rolling checkpoint per run in ``OUT/checkpoints/`` (model, optimizer,
iteration and, for every process of the run, its RNG states and training statistics), rewritten atomically every
``--checkpoint-every`` iterations and when SIGTERM/SIGINT stops the run (``pretrain/preemption.py``). The data need
no state: the seeded iteration sampler (``pretrain/sampling.py``) gives the batch and augmentation of any iteration
directly. ``--resume`` continues from it, in one process or under torchrun with the same number of processes, with
the same weights, bit for bit, as a run that never stopped. The checkpoint is removed once the run's record is
written.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import torch

from pretrain.checkpoint import CheckpointError, atomic_torch_save, load_checkpoint
from pretrain.distributed import DistributedContext, all_reduce_sum, gather_objects
from pretrain.engine import rng_state, set_rng_state

TRANSFER_CHECKPOINT_FORMAT = "context-encoders-bench/transfer-checkpoint"
#: 2: training batches from the seeded iteration sampler (no data-stream state); checkpoints without a version are
#: 1, written while batches came from shuffling loaders and per-task samplers, and cannot be continued
TRANSFER_CHECKPOINT_VERSION = 2


class TrainingCheckpoint:
    """The rolling checkpoint of one transfer run (``OUT/checkpoints/<key>.pt``), written by rank 0 with the
    per-process states of every rank."""

    def __init__(
        self, out: str | Path, key: str, every: int, settings: dict[str, Any], ctx: DistributedContext
    ) -> None:
        self.path = Path(out) / "checkpoints" / f"{key}.pt"
        self.every, self.settings, self.ctx = every, settings, ctx

    def due(self, done: int, end: int) -> bool:
        return self.every > 0 and done % self.every == 0 and done < end

    def stop_requested(self, requested: bool) -> bool:
        """Whether any process of the run was asked to stop (every rank calls it each iteration under torchrun, so
        that all of them checkpoint and stop at the same iteration)."""
        if not self.ctx.distributed:
            return requested
        return bool(all_reduce_sum(torch.tensor([int(requested)]))[0])

    def save(self, iteration: int, model: torch.nn.Module, optimizer: torch.optim.Optimizer, **rank_state: Any) -> Path:
        """Every rank calls it: each rank's RNG states and ``rank_state`` (its training statistics) go into the file
        rank 0 writes."""
        ranks = gather_objects({"rng": rng_state(), **rank_state})
        if self.ctx.is_main:
            state = {
                "format": TRANSFER_CHECKPOINT_FORMAT,
                "version": TRANSFER_CHECKPOINT_VERSION,
                "iteration": iteration,
                "model": {k: v.detach().cpu() for k, v in model.state_dict().items()},
                "optimizer": optimizer.state_dict(),
                "settings": self.settings,
                "world_size": self.ctx.world_size,
                "ranks": ranks,
                **ranks[0],
            }
            atomic_torch_save(state, self.path)
        return self.path

    def load(self, resume: bool) -> dict[str, Any] | None:
        """The checkpoint to continue from (None: start at iteration 0). Without ``resume`` an existing checkpoint
        is an error: the run would otherwise start over and replace it."""
        if not self.path.is_file():
            if resume:
                print(f"--resume: no checkpoint {self.path} yet, starting at iteration 0", file=sys.stderr)
            return None
        if not resume:
            raise CheckpointError(
                f"{self.path} holds an interrupted run of this task, weights and seed; pass --resume to continue it, "
                "or delete the file to start again"
            )
        ckpt = load_checkpoint(self.path)
        if ckpt.get("format") != TRANSFER_CHECKPOINT_FORMAT or not {"model", "optimizer", "rng"} <= set(ckpt):
            raise CheckpointError(f"{self.path} is not a complete transfer checkpoint; delete it to start again")
        if ckpt.get("version", 1) != TRANSFER_CHECKPOINT_VERSION:
            raise CheckpointError(
                f"{self.path} was written by an earlier version of this suite, which ordered the training batches "
                "differently, so it cannot be continued; delete it and rerun without --resume"
            )
        saved = ckpt.get("settings") or {}
        changed = sorted(k for k in self.settings if k in saved and saved[k] != self.settings[k])
        if changed:
            details = "; ".join(f"{k}: run has {saved[k]!r}, now {self.settings[k]!r}" for k in changed)
            raise CheckpointError(f"--resume with settings that change the run ({self.path}): {details}")
        ranks = ckpt.get("ranks")
        written_by = len(ranks) if ranks is not None else 1
        if written_by != self.ctx.world_size:
            raise CheckpointError(
                f"{self.path} was written by a run of {written_by} process(es); resume it with the same number "
                f"(this run has {self.ctx.world_size})"
            )
        if self.ctx.is_main:
            print(f"resumed from {self.path} at iteration {ckpt['iteration']}", file=sys.stderr)
        return {**ckpt, **ranks[self.ctx.rank]} if ranks is not None else ckpt

    def restore(self, ckpt: dict[str, Any], model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> int:
        """Load weights, optimizer and RNG states of ``ckpt``; return its iteration."""
        try:
            model.load_state_dict(ckpt["model"])
            optimizer.load_state_dict(ckpt["optimizer"])
        except (RuntimeError, ValueError, KeyError) as exc:
            raise CheckpointError(f"{self.path} does not fit this network ({exc})") from exc
        set_rng_state(ckpt["rng"])
        return int(ckpt["iteration"])

    def finish(self) -> None:
        """The run is recorded: its checkpoint is no longer needed."""
        self.path.unlink(missing_ok=True)
