"""The pretraining loop: deterministic per-iteration seeding, one ``train_one_iteration`` and the ``train_loop``
around it (MAE's ``engine_pretrain.py`` split; the wiring of arguments, data and method is in
``benchmarks/commands/pretrain.py``).

Reproducibility and ``--resume``: every random draw of iteration ``i`` on rank ``r`` comes from seeds derived from
``(seed, stream, i, r)`` (``derive_seed``): the images of the batch and their augmentation
(``pretrain/sampling.py``: ``IterationBatchSampler`` + ``SeededDataset``, independent of the number of DataLoader
workers), the masks (a CPU ``torch.Generator`` handed to the method) and the global torch/numpy/python RNGs used by
dropout. The checkpoint holds model, optimizer,
iteration and the RNG states, so a run stopped after iteration ``k`` and resumed ends with weights identical to a run
that never stopped. The schedule is iteration based with a constant Adam learning rate (the official Lua code
never decays it).
"""

from __future__ import annotations

import json
import math
import random
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pretrain.checkpoint import (
    CHECKPOINT_FORMAT,
    CHECKPOINT_FORMAT_VERSION,
    CheckpointError,
    atomic_torch_save,
    atomic_write_text,
    load_checkpoint,
)
from pretrain.config import PretrainConfig
from pretrain.distributed import DistributedContext, all_reduce_sum
from pretrain.methods import NonFiniteLossError, PretrainMethod
from pretrain.preemption import Preempted, PreemptionGuard
from pretrain.runinfo import code_version
from pretrain.sampling import derive_seed, seeded_rngs

CHECKPOINT_PATTERN = "ckpt_{iteration:08d}.pt"


def seed_everything(seed: int) -> None:
    """Seed torch (CPU and CUDA), numpy and python ``random``."""
    torch.manual_seed(seed)
    np.random.seed(seed % (1 << 32))
    random.seed(seed)


