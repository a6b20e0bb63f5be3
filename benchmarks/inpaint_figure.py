"""The inpainting comparison figure: held-out images side by side as every evaluated method completes them.

Input: the run records ``bench inpaint-eval`` wrote (task ``inpaint``). Records that evaluated the same images the
same way (protocol, folder, ``--limit``, crop, overlap, mask) form one figure; of several records of one method
the newest is used. Each record says how to redo its method (``weights.source``: ``baseline:NAME`` or the
network's checkpoint, whose SHA-256 must still match), so the figure recomputes the completions of the images it
shows, on the CPU, with the protocol's crop and hole, instead of storing them at evaluation time.

Layout: one row per chosen image; columns = masked input (hole in the network's fill colour), each method in the
display order of ``bench table`` (baselines first, then the networks), original. Under each method's tile: its PSNR
over the hole (``PSNR_hole`` of the per-image CSV, in dB; the best of the row in red).

Which images: the ranking method is the first network of the group (the first method when there is none). Its
per-image PSNR over the hole orders all evaluated images from best to worst (ties by name); the figure takes
``count`` of them at evenly spaced ranks, ``round(i (n - 1) / (count - 1))`` for ``i = 0 .. count - 1`` (the best,
the worst and evenly in between; the median image when ``count`` is 1; all images when there are no more than
``count``). Nothing is chosen by hand, and the same records and files always give the same PNG bytes.
"""

from __future__ import annotations

import io
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFont

#: images per figure unless told otherwise
DEFAULT_IMAGE_COUNT = 6
#: the network's fill colour of the hole, as it sees the masked input (8-bit RGB)
MASK_FILL_RGB = (117, 104, 123)
GAP = 4
CAPTION_H = 16
HEADER_H = 30
FOOTER_H = 18
FONT_SIZE = 11
TEXT = (20, 20, 20)
BEST = (180, 0, 0)
#: the record ``config`` entries that must agree for two records to have evaluated the same crops and hole
SAME_EVALUATION_KEYS = ("crop_size", "resize_short", "overlap", "mask", "limit")


class InpaintFigureError(RuntimeError):
    """A method of the figure cannot be redone (a moved folder, a changed checkpoint); the message says which."""


@dataclass(frozen=True)
class MethodRecord:
    method: str
    label: str
    path: Path
    record: dict[str, Any]


@dataclass(frozen=True)
class InpaintGroup:
    """Records that evaluated the same images with the same crop and hole, one per method, in display order."""

    dataset: str
    eval_split: str
    config: dict[str, Any]
    methods: tuple[MethodRecord, ...]

    @property
    def ranking(self) -> MethodRecord:
        networks = [m for m in self.methods if not m.method.startswith("baseline-")]
        return (networks or list(self.methods))[0]


def is_inpaint_record(record: dict[str, Any]) -> bool:
    return record.get("task") == "inpaint"


def group_inpaint_records(records: Sequence[tuple[Path, dict[str, Any]]]) -> list[InpaintGroup]:
    """Inpainting records grouped by evaluation, the newest record per method kept (see the module docstring)."""
    from benchmarks.tables import method_label, method_of, method_sort_key

    groups: dict[tuple, dict[str, tuple[Path, dict[str, Any]]]] = {}
    for path, record in records:
        if not is_inpaint_record(record):
            continue
        config = record["config"]
        key = (
            record["protocol"]["id"],
            record["protocol"]["version"],
            record["dataset"],
            record["eval_split"],
            *(json.dumps(config.get(k), sort_keys=True) for k in SAME_EVALUATION_KEYS),
        )
        by_method = groups.setdefault(key, {})
        method = method_of(record)
        old = by_method.get(method)
        if old is None or (record["ended_at"], str(path)) > (old[1]["ended_at"], str(old[0])):
            by_method[method] = (path, record)
    out = []
    for key in sorted(groups, key=lambda k: json.dumps(k)):
        by_method = groups[key]
        methods = tuple(MethodRecord(m, method_label(m), *by_method[m]) for m in sorted(by_method, key=method_sort_key))
        first = methods[0].record
        out.append(
            InpaintGroup(
                dataset=str(first["dataset"]),
                eval_split=str(first["eval_split"]),
                config={k: first["config"].get(k) for k in SAME_EVALUATION_KEYS},
                methods=methods,
            )
        )
    return out


