"""Figures people would rather look at than read: pretraining loss curves, labelled sample grids, Table 2 as bars
and per-class AP/IoU across methods.

Loss curves come from the ``log.jsonl`` of ``bench pretrain`` run folders (one JSON object per line; the x axis is
the first of ``iteration``, ``iter``, ``step``, ``it`` found in a line, every numeric key containing ``loss`` is a
curve); every logged point is marked, and a running mean is drawn over long noisy curves. Sample grids are the
newest ``samples/iter_*.png`` of each run folder with their columns named (from the PNG's text metadata, which
``pretrain.engine.save_sample_grid`` writes). The Table 2 bars and the per-class comparison are made from the same
cells and tables ``bench table`` makes. PNG, matplotlib Agg.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any

X_KEYS = ("iteration", "iter", "step", "it")
#: a curve with fewer logged points than this says so in its legend (lower ``--log-every`` for more)
FEW_POINTS = 10
#: from this many points on a curve, a running mean over ``SMOOTH_WINDOW`` points is drawn over the faint raw curve
SMOOTH_FROM = 40
SMOOTH_WINDOW = 9
#: the columns of sample grids written before the PNGs named them
LEGACY_SAMPLE_COLUMNS = ("masked input", "prediction", "original")
SAMPLE_PADDING = 2  # torchvision make_grid's padding in pretrain.engine.save_sample_grid


def read_log(path: str | Path) -> dict[str, list[tuple[float, float]]]:
    """Curves of one ``log.jsonl``: loss name -> [(iteration, value)]; unreadable lines are skipped."""
    curves: dict[str, list[tuple[float, float]]] = {}
    for line in Path(path).read_text(errors="replace").splitlines():
        try:
            entry = json.loads(line)
        except json.JSONDecodeError:
            continue
        if not isinstance(entry, dict):
            continue
        x = next((entry[k] for k in X_KEYS if isinstance(entry.get(k), int | float)), None)
        if x is None:
            continue
        for key, value in entry.items():
            numeric = isinstance(value, int | float) and not isinstance(value, bool)
            if "loss" in key.lower() and numeric and math.isfinite(value):
                curves.setdefault(key, []).append((float(x), float(value)))
    return {k: sorted(v) for k, v in sorted(curves.items())}


def find_run_logs(runs: list[str | Path]) -> list[Path]:
    found: set[Path] = set()
    for root in map(Path, runs):
        if root.is_file() and root.name == "log.jsonl":
            found.add(root)
        elif root.is_dir():
            found.update(root.rglob("log.jsonl"))
    return sorted(found)


def _run_label(log: Path, roots: list[Path]) -> str:
    config = log.parent / "config.json"
    method = None
    if config.exists():
        try:
            method = json.loads(config.read_text()).get("method")
        except (OSError, json.JSONDecodeError, AttributeError):
            method = None
    name = log.parent.name
    return f"{name} ({method})" if method and method not in name else name


def _new_figure(width: float, height: float) -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt.subplots(figsize=(width, height), dpi=100)


def _new_panels(count: int, width: float, height: float) -> tuple[Any, list[Any]]:
    """A figure with ``count`` panels side by side."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, count, figsize=(width, height), dpi=100, squeeze=False)
    return fig, list(axes[0])


def _save(fig: Any, path: Path) -> Path:
    import matplotlib.pyplot as plt

    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, format="png", metadata={"Software": None})
    plt.close(fig)
    return path


def running_mean(values: list[float], window: int) -> list[float]:
    """Centred running mean (the window shrinks at the ends, so the curve keeps its length)."""
    half = window // 2
    out = []
    for i in range(len(values)):
        part = values[max(0, i - half) : i + half + 1]
        out.append(math.fsum(part) / len(part))
    return out


def plot_loss_curves(runs: list[str | Path], out: str | Path) -> Path | None:
    """``pretrain_loss.png`` (``loss_figure``); None when no log with loss values was found."""
    fig = loss_figure(runs)
    return None if fig is None else _save(fig, Path(out) / "pretrain_loss.png")


