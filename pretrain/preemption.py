"""Preemption: SIGTERM or SIGINT during training stops at the end of the current iteration, with a checkpoint.

Clusters and shared GPUs send SIGTERM before they take a machine back (SLURM, Kubernetes; ``torchrun`` forwards it
to its workers); Ctrl-C sends SIGINT. While a ``PreemptionGuard`` is active the first such signal only sets a
flag: the training loop finishes the iteration it is in, writes a checkpoint, and raises ``Preempted``; the command
then exits with ``EXIT_PREEMPTED`` and says how to continue (``--resume``). A second signal stops the process at
once (``KeyboardInterrupt``), without a checkpoint; a repeat within ``DUPLICATE_WINDOW_S`` counts as the
same request.

DataLoader worker processes receive the terminal's SIGINT too; ``ignore_stop_signals`` (their
``worker_init_fn``) keeps them alive so the iteration in progress can finish. They still exit with their parent.
"""

from __future__ import annotations

import signal
import threading
import time
from types import FrameType, TracebackType
from typing import Any

import torch

#: exit status of a command stopped by SIGTERM/SIGINT after writing its checkpoint (BSD's EX_TEMPFAIL: "try again")
EXIT_PREEMPTED = 75

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)
#: a repeat within this window is the same request delivered twice (a scheduler signals every process of a job,
#: and ``bench reproduce`` passes the signal on as well), not a second request
DUPLICATE_WINDOW_S = 2.0


class Preempted(Exception):
    """Training stopped on a signal after ``iteration`` iterations; ``checkpoint`` holds them."""

    def __init__(self, signal_name: str, iteration: int, checkpoint: str | None) -> None:
        self.signal_name, self.iteration, self.checkpoint = signal_name, iteration, checkpoint
        super().__init__(
            f"stopped by {signal_name} after iteration {iteration}; checkpoint {checkpoint}; run the same command "
            "with --resume to continue"
        )


class PreemptionGuard:
    """Context manager: while active, the first SIGTERM/SIGINT sets ``signal_name`` instead of stopping."""

    def __init__(self) -> None:
        self.signal_name: str | None = None
        self._first_at = 0.0
        self._previous: dict[int, Any] = {}

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        now = time.monotonic()
        if self.signal_name is None:
            self.signal_name, self._first_at = signal.Signals(signum).name, now
        elif now - self._first_at > DUPLICATE_WINDOW_S:  # a second request: stop now
            raise KeyboardInterrupt(f"second {signal.Signals(signum).name}")

    def __enter__(self) -> PreemptionGuard:
        if threading.current_thread() is threading.main_thread():  # signal handlers live in the main thread only
            for sig in STOP_SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()

    @property
    def requested(self) -> bool:
        return self.signal_name is not None

    def agreed(self, distributed: bool, device: torch.device) -> bool:
        """Whether to stop after this iteration; under torchrun every rank stops at the same iteration (a signal
        seen by any rank counts), otherwise the others would wait forever in the next collective."""
        if not distributed:
            return self.requested
        import torch.distributed as dist

        flag = torch.tensor([1.0 if self.requested else 0.0], device=device)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        if flag.item() > 0 and self.signal_name is None:
            self.signal_name = "SIGTERM (on another rank)"
        return bool(flag.item() > 0)


def ignore_stop_signals(worker_id: int) -> None:
    """DataLoader ``worker_init_fn``: workers ignore SIGTERM/SIGINT; the main process decides when to stop.

    A loader using it must not have ``persistent_workers``: a persistent iterator outlives an error raised in the
    training loop (the traceback holds the loader), and at exit multiprocessing then stops the workers with SIGTERM,
    which they ignore, and waits for them forever. A loader walked once shuts its workers down as the error unwinds
    the loop."""
    for sig in STOP_SIGNALS:
        signal.signal(sig, signal.SIG_IGN)
