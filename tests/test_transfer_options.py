"""`bench transfer` options: generated per task from the protocol configs, preset values in the help, foreign and
renamed options refused with a message naming them, and a non-finite loss ending in one line, not a traceback."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks.cli import COMMANDS, main
from benchmarks.commands.transfer import RENAMED_OPTIONS, TASKS, task_module
from benchmarks.options import option_names
from transfer.config import TransferRun, knobs


def _help(task: str, capsys: pytest.CaptureFixture[str]) -> str:
    with pytest.raises(SystemExit) as info:
        main(["transfer", "--task", task, "--help"])
    assert info.value.code == 0
    return capsys.readouterr().out


@pytest.mark.parametrize("task", list(TASKS))
def test_help_of_a_task_lists_its_options_with_every_preset_value(task: str, capsys: pytest.CaptureFixture) -> None:
    text = _help(task, capsys)
    module = task_module(task)
    flat = " ".join(text.split())  # argparse wraps help lines
    for name in option_names(module.CONFIG) + option_names(TransferRun):
        assert name in text, name
    others = {n for t in TASKS if t != task for n in option_names(task_module(t).CONFIG)}
    for name in others - set(option_names(module.CONFIG)):
        assert f"{name} " not in text and f"{name}," not in text, f"{name} of another task in --task {task} --help"
    preset_knobs = {k for values in module.PRESETS.values() for k in values}
    for f in knobs(module.CONFIG):
        if f.name in preset_knobs:
            shown = ", ".join(f"{p}: {_shown(v.get(f.name))}" for p, v in module.PRESETS.items())
            assert f"({shown})" in flat, (f.name, shown)
    # one value note per option: no "(default: None)", no default shown twice
    assert "(default: None)" not in text
    notes = flat.count("(default: ") + flat.count("(paper: ") + flat.count("(required)")
    assert notes == len(knobs(module.CONFIG)) + len(knobs(TransferRun))
    assert "add_arguments" not in text and "run(args" not in text


@pytest.mark.parametrize("command", sorted(set(COMMANDS) - {"transfer"}))
def test_help_of_every_other_command_shows_a_default_once_and_never_none(
    command: str, capsys: pytest.CaptureFixture
) -> None:
    with pytest.raises(SystemExit) as info:
        main([command, "--help"])
    assert info.value.code == 0
    flat = " ".join(capsys.readouterr().out.split())
    assert "(default: None)" not in flat and "(default: False)" not in flat
    for option in flat.split(" --")[1:]:  # the text of each option up to the next
        assert option.count("(default: ") <= 1, option


def _shown(value: object) -> str:
    if isinstance(value, bool):
        return "on" if value else "off"
    return str(value)


def _base(tmp_path: Path, task: str) -> list[str]:
    return ["transfer", "--task", task, "--voc-root", str(tmp_path), "--weights", "random", "--out", str(tmp_path)]


def test_an_option_of_another_task_is_refused_by_name(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as info:
        main([*_base(tmp_path, "seg"), "--scale", "600"])
    err = capsys.readouterr().err
    assert info.value.code == 2 and "--scale is not an option of --task seg" in err
    with pytest.raises(SystemExit):
        main([*_base(tmp_path, "seg"), "--det-scale", "600"])
    assert "--det-scale is not an option of --task seg" in capsys.readouterr().err


@pytest.mark.parametrize("task", list(TASKS))
def test_an_old_option_name_says_its_new_name(task: str, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    names = set(option_names(task_module(task).CONFIG))
    for old, new in RENAMED_OPTIONS[task].items():
        assert new in names, (old, new)
        with pytest.raises(SystemExit):
            main([*_base(tmp_path, task), old])
        assert f"{old} is now called {new}" in capsys.readouterr().err


def test_a_value_given_wins_over_the_preset() -> None:
    from benchmarks.cli import build_parser
    from benchmarks.options import given_values
    from transfer.config import config_from_preset
    from transfer.detection.config import PRESETS, DetectionConfig

    args = build_parser().parse_args(["transfer", "--task", "det", "--voc-root", "V", "--weights", "random",
                                      "--out", "O", "--preset", "smoke", "--fc-width", "64"])  # fmt: skip
    cfg = config_from_preset(DetectionConfig, PRESETS, "smoke", given_values(args, DetectionConfig))
    assert cfg.fc_width == 64 and cfg.iterations == PRESETS["smoke"]["iterations"] and cfg.nms == 0.3


@pytest.mark.parametrize("task", ["cls", "seg"])
def test_a_loss_that_goes_non_finite_ends_in_one_line(
    task: str, voc_root: Path, tmp_path: Path, subprocess_env: dict[str, str]
) -> None:
    argv = [sys.executable, "-m", "benchmarks.cli", *_base(voc_root, task)[:-1], str(tmp_path / "out")]
    argv += ["--preset", "smoke", "--iterations", "4", "--lr", "1e30", "--device", "cpu"]
    proc = subprocess.run(argv, env=subprocess_env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 1, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("error: non-finite training loss") and "at iteration" in last and "--lr" in last
