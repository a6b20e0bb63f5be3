"""Run records -> the paper's tables (Table 2 transfer, Table 1 inpainting, per-class AP/IoU) as markdown, LaTeX, CSV.

Everything here is a pure function of the record files and ``results/reported.json``: records are sorted, numbers are
formatted with a fixed number of decimals and no timestamps are written, so the same records always give
byte-identical outputs (docs/architecture.md, "Records, not logs").

Honesty rules:

* a column is one ``Column`` = (task, protocol id, protocol version, preset, dataset, train split, eval split,
  metric); records that differ in any of these never share a cell;
* a cell is the mean ± sample standard deviation (ddof=1) over seeds with ``n`` shown, or the mean ± the half-width
  of a two-sided 95% Student-t confidence interval with ``ci=True``; several records for the same method, column and
  seed are not averaged: the one that ended last is used and the others are named on stderr;
* the best measured mean of a column is bold only when it is ahead of the runner-up by more than both their spreads
  (``BOLD_RULE``); ties, single-seed cells and columns of one method are never bold; reported numbers are never bold
  and are labelled "[reported]";
* run records are recognised by their ``schema`` marker, so a whole tree of run folders can be given: other JSON
  files (``config.json``, ``summary.json``, ``plan.json``...) are passed over, byte-identical copies of a record
  count once;
* an invalid record (``read_record`` raises ``RecordError``, or a metric outside its possible range) is named on
  stderr and left out;
* evaluation sets are named by their name, never by the absolute path of the user's folder (``dataset_names``).
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import math
import re
import statistics
import sys
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from transfer.records import RECORD_SCHEMA, RecordError, find_records, read_record
from transfer.voc import SEG_CLASSES

REPORTED_PATH = Path(__file__).resolve().parent.parent / "results" / "reported.json"
REPORTED_FORMAT_VERSION = 1

#: display order and labels of the methods the suite trains itself
METHOD_LABELS: dict[str, str] = {
    "random": "Random Gaussian",
    "autoencoder": "Autoencoder",
    "context-encoder": "Context encoder",
    # Table 1 (bench inpaint-eval): baselines without training, then the 128-px inpainting network
    "baseline-mean": "Mean fill",
    "baseline-telea": "Telea (OpenCV)",
    "baseline-ns": "Navier-Stokes (OpenCV)",
    "baseline-biharmonic": "Biharmonic (scikit-image)",
    "baseline-shiftmap": "Shift-map (OpenCV xphoto)",
    "baseline-fsr-fast": "FSR, fast (OpenCV xphoto)",
    "baseline-fsr-best": "FSR, best (OpenCV xphoto)",
    "baseline-nn": "NN-inpainting (HOG features)",
    "inpainting": "Context encoder (joint loss)",
    "inpainting-l2": "Context encoder (L2 loss)",
}
#: display order of the transfer tasks in Table 2
TASK_ORDER = ("cls", "svm", "det", "seg")
DECIMALS = 1
#: Table 1 prints two decimals in the paper
TABLE1_DECIMALS = 2
INPAINT_TASK = "inpaint"
#: record ``config`` keys that change what a protocol's primary metric measures; records that differ in them never
#: share a cell (svm: the layer whose mAP is the primary metric)
VARIANT_KEYS = ("primary_layer",)
#: the bold rule, as the footnotes state it (``{line}``, ``{lines}``: "column(s)", "class(es)" per class)
BOLD_RULE = (
    "bold: the best measured mean of a {line}, only where it is ahead of the runner-up by more than the spread of "
    "both (best - its spread > runner-up + its spread, reversed where lower is better); ties, single-seed cells "
    "(unknown spread; cells of deterministic evaluations without a seed have none) and {lines} with one measured "
    "method are never bold"
)
#: metric name parts (split at "_") whose values are percentages, so must lie in [0, 100]
PERCENT_METRIC_PARTS = frozenset({"ap", "map", "iou", "miou", "fwiou", "acc", "accuracy", "l1", "l2"})
#: the lead marker of ``lead_se`` and what it means
LEAD_MARK = "†"
LEAD_RULE = (
    f"{LEAD_MARK}: the best row is ahead of the next by more than their combined standard error sqrt(sd1²/n1 + sd2²/n2)"
)


@dataclass(frozen=True, order=True)
class Column:
    """Everything that must agree for two numbers to be comparable (and so to share a table cell)."""

    task: str
    protocol_id: str
    protocol_version: int
    preset: str
    dataset: str
    train_split: str
    eval_split: str
    metric: str
    variant: str = ""  # options that change what the primary metric measures (VARIANT_KEYS), e.g. "primary_layer=conv5"

    def sort_key(self) -> tuple[Any, ...]:
        rank = TASK_ORDER.index(self.task) if self.task in TASK_ORDER else len(TASK_ORDER)
        return (
            rank,
            self.task,
            self.dataset,
            self.eval_split,
            self.protocol_id,
            self.protocol_version,
            self.preset,
            self.train_split,
            _metric_rank(self.metric),
            self.metric,
        )

    def describe(self) -> str:
        """The column's footnote text (give it the column of ``display_columns`` to name folders by name)."""
        preset = f", preset {self.preset}" if self.preset else ""
        preset += f", {self.variant}" if self.variant else ""
        train = f"{self.train_split} -> " if self.train_split else ""
        return (
            f"task {self.task}: protocol {self.protocol_id} v{self.protocol_version}{preset}; "
            f"{self.dataset} {train}{self.eval_split}; metric {self.metric}"
        )


