"""`bench table` rules: bold only beyond the seeds' spread, the standard-error lead mark, LaTeX captions, records
found in a tree of run folders, values outside their range, empty folders, evaluation sets named without paths."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from benchmarks.tables import build_tables, dataset_names, to_latex, to_markdown
from transfer.records import make_record, write_record


def _record(method: str, seed: int | None, value: float, **kw: object) -> dict:
    fields: dict = dict(
        task="cls",
        protocol_id="cls-test",
        protocol_version=1,
        protocol_description="hand-made",
        dataset="VOC2007",
        train_split="trainval",
        eval_split="test",
        primary_metric="mAP",
        metrics={"mAP": value},
        per_class={"AP": {"aeroplane": value}},
        config={"preset": "cpu"},
    )
    fields.update(kw)
    return make_record(
        weights={"source": "hand", "method": method, "sha256": None},
        seed=seed,
        started_at="2026-01-01T00:00:00.000000Z",
        wall_time_s=1.0,
        **fields,
    )


def _write(out: Path, values: dict[str, list[float]], **kw: object) -> Path:
    for method, vals in values.items():
        for seed, v in enumerate(vals):
            write_record(_record(method, seed, v, **kw), out)
    return out


def _table2_entries(folder: Path, **kw: bool) -> dict[str, list]:
    table = build_tables([folder], reported_path=None, **kw).tables[0]
    return {label: entries for label, entries in table.rows}


def _bench(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "benchmarks.cli", "table", *args], capture_output=True, text=True, env=env
    )


# ------------------------------------------------------------------------------------------------------- bold
def test_ties_and_columns_of_zeros_are_never_bold(tmp_path: Path) -> None:
    rows = _table2_entries(_write(tmp_path / "r", {"random": [0.0, 0.0, 0.0], "context-encoder": [0.0, 0.0, 0.0]}))
    assert not any(e.bold for entries in rows.values() for e in entries)
    # equal at the printed precision (and within the spread): a tie, not bold
    rows = _table2_entries(_write(tmp_path / "s", {"random": [50.01, 50.02, 50.0], "autoencoder": [50.0, 50.0, 50.03]}))
    assert not any(e.bold for entries in rows.values() for e in entries)


def test_best_is_bold_only_when_ahead_beyond_both_spreads(tmp_path: Path) -> None:
    # context encoder 55 ± 5 vs random 53 ± 1: ahead by 2, spreads sum to 6 -> not bold
    rows = _table2_entries(
        _write(tmp_path / "a", {"random": [52.0, 53.0, 54.0], "context-encoder": [50.0, 60.0, 55.0]})
    )
    assert not rows["Context encoder"][0].bold and not rows["Random Gaussian"][0].bold
    # 60 ± 1 vs 53 ± 1: ahead by 7 > 2 -> bold, and only the best
    rows = _table2_entries(
        _write(tmp_path / "b", {"random": [52.0, 53.0, 54.0], "context-encoder": [59.0, 60.0, 61.0]})
    )
    assert rows["Context encoder"][0].bold and not rows["Random Gaussian"][0].bold
    # the runner-up is what counts: a third, worse row does not make a close lead bold
    rows = _table2_entries(
        _write(
            tmp_path / "c",
            {"random": [10.0, 11.0, 12.0], "autoencoder": [58.0, 59.0, 60.0], "context-encoder": [59.0, 60.0, 61.0]},
        )
    )
    assert not any(e.bold for entries in rows.values() for e in entries)


def test_lower_is_better_columns_and_the_rule_in_the_footnote(tmp_path: Path) -> None:
    out = tmp_path / "r"
    for method, l2 in (("baseline-mean", 5.0), ("baseline-telea", 3.0)):
        rec = _record(
            method,
            None,
            0.0,
            task="inpaint",
            train_split=None,
            primary_metric="PSNR_hole",
            metrics={"L2_hole": l2, "PSNR_hole": 30.0},
            per_class={},
        )
        write_record(rec, out)
    table1 = next(t for t in build_tables([out], reported_path=None).tables if t.name == "table1")
    rows = dict(table1.rows)
    l2_col = next(i for i, h in enumerate(table1.columns) if h.startswith("L2_hole"))
    psnr_col = next(i for i, h in enumerate(table1.columns) if h.startswith("PSNR_hole"))
    assert rows["Telea (OpenCV)"][l2_col].bold and not rows["Mean fill"][l2_col].bold  # lower L2 is better
    assert not rows["Telea (OpenCV)"][psnr_col].bold and not rows["Mean fill"][psnr_col].bold  # a tie
    assert any("ahead of the runner-up by more than the spread of both" in f for f in table1.footnotes)


def test_lead_se_marks_a_lead_beyond_the_combined_standard_error(tmp_path: Path) -> None:
    # 55 ± 2 vs 53 ± 1 (n=3): lead 2 < 2 + 1 (not bold) but > sqrt(4/3 + 1/3) = 1.29 (marked)
    folder = _write(tmp_path / "a", {"random": [52.0, 53.0, 54.0], "context-encoder": [53.0, 55.0, 57.0]})
    rows = _table2_entries(folder, lead_se=True)
    best = rows["Context encoder"][0]
    assert not best.bold and best.lead and best.text.endswith("†")
    assert not rows["Random Gaussian"][0].lead
    table = build_tables([folder], reported_path=None, lead_se=True).tables[0]
    assert any("combined standard error" in f for f in table.footnotes)
    assert "$^\\dagger$" in to_latex(table) and "†" not in to_latex(table)
    assert not _table2_entries(folder)["Context encoder"][0].lead  # only when asked
    # 54 ± 2 vs 53 ± 1: lead 1 < 1.29 -> no mark
    rows = _table2_entries(
        _write(tmp_path / "b", {"random": [52.0, 53.0, 54.0], "context-encoder": [52.0, 54.0, 56.0]}), lead_se=True
    )
    assert not rows["Context encoder"][0].lead and "†" not in rows["Context encoder"][0].text


def test_every_measured_cell_shows_its_number_of_seeds(tmp_path: Path) -> None:
    folder = _write(tmp_path / "r", {"random": [50.0, 51.0, 52.0], "context-encoder": [60.0, 61.0]})
    # the third context-encoder seed has no aeroplane AP, so its per-class cell has fewer seeds than the header says
    rec = _record("context-encoder", 2, 62.0, per_class={"AP": {"bicycle": 62.0}})
    write_record(rec, folder)
    tables = build_tables([folder], reported_path=None).tables
    assert [e.text.split(" (")[-1] for e in dict(tables[0].rows)["Context encoder"]] == ["n=3)"]
    per_class = next(t for t in tables if t.name.startswith("per_class"))
    assert per_class.columns == ["Random Gaussian (n=3)", "Context encoder (n=3)"]
    assert dict(per_class.rows)["aeroplane"][1].text == "60.5 (n=2)"
    assert dict(per_class.rows)["bicycle"][1].text == "62.0 (n=1)"


# ------------------------------------------------------------------------------------------------------ LaTeX
def test_latex_caption_leaves_the_numbering_to_latex(tmp_path: Path) -> None:
    folder = _write(tmp_path / "r", {"random": [50.0], "context-encoder": [60.0]})
    table2 = build_tables([folder]).tables[0]
    tex = to_latex(table2)
    caption = next(line for line in tex.splitlines() if "\\caption" in line)
    assert caption == "\\caption{Transfer to PASCAL VOC}\\label{tab:table2}"
    assert "Table 2" in tex.splitlines()[0]  # the comment still says which of the paper's tables this is
    assert to_markdown(table2).startswith("### Table 2: transfer to PASCAL VOC\n")


# ---------------------------------------------------------------------------------------------- finding records
def test_records_found_anywhere_in_a_tree_other_json_passed_over(
    tmp_path: Path, subprocess_env: dict[str, str]
) -> None:
    runs = tmp_path / "runs"
    for i, (method, value) in enumerate((("random", 50.0), ("context-encoder", 60.0))):
        folder = runs / "sweep" / "transfer" / "cls" / method / f"seed{i}"
        folder.mkdir(parents=True)
        for name, content in (
            ("config.json", {"lr": 0.001, "preset": "cpu"}),
            ("env.json", {"python": "3.11"}),
            ("summary.json", {"mAP": value}),
        ):
            (folder / name).write_text(json.dumps(content))
        path = write_record(_record(method, 0, value), folder)
        # bench reproduce keeps a byte-identical copy in <out>/records/
        (runs / "sweep" / "records").mkdir(exist_ok=True)
        (runs / "sweep" / "records" / f"transfer__cls__{method}.json").write_bytes(path.read_bytes())
    (runs / "sweep" / "plan.json").write_text(json.dumps({"cells": []}))
    (runs / "sweep" / "list.json").write_text("[1, 2]")
    proc = _bench([str(runs), "--out", str(tmp_path / "out"), "--strict"], subprocess_env)
    assert proc.returncode == 0, proc.stderr
    assert "invalid" not in proc.stderr.replace("0 left out as invalid", "")
    assert "duplicate" not in proc.stderr
    assert "2 records used" in proc.stderr and "8 other JSON files passed over" in proc.stderr
    md = (tmp_path / "out" / "table2.md").read_text()
    assert "| Random Gaussian | 50.0 (n=1) |" in md and "| Context encoder | 60.0 (n=1) |" in md


def test_truncated_record_and_named_non_record_are_invalid(tmp_path: Path, subprocess_env: dict[str, str]) -> None:
    folder = _write(tmp_path / "r", {"random": [50.0]})
    (folder / "cut.json").write_text('{"schema": "context-encoders-bench/run-rec')
    config = tmp_path / "config.json"
    config.write_text('{"lr": 0.1}')
    proc = _bench([str(folder), str(config), "--out", str(tmp_path / "out")], subprocess_env)
    assert proc.returncode == 0
    assert "cut.json: cannot read as JSON" in proc.stderr
    assert f"{config}: not a run record" in proc.stderr


def test_value_outside_its_range_is_refused_naming_the_record(tmp_path: Path, subprocess_env: dict[str, str]) -> None:
    folder = _write(tmp_path / "r", {"random": [50.0, 51.0]})
    bad_map = _record("context-encoder", 0, 50.0)
    bad_map["metrics"]["mAP"] = 563.0  # a fraction multiplied by 100 twice, say
    write_record(bad_map, folder, name="too_high.json")
    bad_iou = _record("context-encoder", 1, 50.0)
    bad_iou["per_class"]["AP"]["aeroplane"] = -3.0
    write_record(bad_iou, folder, name="negative.json")
    fine = _record("autoencoder", 0, 50.0)
    fine["metrics"]["loss_last"] = 250.0  # not a percentage: no range
    write_record(fine, folder, name="fine.json")
    proc = _bench([str(folder), "--out", str(tmp_path / "out")], subprocess_env)
    assert proc.returncode == 0
    assert "too_high.json: mAP is 563.0, outside [0, 100]" in proc.stderr
    assert "negative.json: AP['aeroplane'] is -3.0, outside [0, 100]" in proc.stderr
    assert "fine.json" not in proc.stderr
    md = (tmp_path / "out" / "table2.md").read_text()
    assert "Context encoder" not in md.split("[reported]")[0] and "| Autoencoder | 50.0 (n=1) |" in md
    strict = _bench([str(folder), "--out", str(tmp_path / "o2"), "--strict"], subprocess_env)
    assert strict.returncode == 1


def test_empty_folder_is_an_error(tmp_path: Path, subprocess_env: dict[str, str]) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    proc = _bench([str(empty), "--out", str(tmp_path / "out")], subprocess_env)
    assert proc.returncode == 1
    assert f"found no run records under {empty}" in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "out").exists()
    # a run folder without its record: the other JSON files are named as what they are
    (empty / "config.json").write_text("{}")
    proc = _bench([str(empty), "--out", str(tmp_path / "out")], subprocess_env)
    assert proc.returncode == 1 and "1 other JSON files that are not run records" in proc.stderr
    allowed = _bench([str(empty), "--out", str(tmp_path / "out"), "--allow-empty"], subprocess_env)
    assert allowed.returncode == 0 and (tmp_path / "out" / "table2.md").exists()


# ----------------------------------------------------------------------------------------- evaluation set names
def test_footnotes_name_folders_without_the_users_path(tmp_path: Path) -> None:
    out = tmp_path / "records"
    images = tmp_path / "home" / "someone" / "photos" / "heldout"
    for method in ("baseline-mean", "baseline-telea"):
        rec = _record(
            method,
            None,
            0.0,
            task="inpaint",
            dataset="heldout",
            train_split=None,
            eval_split=str(images),
            primary_metric="PSNR_hole",
            metrics={"PSNR_hole": 20.0 if method == "baseline-mean" else 25.0},
            per_class={},
        )
        write_record(rec, out)
    tables = build_tables([out])
    table1 = next(t for t in tables.tables if t.name == "table1")
    text = "\n".join(table1.footnotes) + to_latex(table1) + "".join(str(r) for r in table1.csv_rows)
    assert str(tmp_path) not in text and "someone" not in text
    assert "heldout" in table1.footnotes[0]


def test_dataset_names_tell_folders_with_one_name_apart() -> None:
    names = dataset_names(["/data/a/heldout", "/data/b/heldout", "/mnt/paris", "VOC2007", "C:\\x\\y\\test"])
    assert names == {
        "/data/a/heldout": "a/heldout",
        "/data/b/heldout": "b/heldout",
        "/mnt/paris": "paris",
        "VOC2007": "VOC2007",
        "C:\\x\\y\\test": "test",
    }


def test_per_class_background_first(tmp_path: Path) -> None:
    out = tmp_path / "r"
    iou = {"aeroplane": 10.0, "background": 80.0, "bicycle": 5.0, "cat": 7.0}  # as JSON sorts the keys
    for method in ("random", "context-encoder"):
        rec = _record(
            method,
            0,
            20.0,
            task="seg",
            dataset="VOC2012",
            eval_split="val",
            primary_metric="mIoU",
            metrics={"mIoU": 20.0},
            per_class={"IoU": iou},
        )
        write_record(rec, out)
    per_class = next(t for t in build_tables([out], reported_path=None).tables if t.name.startswith("per_class"))
    assert [label for label, _ in per_class.rows] == ["background", "aeroplane", "bicycle", "cat", "mean"]
