"""`bench table` on hand-made records: mean/std/n, bold, reported rows, footnotes, LaTeX, determinism, bad records."""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks.tables import build_tables, to_latex, write_tables
from transfer.records import make_record, write_record

CLS = {"random": [50.0, 52.0, 51.0], "autoencoder": [53.0, 54.0], "context-encoder": [56.0, 57.5, 58.0]}


def _record(task: str, method: str, seed: int | None, value: float, **kw: object) -> dict:
    defaults: dict = dict(
        protocol_id=f"{task}-test",
        protocol_version=1,
        protocol_description="hand-made",
        dataset="VOC2007",
        train_split="trainval",
        eval_split="test",
        primary_metric="mAP",
        config={"preset": "smoke"},
    )
    defaults.update(kw)
    metric = defaults["primary_metric"]
    return make_record(
        task=task,
        weights={"source": "hand", "method": method, "sha256": None},
        seed=seed,
        metrics={metric: value, "mAP_other": 0.0} if metric != "mAP_other" else {metric: value},
        started_at="2026-01-01T00:00:00.000000Z",
        wall_time_s=1.0,
        per_class={"AP": {"aeroplane": value + 2, "bicycle": value - 2}},
        **defaults,
    )


@pytest.fixture()
def records(tmp_path: Path) -> Path:
    out = tmp_path / "records"
    for method, values in CLS.items():
        for seed, v in enumerate(values):
            write_record(_record("cls", method, seed, v), out)
    # segmentation, one seed each
    for method, v in (("random", 20.0), ("context-encoder", 30.0)):
        write_record(_record("seg", method, 0, v, dataset="VOC2012", eval_split="val", primary_metric="mIoU"), out)
    return out


def _row(md: str, label: str) -> list[str]:
    line = next(x for x in md.splitlines() if x.startswith(f"| {label} |"))
    return [c.strip() for c in line.strip("|").split("|")]


def test_table2_cells_bold_reported_footnotes(records: Path, tmp_path: Path) -> None:
    tables = build_tables([records])
    write_tables(tables, tmp_path / "out")
    md = (tmp_path / "out" / "table2.md").read_text()
    header = _row(md, "pretraining")
    assert header[1:] == ["cls mAP [a]", "det mAP [b]", "seg mIoU [c]"]
    ce = _row(md, "Context encoder")
    mean, std = statistics.mean(CLS["context-encoder"]), statistics.stdev(CLS["context-encoder"])
    assert ce[1] == f"**{mean:.1f} ± {std:.1f} (n=3)**"  # best cls mean, ahead beyond both spreads: bold
    assert _row(md, "Autoencoder")[1] == "53.5 ± 0.7 (n=2)"
    assert _row(md, "Random Gaussian")[1] == "51.0 ± 1.0 (n=3)"
    # one seed each: the spread is unknown, so nothing is bold however far apart the means are
    assert ce[3] == "30.0 (n=1)" and _row(md, "Random Gaussian")[3] == "20.0 (n=1)"
    # reported rows: in the matching measured columns, own column for det, never bold
    assert _row(md, "Context encoder [reported]")[1:] == ["56.5", "44.5", "30.0"]
    assert _row(md, "Wang et al. [reported]")[1:] == ["58.7", "47.4", "–"]
    assert "**" not in "".join(_row(md, "ImageNet [reported]"))
    assert "[a] task cls: protocol cls-test v1, preset smoke; VOC2007 trainval -> test; metric mAP" in md
    assert "[c] task seg: protocol seg-test v1, preset smoke; VOC2012 trainval -> val; metric mIoU" in md
    assert "[b] reported only" in md
    csv_text = (tmp_path / "out" / "table2.csv").read_text()
    assert (
        "table2,measured,context-encoder,Context encoder,cls,cls-test,1,smoke,VOC2007,trainval,test,mAP,3," in csv_text
    )
    per_class = next(p for p in (tmp_path / "out").glob("per_class_cls*.md")).read_text()
    assert _row(per_class, "aeroplane")[3] == f"**{mean + 2:.1f}**"
    assert "and classes with one measured method are never bold" in per_class  # the rule's plural, in words
    assert "and columns with one measured method are never bold" in md


def test_ci_option_uses_student_t(records: Path) -> None:
    from scipy.stats import t

    md = build_tables([records], ci=True).tables[0]
    vals = CLS["random"]
    half = t.ppf(0.975, 2) * statistics.stdev(vals) / 3**0.5
    assert md.rows[0][1][0].text == f"51.0 ± {half:.1f} (n=3)"


def test_latex_booktabs(records: Path) -> None:
    tex = to_latex(build_tables([records]).tables[0])
    for rule in ("\\toprule", "\\midrule", "\\bottomrule", "\\begin{tabular}{lrrr}", "\\end{tabular}"):
        assert rule in tex
    assert "\\textbf{57.2 $\\pm$ 1.0 (n=3)}" in tex
    assert tex.count("\\begin{") == tex.count("\\end{")
    body = tex.split("\\midrule", 1)[1].split("\\bottomrule")[0]
    rows = [line for line in body.strip().splitlines() if line != "\\midrule"]
    for line in rows:  # every row has the header's number of columns and ends with \\
        assert line.endswith("\\\\") and line.count("&") == 3
    assert len(rows) == 3 + 7  # measured methods + the paper's rows
    assert body.count("\\midrule") == 1  # one rule between measured and reported rows
    assert "±" not in tex and "_" not in tex.replace("\\_", "")


