"""`compressai-vlic judge rank`: best-of-N on folders, each folder's images ranked by soft reward.

    compressai-vlic judge rank --candidates decodes/ [--originals orig/] --output ranking.jsonl \\
        --judge-type openai --judge-arg prompt_type=reason-choice ...

``--candidates DIR`` holds one sub-folder per group (e.g. the N decodes of one code); with
``--originals`` each group is ranked against the original of the same stem, without it by a
reference-free question (give the judge ``reference=false`` and an attribute such as overall).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from compressai_vlic.errors import ConfigError, DatasetError


def add_rank_arguments(parser: Any) -> None:
    g = parser.add_argument_group("rank")
    g.add_argument(
        "--candidates",
        type=Path,
        required=True,
        help="folder with one sub-folder of N >= 2 images per group",
    )
    g.add_argument(
        "--originals",
        type=Path,
        default=None,
        help="folder of originals named like the groups (omit for a reference-free ranking)",
    )
    g.add_argument("--output", type=Path, required=True, help="ranking JSONL, one row per group")
    g.add_argument("--overwrite", action="store_true", help="replace an existing --output")


def _groups(root: Path) -> list[tuple[str, list[Path]]]:
    from compressai_vlic.image_io import find_images

    if not root.is_dir():
        raise DatasetError(f"{root}: not a folder")
    groups = []
    for folder in sorted(p for p in root.iterdir() if p.is_dir()):
        images = sorted(find_images(folder, recursive=False))
        if len(images) < 2:
            raise DatasetError(f"{folder}: needs at least 2 images to rank, found {len(images)}")
        groups.append((folder.name, images))
    if not groups:
        raise DatasetError(f"{root}: no sub-folders of candidates")
    return groups


def _original(originals: Path, stem: str) -> Path:
    from compressai_vlic.image_io import IMAGE_SUFFIXES

    for suffix in IMAGE_SUFFIXES:
        p = originals / f"{stem}{suffix}"
        if p.is_file():
            return p
    raise DatasetError(f"{originals}: no original named {stem}.* for candidates/{stem}/")


def run_rank_cli(args: Any) -> int:
    from compressai_vlic.atomic import atomic_write_text, refuse_existing
    from compressai_vlic.image_io import load_image
    from compressai_vlic.judges.compose import describe_judge
    from compressai_vlic.judges.rank import rank_images
    from compressai_vlic.judges.spec import JudgeSpec

    refuse_existing(args.output, args.overwrite)
    groups = _groups(args.candidates)
    spec = JudgeSpec.from_args(args)
    if spec.compose.votes > 1 or spec.compose.unanimous_with:
        raise ConfigError("judge rank asks both orders itself; --votes/--unanimous-with not used")
    judge = spec.build()
    rows, lines = [], []
    for stem, paths in groups:
        reference = None
        ref_path = None
        if args.originals is not None:
            ref_path = _original(args.originals, stem)
            reference = load_image(ref_path).tensor
        images = [load_image(p).tensor for p in paths]
        if any(im.shape != images[0].shape for im in images):
            raise DatasetError(f"{args.candidates / stem}: candidates differ in size")
        ranking = rank_images(judge, images, reference, [p.name for p in paths])
        rows.append(
            {
                "group": stem,
                "reference": None if ref_path is None else str(ref_path),
                "best": ranking.names[ranking.best],
                "worst": ranking.names[ranking.worst],
                "ranking": ranking.rows(),
                "n_failed": ranking.n_failed,
                "judge": describe_judge(judge),
            }
        )
        order = ", ".join(f"{r['name']} {r['reward']:+.3f}" for r in ranking.rows())
        lines.append(
            f"{stem}: {order}" + (f" ({ranking.n_failed} failed)" if ranking.n_failed else "")
        )
    atomic_write_text(args.output, "".join(json.dumps(r) + "\n" for r in rows))
    print("\n".join(lines))
    print(f"wrote {args.output}: {len(rows)} groups ranked by {judge.name}")
    return 1 if any(r["n_failed"] for r in rows) else 0