@dataclass
class LoadedRecords:
    """Valid records (with their file names), the files left out with the reason, the JSON files that are not run
    records (passed over) and the byte-identical copies of a record that were counted once (copy, kept file)."""

    records: list[tuple[Path, dict[str, Any]]] = field(default_factory=list)
    invalid: list[tuple[Path, str]] = field(default_factory=list)
    duplicates: list[str] = field(default_factory=list)
    passed_over: list[Path] = field(default_factory=list)
    copies: list[tuple[Path, Path]] = field(default_factory=list)


def metric_range_errors(record: dict[str, Any]) -> list[str]:
    """Values no correct run can produce: percentages (AP, IoU, accuracy, L1/L2 error) outside [0, 100] and a
    negative PSNR (images in [0, 1] have a mean squared error of at most 1)."""
    errors = []
    values = [(name, name, v) for name, v in record["metrics"].items()]
    values += [
        (name, f"{name}[{cls!r}]", v) for name, by_class in record["per_class"].items() for cls, v in by_class.items()
    ]
    for name, where, value in values:
        parts = set(name.lower().split("_"))
        if parts & PERCENT_METRIC_PARTS and not 0.0 <= value <= 100.0:
            errors.append(f"{where} is {value}, outside [0, 100] (values are stored in percent)")
        elif "psnr" in parts and value < 0.0:
            errors.append(f"{where} is {value} dB, below 0 (images in [0, 1] cannot give a negative PSNR)")
    return errors


def _is_run_record(data: Any) -> bool:
    return isinstance(data, dict) and data.get("schema") == RECORD_SCHEMA


