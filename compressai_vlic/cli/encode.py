"""`compressai-vlic encode IMAGE(S)|FOLDER -o OUT`: images to .vlic bitstreams.

Every input is read through :mod:`compressai_vlic.image_io` (conversions are reported), coded with
the model's real ``compress()``, and written as the container bytes CompressAI's eval would count.
An unreadable file is reported and skipped; the exit status is non-zero at the end if any failed.
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
from compressai_vlic.errors import ImageReadError, VLICError
from compressai_vlic.image_io import find_images, load_image

STREAM_SUFFIX = ".vlic"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("inputs", nargs="+", type=Path, help="image files and/or folders")
    parser.add_argument(
        "-o",
        "--output",
        type=Path,
        required=True,
        help="output folder (folders are mirrored), or a .vlic file for a single image",
    )
    add_model_arguments(parser)
    add_threads_argument(parser)
    parser.add_argument(
        "--seed", type=int, default=None, help="decode seed stored in each stream (uint32)"
    )


def run(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    plan = plan_jobs(args.inputs, args.output, find_images, STREAM_SUFFIX)
    failures = list(plan.refused)
    for message in plan.refused:
        print(f"error: {message}", file=sys.stderr)
    if not plan.jobs:
        print("error: nothing to encode", file=sys.stderr)
        return 1
    try:
        apply_threads(args.threads)
        model = load_model(args.checkpoint, args.quality)
        model.sampler_settings(args.seed)  # reject a bad seed before reading anything
    except VLICError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    total_bytes = total_pixels = converted = 0
    start = time.perf_counter()
    bar = tqdm(plan.jobs, unit="img", desc="encode", file=sys.stderr, dynamic_ncols=True)
    for job in bar:
        try:
            image = load_image(job.source)
            if image.conversions:
                converted += 1
                bar.write(f"notice: {job.source}: {'; '.join(image.conversions)}", file=sys.stderr)
            out = model.compress(image.tensor[None], seed=args.seed)
            data = b"".join(out["strings"][0])
            job.target.parent.mkdir(parents=True, exist_ok=True)
            job.target.write_bytes(data)
        except (ImageReadError, VLICError, OSError) as exc:
            failures.append(error_text(job.source, exc))
            bar.write(f"error: {failures[-1]}", file=sys.stderr)
            continue
        height, width = image.size
        total_bytes += len(data)
        total_pixels += height * width
        bar.set_postfix(bpp=f"{8 * len(data) / (height * width):.4f}")
    bar.close()
    done = len(plan.jobs) - (len(failures) - len(plan.refused))
    summary = f"encoded {done} image(s) to {args.output} in {time.perf_counter() - start:.1f} s"
    if done:
        summary += f": {total_bytes} bytes, {8 * total_bytes / total_pixels:.4f} bpp overall"
    if converted:
        summary += f"; {converted} converted (see notices)"
    print(summary)
    if failures:
        print(f"{len(failures)} input(s) failed:", file=sys.stderr)
        for message in failures:
            print(f"  {message}", file=sys.stderr)
        return 1
    return 0
