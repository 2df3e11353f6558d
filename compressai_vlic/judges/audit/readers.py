"""Human 2AFC labels: the BAPPS folder layout and a plain CSV, read into :class:`HumanPair`."""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from compressai_vlic.errors import DatasetError
from compressai_vlic.image_io import IMAGE_SUFFIXES, load_image
from compressai_vlic.judges.types import Choice, JudgeRequest


@dataclass(frozen=True)
class HumanPair:
    """A reference (None for a reference-free question), two stimuli, and the fraction of humans
    who preferred B (for ``attribute``: had more contrast, were more colourful, ...)."""

    pair_id: str
    reference: Path | None
    a: Path
    b: Path
    human_b: float
    n_humans: int | None = None
    scene: str = ""
    category: str = ""
    attribute: str = ""

    @property
    def human_majority(self) -> Choice | None:
        if self.human_b > 0.5:
            return Choice.B
        if self.human_b < 0.5:
            return Choice.A
        return None


def _find_with_stem(folder: Path, stem: str) -> Path | None:
    for suffix in IMAGE_SUFFIXES:
        p = folder / f"{stem}{suffix}"
        if p.is_file():
            return p
    return None


def _bapps_category(root: Path, category: str) -> list[HumanPair]:
    ref_dir, p0_dir, p1_dir, judge_dir = (root / n for n in ("ref", "p0", "p1", "judge"))
    for d in (p0_dir, p1_dir, judge_dir):
        if not d.is_dir():
            raise DatasetError(
                f"{root}: BAPPS 2AFC layout needs ref/, p0/, p1/ and judge/ (missing {d.name}/)"
            )
    pairs = []
    refs = sorted(p for p in ref_dir.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    for ref in refs:
        p0, p1 = _find_with_stem(p0_dir, ref.stem), _find_with_stem(p1_dir, ref.stem)
        npy = judge_dir / f"{ref.stem}.npy"
        if p0 is None or p1 is None or not npy.is_file():
            raise DatasetError(
                f"{root}: {ref.name} has no matching p0/, p1/ image or judge/{ref.stem}.npy"
            )
        try:
            h = float(
                np.asarray(np.load(npy, allow_pickle=False), dtype=np.float64).reshape(-1).mean()
            )
        except (ValueError, OSError) as exc:
            raise DatasetError(f"{npy}: not a numeric .npy file ({exc})") from exc
        if not 0.0 <= h <= 1.0:
            raise DatasetError(f"{npy}: human fraction {h} outside [0, 1]")
        pid = f"{category}/{ref.stem}" if category else ref.stem
        pairs.append(HumanPair(pid, ref, p0, p1, h, None, scene=pid, category=category))
    return pairs


def load_bapps(root: str | Path) -> list[HumanPair]:
    """A BAPPS 2AFC folder (``ref/ p0/ p1/ judge/``) or a folder of such category folders."""
    root = Path(root)
    if (root / "ref").is_dir():
        pairs = _bapps_category(root, "")
    else:
        cats = sorted(d for d in root.iterdir() if (d / "ref").is_dir()) if root.is_dir() else []
        if not cats:
            raise DatasetError(
                f"{root}: not a BAPPS 2AFC folder (expected ref/, p0/, p1/, judge/ or category sub-folders)"
            )
        pairs = [p for d in cats for p in _bapps_category(d, d.name)]
    if not pairs:
        raise DatasetError(f"{root}: no pairs found")
    return pairs


def load_csv(path: str | Path, attribute: str | None = None) -> list[HumanPair]:
    """CSV of ``a,b,human_b`` (or ``human_a``) with an optional ``reference`` column; paths are
    relative to the CSV's folder.

    Without a ``reference`` column (or with an empty cell) the pair is a reference-free question.
    An ``attribute`` column (contrast, colorfulness, overall, ...) labels each row; ``attribute``
    keeps only the rows of that attribute.

    Args:
        path: the CSV file.
        attribute: keep only rows whose ``attribute`` column equals this (None keeps all).
    """
    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"{path}: no such CSV file")
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        cols = set(reader.fieldnames or [])
        need = {"a", "b"}
        if not need <= cols or len(cols & {"human_a", "human_b"}) != 1:
            raise DatasetError(
                f"{path}: needs columns a,b (and optionally reference) and exactly one of human_b "
                f"(fraction preferring b) or human_a; found {sorted(cols)}"
            )
        if attribute is not None and "attribute" not in cols:
            raise DatasetError(f"{path}: no attribute column to select {attribute!r} rows from")
        pairs = []
        for lineno, row in enumerate(reader, start=2):
            if attribute is not None and row.get("attribute") != attribute:
                continue
            try:
                h = float(row["human_b"]) if "human_b" in cols else 1.0 - float(row["human_a"])
                n = int(row["n_humans"]) if row.get("n_humans") else None
            except ValueError as exc:
                raise DatasetError(f"{path}:{lineno}: {exc}") from exc
            if not 0.0 <= h <= 1.0:
                raise DatasetError(f"{path}:{lineno}: human preference {h} outside [0, 1]")
            a, b = ((path.parent / row[k]).resolve() for k in ("a", "b"))
            ref = (path.parent / row["reference"]).resolve() if row.get("reference") else None
            for p in (ref, a, b):
                if p is not None and not p.is_file():
                    raise DatasetError(f"{path}:{lineno}: {p} does not exist")
            scene = row.get("scene") or (str(ref) if ref is not None else f"row{lineno - 1}")
            pairs.append(
                HumanPair(
                    f"{lineno - 1}",
                    ref,
                    a,
                    b,
                    h,
                    n,
                    scene,
                    row.get("category") or "",
                    row.get("attribute") or "",
                )
            )
    if not pairs:
        what = f" with attribute {attribute!r}" if attribute is not None else ""
        raise DatasetError(f"{path}: no rows{what}")
    return pairs


def _load(pair: HumanPair) -> JudgeRequest:
    a, b = (load_image(p).tensor for p in (pair.a, pair.b))
    ref = a if pair.reference is None else load_image(pair.reference).tensor
    if not (ref.shape == a.shape == b.shape):
        raise DatasetError(
            f"pair {pair.pair_id}: reference, A and B differ in size ({tuple(ref.shape)}, {tuple(a.shape)}, {tuple(b.shape)})"
        )
    return JudgeRequest(None if pair.reference is None else ref, a, b, pair.pair_id)