def load_records(paths: Sequence[str | Path]) -> LoadedRecords:
    """Read the run records under ``paths`` (folders searched recursively for ``*.json``, or files).

    A JSON file found in a folder is a run record when it carries the record schema marker; other JSON files of run
    folders (``config.json``, ``summary.json``, ``plan.json``...) are passed over. A file given by name must be a
    record. Unreadable JSON (e.g. a record truncated by a crash) and records that fail the schema or hold values
    outside their possible range are kept aside with the reason; a byte-identical copy of a record (``bench
    reproduce`` keeps one in the run folder and one in ``records/``) counts once."""
    out = LoadedRecords()
    named_files = {Path(p) for p in paths if Path(p).is_file()}
    seen: dict[str, Path] = {}
    for path in find_records(list(paths)):
        try:
            data = json.loads(path.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            out.invalid.append((path, f"{path}: cannot read as JSON ({exc})"))
            continue
        if not _is_run_record(data):
            if path in named_files:
                out.invalid.append((path, f'{path}: not a run record (no "schema": "{RECORD_SCHEMA}")'))
            else:
                out.passed_over.append(path)
            continue
        try:
            record = read_record(path)
        except RecordError as exc:
            out.invalid.append((path, str(exc)))
            continue
        errors = metric_range_errors(record)
        if errors:
            out.invalid.append((path, f"{path}: " + "; ".join(errors)))
            continue
        identity = json.dumps(record, sort_keys=True)
        if identity in seen:
            out.copies.append((path, seen[identity]))
            continue
        seen[identity] = path
        out.records.append((path, record))
    return out


def _metric_rank(metric: str) -> int:
    m = metric.lower()
    for i, key in enumerate(("l1", "l2", "psnr")):
        if key in m:
            return i
    return 3


def higher_is_better(metric: str) -> bool:
    """AP, IoU, accuracy and PSNR: higher is better; L1/L2 errors and losses: lower is better."""
    m = metric.lower()
    return not (re.search(r"(^|[^a-z])l[12]([^a-z0-9]|$)", m) or any(k in m for k in ("loss", "error", "mse", "mae")))


def method_of(record: dict[str, Any]) -> str:
    return str(record["weights"]["method"])


def method_label(method: str) -> str:
    return METHOD_LABELS.get(method, method)


def method_sort_key(method: str) -> tuple[int, str]:
    order = list(METHOD_LABELS)
    return (order.index(method), method) if method in order else (len(order), method)


def column_of(record: dict[str, Any], metric: str) -> Column:
    preset = record["config"].get("preset")
    return Column(
        task=record["task"],
        protocol_id=record["protocol"]["id"],
        protocol_version=int(record["protocol"]["version"]),
        preset=str(preset) if preset is not None else "",
        dataset=record["dataset"],
        train_split=record["train_split"] or "",
        eval_split=record["eval_split"],
        metric=metric,
        variant=";".join(f"{k}={record['config'][k]}" for k in VARIANT_KEYS if record["config"].get(k) is not None),
    )


def _path_parts(text: str) -> tuple[str, ...]:
    """The components of a folder path without its root or drive; a plain name is one component."""
    if "/" not in text and "\\" not in text:
        return (text,)
    parts = tuple(p for p in re.split(r"[/\\]+", text) if p and not p.endswith(":"))
    return parts or (text,)


def dataset_names(texts: Iterable[str]) -> dict[str, str]:
    """How tables name evaluation sets: a recorded name (``VOC2007``) as it is; a folder path (``bench inpaint-eval
    --images`` records it) by its last component, or by the fewest trailing components that tell it apart from the
    other folders, never by the absolute path of the user's folder."""
    unique = sorted(set(texts))
    parts = {t: _path_parts(t) for t in unique}
    names: dict[str, str] = {}
    for text in unique:
        mine = parts[text]
        name = text
        for k in range(1, len(mine) + 1):
            name = "/".join(mine[-k:])
            if not any(o != text and "/".join(parts[o][-k:]) == name for o in unique):
                break
        names[text] = name
    return names


def display_columns(columns: Iterable[Column]) -> dict[Column, Column]:
    """Each column with its dataset and evaluation split named for display (``dataset_names``); the columns
    themselves keep the recorded strings, so records of two folders with one name never share a cell."""
    columns = list(columns)
    names = dataset_names([c.dataset for c in columns] + [c.eval_split for c in columns])
    return {c: dataclasses.replace(c, dataset=names[c.dataset], eval_split=names[c.eval_split]) for c in columns}


# ---------------------------------------------------------------------------------------------------------- cells
@dataclass(frozen=True)
class Cell:
    """The values of one (method, column): one per seed, sorted by seed."""

    values: tuple[float, ...]
    seeds: tuple[int | None, ...]

    @property
    def n(self) -> int:
        return len(self.values)

    @property
    def mean(self) -> float:
        return math.fsum(self.values) / len(self.values)

    @property
    def std(self) -> float | None:
        return statistics.stdev(self.values) if self.n > 1 else None

    @property
    def ci95(self) -> float | None:
        """Half-width of the two-sided 95% confidence interval of the mean (Student t, n-1 dof)."""
        if self.n < 2:
            return None
        from scipy.stats import t

        return float(t.ppf(0.975, self.n - 1)) * (self.std or 0.0) / math.sqrt(self.n)

    def spread(self, ci: bool) -> float | None:
        return self.ci95 if ci else self.std

    @property
    def deterministic(self) -> bool:
        """One record without a seed: an evaluation with nothing random in it (e.g. a classical inpainting fill)."""
        return self.n == 1 and self.seeds == (None,)

    def rule_spread(self, ci: bool) -> float | None:
        """The spread the bold rule compares: the shown one; 0 for a deterministic evaluation; None (unknown) for a
        single seeded run."""
        return 0.0 if self.deterministic else self.spread(ci)

    @property
    def standard_error(self) -> float | None:
        """Standard error of the mean (sd / sqrt(n)); 0 for a deterministic evaluation, None for one seeded run."""
        if self.deterministic:
            return 0.0
        return None if self.std is None else self.std / math.sqrt(self.n)


def _fmt(x: float, decimals: int = DECIMALS) -> str:
    s = f"{x:.{decimals}f}"
    return s[1:] if s.startswith("-") and float(s) == 0 else s


def group_cells(
    records: Iterable[tuple[Path, dict[str, Any]]], metrics_of: Any, duplicates: list[str] | None = None
) -> dict[Column, dict[str, Cell]]:
    """Group record values into cells: column -> method -> Cell.

    ``metrics_of(record)`` gives the (metric name, value) pairs to take from a record. One value per (column, method,
    seed): when several records share those, the one with the latest ``ended_at`` (then file name) wins and the
    others are reported in ``duplicates``.
    """
    chosen: dict[tuple[Column, str, int | None], tuple[tuple[str, str], float]] = {}
    for path, rec in records:
        for metric, value in metrics_of(rec):
            key = (column_of(rec, metric), method_of(rec), rec["seed"])
            rank = (rec["ended_at"], str(path))
            if key in chosen:
                old_rank = chosen[key][0]
                if duplicates is not None:
                    dropped = min(old_rank, rank)[1]
                    duplicates.append(f"{dropped}: same method, column and seed as a later record; left out")
                if rank < old_rank:
                    continue
            chosen[key] = (rank, float(value))
    by_cell: dict[Column, dict[str, list[tuple[int | None, float]]]] = defaultdict(lambda: defaultdict(list))
    for (col, method, seed), (_, value) in chosen.items():
        by_cell[col][method].append((seed, value))
    out: dict[Column, dict[str, Cell]] = {}
    for col, methods in by_cell.items():
        out[col] = {}
        for method, pairs in methods.items():
            pairs.sort(key=lambda p: (p[0] is None, p[0] if p[0] is not None else 0))
            out[col][method] = Cell(values=tuple(v for _, v in pairs), seeds=tuple(s for s, _ in pairs))
    return out


# ------------------------------------------------------------------------------------------------- table objects
@dataclass
class TableEntry:
    text: str  # plain text, e.g. "56.5 ± 0.3 (n=3)"
    mean: float | None = None
    spread: float | None = None
    n: int = 0
    bold: bool = False
    reported: bool = False
    rule_spread: float | None = None  # the spread the bold rule compares (Cell.rule_spread)
    standard_error: float | None = None
    lead: bool = False  # ahead of the next row by more than the combined standard error (``lead_se``)


@dataclass
class Table:
    """A rendered-independent table: header labels, rows of entries, footnotes."""

    name: str
    title: str
    row_header: str
    columns: list[str]
    rows: list[tuple[str, list[TableEntry]]]
    footnotes: list[str]
    csv_rows: list[dict[str, Any]]
    #: the LaTeX caption: the title without the paper's "Table N:", which LaTeX would print a second time
    caption: str = ""

    @property
    def latex_caption(self) -> str:
        return self.caption or self.title


def _cell_entry(cell: Cell, ci: bool, decimals: int = DECIMALS) -> TableEntry:
    spread = cell.spread(ci)
    text = _fmt(cell.mean, decimals)
    if spread is not None:
        text += f" ± {_fmt(spread, decimals)}"
    text += f" (n={cell.n})"
    return TableEntry(
        text=text,
        mean=cell.mean,
        spread=spread,
        n=cell.n,
        rule_spread=cell.rule_spread(ci),
        standard_error=cell.standard_error,
    )


def _mark_best(entries: list[TableEntry], higher: bool, decimals: int = DECIMALS, lead_se: bool = False) -> None:
    """Bold the best measured entry where ``BOLD_RULE`` holds; with ``lead_se`` also mark it (``LEAD_MARK``) where it
    is ahead of the next by more than their combined standard error."""
    measured = [e for e in entries if e.mean is not None and not e.reported]
    if len(measured) < 2:  # nothing to be ahead of
        return
    ranked = sorted(measured, key=lambda e: e.mean if e.mean is not None else 0.0, reverse=higher)
    best, runner_up = ranked[0], ranked[1]
    assert best.mean is not None and runner_up.mean is not None
    if _fmt(best.mean, decimals) == _fmt(runner_up.mean, decimals):  # a tie as printed
        return
    lead = abs(best.mean - runner_up.mean)
    if best.rule_spread is not None and runner_up.rule_spread is not None:
        best.bold = lead > best.rule_spread + runner_up.rule_spread
    if lead_se and best.standard_error is not None and runner_up.standard_error is not None:
        best.lead = lead > math.hypot(best.standard_error, runner_up.standard_error)
        if best.lead:
            best.text += f" {LEAD_MARK}"


def _letters(i: int) -> str:
    s = ""
    i += 1
    while i:
        i, r = divmod(i - 1, 26)
        s = chr(ord("a") + r) + s
    return s


def _csv_row(table: str, source: str, method: str, col: Column | None, cell: Cell | None, **extra: Any) -> dict:
    row: dict[str, Any] = {"table": table, "source": source, "method": method, "label": method_label(method)}
    for name in ("task", "protocol_id", "protocol_version", "preset", "dataset", "train_split", "eval_split", "metric"):
        row[name] = getattr(col, name) if col is not None else ""
    row.update({"n": "", "mean": "", "std": "", "ci95_halfwidth": "", "seeds": "", "values": ""})
    if cell is not None:
        row.update(
            n=cell.n,
            mean=repr(round(cell.mean, 6)),
            std="" if cell.std is None else repr(round(cell.std, 6)),
            ci95_halfwidth="" if cell.ci95 is None else repr(round(cell.ci95, 6)),
            seeds=";".join("none" if s is None else str(s) for s in cell.seeds),
            values=";".join(repr(v) for v in cell.values),
        )
    row.update(extra)
    return row


def load_reported(path: str | Path = REPORTED_PATH) -> dict[str, Any]:
    """The paper's printed numbers (``results/reported.json``), checked for the format version."""
    path = Path(path)
    data = json.loads(path.read_text())
    if data.get("version") != REPORTED_FORMAT_VERSION:
        raise ValueError(f"{path}: reported-numbers format version {data.get('version')!r}, expected 1")
    return data


def _spread_name(ci: bool) -> str:
    return "95% CI half-width (Student t)" if ci else "sample standard deviation (ddof=1)"


def build_table2(
    records: list[tuple[Path, dict[str, Any]]],
    reported: dict[str, Any] | None,
    *,
    ci: bool = False,
    duplicates: list[str] | None = None,
    lead_se: bool = False,
) -> Table:
    """The paper's Table 2: one row per pretraining method, one column per transfer task/protocol/split/metric."""
    cells = table2_cells(records, duplicates)
    columns = sorted(cells, key=Column.sort_key)
    shown = display_columns(columns)
    rep_cols: dict[str, Any] = (reported or {}).get("table2", {}).get("columns", {})
    rep_rows: list[dict[str, Any]] = (reported or {}).get("table2", {}).get("rows", [])

    # which measured columns each reported column stands beside: same task, dataset and eval split
    rep_targets: dict[str, list[int]] = {}
    for key, spec in sorted(rep_cols.items()):
        rep_targets[key] = [
            i
            for i, c in enumerate(columns)
            if (c.task, c.dataset, c.eval_split) == (spec["task"], spec["dataset"], spec["eval_split"])
        ]
    # a reported task that no measured column matches gets a column of its own (so the paper's table always shows),
    # placed among the measured columns in task order
    extra_rep = [k for k in sorted(rep_cols) if not rep_targets[k]]
    slots: list[tuple[tuple[Any, ...], Column | str]] = [(c.sort_key(), c) for c in columns]
    slots += [((TASK_ORDER.index(k) if k in TASK_ORDER else len(TASK_ORDER), k), k) for k in extra_rep]
    order = sorted(range(len(slots)), key=lambda i: slots[i][0])
    letters = {order_i: _letters(pos) for pos, order_i in enumerate(order)}
    headers_by_slot = []
    footnotes_by_slot = []
    for i, (_, slot) in enumerate(slots):
        if isinstance(slot, Column):
            headers_by_slot.append(f"{slot.task} {slot.metric} [{letters[i]}]")
            footnotes_by_slot.append(f"[{letters[i]}] {shown[slot].describe()}")
        else:
            spec = rep_cols[slot]
            headers_by_slot.append(f"{slot} {spec['metric']} [{letters[i]}]")
            footnotes_by_slot.append(
                f"[{letters[i]}] reported only: {spec['description']} "
                f"({spec['dataset']} {spec['eval_split']}, {spec['unit']})"
            )
    headers = [headers_by_slot[i] for i in order]

    methods = sorted({m for col in cells.values() for m in col}, key=method_sort_key)
    rows: list[tuple[str, list[TableEntry]]] = []
    csv_rows: list[dict[str, Any]] = []
    for m in methods:
        entries = []
        for col in columns:
            cell = cells[col].get(m)
            entries.append(_cell_entry(cell, ci) if cell else TableEntry(text="–"))
            if cell:
                csv_rows.append(_csv_row("table2", "measured", m, shown[col], cell))
        entries += [TableEntry(text="–") for _ in extra_rep]
        rows.append((method_label(m), entries))
    for j, col in enumerate(columns):
        _mark_best([r[1][j] for r in rows], higher_is_better(col.metric), lead_se=lead_se)

    for rrow in rep_rows:
        entries = [TableEntry(text="–", reported=True) for _ in slots]
        for key, value in sorted(rrow.get("values", {}).items()):
            if value is None or key not in rep_cols:
                continue
            targets = rep_targets[key] or [len(columns) + extra_rep.index(key)]
            for t in targets:
                entries[t] = TableEntry(text=_fmt(float(value)), mean=float(value), reported=True)
            spec = rep_cols[key]
            csv_rows.append(
                {
                    **_csv_row("table2", "reported", rrow["method"], None, None),
                    "label": rrow["label"],
                    "task": spec["task"],
                    "dataset": spec["dataset"],
                    "train_split": spec.get("train_split", ""),
                    "eval_split": spec["eval_split"],
                    "metric": spec["metric"],
                    "mean": repr(float(value)),
                    "protocol_id": "paper",
                }
            )
        rows.append((f"{rrow['label']} [reported]", entries))

    rows = [(label, [entries[i] for i in order]) for label, entries in rows]
    footnotes = [footnotes_by_slot[i] for i in order]
    footnotes.append(
        f"Measured cells: mean ± {_spread_name(ci)} over seeds, n = number of seeds; "
        f"{BOLD_RULE.format(line='column', lines='columns')}. Metrics in percent."
    )
    if lead_se:
        footnotes.append(LEAD_RULE + ".")
    if rep_rows:
        footnotes.append(
            "[reported] rows are the numbers printed in the paper "
            f"({(reported or {}).get('source', 'results/reported.json')}), obtained with the original Caffe "
            "protocols; they are placed in the measured columns of the same task, dataset and evaluation split, are "
            "never bold and were not produced by this code."
        )
    csv_rows.sort(
        key=lambda r: (
            r["source"],
            str(r["task"]),
            str(r["protocol_id"]),
            str(r["protocol_version"]),
            str(r["preset"]),
            str(r["dataset"]),
            str(r["eval_split"]),
            str(r["metric"]),
            method_sort_key(r["method"]),
        )
    )
    title = "Table 2: transfer to PASCAL VOC"
    caption = "Transfer to PASCAL VOC"
    return Table("table2", title, "pretraining", headers, rows, footnotes, csv_rows, caption=caption)


def table2_cells(
    records: list[tuple[Path, dict[str, Any]]], duplicates: list[str] | None = None
) -> dict[Column, dict[str, Cell]]:
    """Table 2's cells: the primary metric of every transfer record, column -> method -> Cell."""
    transfer = [(p, r) for p, r in records if r["task"] != INPAINT_TASK]
    return group_cells(transfer, lambda r: [(r["primary_metric"], r["metrics"][r["primary_metric"]])], duplicates)


def _inpaint_metric_kind(metric: str) -> str | None:
    m = metric.lower()
    for kind in ("L1", "L2", "PSNR"):
        if kind.lower() in m:
            return kind
    return None


def build_table1(
    records: list[tuple[Path, dict[str, Any]]],
    reported: dict[str, Any] | None,
    *,
    ci: bool = False,
    duplicates: list[str] | None = None,
    lead_se: bool = False,
) -> Table:
    """The paper's Table 1: inpainting mean L1 / mean L2 (percent) and PSNR (dB), one column per metric."""
    inpaint = [(p, r) for p, r in records if r["task"] == INPAINT_TASK]
    cells = group_cells(
        inpaint, lambda r: sorted((m, v) for m, v in r["metrics"].items() if _inpaint_metric_kind(m)), duplicates
    )
    columns = sorted(cells, key=Column.sort_key)
    shown = display_columns(columns)
    letters = [_letters(i) for i in range(len(columns))]
    rep = (reported or {}).get("table1", {})
    rep_cols: dict[str, Any] = rep.get("columns", {})
    # the paper's numbers stand in one column per metric kind: the one of the records' primary region
    # (e.g. PSNR_hole -> the *_hole columns), else the first column of that kind
    suffixes = sorted({r["primary_metric"].split("_", 1)[1] for _, r in inpaint if "_" in r["primary_metric"]})
    rep_targets: dict[str, list[int]] = {}
    for k in rep_cols:
        of_kind = [i for i, c in enumerate(columns) if _inpaint_metric_kind(c.metric) == k]
        preferred = [i for i in of_kind if any(columns[i].metric.endswith("_" + sfx) for sfx in suffixes[:1])]
        rep_targets[k] = (preferred or of_kind)[:1]
    extra_rep = [k for k in ("L1", "L2", "PSNR") if k in rep_cols and not rep_targets[k]]
    headers = [f"{c.metric} [{letters[i]}]" for i, c in enumerate(columns)]
    headers += [f"{rep_cols[k]['metric']} ({rep_cols[k]['unit']})" for k in extra_rep]
    methods = sorted({m for col in cells.values() for m in col}, key=method_sort_key)
    rows: list[tuple[str, list[TableEntry]]] = []
    csv_rows: list[dict[str, Any]] = []
    for m in methods:
        entries = []
        for col in columns:
            cell = cells[col].get(m)
            entries.append(_cell_entry(cell, ci, TABLE1_DECIMALS) if cell else TableEntry(text="–"))
            if cell:
                csv_rows.append(_csv_row("table1", "measured", m, shown[col], cell))
        entries += [TableEntry(text="–") for _ in extra_rep]
        rows.append((method_label(m), entries))
    for j, col in enumerate(columns):
        _mark_best([r[1][j] for r in rows], higher_is_better(col.metric), TABLE1_DECIMALS, lead_se=lead_se)
    for rrow in rep.get("rows", []):
        entries = [TableEntry(text="–", reported=True) for _ in headers]
        for key, value in sorted(rrow["values"].items()):
            targets = rep_targets.get(key) or ([len(columns) + extra_rep.index(key)] if key in extra_rep else [])
            for t in targets:
                entries[t] = TableEntry(text=f"{float(value):.2f}", mean=float(value), reported=True)
            csv_rows.append(
                {
                    **_csv_row("table1", "reported", rrow["method"], None, None),
                    "label": rrow["label"],
                    "task": INPAINT_TASK,
                    "dataset": rep.get("dataset", ""),
                    "eval_split": rep.get("eval_split", ""),
                    "metric": key,
                    "mean": repr(float(value)),
                    "protocol_id": "paper",
                }
            )
        rows.append((f"{rrow['label']} [reported]", entries))
    footnotes = [f"[{letters[i]}] {shown[c].describe()}" for i, c in enumerate(columns)]
    footnotes.append(
        f"Measured cells: mean ± {_spread_name(ci)} over seeds, n = number of seeds; "
        f"{BOLD_RULE.format(line='column', lines='columns')} (best: lowest L1/L2, highest PSNR). "
        "L1/L2 in percent of the [0,1] range, PSNR in dB."
    )
    if lead_se:
        footnotes.append(LEAD_RULE + ".")
    if rep.get("rows"):
        footnotes.append(
            f"[reported] rows: the paper's Table 1 on {rep.get('dataset')} ({rep.get('eval_split')}); placed in one "
            "measured column per metric kind (L1, L2, PSNR), that of the records' primary region; not produced by "
            "this code, never bold."
        )
    csv_rows.sort(key=lambda r: (r["source"], str(r["protocol_id"]), str(r["metric"]), method_sort_key(r["method"])))
    title, caption = "Table 1: semantic inpainting", "Semantic inpainting"
    return Table("table1", title, "method", headers, rows, footnotes, csv_rows, caption=caption)


def per_class_metrics(record: dict[str, Any], all_metrics: bool = False) -> list[str]:
    """The per-class metrics of a record to tabulate: by default the one the primary metric averages (``AP`` for
    ``mAP``, ``IoU`` for ``mIoU``), or all of them when none matches or ``all_metrics``."""
    names = sorted(record["per_class"])
    if all_metrics:
        return names
    primary = record["primary_metric"]
    # the primary metric, then metrics holding the same value under another name (svm: mAP = mAP_conv5 -> AP_conv5)
    same = sorted(m for m, v in record["metrics"].items() if m != primary and v == record["metrics"][primary])
    candidates = [primary, *same]
    for cand in (c.lower() for c in candidates):
        match = [n for n in names if cand in (f"m{n.lower()}", f"mean_{n.lower()}", f"mean {n.lower()}")]
        if match:
            return match
    return names


def class_order(classes: Iterable[str]) -> list[str]:
    """Classes in the order of the VOC devkit with background first (as segmentation numbers them), then any other
    class names in the order given."""
    classes = list(dict.fromkeys(classes))
    known = [c for c in SEG_CLASSES if c in classes]
    return known + [c for c in classes if c not in SEG_CLASSES]


def _class_mean_entry(by_class: dict[str, dict[str, Cell]], classes: list[str], method: str, ci: bool) -> TableEntry:
    """The 'mean' row of a per-class table: the mean of the class means, with the spread over seeds of the per-seed
    class means (seeds that have every class), so the bold rule can compare it like any cell."""
    cells = [by_class[c][method] for c in classes if method in by_class[c]]
    mean = math.fsum(c.mean for c in cells) / len(cells)
    common = set(cells[0].seeds).intersection(*(c.seeds for c in cells[1:]))
    per_seed = [
        math.fsum(c.values[c.seeds.index(s)] for c in cells) / len(cells)
        for s in sorted(common, key=lambda s: (s is None, s or 0))
    ]
    seeds = sorted(common, key=lambda s: (s is None, s or 0))
    summary = Cell(values=tuple(per_seed), seeds=tuple(seeds)) if per_seed else None
    return TableEntry(
        text=_fmt(mean),
        mean=mean,
        n=summary.n if summary else 0,
        rule_spread=summary.rule_spread(ci) if summary else None,
        standard_error=summary.standard_error if summary else None,
    )


def build_per_class_tables(
    records: list[tuple[Path, dict[str, Any]]],
    *,
    duplicates: list[str] | None = None,
    all_metrics: bool = False,
    ci: bool = False,
) -> list[Table]:
    """One table per (column, per-class metric): rows = classes (+ mean), columns = methods, mean over seeds."""
    cells = group_cells(
        records,
        lambda r: [(f"{m}/{c}", v) for m in per_class_metrics(r, all_metrics) for c, v in r["per_class"][m].items()],
        duplicates,
    )
    # regroup: (column without class, per-class metric) -> class -> method -> Cell
    groups: dict[tuple[Column, str], dict[str, dict[str, Cell]]] = defaultdict(dict)
    seen_classes: dict[tuple[Column, str], list[str]] = defaultdict(list)
    for col, by_method in cells.items():
        metric, cls = col.metric.split("/", 1)
        base = Column(**{**col.__dict__, "metric": metric})
        groups[(base, metric)][cls] = by_method
    for path_rec in records:  # unknown class names in the order the records list them, first record wins
        rec = path_rec[1]
        for metric in per_class_metrics(rec, all_metrics):
            vals = rec["per_class"][metric]
            key = (column_of(rec, metric), metric)
            for cls in vals:
                if cls not in seen_classes[key]:
                    seen_classes[key].append(cls)
    shown = display_columns(base for base, _ in groups)
    tables = []
    for base, metric in sorted(groups, key=lambda k: (k[0].sort_key(), k[1])):
        by_class = groups[(base, metric)]
        named = shown[base]
        methods = sorted({m for d in by_class.values() for m in d}, key=method_sort_key)
        # n of a method: the seeds of its records in this table (a class may lack some of them)
        ns = {m: len({s for c in by_class.values() if m in c for s in c[m].seeds}) for m in methods}
        headers = [f"{method_label(m)} (n={ns[m]})" for m in methods]
        rows: list[tuple[str, list[TableEntry]]] = []
        csv_rows: list[dict[str, Any]] = []
        higher = higher_is_better(metric)
        classes = [c for c in class_order(seen_classes[(base, metric)]) if c in by_class]
        for cls in classes:
            entries = []
            for m in methods:
                cell = by_class[cls].get(m)
                entries.append(_per_class_entry(cell, ns[m], ci) if cell else TableEntry(text="–"))
                if cell:
                    csv_rows.append({**_csv_row("per_class", "measured", m, named, cell), "class": cls})
            _mark_best(entries, higher)
            rows.append((cls, entries))
        mean_entries = [_class_mean_entry(by_class, classes, m, ci) for m in methods]
        _mark_best(mean_entries, higher)
        rows.append(("mean", mean_entries))
        slug = (
            re.sub(
                r"[^A-Za-z0-9]+",
                "-",
                f"{base.task}-{base.protocol_id}-v{base.protocol_version}-"
                f"{named.preset}-{named.dataset}-{named.eval_split}-{metric}",
            )
            .strip("-")
            .lower()
        )
        tables.append(
            Table(
                name=f"per_class_{slug}",
                title=f"Per-class {metric}: {base.task} ({named.dataset} {named.eval_split})",
                row_header="class",
                columns=headers,
                rows=rows,
                footnotes=[
                    f"{named.describe()}. Cells: mean over seeds (n per method in the header; a cell with fewer seeds "
                    f"shows its own n); 'mean' is the mean of the class means, its spread that of the per-seed class "
                    f"means; {BOLD_RULE.format(line='class', lines='classes')} (spread: {_spread_name(ci)})."
                ],
                csv_rows=csv_rows,
            )
        )
    return tables


def _per_class_entry(cell: Cell, header_n: int, ci: bool) -> TableEntry:
    """A per-class cell: the mean (n in the column header), with its own n where it has fewer seeds."""
    text = _fmt(cell.mean) + ("" if cell.n == header_n else f" (n={cell.n})")
    return TableEntry(
        text=text,
        mean=cell.mean,
        spread=cell.spread(ci),
        n=cell.n,
        rule_spread=cell.rule_spread(ci),
        standard_error=cell.standard_error,
    )


# ---------------------------------------------------------------------------------------------------- renderers
def to_markdown(table: Table) -> str:
    def esc(s: str) -> str:
        return s.replace("|", "\\|")

    lines = [f"### {table.title}", ""]
    lines.append("| " + " | ".join([esc(table.row_header)] + [esc(c) for c in table.columns]) + " |")
    lines.append("|" + "---|" + "".join("---:|" for _ in table.columns))
    for label, entries in table.rows:
        cells = [f"**{esc(e.text)}**" if e.bold else esc(e.text) for e in entries]
        lines.append("| " + " | ".join([esc(label), *cells]) + " |")
    lines.append("")
    lines += [f"{esc(f)}  " for f in table.footnotes]
    return "\n".join(lines).rstrip() + "\n"


_LATEX_SPECIAL = {
    "\\": r"\textbackslash{}",
    "&": r"\&",
    "%": r"\%",
    "$": r"\$",
    "#": r"\#",
    "_": r"\_",
    "{": r"\{",
    "}": r"\}",
    "~": r"\textasciitilde{}",
    "^": r"\textasciicircum{}",
}


def latex_escape(text: str) -> str:
    out = "".join(_LATEX_SPECIAL.get(ch, ch) for ch in text)
    out = out.replace("±", r"$\pm$").replace("–", "--").replace("->", r"$\rightarrow$")
    return out.replace(LEAD_MARK, r"$^\dagger$").replace("²", r"$^2$")


def to_latex(table: Table) -> str:
    """A booktabs table rendered by pandas' Styler (jinja2); bold via ``\\textbf``. The caption is ``Table.caption``
    (LaTeX adds its own "Table N:"; the paper's number stays in the comment line) with ``\\label{tab:<name>}``."""
    import pandas as pd

    data = [
        [(r"\textbf{" + latex_escape(e.text) + "}") if e.bold else latex_escape(e.text) for e in entries]
        for _, entries in table.rows
    ]
    df = pd.DataFrame(
        data,
        index=pd.Index([latex_escape(label) for label, _ in table.rows], name=latex_escape(table.row_header)),
        columns=[latex_escape(c) for c in table.columns],
    )
    df = df.reset_index()
    tabular = df.style.hide(axis="index").to_latex(hrules=True, column_format="l" + "r" * len(table.columns))
    # a rule between the measured rows and the paper's reported rows
    lines = tabular.splitlines()
    first_reported = next((i for i, line in enumerate(lines) if "[reported]" in line), None)
    if first_reported is not None and first_reported > 0 and "midrule" not in lines[first_reported - 1]:
        lines.insert(first_reported, r"\midrule")
    tabular = "\n".join(lines) + "\n"
    notes = "\n".join(r"\item[] " + latex_escape(f) for f in table.footnotes)
    return (
        f"% {latex_escape(table.title)} -- generated by `bench table` from run records; do not edit\n"
        "% needs \\usepackage{booktabs}\n"
        "\\begin{table}[t]\n\\centering\n\\footnotesize\n"
        f"\\caption{{{latex_escape(table.latex_caption)}}}\\label{{tab:{table.name}}}\n"
        f"{tabular}"
        "\\par\\smallskip\n\\begin{minipage}{\\linewidth}\\scriptsize\n\\begin{itemize}\n"
        f"{notes}\n"
        "\\end{itemize}\n\\end{minipage}\n\\end{table}\n"
    )


def to_csv(table: Table) -> str:
    rows = table.csv_rows
    fields: list[str] = []
    for r in rows:
        fields += [k for k in r if k not in fields]
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=fields, lineterminator="\n")
    writer.writeheader()
    for r in rows:
        writer.writerow(r)
    return buf.getvalue()


