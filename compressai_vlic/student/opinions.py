"""Opinion scores for calibration: (reference, image, opinion) rows in JSONL or CSV.

JSONL rows are ``{"reference": ..., "image": ..., "opinion": ...}``; a CSV needs the columns
``reference,image,opinion``. Relative paths are read against the file's folder. Higher opinion
scores should mean better quality (MOS); DMOS works too, the fitted logistic then decreases.
"""

from __future__ import annotations

import csv
import json
import math
import os
from dataclasses import dataclass
from pathlib import Path

from compressai_vlic.errors import DatasetError


@dataclass(frozen=True)
class Opinion:
    reference: str
    image: str
    opinion: float


def _path(base: Path, value: str) -> str:
    p = Path(value)
    return str(p if p.is_absolute() else (base / p))


def read_opinions(path: str | os.PathLike[str]) -> list[Opinion]:
    """All rows of an opinion file; a bad row is an error naming its line."""
    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"{path}: no such opinion-score file")
    base = path.parent
    rows: list[dict[str, str]] = []
    if path.suffix.lower() == ".csv":
        with open(path, newline="") as f:
            reader = csv.DictReader(f)
            missing = {"reference", "image", "opinion"} - set(reader.fieldnames or [])
            if missing:
                raise DatasetError(f"{path}: missing column(s) {sorted(missing)}")
            rows = list(reader)
    else:
        for lineno, line in enumerate(path.read_text().splitlines(), start=1):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except ValueError as exc:
                    raise DatasetError(f"{path}:{lineno}: not JSON ({exc})") from exc
    out = []
    for i, row in enumerate(rows, start=1):
        try:
            value = float(row["opinion"])
            item = Opinion(_path(base, row["reference"]), _path(base, row["image"]), value)
        except (KeyError, TypeError, ValueError) as exc:
            raise DatasetError(
                f"{path}: row {i}: needs reference, image and a numeric opinion ({exc})"
            ) from exc
        if not math.isfinite(value):
            raise DatasetError(f"{path}: row {i}: opinion {value} is not finite")
        out.append(item)
    if not out:
        raise DatasetError(f"{path}: no opinion scores")
    return out


def write_opinions(
    rows: list[Opinion], path: str | os.PathLike[str], overwrite: bool = False
) -> Path:
    """JSONL opinion file (atomically; never over an existing file unasked)."""
    from compressai_vlic.atomic import atomic_write_bytes

    path = Path(path)
    if path.exists() and not overwrite:
        raise DatasetError(f"{path} exists; choose another output or remove it first")
    text = "".join(
        json.dumps({"reference": r.reference, "image": r.image, "opinion": r.opinion}) + "\n"
        for r in rows
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, text.encode())
    return path
