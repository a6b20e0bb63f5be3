"""Run records: one self-describing JSON file per transfer (or inpainting-evaluation) run.

Tables are always regenerated from these files (docs/architecture.md, "Records, not logs"). The schema is documented in
docs/records.md; ``validate_record`` checks it whenever a record is read. A record is written atomically and an
existing record is never overwritten (a numbered suffix is added instead); a record that cannot be written is
printed to stdout.

Units: metric values are stored as the paper's tables print them: percentages for AP, IoU, accuracies and the
inpainting L1/L2 errors, dB for PSNR.
"""

from __future__ import annotations

import json
import math
import re
import sys
from pathlib import Path
from typing import Any

from pretrain.checkpoint import atomic_create_json
from pretrain.runinfo import code_version, environment_info, utc_now_iso

RECORD_SCHEMA = "context-encoders-bench/run-record"
RECORD_SCHEMA_VERSION = 1

#: field name -> accepted Python types
REQUIRED_FIELDS: dict[str, tuple[type, ...]] = {
    "schema": (str,),
    "schema_version": (int,),
    "task": (str,),  # cls | svm | det | seg | inpaint
    "protocol": (dict,),  # {"id": str, "version": int, "description": str}
    "dataset": (str,),  # e.g. "VOC2007"
    "train_split": (str, type(None)),
    "eval_split": (str,),
    "metrics": (dict,),  # name -> float
    "primary_metric": (str,),  # key into metrics shown in the main table
    "per_class": (dict,),  # metric name -> {class name -> float}
    "weights": (dict,),  # {"source": str, "method": str, "sha256": str|None, ...}
    "seed": (int, type(None)),
    "config": (dict,),
    "code_version": (dict,),
    "started_at": (str,),
    "ended_at": (str,),
    "wall_time_s": (int, float),
    "hardware": (dict,),
    "skipped": (dict,),  # {"count": int, "items": [str, ...]}
}


class RecordError(ValueError):
    """A record file is unreadable or does not follow the schema; the message names the file."""


