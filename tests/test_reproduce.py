"""`bench reproduce`: the plan on disk, resuming after an interruption, failed cells, missing commands.

The cells run here are real `bench` subcommands (`bench table`, `bench plot`) run as subprocesses; nothing is mocked.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from benchmarks.reproduce import SweepOptions, build_cells, collect_record, command_available
from transfer.records import make_record, write_record


def _bench(args: list[str], env: dict[str, str], check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "benchmarks.cli", *args], capture_output=True, text=True, env=env, check=check
    )


def _plan(out: Path) -> dict[str, dict]:
    return {c["id"]: c for c in json.loads((out / "plan.json").read_text())["cells"]}


def test_dry_run_lists_every_cell_and_missing_commands(tmp_path: Path, subprocess_env: dict[str, str]) -> None:
    args = [
        "reproduce",
        "--voc-root",
        "VOC",
        "--data",
        "IMGS",
        "--out",
        str(tmp_path / "sweep"),
        "--seeds",
        "2",
        "--tasks",
        "cls,seg",
        "--dry-run",
    ]
    proc = _bench(args, subprocess_env)
    cells = build_cells(
        SweepOptions(out=str(tmp_path / "sweep"), voc_root="VOC", data="IMGS", seeds=2, tasks=("cls", "seg"))
    )
    ids = [c["id"] for c in cells]
    assert ids[:2] == ["pretrain/autoencoder", "pretrain/context-encoder"]
    assert len([i for i in ids if i.startswith("transfer/")]) == 2 * 3 * 2  # tasks x methods x seeds
    assert ids[-2:] == ["report/table", "report/plot"]
    for cell in cells:
        assert cell["id"] in proc.stdout and cell["command"] in proc.stdout
        if not command_available(cell["argv"])[0]:
            assert f"unavailable {cell['id']}" in proc.stdout
    random_cls = next(c for c in cells if c["id"] == "transfer/cls/random/seed1")
    assert random_cls["argv"][random_cls["argv"].index("--weights") + 1] == "random"
    assert not (tmp_path / "sweep").exists()  # a dry run writes nothing


def test_interrupted_plan_resumes_without_redoing_cells(tmp_path: Path, subprocess_env: dict[str, str]) -> None:
    out = tmp_path / "sweep"
    base = ["reproduce", "--tasks", "none", "--out", str(out), "--quiet-cells"]
    # stop after one cell: table done, plot still pending
    _bench([*base, "--max-cells", "1"], subprocess_env)
    plan = _plan(out)
    assert plan["report/table"]["status"] == "done" and plan["report/plot"]["status"] == "pending"
    table_started = plan["report/table"]["started_at"]
    assert (out / "tables" / "table2.md").exists()

    # kill the sweep while the plot cell runs (the whole process group: reproduce and its cell)
    proc = subprocess.Popen(
        [sys.executable, "-m", "benchmarks.cli", *base],
        env=subprocess_env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        while proc.poll() is None:
            if (out / "plan.json").exists() and _plan(out)["report/plot"]["status"] == "running":
                os.killpg(proc.pid, signal.SIGKILL)
                break
            time.sleep(0.02)
    finally:
        proc.wait()
    plan = _plan(out)
    assert plan["report/plot"]["status"] == "running" and plan["report/plot"]["attempts"] == 1

    # resume: the interrupted cell runs again, the finished one is not redone
    _bench(base, subprocess_env)
    plan = _plan(out)
    assert plan["report/plot"]["status"] == "done" and plan["report/plot"]["attempts"] == 2
    assert plan["report/table"]["attempts"] == 1 and plan["report/table"]["started_at"] == table_started
    assert "bench plot: wrote" in (out / "logs" / "report__plot.log").read_text()  # the log is appended to

    # everything done: a further run does nothing
    again = _bench(base, subprocess_env)
    assert "ran 0 cells" in again.stderr


def test_failed_cells_retry_only_when_asked(tmp_path: Path, subprocess_env: dict[str, str]) -> None:
    out = tmp_path / "sweep"
    bad = ["reproduce", "--tasks", "none", "--out", str(out), "--quiet-cells", "--stage-args", "table=--no-such-option"]
    first = _bench(bad, subprocess_env, check=False)
    assert first.returncode == 1 and "report/table" in first.stderr
    assert _plan(out)["report/table"]["status"] == "failed" and _plan(out)["report/plot"]["status"] == "done"
    _bench(bad, subprocess_env, check=False)
    assert _plan(out)["report/table"]["attempts"] == 1  # not retried
    _bench([*bad, "--retry-failed"], subprocess_env, check=False)
    assert _plan(out)["report/table"]["attempts"] == 2
    # other options: refused unless --replan
    good = ["reproduce", "--tasks", "none", "--out", str(out), "--quiet-cells"]
    refused = _bench(good, subprocess_env, check=False)
    assert refused.returncode == 2 and "--replan" in refused.stderr
    _bench([*good, "--replan"], subprocess_env)
    assert _plan(out)["report/table"]["status"] == "done"


def test_collect_record_takes_the_record_not_other_json(tmp_path: Path) -> None:
    folder = tmp_path / "transfer" / "cls" / "random" / "seed0"
    folder.mkdir(parents=True)
    (folder / "config.json").write_text('{"lr": 0.001}')
    rec = make_record(
        task="cls",
        protocol_id="p",
        protocol_version=1,
        protocol_description="d",
        dataset="VOC2007",
        train_split="trainval",
        eval_split="test",
        metrics={"mAP": 40.0},
        primary_metric="mAP",
        weights={"source": "random", "method": "random"},
        seed=0,
        config={},
        started_at="2026-01-01T00:00:00Z",
        wall_time_s=1.0,
    )
    write_record(rec, folder)
    cell = {"id": "transfer/cls/random/seed0", "out": str(folder)}
    dest = collect_record(cell, tmp_path)
    assert dest == tmp_path / "records" / "transfer__cls__random__seed0.json"
    assert json.loads(dest.read_text())["metrics"] == {"mAP": 40.0}


@pytest.mark.slow
def test_interrupted_pretraining_cell_resumes_from_its_checkpoint(
    tmp_path: Path, voc_root: Path, image_folder: Path, subprocess_env: dict[str, str]
) -> None:
    """Kill the sweep inside `bench pretrain` after its first checkpoint; the re-run continues that run (--resume)."""
    if not command_available(["pretrain"])[0] or not command_available(["transfer", "--task", "cls"])[0]:
        pytest.skip("bench pretrain / bench transfer --task cls are not part of this build")
    out = tmp_path / "sweep"
    args = [
        sys.executable,
        "-m",
        "benchmarks.cli",
        "reproduce",
        "--tasks",
        "cls",
        "--methods",
        "context-encoder",
        "--voc-root",
        str(voc_root),
        "--data",
        str(image_folder),
        "--out",
        str(out),
        "--quiet-cells",
    ]
    proc = subprocess.Popen(
        args, env=subprocess_env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
    )
    try:
        while proc.poll() is None:
            if any((out / "runs" / "context-encoder").rglob("*.pt")):
                os.killpg(proc.pid, signal.SIGKILL)
                break
            time.sleep(0.05)
    finally:
        proc.wait()
    assert _plan(out)["pretrain/context-encoder"]["status"] == "running"
    subprocess.run(args, env=subprocess_env, check=True, capture_output=True)
    plan = _plan(out)
    assert plan["pretrain/context-encoder"]["status"] == "done" and plan["pretrain/context-encoder"]["attempts"] == 2
    assert plan["transfer/cls/context-encoder/seed0"]["status"] == "done"
    log = (out / "logs" / "pretrain__context-encoder.log").read_text()
    assert "--method context-encoder --seed 0 --resume" in log
    assert not list((out / "runs").glob("*.attempt*"))  # resumed in place, not restarted
    assert (out / "records" / "transfer__cls__context-encoder__seed0.json").exists()


def test_inpainting_cells_evaluate_the_patch_based_baselines_and_feed_the_plot_cell(tmp_path: Path) -> None:
    from benchmarks.reproduce import INPAINT_BASELINES

    out = tmp_path / "sweep"
    cells = build_cells(SweepOptions(out=str(out), data="IMGS", inpaint_eval_images="HELDOUT", tasks=("inpaint",)))
    by_id = {c["id"]: c for c in cells}
    assert {"shiftmap", "fsr-fast"} <= set(INPAINT_BASELINES)
    for name in ["inpainting", *(f"baseline-{b}" for b in INPAINT_BASELINES)]:
        cell = by_id[f"inpaint-eval/{name}"]
        assert cell["makes_record"] and cell["argv"][cell["argv"].index("--images") + 1] == "HELDOUT"
        assert cell["id"] in by_id["report/plot"]["depends_on"]  # the comparison figure is redrawn after it
    for b in INPAINT_BASELINES:
        argv = by_id[f"inpaint-eval/baseline-{b}"]["argv"]
        assert argv[argv.index("--baseline") + 1] == b and command_available(argv)[0]
    plot = by_id["report/plot"]["argv"]
    assert plot[plot.index("--records") + 1] == str(out / "records")  # where the inpaint-eval records are copied


def test_inpaint_baselines_option_chooses_the_table_1_rows(tmp_path: Path) -> None:
    import argparse

    from benchmarks.commands.reproduce import add_arguments, options_from_args
    from benchmarks.reproduce import INPAINT_BASELINES

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    base = ["--out", str(tmp_path / "s"), "--tasks", "inpaint", "--data", "IMGS", "--inpaint-eval-images", "HELDOUT"]
    default = options_from_args(parser.parse_args(base))
    assert isinstance(default, SweepOptions) and default.inpaint_baselines == INPAINT_BASELINES
    assert "ns" in INPAINT_BASELINES  # Navier-Stokes, a target of the 128-px network beside Telea
    chosen = options_from_args(parser.parse_args([*base, "--inpaint-baselines", "telea, mean,telea"]))
    assert isinstance(chosen, SweepOptions) and chosen.inpaint_baselines == ("telea", "mean")
    ids = [c["id"] for c in build_cells(chosen) if c["id"].startswith("inpaint-eval/")]
    assert ids == ["inpaint-eval/inpainting", "inpaint-eval/baseline-telea", "inpaint-eval/baseline-mean"]
    alone = options_from_args(parser.parse_args([*base, "--inpaint-baselines", "none"]))
    assert isinstance(alone, SweepOptions)
    assert [c["id"] for c in build_cells(alone) if c["id"].startswith("inpaint-eval/")] == ["inpaint-eval/inpainting"]
    with pytest.raises(SystemExit, match="nn needs --train-images"):
        options_from_args(parser.parse_args([*base, "--inpaint-baselines", "mean,nn"]))
    with pytest.raises(SystemExit, match="unknown --inpaint-baselines bogus"):
        options_from_args(parser.parse_args([*base, "--inpaint-baselines", "bogus"]))
    with pytest.raises(SystemExit, match=r"unknown --tasks clss \(choose from cls,"):
        options_from_args(parser.parse_args([*base, "--tasks", "inpaint,clss"]))
    with pytest.raises(SystemExit, match="unknown --methods none"):
        options_from_args(parser.parse_args([*base, "--methods", "none"]))
    twice = ["--tasks", "inpaint, inpaint", "--methods", "random,random"]
    repeated = options_from_args(parser.parse_args([*base, *twice]))
    assert isinstance(repeated, SweepOptions) and repeated.tasks == ("inpaint",) and repeated.methods == ("random",)


def test_a_plan_stored_with_the_old_option_names_still_resumes(tmp_path: Path) -> None:
    from benchmarks.reproduce import load_or_create_plan, plan_path, save_plan

    out = tmp_path / "sweep"
    old_args = {"cls": ["--cls-fc-width", "256", "--cls-lr-step=3"], "seg": ["--save-fcn", "--seg-no-flip"]}
    opts = SweepOptions(out=str(out), voc_root="VOC", data="IMGS", tasks=("cls", "seg"), methods=("random",),
                        stage_args=old_args)  # fmt: skip
    plan = load_or_create_plan(opts)
    # the plan as an earlier version wrote it: the old names in every command line, one cell already done
    for cell in plan["cells"]:
        for new, old in (("--fc-width", "--cls-fc-width"), ("--lr-step=3", "--cls-lr-step=3"),
                         ("--save-model", "--save-fcn"), ("--no-flip", "--seg-no-flip")):  # fmt: skip
            cell["argv"] = [old if a == new else a for a in cell["argv"]]
    done = "transfer/cls/random/seed0"
    next(c for c in plan["cells"] if c["id"] == done).update(status="done", attempts=1)
    out.mkdir()
    save_plan(plan, out)
    assert "--cls-fc-width" in plan_path(out).read_text()

    resumed = {c["id"]: c for c in load_or_create_plan(opts)["cells"]}  # same options: no PlanError
    assert resumed[done]["status"] == "done" and resumed[done]["attempts"] == 1
    cls_argv, seg_argv = resumed[done]["argv"], resumed["transfer/seg/random/seed0"]["argv"]
    assert cls_argv[-3:] == ["--fc-width", "256", "--lr-step=3"] and seg_argv[-2:] == ["--save-model", "--no-flip"]
    assert "--cls-fc-width" not in resumed[done]["command"]
    # the commands it will run parse with today's parser
    from benchmarks.cli import build_parser

    for argv in (cls_argv, seg_argv):
        args = build_parser().parse_args(argv)
        assert args.task in ("cls", "seg")