def loss_figure(runs: list[str | Path]) -> Any | None:
    """A training-loss curve per run folder (and per loss name); None when no log was found.

    Every logged point is marked; curves of ``SMOOTH_FROM`` points or more get a running mean over the faint raw
    values; a curve of fewer than ``FEW_POINTS`` points says how many in its legend, with the fix."""
    logs = find_run_logs(runs)
    if not logs:
        return None
    fig, ax = _new_figure(8, 5)
    drawn = 0
    few = False
    for log in logs:
        label = _run_label(log, [Path(r) for r in runs])
        for name, points in read_log(log).items():
            if not points:
                continue
            xs, ys = (list(v) for v in zip(*points))
            text = f"{label}: {name} ({len(points)} points)"
            if len(points) >= SMOOTH_FROM:
                (raw,) = ax.plot(xs, ys, linewidth=0.8, alpha=0.3)
                ax.plot(xs, running_mean(ys, SMOOTH_WINDOW), color=raw.get_color(), linewidth=1.6, label=text)
            else:
                ax.plot(xs, ys, marker="o", markersize=4, linewidth=1.2, label=text)
            few = few or len(points) < FEW_POINTS
            drawn += 1
    if not drawn:
        import matplotlib.pyplot as plt

        plt.close(fig)
        return None
    ax.set_xlabel("iteration")
    ax.set_ylabel("training loss")
    title = "Pretraining loss"
    if few:
        title += " (few logged points: lower --log-every for a finer curve)"
    ax.set_title(title, fontsize=10)
    if all(y > 0 for line in ax.get_lines() for y in line.get_ydata()):
        ax.set_yscale("log")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7)
    return fig


def newest_sample_grid(run_dir: Path) -> Path | None:
    grids = sorted((run_dir / "samples").glob("iter_*.png"))
    return grids[-1] if grids else None


def sample_grid_columns(path: Path) -> tuple[str, ...]:
    """The column names a sample grid PNG carries, or those of grids written before they were named."""
    from PIL import Image

    from pretrain.engine import SAMPLE_COLUMNS_KEY

    with Image.open(path) as im:
        text = getattr(im, "text", {}).get(SAMPLE_COLUMNS_KEY)
    return tuple(text.split("|")) if text else LEGACY_SAMPLE_COLUMNS


def plot_sample_grids(runs: list[str | Path], out: str | Path) -> list[Path]:
    """``samples_<run>.png`` per pretraining run folder: its newest sample grid with the columns labelled (masked
    input, raw prediction, prediction pasted into the hole, original)."""
    written = []
    for log in find_run_logs(runs):
        fig = sample_grid_figure(log.parent)
        if fig is not None:
            name = re.sub(r"[^A-Za-z0-9_.-]+", "-", log.parent.name).strip("-") or "run"
            written.append(_save(fig, Path(out) / f"samples_{name}.png"))
    return written


def sample_grid_figure(run_dir: Path) -> Any | None:
    """The newest sample grid of one run folder, its columns named on top; None when the run wrote none."""
    import numpy as np
    from PIL import Image

    grid_path = newest_sample_grid(run_dir)
    if grid_path is None:
        return None
    columns = sample_grid_columns(grid_path)
    with Image.open(grid_path) as im:
        pixels = np.asarray(im.convert("RGB"))
    height, width = pixels.shape[:2]
    tile = (width - SAMPLE_PADDING * (len(columns) + 1)) / len(columns)
    rows = max(1, round((height - SAMPLE_PADDING) / (tile + SAMPLE_PADDING)))
    fig, ax = _new_figure(1.6 * len(columns) + 0.4, 1.6 * rows + 0.9)
    ax.imshow(pixels, interpolation="nearest")
    ax.set_xticks([SAMPLE_PADDING + (tile + SAMPLE_PADDING) * (i + 0.5) for i in range(len(columns))])
    ax.set_xticklabels(columns, fontsize=8)
    ax.xaxis.tick_top()
    ax.set_yticks([])
    ax.tick_params(length=0)
    iteration = grid_path.stem.split("_")[-1].lstrip("0") or "0"
    ax.set_title(f"{_run_label(run_dir / 'log.jsonl', [])} at iteration {iteration}", fontsize=9, pad=18)
    return fig


def _or_nan(value: float | None) -> float:
    return math.nan if value is None else value


def plot_table2(record_paths: list[str | Path], out: str | Path) -> list[Path]:
    """``table2_<preset>.png`` per preset of the records (``table2_figures``)."""
    return [_save(fig, Path(out) / f"table2_{stem}.png") for stem, fig in table2_figures(record_paths)]