def make_record(
    *,
    task: str,
    protocol_id: str,
    protocol_version: int,
    protocol_description: str,
    dataset: str,
    train_split: str | None,
    eval_split: str,
    metrics: dict[str, float],
    primary_metric: str,
    weights: dict[str, Any],
    seed: int | None,
    config: dict[str, Any],
    started_at: str,
    wall_time_s: float,
    per_class: dict[str, dict[str, float]] | None = None,
    skipped_items: list[str] | None = None,
    device: Any = None,
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Assemble a record dict (validated before it is returned)."""
    skipped_items = list(skipped_items or [])
    record: dict[str, Any] = {
        "schema": RECORD_SCHEMA,
        "schema_version": RECORD_SCHEMA_VERSION,
        "task": task,
        "protocol": {
            "id": protocol_id,
            "version": int(protocol_version),
            "description": protocol_description,
        },
        "dataset": dataset,
        "train_split": train_split,
        "eval_split": eval_split,
        "metrics": {k: float(v) for k, v in metrics.items()},
        "primary_metric": primary_metric,
        "per_class": {m: {c: float(v) for c, v in vals.items()} for m, vals in (per_class or {}).items()},
        "weights": dict(weights),
        "seed": seed,
        "config": config,
        "code_version": code_version(),
        "started_at": started_at,
        "ended_at": utc_now_iso(),
        "wall_time_s": float(wall_time_s),
        "hardware": environment_info(device),
        "skipped": {"count": len(skipped_items), "items": skipped_items},
    }
    if extra:
        record["extra"] = extra
    errors = validate_record(record)
    if errors:
        raise RecordError("invalid record: " + "; ".join(errors))
    return record


def validate_record(record: Any) -> list[str]:
    """Return a list of schema violations (empty when the record is valid)."""
    if not isinstance(record, dict):
        return [f"record is a {type(record).__name__}, expected an object"]
    errors: list[str] = []
    for name, types in REQUIRED_FIELDS.items():
        if name not in record:
            errors.append(f"missing field {name!r}")
        elif not isinstance(record[name], types) or isinstance(record[name], bool):
            errors.append(f"field {name!r} has type {type(record[name]).__name__}")
    if errors:
        return errors
    if record["schema"] != RECORD_SCHEMA:
        errors.append(f"schema is {record['schema']!r}, expected {RECORD_SCHEMA!r}")
    if record["schema_version"] > RECORD_SCHEMA_VERSION:
        errors.append(f"schema_version {record['schema_version']} is newer than this code ({RECORD_SCHEMA_VERSION})")
    proto = record["protocol"]
    if not isinstance(proto.get("id"), str) or not isinstance(proto.get("version"), int):
        errors.append("protocol needs a string 'id' and an integer 'version'")
    for key, value in record["metrics"].items():
        if not isinstance(value, int | float) or isinstance(value, bool):
            errors.append(f"metric {key!r} is not a number")
        elif not math.isfinite(value):
            errors.append(f"metric {key!r} is {value} (metrics must be finite; leave undefined values out)")
    if record["primary_metric"] not in record["metrics"]:
        errors.append(f"primary_metric {record['primary_metric']!r} is not among the metrics")
    for metric, vals in record["per_class"].items():
        if not isinstance(vals, dict) or not all(
            isinstance(v, int | float) and math.isfinite(v) for v in vals.values()
        ):
            errors.append(f"per_class[{metric!r}] must map class names to finite numbers")
    weights = record["weights"]
    if not isinstance(weights.get("method"), str) or not isinstance(weights.get("source"), str):
        errors.append("weights needs string 'source' and 'method'")
    if not isinstance(record["skipped"].get("count"), int):
        errors.append("skipped needs an integer 'count'")
    return errors


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", text).strip("-") or "run"


def record_filename(record: dict[str, Any]) -> str:
    seed = "none" if record.get("seed") is None else str(record["seed"])
    return f"{_slug(record['task'])}_{_slug(record['weights']['method'])}_seed{seed}.json"


class RecordWriteError(RecordError):
    """The record could not be written (full disk, read-only folder...); it was printed to stdout instead."""


def _candidate_names(base: Path) -> Any:
    yield base.name
    n = 2
    while True:
        yield f"{base.stem}-{n}{base.suffix}"
        n += 1


def write_record(record: dict[str, Any], out_dir: str | Path, name: str | None = None) -> Path:
    """Write ``record`` into ``out_dir`` atomically under a free name (adds ``-2``, ``-3``... when taken); never
    overwrites a file, even when other runs finish into the same folder at the same moment.

    When the folder cannot be written (full disk, read-only, no permission) the record is printed to stdout so
    the result is not lost, and ``RecordWriteError`` says where writing was tried."""
    errors = validate_record(record)
    if errors:
        raise RecordError("refusing to write an invalid record: " + "; ".join(errors))
    out_dir = Path(out_dir)
    base = Path(name or record_filename(record))
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        return atomic_create_json(out_dir, _candidate_names(base), record)
    except OSError as exc:
        print(json.dumps(record, indent=2, sort_keys=True, default=str))
        sys.stdout.flush()
        raise RecordWriteError(
            f"cannot write the run record to {out_dir / base} ({exc.strerror or exc}); the record was printed to "
            "stdout above: save it as a .json file in a records folder to keep the result"
        ) from exc


def read_record(path: str | Path) -> dict[str, Any]:
    """Read and validate one record; raise ``RecordError`` naming the file on any problem."""
    path = Path(path)
    try:
        record = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise RecordError(f"{path}: cannot read record ({exc})") from exc
    errors = validate_record(record)
    if errors:
        raise RecordError(f"{path}: " + "; ".join(errors))
    return record


def find_records(paths: list[str | Path]) -> list[Path]:
    """All ``*.json`` files under the given folders (recursively) or files, sorted for determinism."""
    found: set[Path] = set()
    for p in map(Path, paths):
        if p.is_dir():
            found.update(q for q in p.rglob("*.json") if q.is_file())
        elif p.is_file():
            found.add(p)
        else:
            raise FileNotFoundError(f"record path does not exist: {p}")
    return sorted(found)