def test_byte_identical_regeneration(records: Path, tmp_path: Path) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    write_tables(build_tables([records]), a)
    # the same records, found in another order (copied in reverse), give the same bytes
    copy = tmp_path / "copy"
    copy.mkdir()
    for p in sorted(records.iterdir(), reverse=True):
        (copy / p.name).write_bytes(p.read_bytes())
    write_tables(build_tables([copy]), b)
    names = sorted(p.name for p in a.iterdir())
    assert names == sorted(p.name for p in b.iterdir()) and len(names) >= 10
    for name in names:
        assert (a / name).read_bytes() == (b / name).read_bytes(), name


def test_protocol_versions_never_share_a_cell(tmp_path: Path) -> None:
    out = tmp_path / "records"
    write_record(_record("cls", "context-encoder", 0, 50.0, protocol_version=1), out)
    write_record(_record("cls", "context-encoder", 1, 60.0, protocol_version=2), out)
    write_record(_record("cls", "context-encoder", 2, 70.0, protocol_version=2, config={"preset": "paper"}), out)
    table = build_tables([out], reported_path=None).tables[0]
    assert len(table.columns) == 3
    assert sorted(e.text for e in table.rows[0][1]) == ["50.0 (n=1)", "60.0 (n=1)", "70.0 (n=1)"]
    assert any("cls-test v2, preset paper" in f for f in table.footnotes)


def test_invalid_record_named_and_left_out(records: Path, tmp_path: Path, subprocess_env: dict[str, str]) -> None:
    bad = records / "cls_context-encoder_seed9.json"
    rec = _record("cls", "context-encoder", 9, 0.0)
    del rec["primary_metric"]
    bad.write_text(json.dumps(rec))
    (records / "truncated.json").write_text('{"schema": "context-enc')
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks.cli", "table", str(records), "--out", str(tmp_path / "out")],
        capture_output=True,
        text=True,
        env=subprocess_env,
        check=True,
    )
    assert "cls_context-encoder_seed9.json" in proc.stderr and "primary_metric" in proc.stderr
    assert "truncated.json" in proc.stderr
    assert "n=3" in _row((tmp_path / "out" / "table2.md").read_text(), "Context encoder")[1]  # not mixed in
    strict = subprocess.run(
        [sys.executable, "-m", "benchmarks.cli", "table", str(records), "--out", str(tmp_path / "o2"), "--strict"],
        capture_output=True,
        text=True,
        env=subprocess_env,
    )
    assert strict.returncode == 1


def test_duplicate_seed_is_not_averaged(records: Path) -> None:
    write_record(_record("cls", "random", 0, 90.0), records)  # same method/column/seed, written later
    tables = build_tables([records])
    assert tables.tables[0].rows[0][1][0].n == 3
    assert tables.loaded.duplicates and "cls_random_seed0.json" in tables.loaded.duplicates[0]


def test_table1_inpainting(tmp_path: Path) -> None:
    out = tmp_path / "records"
    for method, l2 in (("mean", 5.0), ("telea", 3.0)):
        write_record(
            make_record(
                task="inpaint",
                protocol_id="inpaint-center",
                protocol_version=1,
                protocol_description="d",
                dataset="images",
                train_split=None,
                eval_split="heldout",
                primary_metric="psnr",
                metrics={"l1": l2 * 3, "l2": l2, "psnr": 20 - l2},
                weights={"source": "-", "method": method},
                seed=None,
                config={},
                started_at="2026-01-01T00:00:00Z",
                wall_time_s=1.0,
            ),
            out,
        )
    table1 = build_tables([out]).tables[1]
    assert table1.name == "table1"
    telea = dict(table1.rows)["telea"]
    # deterministic evaluations (no seed) have no spread: the best is bold (lowest L1/L2, highest PSNR)
    assert [e.bold for e in telea] == [True, True, True]
    reported = dict(table1.rows)["Context encoder (joint loss) [reported]"]
    assert [e.text for e in reported] == ["9.37", "1.96", "18.58"]


def test_svm_primary_layer_is_part_of_the_column(tmp_path: Path) -> None:
    """svm records whose primary mAP is another layer's never share a cell; per-class uses that layer's AP."""
    out = tmp_path / "records"
    for seed, layer, value in ((0, "conv5", 40.0), (1, "conv5", 42.0), (0, "conv4", 45.0)):
        rec = make_record(
            task="svm",
            protocol_id="voc07-svm",
            protocol_version=1,
            protocol_description="d",
            dataset="VOC2007",
            train_split="trainval",
            eval_split="test",
            primary_metric="mAP",
            metrics={"mAP": value, f"mAP_{layer}": value, "mAP_conv1": 10.0},
            per_class={f"AP_{layer}": {"cat": value}, "AP_conv1": {"cat": 10.0}},
            weights={"source": "-", "method": "context-encoder"},
            seed=seed,
            config={"preset": "smoke", "primary_layer": layer},
            started_at="2026-01-01T00:00:00Z",
            wall_time_s=1.0,
        )
        write_record(rec, out, name=f"svm_{layer}_{seed}.json")
    tables = build_tables([out], reported_path=None)
    table2 = tables.tables[0]
    assert sorted(e.text for e in table2.rows[0][1]) == ["41.0 ± 1.4 (n=2)", "45.0 (n=1)"]
    assert any("primary_layer=conv4" in f for f in table2.footnotes)
    per_class = [t for t in tables.tables if t.name.startswith("per_class")]
    assert sorted(t.title.split(":")[0] for t in per_class) == ["Per-class AP_conv4", "Per-class AP_conv5"]