# -- redoing the evaluation of the shown images ----------------------------------------------------------------------
def _protocol_and_hole(group: InpaintGroup) -> tuple[Any, np.ndarray, np.ndarray]:
    from pretrain.inpainting_eval import EvalProtocol, centre_hole, centre_region, load_mask_file

    cfg = group.config
    protocol = EvalProtocol(
        crop_size=int(cfg.get("crop_size") or 128),
        resize_short=int(cfg["resize_short"] if cfg.get("resize_short") is not None else 350),
        overlap=int(cfg.get("overlap") or 0),
    )
    mask = cfg.get("mask")
    if mask and not Path(mask).is_file():
        raise InpaintFigureError(f"the mask file {mask} of the evaluation of {group.eval_split} is gone")
    hole = load_mask_file(mask, protocol.crop_size) if mask else centre_hole(protocol.crop_size, protocol.overlap)
    return protocol, hole, centre_region(protocol.crop_size)


def _load_crops(folder: str | Path, protocol: Any, limit: int | None, what: str) -> list[tuple[str, np.ndarray]]:
    from pretrain.data import DataError, find_images
    from pretrain.inpainting_eval import load_eval_image

    root = Path(folder)
    try:
        paths = find_images(root)
    except DataError as exc:
        raise InpaintFigureError(f"{what} {root}: {exc}") from exc
    if limit is not None:
        paths = paths[:limit]
    return [
        (p.relative_to(root).as_posix() if p.is_relative_to(root) else str(p), load_eval_image(p, protocol))
        for p in paths
    ]


def inpainter_of(entry: MethodRecord, protocol: Any) -> Any:
    """The inpainter a record evaluated, rebuilt from its ``weights`` and ``config`` (the network on the CPU)."""
    from pretrain.checkpoint import CheckpointError
    from pretrain.inpainting_eval import InpaintEvalError, build_baseline, network_inpainter
    from pretrain.runinfo import sha256_file

    weights = entry.record["weights"]
    source = str(weights["source"])
    if source.startswith("baseline:"):
        name = source.split(":", 1)[1]
        train = None
        if name == "nn":
            folder = weights.get("train_images")
            if not folder:
                raise InpaintFigureError(f"{entry.path}: the nn record names no train_images folder")
            train = [im for _, im in _load_crops(folder, protocol, None, f"{entry.path}: train_images")]
        radius = entry.record["config"].get("radius") or 3.0
        try:
            return build_baseline(name, train, radius=float(radius))
        except InpaintEvalError as exc:
            raise InpaintFigureError(f"{entry.path}: {exc}") from exc
    from pretrain.inpainting import load_generator

    path = Path(source)
    if not path.exists():
        raise InpaintFigureError(f"{entry.path}: the evaluated weights {path} are gone")
    if weights.get("sha256") and path.is_file() and sha256_file(path) != weights["sha256"]:
        raise InpaintFigureError(f"{entry.path}: {path} changed since it was evaluated (its SHA-256 differs)")
    try:
        loaded = load_generator(path, "cpu")
    except CheckpointError as exc:
        raise InpaintFigureError(f"{entry.path}: {exc}") from exc
    return network_inpainter(loaded.generator, "cpu")


