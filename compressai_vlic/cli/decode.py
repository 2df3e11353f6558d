"""`compressai-vlic decode STREAM(S)|FOLDER -o OUT`: .vlic bitstreams to PNG images.

The stream carries its size, tiling, seed and sampler settings; the model must be the one that
encoded it (its config hash and weights fingerprint are checked; ``--allow-model-mismatch``
accepts other weights of the same architecture, and format-1 streams, which carry no
fingerprint). A foreign, corrupted, truncated or oversized stream is reported with its typed error
and skipped; the exit status is non-zero at the end if any failed. Limits (``--max-pixels``,
``--max-evaluations-per-tile``, ``--max-evaluations``) are checked from each stream's file size
and header before it is read whole or decoded; the defaults accept every stream the same model's
``encode`` writes.
Existing outputs are refused unless ``--overwrite``; every PNG is written atomically.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from compressai_vlic.cli._codec import (
    add_decode_limit_arguments,
    add_model_arguments,
    add_overwrite_argument,
    add_threads_argument,
    decode_limits,
    open_batch,
)
from compressai_vlic.cli.encode import STREAM_SUFFIX
from compressai_vlic.errors import VLICError
from compressai_vlic.options import DecodeDtype, choices

#: Exit status of a typed error (main prints it): 1, as for a failed input.
ERROR_STATUS = 1


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
    parser.add_argument(
        "--allow-model-mismatch",
        action="store_true",
        help="decode streams whose weights fingerprint differs from the model's (same "
        "architecture), and format-1 streams, which carry no fingerprint",
    )
    parser.add_argument(
        "--decode-dtype",
        choices=choices(DecodeDtype),
        default="float32",
        help="the decoder network's arithmetic: float32 (default: the same pixels on every "
        "machine) or bfloat16 (faster on GPUs and CPUs with bf16 units, slower on CPUs without; "
        "the tokens are the same, the pixels may differ slightly between machines)",
    )
    add_decode_limit_arguments(parser)
    add_model_arguments(parser)
    add_threads_argument(parser)
    add_overwrite_argument(parser)


def run(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from compressai_vlic.image_io import save_png  # imports torch: not for --help

    batch = open_batch(args, find_streams, ".png", "decode")
    if batch is None:
        return 1
    limits = decode_limits(args)
    start = time.perf_counter()
    bar = tqdm(batch.jobs, unit="img", desc="decode", file=sys.stderr, dynamic_ncols=True)
    for job in bar:
        try:
            data = batch.model.read_stream(job.source, args.max_pixels)
            x_hat = batch.model.decompress(
                [[data]],
                None,
                allow_model_mismatch=args.allow_model_mismatch,
                decode_dtype=args.decode_dtype,
                **limits,
            )["x_hat"]
            save_png(x_hat, job.target, overwrite=args.overwrite)
        except (VLICError, OSError) as exc:
            bar.write(f"error: {batch.fail(job.source, exc)}", file=sys.stderr)
            continue
        bar.set_postfix(size=f"{x_hat.shape[-1]}x{x_hat.shape[-2]}")
    bar.close()
    elapsed = time.perf_counter() - start
    print(f"decoded {batch.done} stream(s) to {args.output} in {elapsed:.1f} s")
    return batch.exit_status()
