"""Figures people would rather look at than read: pretraining loss curves and per-class AP/IoU across methods.

Loss curves come from the ``log.jsonl`` of ``bench pretrain`` run folders (one JSON object per line; the x axis is
the first of ``iteration``, ``iter``, ``step``, ``it`` found in a line, every numeric key containing ``loss`` is a
curve). The per-class comparison is made from the same per-class tables ``bench table`` writes. PNG, matplotlib Agg.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any

X_KEYS = ("iteration", "iter", "step", "it")


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


def _save(fig: Any, path: Path) -> Path:
    import matplotlib.pyplot as plt

    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, format="png", metadata={"Software": None})
    plt.close(fig)
    return path


def plot_loss_curves(runs: list[str | Path], out: str | Path) -> Path | None:
    """One PNG with a training-loss curve per run folder (and per loss name); None when no log was found."""
    logs = find_run_logs(runs)
    if not logs:
        return None
    fig, ax = _new_figure(7, 4.5)
    drawn = 0
    for log in logs:
        label = _run_label(log, [Path(r) for r in runs])
        for name, points in read_log(log).items():
            if not points:
                continue
            xs, ys = zip(*points)
            ax.plot(xs, ys, label=f"{label}: {name}", linewidth=1.2)
            drawn += 1
    if not drawn:
        import matplotlib.pyplot as plt

        plt.close(fig)
        return None
    ax.set_xlabel("iteration")
    ax.set_ylabel("training loss")
    ax.set_title("Pretraining loss")
    if all(y > 0 for line in ax.get_lines() for y in line.get_ydata()):
        ax.set_yscale("log")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7)
    return _save(fig, Path(out) / "pretrain_loss.png")


def plot_per_class(record_paths: list[str | Path], out: str | Path) -> list[Path]:
    """A grouped bar chart per per-class table (class on x, one bar per method)."""
    from benchmarks.tables import build_per_class_tables, load_records

    loaded = load_records(record_paths)
    written = []
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
        name = re.sub(r"^per_class_", "per_class_", table.name)
        written.append(_save(fig, Path(out) / f"{name}.png"))
    return written