# ------------------------------------------------------------------------------------------------------ driver
@dataclass
class TableSet:
    tables: list[Table]
    loaded: LoadedRecords


def build_tables(
    record_paths: Sequence[str | Path],
    *,
    reported_path: str | Path | None = REPORTED_PATH,
    ci: bool = False,
    all_per_class: bool = False,
    lead_se: bool = False,
) -> TableSet:
    """All tables of the records under ``record_paths`` (``load_records``); ``lead_se`` marks the best rows that are
    ahead of the next by more than their combined standard error."""
    loaded = load_records(record_paths)
    reported = None
    if reported_path is not None:
        if Path(reported_path) == REPORTED_PATH and not REPORTED_PATH.exists():
            # a non-editable install does not carry results/; the tables are still made, without the paper's rows
            print(f"bench table: {REPORTED_PATH} not found; reported rows left out", file=sys.stderr)
        else:
            reported = load_reported(reported_path)
    recs = sorted(loaded.records, key=lambda pr: str(pr[0]))
    dups: list[str] = []
    tables = [build_table2(recs, reported, ci=ci, duplicates=dups, lead_se=lead_se)]
    if any(r["task"] == INPAINT_TASK for _, r in recs) or reported is not None:
        tables.append(build_table1(recs, reported, ci=ci, lead_se=lead_se))
    tables += build_per_class_tables(recs, all_metrics=all_per_class, ci=ci)
    loaded.duplicates = sorted(set(dups))
    return TableSet(tables=tables, loaded=loaded)


def write_tables(tables: TableSet, out_dir: str | Path) -> list[Path]:
    """Write ``<name>.md/.tex/.csv`` per table and ``tables.md`` (all markdown tables); returns the files written."""
    from pretrain.checkpoint import atomic_write_text

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    combined = ["# Tables", "", "Generated by `bench table` from run records; do not edit by hand.", ""]
    n = len(tables.loaded.records)
    combined.append(
        f"Records used: {n}."
        + (f" Left out as invalid: {len(tables.loaded.invalid)}." if tables.loaded.invalid else "")
    )
    combined.append("")
    for t in tables.tables:
        md = to_markdown(t)
        combined += [md]
        for ext, text in (("md", md), ("tex", to_latex(t)), ("csv", to_csv(t))):
            written.append(atomic_write_text(out / f"{t.name}.{ext}", text))
    written.append(atomic_write_text(out / "tables.md", "\n".join(combined).rstrip() + "\n"))
    # per-class tables of an earlier run whose records are gone would look current: remove them
    for stale in sorted(out.glob("per_class_*")):
        if stale.suffix in (".md", ".tex", ".csv") and stale not in written:
            stale.unlink()
    return written