# -- RNG state and checkpoints -------------------------------------------------------------------------------------
def rng_state() -> dict[str, Any]:
    """Every global RNG state, in types ``torch.load(weights_only=True)`` accepts."""
    np_state: tuple[Any, ...] = tuple(np.random.get_state(legacy=True))
    py_state = random.getstate()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": {
            "keys": torch.from_numpy(np.asarray(np_state[1], dtype=np.int64)),
            "pos": int(np_state[2]),
            "has_gauss": int(np_state[3]),
            "cached_gaussian": float(np_state[4]),
        },
        "python": {"version": py_state[0], "state": list(py_state[1]), "gauss": py_state[2]},
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    npd = state["numpy"]
    np.random.set_state(
        ("MT19937", npd["keys"].numpy().astype(np.uint32), npd["pos"], npd["has_gauss"], npd["cached_gaussian"])
    )
    py = state["python"]
    random.setstate((py["version"], tuple(py["state"]), py["gauss"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def checkpoint_path(run_dir: Path, iteration: int) -> Path:
    return run_dir / "checkpoints" / CHECKPOINT_PATTERN.format(iteration=iteration)


def list_checkpoints(run_dir: Path) -> list[Path]:
    folder = Path(run_dir) / "checkpoints"
    return sorted(folder.glob("ckpt_*.pt")) if folder.is_dir() else []


def save_checkpoint(method: PretrainMethod, config: PretrainConfig, run_dir: Path, iteration: int, keep: int) -> Path:
    """Write ``checkpoints/ckpt_<iteration>.pt`` atomically (layout: ``pretrain/checkpoint.py``), then delete all
    but the newest ``keep`` checkpoints."""
    state = method.state_dict()
    ckpt = {
        "format": CHECKPOINT_FORMAT,
        "format_version": CHECKPOINT_FORMAT_VERSION,
        "method": method.name,
        "iteration": iteration,
        "model": state["model"],
        "optimizer": state["optimizer"],
        "schedule": {"iteration": iteration, "lr": config.lr, "kind": "constant"},
        "rng": rng_state(),
        "config": config.to_dict(),
        "code_version": code_version(),
    }
    encoder = method.encoder_state_dict()
    if encoder is not None:
        ckpt["encoder"] = encoder
    path = atomic_torch_save(ckpt, checkpoint_path(run_dir, iteration))
    if keep > 0:
        for old in list_checkpoints(run_dir)[:-keep]:
            old.unlink()
    return path


def remove_stray_temporaries(run_dir: Path) -> list[Path]:
    """Delete the temporary files an interrupted atomic write left in ``run_dir`` and ``run_dir/checkpoints``
    (``.<name>.<random>.tmp``; see ``pretrain/checkpoint.py``). Call it only while holding the run-folder lock, so
    that no other process is in the middle of such a write. Returns the removed paths."""
    removed = []
    for folder in (Path(run_dir), Path(run_dir) / "checkpoints"):
        if not folder.is_dir():
            continue
        for tmp in sorted(folder.glob(".*.tmp")):
            if tmp.is_file():
                tmp.unlink()
                removed.append(tmp)
    return removed


def check_resumable(ckpt: dict[str, Any], path: Path, method_name: str) -> None:
    """Raise ``CheckpointError`` (one line naming ``path``) unless ``ckpt`` is a complete ``bench pretrain``
    checkpoint of ``method_name``: the right format and method, with model, optimizer, iteration and RNG states."""
    if ckpt.get("format") != CHECKPOINT_FORMAT:
        kind = "a plain state dict" if ckpt.get("format") is None else f"format {ckpt.get('format')!r}"
        raise CheckpointError(f"{path} is not a `bench pretrain` checkpoint ({kind}); --resume needs one")
    if ckpt.get("method") != method_name:
        raise CheckpointError(
            f"{path} was written by --method {ckpt.get('method')}, not {method_name}; resume with "
            f"--method {ckpt.get('method')} or choose another --out"
        )
    missing = [key for key in ("model", "optimizer", "rng", "iteration") if key not in ckpt]
    rng = ckpt.get("rng")
    if isinstance(rng, dict):
        missing += [f"rng.{key}" for key in ("torch", "numpy", "python") if key not in rng]
    if missing:
        raise CheckpointError(
            f"{path} lacks {', '.join(missing)}, without which the run cannot continue bit for bit; "
            "resume from a complete checkpoint or start again with --overwrite"
        )


def newest_readable_checkpoint(run_dir: Path) -> tuple[Path | None, dict[str, Any] | None, list[str]]:
    """``(path, checkpoint, problems)`` of the newest checkpoint of ``run_dir`` that loads; newer ones that are
    truncated or unreadable are passed over and described in ``problems``."""
    problems: list[str] = []
    for path in reversed(list_checkpoints(run_dir)):
        try:
            return path, load_checkpoint(path), problems
        except CheckpointError as exc:
            problems.append(str(exc))
    return None, None, problems


def restore_checkpoint(method: PretrainMethod, path: Path, ckpt: dict[str, Any] | None = None) -> dict[str, Any]:
    """Load ``path`` (weights_only; or the already loaded ``ckpt``) into ``method`` and the global RNGs; return
    the checkpoint dict. A checkpoint of another kind is a ``CheckpointError`` naming the file."""
    ckpt = load_checkpoint(path) if ckpt is None else ckpt
    check_resumable(ckpt, path, method.name)
    try:
        method.load_state_dict({"model": ckpt["model"], "optimizer": ckpt["optimizer"]})
        set_rng_state(ckpt["rng"])
    except (KeyError, RuntimeError, ValueError, TypeError) as exc:
        raise CheckpointError(f"{path} does not fit this network ({type(exc).__name__}: {exc})") from exc
    return ckpt


#: a parameter beyond this magnitude means the run diverged (trained AlexNet weights stay far below 100)
DIVERGED_MAGNITUDE = 1e8


def weight_problem(state: dict[str, torch.Tensor]) -> str | None:
    """Why a model state is not worth keeping as a good checkpoint (a tensor with NaN/Inf, or one beyond
    ``DIVERGED_MAGNITUDE``), or None when every floating-point tensor is finite and sane."""
    for name, tensor in state.items():
        if not isinstance(tensor, torch.Tensor) or not tensor.is_floating_point() or tensor.numel() == 0:
            continue
        if not bool(torch.isfinite(tensor).all()):
            return f"tensor {name} holds NaN or Inf"
        peak = float(tensor.detach().abs().max())
        if peak > DIVERGED_MAGNITUDE:
            return f"tensor {name} reaches |w| = {peak:.3g} (diverged)"
    return None


# -- logging ----------------------------------------------------------------------------------------------------
def truncate_log_after(path: Path, iteration: int) -> int:
    """Drop the lines of a JSON-lines training log whose ``iteration`` is after ``iteration`` (and lines cut short
    by an interruption), keeping event lines; used on ``--resume`` so that the log holds each iteration once.
    Returns how many lines were dropped (0 when there is no log yet)."""
    if not path.is_file():
        return 0
    kept, dropped = [], 0
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:  # a line cut by the interruption
            dropped += 1
            continue
        if "event" not in record and int(record.get("iteration", 0)) > iteration:
            dropped += 1
            continue
        kept.append(line)
    atomic_write_text(path, "".join(f"{line}\n" for line in kept))
    return dropped


@dataclass
class RunLogger:
    """JSON lines in ``log.jsonl`` (DINO's ``log.txt``) and, optionally, TensorBoard scalars; rank 0 only."""

    run_dir: Path
    enabled: bool
    tensorboard: bool = False
    _tb: Any = field(default=None, init=False)

    def __post_init__(self) -> None:
        if self.enabled and self.tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self._tb = SummaryWriter(log_dir=str(self.run_dir / "tensorboard"))

    def log(self, record: dict[str, Any]) -> None:
        if not self.enabled:
            return
        with open(self.run_dir / "log.jsonl", "a", encoding="utf-8") as fh:
            fh.write(json.dumps(record, sort_keys=True) + "\n")
        if self._tb is not None and "iteration" in record:
            for key, value in record.items():
                if isinstance(value, int | float) and key != "iteration":
                    self._tb.add_scalar(f"pretrain/{key}", value, record["iteration"])

    def truncate_after(self, iteration: int) -> int:
        """On ``--resume`` from ``iteration``: drop log lines of later iterations (written after the checkpoint by
        the interrupted process; the resumed run writes them again). Returns how many lines were dropped."""
        if not self.enabled:
            return 0
        return truncate_log_after(self.run_dir / "log.jsonl", iteration)

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()


#: the PNG text key of a sample grid that names its columns ("|"-separated), read by ``bench plot``
SAMPLE_COLUMNS_KEY = "columns"


def save_sample_grid(
    method: PretrainMethod, images: torch.Tensor, path: Path, seed: int, iteration: int, write: bool, count: int = 8
) -> None:
    """PNG with one row per image: masked input | prediction | prediction pasted into the hole | original (the
    pasted column when ``sample_grid`` also returns the dropped mask and the hole is not the whole image). The column
    names are in the PNG's text metadata (``SAMPLE_COLUMNS_KEY``). Computed on every rank (networks with buffers
    would otherwise leave DDP collectives unmatched), written by rank 0."""
    from PIL import Image, PngImagePlugin
    from torchvision.utils import make_grid

    gen = torch.Generator().manual_seed(derive_seed(seed, "grid", iteration))
    batch = images[:count]
    method.train(False)
    try:
        with seeded_rngs(derive_seed(seed, "grid-rng", iteration)):
            masked, pred, original, *rest = method.sample_grid(batch, gen)
    finally:
        method.train(True)
    if not write:
        return
    panels, names = [masked, pred], ["masked input", "prediction"]
    if rest and not bool(rest[0].all()):
        dropped = rest[0].to(pred.device).bool()
        panels.append(torch.where(dropped, pred, original.to(pred.dtype)))
        names.append("pasted into the hole")
    panels.append(original)
    names.append("original")
    tiles = torch.stack([p.float().cpu() for p in panels], dim=1).flatten(0, 1)
    grid = make_grid((tiles.clamp(-1, 1) + 1) / 2, nrow=len(panels), padding=2)
    pixels = grid.mul(255).add_(0.5).clamp_(0, 255).permute(1, 2, 0).to(torch.uint8).numpy()
    info = PngImagePlugin.PngInfo()
    info.add_text(SAMPLE_COLUMNS_KEY, "|".join(names))
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path, format="PNG", pnginfo=info)


# -- the loop ---------------------------------------------------------------------------------------------------
def train_one_iteration(
    method: PretrainMethod, images: torch.Tensor, config: PretrainConfig, iteration: int, rank: int
) -> dict[str, float]:
    """One optimisation step of ``method`` with the RNGs of ``(seed, iteration, rank)``."""
    seed_everything(derive_seed(config.seed, "step", iteration, rank))
    mask_gen = torch.Generator().manual_seed(derive_seed(config.seed, "mask", iteration, rank))
    try:
        stats = method.training_step(images, mask_gen)
    except NonFiniteLossError as exc:
        raise NonFiniteLossError(f"iteration {iteration + 1}: {exc}", iteration=iteration + 1) from exc
    loss = stats.get("loss", 0.0)
    if not math.isfinite(loss):
        raise NonFiniteLossError(f"{method.name}: loss is {loss} at iteration {iteration + 1}", iteration=iteration + 1)
    return stats


@dataclass
class LoopResult:
    """Where the loop ended; ``last_stats`` are the last logged values, averaged over ranks."""

    iteration: int
    last_stats: dict[str, float]
    images_per_second: float
    seconds: float


def train_loop(
    method: PretrainMethod,
    loader: Iterator[torch.Tensor] | Any,
    config: PretrainConfig,
    ctx: DistributedContext,
    run_dir: Path,
    start: int,
    end: int,
    logger: RunLogger,
    progress: Callable[..., Any] | None = None,
    preemption: PreemptionGuard | None = None,
) -> LoopResult:
    """Train iterations ``start .. end-1`` from ``loader`` (which yields exactly those batches), logging every
    ``log_every``, writing a sample grid every ``sample_every`` and a checkpoint every ``checkpoint_every``
    iterations and at ``end``. A non-finite loss raises ``NonFiniteLossError`` before any weight changes, and
    weights that went non-finite or diverged are never written as a checkpoint; the checkpoints already on disk
    are untouched. When ``preemption`` saw SIGTERM/SIGINT, the current iteration ends with a checkpoint and
    ``Preempted``."""
    method.train(True)
    global_batch = config.batch_size * ctx.world_size
    bar = progress(total=end, initial=start, desc=f"pretrain {method.name}", unit="it") if progress else None
    t_start = t_window = time.perf_counter()
    window_images, stats, iteration = 0, {}, start
    logged: dict[str, float] = {}
    speed = 0.0
    for iteration, images in enumerate(loader, start=start):
        images = images.to(ctx.device, non_blocking=True)
        stats = train_one_iteration(method, images, config, iteration, ctx.rank)
        done = iteration + 1
        window_images += global_batch
        if done % config.log_every == 0 or done == end:
            values = torch.tensor([stats.get(k, 0.0) for k in sorted(stats)], dtype=torch.float64)
            reduced = all_reduce_sum(values.to(ctx.device) if ctx.device.type == "cuda" else values).cpu()
            mean = {k: float(v) / ctx.world_size for k, v in zip(sorted(stats), reduced.tolist(), strict=True)}
            now = time.perf_counter()
            speed = window_images / max(now - t_window, 1e-9)
            t_window, window_images = now, 0
            logged = mean
            logger.log({"iteration": done, "lr": config.lr, "images_per_s": round(speed, 2), **mean})
            if bar is not None:
                bar.set_postfix(loss=f"{mean.get('loss', float('nan')):.4f}", img_s=f"{speed:.1f}")
        if config.sample_every > 0 and (done % config.sample_every == 0 or done == end):
            grid = run_dir / "samples" / f"iter_{done:08d}.png"
            save_sample_grid(method, images, grid, config.seed, done, write=ctx.is_main)
        stop = preemption is not None and preemption.agreed(ctx.distributed, ctx.device)
        if done % config.checkpoint_every == 0 or done == end or stop:
            # the loss of this iteration was finite, but its update may not be: check the weights themselves
            # (on every rank, so that all stop together) before the checkpoint is kept as a good one
            problem = weight_problem(method.state_dict()["model"])
            if problem is not None:
                raise NonFiniteLossError(
                    f"iteration {done}: the weights after the update are not usable ({problem}); "
                    "no checkpoint was written for it",
                    iteration=done,
                )
            if ctx.is_main:
                save_checkpoint(method, config, run_dir, done, config.keep_checkpoints)
            if stop:
                assert preemption is not None and preemption.signal_name is not None
                raise Preempted(preemption.signal_name, done, str(checkpoint_path(run_dir, done)))
        if bar is not None:
            bar.update(1)
        iteration = done
    if bar is not None:
        bar.close()
    seconds = time.perf_counter() - t_start
    return LoopResult(iteration=iteration, last_stats=logged or stats, images_per_second=speed, seconds=seconds)
