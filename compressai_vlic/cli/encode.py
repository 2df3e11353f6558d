"""`compressai-vlic encode IMAGE(S)|FOLDER -o OUT`: images to .vlic bitstreams.

Every input is read through :mod:`compressai_vlic.image_io` (conversions are reported), coded with
the model's real ``compress()``, and written as the container bytes CompressAI's eval would count.
An unreadable file is reported and skipped; the exit status is non-zero at the end if any failed.
Existing outputs are refused unless ``--overwrite``; every stream is written atomically.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from compressai_vlic.atomic import atomic_write_bytes
from compressai_vlic.cli._codec import (
    add_model_arguments,
    add_overwrite_argument,
    add_threads_argument,
    open_batch,
)
from compressai_vlic.errors import ImageReadError, VLICError
from compressai_vlic.options import STREAM_MAX_PIXELS

STREAM_SUFFIX = ".vlic"
#: Exit status of a typed error (main prints it): 1, as for a failed input.
ERROR_STATUS = 1


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
    add_overwrite_argument(parser)
    parser.add_argument(
        "--seed", type=int, default=None, help="decode seed stored in each stream (uint32)"
    )


def run(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from compressai_vlic.image_io import find_images, load_image  # imports torch: not for --help

    batch = open_batch(
        args,
        find_images,
        STREAM_SUFFIX,
        "encode",
        check=lambda model: model.sampler_settings(args.seed),  # reject a bad seed up front
    )
    if batch is None:
        return 1
    # --max-pixels (the input image limit) also lifts the stream limit, which by default is the
    # decoder's, so that encode never writes a stream decode refuses by default
    stream_limit = STREAM_MAX_PIXELS if args.max_pixels is None else (args.max_pixels or None)
    total_bytes = total_pixels = converted = 0
    start = time.perf_counter()
    bar = tqdm(batch.jobs, unit="img", desc="encode", file=sys.stderr, dynamic_ncols=True)
    for job in bar:
        try:
            image = load_image(job.source)
            if image.conversions:
                converted += 1
                bar.write(f"notice: {job.source}: {'; '.join(image.conversions)}", file=sys.stderr)
            out = batch.model.compress(image.tensor[None], seed=args.seed, max_pixels=stream_limit)
            data = b"".join(out["strings"][0])
            # a full disk leaves no torn stream; a file another run wrote meanwhile is kept
            atomic_write_bytes(job.target, data, overwrite=args.overwrite)
        except (ImageReadError, VLICError, OSError, MemoryError) as exc:  # skip, go on
            bar.write(f"error: {batch.fail(job.source, exc)}", file=sys.stderr)
            continue
        height, width = image.size
        total_bytes += len(data)
        total_pixels += height * width
        bar.set_postfix(bpp=f"{8 * len(data) / (height * width):.4f}")
    bar.close()
    done = batch.done
    summary = f"encoded {done} image(s) to {args.output} in {time.perf_counter() - start:.1f} s"
    if done:
        summary += f": {total_bytes} bytes, {8 * total_bytes / total_pixels:.4f} bpp overall"
    if converted:
        summary += f"; {converted} converted (see notices)"
    print(summary)
    return batch.exit_status()
