"""Argument parsing helpers shared by several sub-commands."""

from __future__ import annotations

import argparse
from typing import Any

from compressai_vlic.options import key_value

__all__ = ["add_image_limit_arguments", "apply_image_limits", "key_value"]


def _non_negative(kind: type) -> Any:
    def parse(text: str) -> Any:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
        if not value >= 0:
            raise argparse.ArgumentTypeError(f"must be >= 0 (0 = no limit), got {text!r}")
        return value

    return parse


def add_image_limit_arguments(parser: argparse.ArgumentParser, pixels: bool = True) -> None:
    """--max-pixels / --max-image-mb: the input image limits, checked on each file's header.

    Args:
        parser: the sub-command's parser.
        pixels: also add --max-pixels (off where the command has its own).
    """
    from compressai_vlic.options import MAX_IMAGE_MB_ENV, MAX_PIXELS_ENV

    group = parser.add_argument_group("input image limits (checked on each file's header)")
    if pixels:
        group.add_argument(
            "--max-pixels",
            type=_non_negative(int),
            default=None,
            help=f"refuse larger images (default ${MAX_PIXELS_ENV} or 100,000,000; 0 = no limit)",
        )
    group.add_argument(
        "--max-image-mb",
        type=_non_negative(float),
        default=None,
        help="refuse images whose decode would take more memory, in MiB (default "
        f"${MAX_IMAGE_MB_ENV} or half the physical memory; 0 = no budget)",
    )


def apply_image_limits(args: argparse.Namespace) -> None:
    """Put the limits given on the command line in force for every image this process (and its
    worker processes) reads, through the environment variables the reader consults."""
    import os

    from compressai_vlic.options import MAX_IMAGE_MB_ENV, MAX_PIXELS_ENV

    if getattr(args, "max_image_mb", None) is not None:
        os.environ[MAX_IMAGE_MB_ENV] = repr(float(args.max_image_mb))
    if getattr(args, "max_pixels", None) is not None:
        os.environ[MAX_PIXELS_ENV] = str(int(args.max_pixels))
