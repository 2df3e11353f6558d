"""`compressai-vlic decode STREAM(S)|FOLDER -o OUT`: .vlic bitstreams to PNG images.

The stream carries its size, tiling, seed and sampler settings; the model must be the one that
encoded it (its config hash is checked). A foreign, corrupted or truncated stream is reported
with its typed error and skipped; the exit status is non-zero at the end if any failed.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from compressai_vlic.cli._codec import (
    add_model_arguments,
    add_threads_argument,
    apply_threads,
    error_text,
    load_model,
    plan_jobs,
)
from compressai_vlic.cli.encode import STREAM_SUFFIX
from compressai_vlic.errors import VLICError
from compressai_vlic.image_io import save_png


def find_streams(root: Path) -> list[Path]:
    """All .vlic files under a folder (sorted)."""
    return sorted(p for p in root.rglob(f"*{STREAM_SUFFIX}") if p.is_file())


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("inputs", nargs="+", type=Path, help=".vlic files and/or folders")
    parser.add_argument(
        "-o",
        "--output",
        type=Path,
        required=True,
        help="output folder (folders are mirrored), or a .png file for a single stream",
    )
    add_model_arguments(parser)
    add_threads_argument(parser)


def run(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    plan = plan_jobs(args.inputs, args.output, find_streams, ".png")
    failures = list(plan.refused)
    for message in plan.refused:
        print(f"error: {message}", file=sys.stderr)
    if not plan.jobs:
        print("error: nothing to decode", file=sys.stderr)
        return 1
    try:
        apply_threads(args.threads)
        model = load_model(args.checkpoint, args.quality)
    except VLICError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    start = time.perf_counter()
    bar = tqdm(plan.jobs, unit="img", desc="decode", file=sys.stderr, dynamic_ncols=True)
    for job in bar:
        try:
            data = job.source.read_bytes()
            x_hat = model.decompress([[data]], None)["x_hat"]
            save_png(x_hat, job.target)
        except (VLICError, OSError) as exc:
            failures.append(error_text(job.source, exc))
            bar.write(f"error: {failures[-1]}", file=sys.stderr)
            continue
        bar.set_postfix(size=f"{x_hat.shape[-1]}x{x_hat.shape[-2]}")
    bar.close()
    done = len(plan.jobs) - (len(failures) - len(plan.refused))
    print(f"decoded {done} stream(s) to {args.output} in {time.perf_counter() - start:.1f} s")
    if failures:
        print(f"{len(failures)} input(s) failed:", file=sys.stderr)
        for message in failures:
            print(f"  {message}", file=sys.stderr)
        return 1
    return 0