def table2_figures(record_paths: list[str | Path]) -> list[tuple[str, Any]]:
    """(file name part, figure) per preset of the records: one panel per Table 2 column (task, protocol, split,
    metric), one bar per method, the mean over seeds with ±1 sample standard deviation (n >= 2) and n on each bar;
    the title names the preset as the records' ``config.preset`` says."""
    from benchmarks.tables import (
        display_columns,
        load_records,
        method_label,
        method_sort_key,
        table2_cells,
    )

    loaded = load_records(record_paths)
    cells = table2_cells(sorted(loaded.records, key=lambda pr: str(pr[0])))
    shown = display_columns(cells)
    by_preset: dict[str, list[Any]] = {}
    for col in sorted(cells, key=lambda c: c.sort_key()):
        by_preset.setdefault(col.preset, []).append(col)
    figures = []
    for preset, columns in sorted(by_preset.items()):
        fig, axes = _new_panels(len(columns), max(4.0, 3.2 * len(columns)), 4.2)
        for ax, col in zip(axes, columns):
            methods = sorted(cells[col], key=method_sort_key)
            means = [cells[col][m].mean for m in methods]
            # one seed has no spread: no error bar (NaN draws none) rather than a bar of zero length
            stds = [_or_nan(cells[col][m].std) for m in methods]
            colours = [f"C{i}" for i in range(len(methods))]
            bars = ax.bar(range(len(methods)), means, yerr=stds, capsize=4, color=colours)
            for bar, m, std in zip(bars, methods, stds):
                top = bar.get_height() + (0.0 if math.isnan(std) else std)
                ax.annotate(
                    f"n={cells[col][m].n}",
                    (bar.get_x() + bar.get_width() / 2, top),
                    xytext=(0, 2),
                    textcoords="offset points",
                    ha="center",
                    va="bottom",
                    fontsize=7,
                )
            ax.set_xticks(range(len(methods)))
            ax.set_xticklabels([method_label(m) for m in methods], rotation=30, ha="right", fontsize=8)
            named = shown[col]
            ax.set_title(f"{col.task} {col.metric}\n{named.dataset} {named.eval_split}", fontsize=9)
            ax.set_ylabel(f"{col.metric} (%)")
            tops = [m + (0.0 if math.isnan(sd) else sd) for m, sd in zip(means, stds)]
            ax.set_ylim(0, max(max(tops) * 1.15, 1e-6))  # room for the n labels
            ax.grid(True, axis="y", alpha=0.3)
        label = preset or "unknown"
        fig.suptitle(f"Table 2 at preset {label!r}: transfer (mean ± std over seeds)", fontsize=11)
        figures.append((re.sub(r"[^A-Za-z0-9_.-]+", "-", label).strip("-") or "unknown", fig))
    return figures


def plot_per_class(record_paths: list[str | Path], out: str | Path) -> list[Path]:
    """``<per-class table name>.png`` per per-class table (``per_class_figures``)."""
    return [_save(fig, Path(out) / f"{name}.png") for name, fig in per_class_figures(record_paths)]


def per_class_figures(record_paths: list[str | Path]) -> list[tuple[str, Any]]:
    """(table name, figure) per per-class table: a grouped bar chart, class on x in the table's order (background
    first, then the VOC classes, then the mean), one bar per method."""
    from benchmarks.tables import build_per_class_tables, load_records

    loaded = load_records(record_paths)
    figures = []
    for table in build_per_class_tables(sorted(loaded.records, key=lambda pr: str(pr[0]))):
        classes = [label for label, _ in table.rows]
        n_methods = len(table.columns)
        fig, ax = _new_figure(max(7.0, 0.45 * len(classes) * max(1, n_methods) / 2 + 2), 4.5)
        width = 0.8 / max(1, n_methods)
        for j, method in enumerate(table.columns):
            heights = [entries[j].mean if entries[j].mean is not None else 0.0 for _, entries in table.rows]
            xs = [i + (j - (n_methods - 1) / 2) * width for i in range(len(classes))]
            ax.bar(xs, heights, width=width, label=method)
        ax.set_xticks(range(len(classes)))
        ax.set_xticklabels(classes, rotation=60, ha="right", fontsize=8)
        ax.set_ylabel(table.title.split(":")[0].replace("Per-class ", ""))
        ax.set_title(table.title)
        ax.grid(True, axis="y", alpha=0.3)
        ax.legend(fontsize=8)
        figures.append((table.name, fig))
    return figures
