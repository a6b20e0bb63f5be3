"""The reproduction sweep as a plan of cells kept on disk (``<out>/plan.json``), run one cell at a time.

A cell is one ``bench`` command line run as a subprocess (``python -m benchmarks.cli ...``): pretrain the context
encoder and the autoencoder (random init needs no pretraining: transfer gets ``--weights random``), each transfer
task for each method and seed, optionally the inpainting network and its evaluation, then the tables and figures.

The plan file is rewritten atomically whenever a cell changes state (``pending`` -> ``running`` -> ``done`` or
``failed``), so the sweep survives being killed: a cell found ``running`` when the plan is loaded was interrupted and
is run again (a pretraining run, or a cls/det/seg transfer with a training checkpoint, resumes from its last checkpoint
when the command offers ``--resume``; any other output folder an earlier attempt left is moved aside to
``<folder>.attempt<N>`` first, nothing is deleted). SIGTERM or SIGINT sent to the sweep is passed on to the running
cell, which writes a checkpoint and exits; the cell is marked ``interrupted`` and the sweep stops, to be continued by
running it again. ``done`` cells are never redone; ``failed`` cells are retried only with ``retry_failed``. Cells
whose command is not part of this build are reported as unavailable (and picked up once it is). The report cells
(``bench table``, ``bench plot``) run again whenever a cell they summarise finished after them.

Every transfer or inpainting-evaluation cell must leave one run record in its folder; it is copied to
``<out>/records/<cell>.json``, the folder the tables are made from.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import importlib.util
import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from benchmarks.cli import COMMANDS
from pretrain.checkpoint import atomic_write_json

PLAN_FORMAT = "context-encoders-bench/reproduce-plan"
PLAN_VERSION = 1
REPO_ROOT = Path(__file__).resolve().parent.parent

TRANSFER_TASKS = ("cls", "svm", "det", "seg")
ALL_TASKS = (*TRANSFER_TASKS, "inpaint")
DEFAULT_TASKS = TRANSFER_TASKS
METHODS = ("random", "autoencoder", "context-encoder")
#: methods with a pretraining run (random init is made by the transfer command itself: ``--weights random``)
PRETRAINED_METHODS = ("autoencoder", "context-encoder")
#: baselines of ``bench inpaint-eval`` that need no training, evaluated next to the trained inpainting network
#: (fsr-best is left out: about 7.5 s of CPU per 128-px image against 0.4 s for fsr-fast, docs/protocols/inpainting.md;
#: nn needs a folder of training images to search, given by hand: ``bench inpaint-eval --baseline nn --train-images``)
INPAINT_BASELINES = ("mean", "telea", "ns", "shiftmap", "fsr-fast")
#: baselines ``--inpaint-baselines`` accepts (those that need nothing but the evaluation images)
SWEEP_BASELINES = ("mean", "telea", "ns", "biharmonic", "shiftmap", "fsr-fast", "fsr-best")
DEFAULT_SEEDS = {"smoke": 1, "cpu": 3, "paper": 3}
#: stage names accepted by ``stage_args`` (extra options appended to that stage's command lines)
STAGES = ("pretrain", "inpaint-pretrain", "inpaint-eval", *TRANSFER_TASKS, "table", "plot")


#: fields of a cell that running changes (the others follow from the options)
STATE_FIELDS = ("status", "attempts", "started_at", "ended_at", "returncode", "message", "log", "record")


class PlanError(RuntimeError):
    """The plan file is unreadable, or was made with other options (the message says what to do)."""


@dataclass
class SweepOptions:
    """Everything that decides the cells of a sweep (stored in the plan file)."""

    out: str
    preset: str = "smoke"
    voc_root: str | None = None
    data: str | None = None
    seeds: int = 1
    tasks: tuple[str, ...] = DEFAULT_TASKS
    methods: tuple[str, ...] = METHODS
    inpaint_data: str | None = None
    inpaint_eval_images: str | None = None
    device: str | None = None
    stage_args: dict[str, list[str]] = field(default_factory=dict)
    inpaint_baselines: tuple[str, ...] = INPAINT_BASELINES

    def as_json(self) -> dict[str, Any]:
        return {
            "preset": self.preset,
            "voc_root": self.voc_root,
            "data": self.data,
            "seeds": self.seeds,
            "tasks": list(self.tasks),
            "methods": list(self.methods),
            "inpaint_data": self.inpaint_data,
            "inpaint_eval_images": self.inpaint_eval_images,
            "device": self.device,
            "stage_args": {k: list(v) for k, v in sorted(self.stage_args.items())},
            "inpaint_baselines": list(self.inpaint_baselines),
        }


# ------------------------------------------------------------------------------------------------ availability
def command_available(argv: Sequence[str]) -> tuple[bool, str]:
    """Whether the ``bench`` subcommand (and, for transfer, the task) of ``argv`` exists in this build."""
    name = argv[0]
    module = COMMANDS.get(name)
    if module is None or importlib.util.find_spec(module) is None:
        return False, f"`bench {name}` is not part of this build"
    if name == "transfer":
        task = argv[argv.index("--task") + 1]
        if importlib.util.find_spec(f"benchmarks.commands.transfer_{task}") is None:
            return False, f"`bench transfer --task {task}` is not part of this build"
    return True, ""


@functools.cache
def known_options(command: str) -> frozenset[str]:
    """Option strings that ``bench <command>`` accepts (empty when the command is missing)."""
    from benchmarks.cli import build_parser

    for action in build_parser()._actions:
        if isinstance(action, argparse._SubParsersAction) and command in action.choices:
            return frozenset(action.choices[command]._option_string_actions)
    return frozenset()


# ------------------------------------------------------------------------------------------------------ planning
def current_option_names(argv: list[str]) -> list[str]:
    """``argv`` of a ``bench`` command line with the transfer options of earlier versions under today's names (a
    plan stored before the options were renamed resumes as if it had been made today)."""
    from benchmarks.commands.transfer import RENAMED_OPTIONS

    if not argv or argv[0] != "transfer" or "--task" not in argv[:-1]:
        return list(argv)
    renamed = RENAMED_OPTIONS.get(argv[argv.index("--task") + 1], {})
    out = []
    for arg in argv:
        name, eq, value = arg.partition("=")
        out.append(renamed.get(name, name) + eq + value if name in renamed else arg)
    return out


def _cell(cell_id: str, stage: str, argv: list[str], out: Path | None, depends_on: list[str], record: bool) -> dict:
    argv = current_option_names(argv)
    return {
        "id": cell_id,
        "stage": stage,
        "argv": argv,
        "command": shlex.join(["python", "-m", "benchmarks.cli", *argv]),
        "out": str(out) if out is not None else None,
        "depends_on": depends_on,
        "makes_record": record,
        "status": "pending",
        "attempts": 0,
        "started_at": None,
        "ended_at": None,
        "returncode": None,
        "message": "",
        "log": None,
    }


def build_cells(opts: SweepOptions) -> list[dict[str, Any]]:
    """The cells of a sweep, in the order they run."""
    out = Path(opts.out)
    extra = opts.stage_args
    device = ["--device", opts.device] if opts.device else []
    cells: list[dict[str, Any]] = []
    transfer_tasks = [t for t in opts.tasks if t in TRANSFER_TASKS]
    pretrained = [m for m in opts.methods if m != "random"] if transfer_tasks else []
    pretrain_opts = known_options("pretrain")
    for method in pretrained:
        argv = [
            "pretrain",
            "--data",
            str(opts.data),
            "--out",
            str(out / "runs" / method),
            "--preset",
            opts.preset,
            "--method",
            method,
        ]
        if "--seed" in pretrain_opts:
            argv += ["--seed", "0"]
        if "--device" in pretrain_opts:
            argv += device
        cells.append(
            _cell(f"pretrain/{method}", "pretrain", argv + extra.get("pretrain", []), out / "runs" / method, [], False)
        )
    for task in transfer_tasks:
        for method in opts.methods:
            weights = "random" if method == "random" else str(out / "runs" / method)
            deps = [] if method == "random" else [f"pretrain/{method}"]
            for seed in range(opts.seeds):
                folder = out / "transfer" / task / method / f"seed{seed}"
                argv = [
                    "transfer",
                    "--task",
                    task,
                    "--voc-root",
                    str(opts.voc_root),
                    "--weights",
                    weights,
                    "--out",
                    str(folder),
                    "--preset",
                    opts.preset,
                    "--seed",
                    str(seed),
                    *device,
                ]
                if task == "det" and "--proposals" not in extra.get(task, []):
                    # selective search depends on the images only: one cache for every detection cell
                    argv += ["--proposals", str(out / "proposals")]
                cells.append(
                    _cell(f"transfer/{task}/{method}/seed{seed}", task, argv + extra.get(task, []), folder, deps, True)
                )
    if "inpaint" in opts.tasks:
        run_dir = out / "runs" / "inpainting"
        argv = [
            "pretrain",
            "--data",
            str(opts.inpaint_data or opts.data),
            "--out",
            str(run_dir),
            "--preset",
            opts.preset,
            "--method",
            "inpainting",
        ]
        if "--device" in pretrain_opts:
            argv += device
        cells.append(
            _cell(
                "pretrain/inpainting", "inpaint-pretrain", argv + extra.get("inpaint-pretrain", []), run_dir, [], False
            )
        )
        evals: list[tuple[str, list[str], list[str]]] = [
            ("inpainting", ["--weights", str(run_dir)], ["pretrain/inpainting"])
        ]
        evals += [(f"baseline-{b}", ["--baseline", b], []) for b in opts.inpaint_baselines]
        for name, source, deps in evals:
            folder = out / "inpaint" / name
            argv = ["inpaint-eval", *source, "--images", str(opts.inpaint_eval_images), "--out", str(folder)]
            if "--device" in known_options("inpaint-eval"):
                argv += device
            cells.append(
                _cell(f"inpaint-eval/{name}", "inpaint-eval", argv + extra.get("inpaint-eval", []), folder, deps, True)
            )
    work = [c["id"] for c in cells]
    table_argv = ["table", str(out / "records"), "--out", str(out / "tables"), "--quiet"]
    if not any(c["makes_record"] for c in cells):  # a sweep of pretraining only: no record to find is no error
        table_argv.append("--allow-empty")
    cells.append(_cell("report/table", "table", table_argv + extra.get("table", []), out / "tables", work, False))
    plot_argv = ["plot", "--runs", str(out / "runs"), "--records", str(out / "records"), "--out", str(out / "figures")]
    cells.append(_cell("report/plot", "plot", plot_argv + extra.get("plot", []), out / "figures", work, False))
    return cells


def is_report(cell: dict[str, Any]) -> bool:
    return cell["id"].startswith("report/")


# ------------------------------------------------------------------------------------------------ the plan file
def plan_path(out: str | Path) -> Path:
    return Path(out) / "plan.json"


def save_plan(plan: dict[str, Any], out: str | Path) -> None:
    atomic_write_json(plan_path(out), plan)


def load_or_create_plan(opts: SweepOptions, replan: bool = False) -> dict[str, Any]:
    """Load ``<out>/plan.json`` (merging in cells added by new options) or make a new plan."""
    fresh = build_cells(opts)
    path = plan_path(opts.out)
    if not path.exists():
        return {"format": PLAN_FORMAT, "version": PLAN_VERSION, "options": opts.as_json(), "cells": fresh}
    try:
        plan = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise PlanError(f"{path}: cannot read the plan ({exc}); move it away to start a new sweep") from exc
    if plan.get("format") != PLAN_FORMAT or plan.get("version") != PLAN_VERSION:
        raise PlanError(f"{path}: not a version-{PLAN_VERSION} reproduce plan")
    for cell in plan["cells"]:
        cell["argv"] = current_option_names(cell["argv"])
        cell["command"] = shlex.join(["python", "-m", "benchmarks.cli", *cell["argv"]])
    old = {c["id"]: c for c in plan["cells"]}
    merged = []
    changed = []
    for cell in fresh:
        prev = old.get(cell["id"])
        if prev is None:
            merged.append(cell)
        elif prev["argv"] != cell["argv"]:
            changed.append(cell["id"])
            merged.append(cell)  # with --replan: a changed cell starts again as pending
        else:  # keep the state of the cell, take what the options decide (dependencies) from the new plan
            state = {k: prev[k] for k in STATE_FIELDS if k in prev}
            merged.append({**cell, **state})
    if changed and not replan:
        raise PlanError(
            f"{path} was made with other options (cells {', '.join(changed[:3])}{' ...' if len(changed) > 3 else ''} "
            "would run a different command); use another --out, or --replan to reset the changed cells"
        )
    # cells of the old plan that the new options no longer ask for are kept (not run) so nothing is forgotten
    ids = {c["id"] for c in merged}
    kept = [dict(c, message="not part of the current options") for c in plan["cells"] if c["id"] not in ids]
    plan.update(options=opts.as_json(), cells=merged + kept)
    return plan


@contextlib.contextmanager
def plan_lock(out: str | Path) -> Iterator[None]:
    """One sweep per folder at a time (``pretrain.runlock`` on ``<out>/plan.lock``; the refusal names the holder)."""
    from pretrain.runlock import RunFolderBusy, command_line, run_folder_lock

    try:
        with run_folder_lock(out, command_line(), name="plan.lock"):
            yield
    except RunFolderBusy as exc:
        raise PlanError(f"another `bench reproduce` is running: {exc}") from exc


# ----------------------------------------------------------------------------------------------------- running
def _now() -> str:
    from pretrain.runinfo import utc_now_iso

    return utc_now_iso()


def _slug(cell_id: str) -> str:
    return cell_id.replace("/", "__")


def _move_aside(folder: Path) -> Path | None:
    if not folder.exists():
        return None
    n = 1
    while Path(f"{folder}.attempt{n}").exists():
        n += 1
    target = Path(f"{folder}.attempt{n}")
    folder.rename(target)
    return target


def _resumable(cell: dict[str, Any], folder: Path) -> bool:
    """A pretraining run folder with at least one checkpoint, or a transfer folder with a training checkpoint,
    and a command that offers ``--resume``."""
    if cell["stage"] in ("pretrain", "inpaint-pretrain"):
        return "--resume" in known_options("pretrain") and any(folder.rglob("*.pt"))
    if cell["stage"] in ("cls", "det", "seg"):
        return "--resume" in known_options("transfer") and any((folder / "checkpoints").glob("*.pt"))
    return False


def collect_record(cell: dict[str, Any], out: Path) -> Path:
    """Copy the run record the cell wrote (the newest valid one in its folder) to ``<out>/records/<cell>.json``."""
    from transfer.records import RECORD_SCHEMA, RecordError, read_record

    found = []
    for path in sorted(Path(cell["out"]).rglob("*.json")):
        try:
            head = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError):
            continue
        if not (isinstance(head, dict) and head.get("schema") == RECORD_SCHEMA):
            continue
        try:
            rec = read_record(path)
        except RecordError as exc:
            raise RuntimeError(f"the cell wrote an invalid record: {exc}") from exc
        found.append((rec["ended_at"], str(path), path))
    if not found:
        raise RuntimeError(f"the cell finished but wrote no run record under {cell['out']}")
    src = max(found)[2]
    dest = out / "records" / f"{_slug(cell['id'])}.json"
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_suffix(".json.tmp")
    shutil.copyfile(src, tmp)
    os.replace(tmp, dest)
    return dest


@contextlib.contextmanager
def _forward_stop_signals(proc: subprocess.Popen) -> Iterator[list[str]]:
    """While the cell runs, SIGTERM/SIGINT sent to the sweep are passed on to the cell (which then writes its
    checkpoint and exits); the names of the signals received are collected in the yielded list."""
    received: list[str] = []

    def forward(signum: int, frame: Any) -> None:
        received.append(signal.Signals(signum).name)
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signum)

    previous = {}
    if threading.current_thread() is threading.main_thread():
        previous = {sig: signal.signal(sig, forward) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield received
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _run_subprocess(argv: list[str], log_path: Path, stream: TextIO | None) -> tuple[int, str | None]:
    """Run ``python -m benchmarks.cli argv``; its output goes to ``log_path`` (and to ``stream`` as it comes).
    Returns the exit status and the name of the signal that interrupted the sweep meanwhile (None if none).

    The cell runs in its own session, so that a Ctrl-C in the terminal reaches it once, through the sweep."""
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO_ROOT) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env.setdefault("PYTHONUNBUFFERED", "1")
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab") as log:
        log.write(f"$ {shlex.join(['python', '-m', 'benchmarks.cli', *argv])}\n".encode())
        log.flush()
        proc = subprocess.Popen(
            [sys.executable, "-m", "benchmarks.cli", *argv],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
        )
        assert proc.stdout is not None
        with _forward_stop_signals(proc) as received:
            try:
                while chunk := proc.stdout.read1(4096):  # type: ignore[attr-defined]
                    log.write(chunk)
                    log.flush()
                    if stream is not None:
                        stream.write(chunk.decode(errors="replace"))
                        stream.flush()
            except BaseException:
                proc.kill()
                proc.wait()
                raise
            rc = proc.wait()
        return rc, (received[0] if received else None)


@dataclass
class SweepResult:
    ran: list[str] = field(default_factory=list)
    done: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    unavailable: list[tuple[str, str]] = field(default_factory=list)
    blocked: list[tuple[str, str]] = field(default_factory=list)
    #: the signal that stopped the sweep (the cell that was running is marked ``interrupted``)
    interrupted: str | None = None

    @property
    def complete(self) -> bool:
        return not (self.failed or self.unavailable or self.blocked or self.interrupted)


def describe_plan(plan: dict[str, Any]) -> str:
    """One line per cell: status, availability and the command line."""
    lines = []
    for cell in plan["cells"]:
        ok, why = command_available(cell["argv"])
        status = cell["status"] if ok else "unavailable"
        lines.append(
            f"{status:<11} {cell['id']}\n            {cell['command']}" + (f"\n            ({why})" if why else "")
        )
    return "\n".join(lines)


def run_plan(
    opts: SweepOptions,
    *,
    retry_failed: bool = False,
    replan: bool = False,
    max_cells: int | None = None,
    stream: TextIO | None = sys.stderr,
    progress: bool = True,
) -> SweepResult:
    """Run every cell that is not done; see the module docstring for the rules."""
    from tqdm import tqdm

    out = Path(opts.out)
    result = SweepResult()
    with plan_lock(out):
        plan = load_or_create_plan(opts, replan=replan)
        interrupted = set()
        for cell in plan["cells"]:
            if cell["status"] in ("running", "interrupted"):  # killed, or stopped by a signal
                cell["status"] = "pending"
                cell["message"] = "interrupted; run again"
                interrupted.add(cell["id"])
        save_plan(plan, out)
        (out / "records").mkdir(exist_ok=True)
        wanted = {c["id"] for c in build_cells(opts)}
        cells = [c for c in plan["cells"] if c["id"] in wanted]
        by_id = {c["id"]: c for c in cells}
        todo_count = sum(c["status"] != "done" for c in cells)
        bar = tqdm(
            total=len(cells),
            initial=len(cells) - todo_count,
            desc="reproduce",
            unit="cell",
            disable=not progress,
            file=sys.stderr,
            dynamic_ncols=True,
        )
        for cell in cells:
            if is_report(cell) and cell["status"] == "done":
                deps_done = [by_id[d] for d in cell["depends_on"] if d in by_id and by_id[d]["status"] == "done"]
                if any(d["ended_at"] and d["ended_at"] > (cell["started_at"] or "") for d in deps_done):
                    cell["status"] = "pending"
                    cell["message"] = "records changed since the last run"
                    bar.update(-1)
            if cell["status"] == "done":
                continue
            if cell["status"] == "failed" and not retry_failed:
                result.failed.append(cell["id"])
                continue
            ok, why = command_available(cell["argv"])
            if not ok:
                result.unavailable.append((cell["id"], why))
                bar.write(f"reproduce: {cell['id']}: skipped, {why}")
                continue
            if not is_report(cell):
                missing = [d for d in cell["depends_on"] if by_id.get(d, {}).get("status") != "done"]
                if missing:
                    result.blocked.append((cell["id"], f"waits for {', '.join(missing)}"))
                    bar.write(f"reproduce: {cell['id']}: skipped, waits for {', '.join(missing)}")
                    continue
            if max_cells is not None and len(result.ran) >= max_cells:
                break
            argv = list(cell["argv"])
            folder = Path(cell["out"]) if cell["out"] else None
            # output left by an earlier attempt (interrupted, failed, or reset by --replan) is resumed or moved aside
            if folder is not None and folder.exists():
                if cell["id"] in interrupted and _resumable(cell, folder):
                    argv.append("--resume")
                elif not is_report(cell):
                    moved = _move_aside(folder)
                    bar.write(f"reproduce: {cell['id']}: earlier output moved to {moved}")
            cell.update(
                status="running",
                started_at=_now(),
                ended_at=None,
                returncode=None,
                message="",
                attempts=cell["attempts"] + 1,
                log=str(out / "logs" / f"{_slug(cell['id'])}.log"),
            )
            save_plan(plan, out)
            bar.set_postfix_str(cell["id"])
            bar.write(f"reproduce: [{cell['id']}] {shlex.join(['python', '-m', 'benchmarks.cli', *argv])}")
            with tqdm.external_write_mode(file=sys.stderr):
                rc, stopped_by = _run_subprocess(argv, Path(cell["log"]), stream)
            if stopped_by is not None:
                why = f"stopped by {stopped_by} (exit status {rc}); run bench reproduce again to resume"
                cell.update(status="interrupted", ended_at=_now(), returncode=rc, message=why)
                save_plan(plan, out)
                result.interrupted = stopped_by
                bar.write(f"reproduce: {cell['id']} interrupted by {stopped_by}; the plan is saved")
                break
            message = f"exit status {rc}" if rc else ""
            if rc == 0 and cell["makes_record"]:
                try:
                    cell["record"] = str(collect_record(cell, out))
                except RuntimeError as exc:
                    rc, message = 1, str(exc)
            cell.update(status="done" if rc == 0 else "failed", ended_at=_now(), returncode=rc, message=message)
            save_plan(plan, out)
            result.ran.append(cell["id"])
            (result.done if rc == 0 else result.failed).append(cell["id"])
            if rc == 0:
                bar.update(1)
            else:
                bar.write(f"reproduce: {cell['id']} FAILED ({message}); log: {cell['log']}")
        bar.close()
    return result