def evenly_spaced_ranks(n: int, count: int) -> list[int]:
    """Ranks ``0 .. n-1`` (0 = best) of the shown images: all of them for ``n <= count``, else evenly spaced
    from the best to the worst (the median for ``count == 1``)."""
    if count < 1:
        raise ValueError(f"count must be at least 1, got {count}")
    if n <= count:
        return list(range(n))
    if count == 1:
        return [(n - 1) // 2]
    # round half up in integers: round(i (n - 1) / (count - 1))
    return [(2 * i * (n - 1) + count - 1) // (2 * (count - 1)) for i in range(count)]


@dataclass(frozen=True)
class FigureRow:
    image: str
    rank: int
    masked: np.ndarray
    completed: tuple[np.ndarray, ...]
    original: np.ndarray
    psnr: tuple[float, ...]


def comparison_rows(group: InpaintGroup, count: int = DEFAULT_IMAGE_COUNT) -> tuple[list[FigureRow], int]:
    """The shown rows (best first by the ranking method) and the number of evaluated images."""
    from pretrain.inpainting_eval import image_errors

    protocol, hole, region = _protocol_and_hole(group)
    if not Path(group.eval_split).is_dir():
        raise InpaintFigureError(f"the evaluated images {group.eval_split} are gone")
    crops = _load_crops(group.eval_split, protocol, group.config.get("limit"), "evaluated images")
    if not crops:
        raise InpaintFigureError(f"no images under {group.eval_split}")
    inpainters = [inpainter_of(m, protocol) for m in group.methods]
    ranker = inpainters[group.methods.index(group.ranking)]
    scores = [image_errors(ranker(im, hole), im, hole, region)["PSNR_hole"] for _, im in crops]
    order = sorted(range(len(crops)), key=lambda i: (-scores[i], crops[i][0]))
    rows = []
    fill = np.array(MASK_FILL_RGB, np.float32) / 255.0
    for rank in evenly_spaced_ranks(len(crops), count):
        name, image = crops[order[rank]]
        completed = tuple(f(image, hole) for f in inpainters)
        masked = image.copy()
        masked[hole] = fill
        psnr = tuple(image_errors(c, image, hole, region)["PSNR_hole"] for c in completed)
        rows.append(FigureRow(name, rank, masked, completed, image, psnr))
    return rows, len(crops)


# -- drawing -------------------------------------------------------------------------------------------------------
def _font() -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    return ImageFont.load_default(size=FONT_SIZE)


def _fit(draw: ImageDraw.ImageDraw, text: str, width: int, font: Any) -> str:
    """``text`` cut with an ellipsis to at most ``width`` px."""
    if draw.textlength(text, font=font) <= width:
        return text
    while text and draw.textlength(text + "…", font=font) > width:
        text = text[:-1]
    return text + "…"


def _wrap(draw: ImageDraw.ImageDraw, text: str, width: int, font: Any, lines: int = 2) -> list[str]:
    """``text`` broken at spaces into at most ``lines`` lines of ``width`` px (the last one cut if needed)."""
    out: list[str] = []
    for word in text.split():
        if out and draw.textlength(f"{out[-1]} {word}", font=font) <= width:
            out[-1] = f"{out[-1]} {word}"
        else:
            out.append(word)
    out = [*out[: lines - 1], " ".join(out[lines - 1 :])] if len(out) > lines else out
    return [_fit(draw, line, width, font) for line in out]


def column_titles(group: InpaintGroup) -> list[str]:
    return ["masked input", *(m.label for m in group.methods), "original"]


def render_figure(group: InpaintGroup, rows: Sequence[FigureRow], total: int) -> Image.Image:
    """The grid as an RGB image (tiles at their native pixels, no resampling)."""
    tile = rows[0].original.shape[0]
    titles = column_titles(group)
    cell_w, cell_h = tile + GAP, tile + CAPTION_H
    width = GAP + len(titles) * cell_w
    height = HEADER_H + len(rows) * cell_h + FOOTER_H
    canvas = Image.new("RGB", (width, height), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    font = _font()
    for c, title in enumerate(titles):
        for k, line in enumerate(_wrap(draw, title, tile, font)):
            draw.text((GAP + c * cell_w, 2 + k * (FONT_SIZE + 2)), line, fill=TEXT, font=font)
    for r, row in enumerate(rows):
        y = HEADER_H + r * cell_h
        tiles = [row.masked, *row.completed, row.original]
        for c, arr in enumerate(tiles):
            x = GAP + c * cell_w
            canvas.paste(Image.fromarray(np.rint(np.clip(arr, 0, 1) * 255).astype(np.uint8)), (x, y))
        captions = [_fit(draw, row.image, tile, font)]
        best = max(row.psnr)
        captions += [f"{p:.2f} dB" for p in row.psnr]
        captions.append(f"rank {row.rank + 1} of {total}")
        for c, text in enumerate(captions):
            is_best = 0 < c <= len(row.psnr) and row.psnr[c - 1] == best and len(row.psnr) > 1
            draw.text((GAP + c * cell_w, y + tile + 2), text, fill=BEST if is_best else TEXT, font=font)
    footer = (
        f"PSNR over the hole (dB). Rows: {len(rows)} of {total} images at evenly spaced ranks of the PSNR of "
        f"{group.ranking.label}, best first. {group.dataset}, overlap {group.config.get('overlap')} px"
    )
    draw.text((GAP, height - FOOTER_H + 3), _fit(draw, footer, width - 2 * GAP, font), fill=TEXT, font=font)
    return canvas


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-") or "images"


def figure_names(groups: Sequence[InpaintGroup]) -> list[str]:
    """``inpainting_<dataset>`` per group; groups of one dataset get ``_<k>`` (their order) appended."""
    bases = [f"inpainting_{_slug(g.dataset)}" for g in groups]
    return [b if bases.count(b) == 1 else f"{b}_{bases[:i].count(b) + 1}" for i, b in enumerate(bases)]


def write_comparison(group: InpaintGroup, out_png: Path, count: int = DEFAULT_IMAGE_COUNT) -> Path:
    """Write the figure ``out_png`` and, next to it, ``<name>.json``: the rule, the columns, the shown images and
    their PSNR per method (the numbers under the tiles)."""
    from pretrain.checkpoint import atomic_write_bytes, atomic_write_text

    rows, total = comparison_rows(group, count)
    buf = io.BytesIO()
    render_figure(group, rows, total).save(buf, format="PNG")
    atomic_write_bytes(out_png, buf.getvalue())
    summary = {
        "dataset": group.dataset,
        "eval_split": group.eval_split,
        "config": group.config,
        "columns": column_titles(group),
        "methods": [m.method for m in group.methods],
        "records": [str(m.path) for m in group.methods],
        "ranked_by": group.ranking.method,
        "rule": "evenly spaced ranks of the ranking method's per-image PSNR_hole, best first",
        "images_evaluated": total,
        "rows": [
            {"image": r.image, "rank": r.rank + 1, "PSNR_hole": dict(zip((m.method for m in group.methods), r.psnr))}
            for r in rows
        ],
    }
    atomic_write_text(out_png.with_suffix(".json"), json.dumps(summary, indent=2) + "\n")
    return out_png


def plot_inpainting(
    records: Sequence[str | Path], out: str | Path, count: int = DEFAULT_IMAGE_COUNT
) -> tuple[list[Path], list[str]]:
    """One comparison figure per group of inpainting records under ``records``: (written PNGs, problems).

    A group whose methods cannot be redone is reported in problems (naming the record and the path) and skipped.
    """
    from transfer.records import RecordError, find_records, read_record

    loaded = []
    for path in find_records(list(records)):
        try:
            loaded.append((path, read_record(path)))
        except RecordError:
            continue  # not a run record (the tables skip it the same way)
    groups = group_inpaint_records(loaded)
    written, problems = [], []
    for group, name in zip(groups, figure_names(groups)):
        try:
            written.append(write_comparison(group, Path(out) / f"{name}.png", count))
        except InpaintFigureError as exc:
            problems.append(f"{name}.png not written: {exc}")
    return written, problems
