"""`compressai-vlic eval ...`: CompressAI's own ``eval_model`` with the entry-point plugins registered.

The arguments are CompressAI's, unchanged. Registration happens here, before CompressAI builds its
parser, so the command works with the start-up hook off (``COMPRESSAI_PLUGINS=0``).

Two things differ from the literal ``python -m compressai.utils.eval_model``, both before any
model runs: images too small for MS-SSIM (or unreadable) are reported and skipped instead of
aborting the whole folder, and ``-q/--quality`` also takes the zoo's quality names (``tiny``),
mapped to the integers CompressAI parses; an unknown quality names the integers ``-q`` takes.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from types import ModuleType
from typing import Any

# pytorch_msssim's ms_ssim (eval_model's MS-SSIM, 5 scales, 11-px window) asserts that the
# smaller side exceeds (11 - 1) * 2**4 px.
MS_SSIM_MIN_SIDE = 161
#: Exit status of a typed error (main prints it): 1, as for a failed input.
ERROR_STATUS = 1


def call_main(main: Callable[[list[str]], Any], argv: Sequence[str]) -> int:
    """Run a CompressAI ``main(argv)`` and turn its exits and our typed errors into a status."""
    try:
        main(list(argv))
    except SystemExit as exc:
        if exc.code is None or isinstance(exc.code, int):
            return int(exc.code or 0)
        print(exc.code, file=sys.stderr)
        return 1
    return 0


def map_qualities(argv: Sequence[str]) -> list[str]:
    """``-q tiny,1`` -> ``-q 0,1``: quality names to the integers CompressAI's parser needs.

    Raises:
        ConfigError: a quality that is neither a known name nor an integer; the message names
            the integers ``-q`` takes.
    """
    from compressai_vlic.errors import ConfigError
    from compressai_vlic.zoo import QUALITY_ALIASES, quality_integers

    by_name = {name: alias for alias, name in QUALITY_ALIASES.items()}
    out = list(argv)
    for i, arg in enumerate(out):
        prefix, value = None, None
        if arg in {"-q", "--quality"} and i + 1 < len(out):
            prefix, value, index = "", out[i + 1], i + 1
        elif arg.startswith("--quality="):
            prefix, value, index = "--quality=", arg.split("=", 1)[1], i
        elif arg.startswith("-q") and len(arg) > 2:
            prefix, value, index = "-q", arg[2:], i
        if value is None:
            continue
        mapped = []
        for q in value.split(","):
            q = q.strip()
            if not q:
                continue
            if q in by_name:
                q = by_name[q]
            if not q.lstrip("-").isdigit():
                raise ConfigError(
                    f"-q {q!r}: CompressAI's eval_model takes integer qualities; VLIC's are "
                    f"{quality_integers()}"
                )
            mapped.append(q)
        out[index] = prefix + ",".join(mapped)
    return out


def usable_images(paths: Sequence[Path], report: Callable[[str], None]) -> list[Path]:
    """The images MS-SSIM can score; each other one is reported (why) and left out."""
    from PIL import Image

    kept = []
    for path in paths:
        try:
            with Image.open(path) as image:
                width, height = image.size
        except (OSError, ValueError) as exc:
            report(f"skipped {path}: unreadable ({exc.__class__.__name__}: {exc})")
            continue
        if min(width, height) < MS_SSIM_MIN_SIDE:
            report(
                f"skipped {path}: {width}x{height} px; eval_model's MS-SSIM needs at least "
                f"{MS_SSIM_MIN_SIDE} px per side"
            )
            continue
        kept.append(path)
    return kept


class _SafeTorch:
    """``torch`` as CompressAI's tools see it, except that ``load`` is the package's
    :func:`~compressai_vlic.checkpoints.load_checkpoint` (``weights_only=True`` whatever the
    environment says, one typed line for a refused file)."""

    def __init__(self, torch: ModuleType) -> None:
        self._torch = torch

    def __getattr__(self, name: str) -> Any:
        return getattr(self._torch, name)

    def load(self, f: Any, map_location: Any = None, **_: Any) -> Any:
        from compressai_vlic.checkpoints import load_checkpoint

        if isinstance(f, (str, os.PathLike)):
            return load_checkpoint(f)
        return self._torch.load(f, map_location=map_location, weights_only=True)


@contextmanager
def safe_checkpoint_loads(module: ModuleType) -> Iterator[None]:
    """Inside the block, ``module`` (a CompressAI tool that calls ``torch.load`` itself) loads
    checkpoints through the package's loader: no code runs from a checkpoint, and a refused
    file is one line instead of a traceback."""
    original = module.torch
    module.torch = _SafeTorch(original)
    try:
        yield
    finally:
        module.torch = original


def run_argv(argv: Sequence[str]) -> int:
    """Forward ``argv`` to ``python -m compressai.utils.eval_model``."""
    from compressai_vlic.errors import ConfigError

    try:
        argv = map_qualities(argv)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2

    import torch

    from compressai_vlic.plugins import register_entry_points

    register_entry_points()
    from compressai.utils.eval_model import __main__ as eval_main

    collect = eval_main.collect_images

    def collect_usable(rootpath: str) -> list[Path]:
        found = usable_images(collect(rootpath), lambda line: print(line, file=sys.stderr))
        if not found:
            print(f"error: no image in {rootpath} can be evaluated", file=sys.stderr)
        return found

    threads = torch.get_num_threads()
    eval_main.collect_images = collect_usable
    try:
        # CompressAI sets one thread when its module is first imported; do it on every call so
        # repeated in-process runs time the same way as the literal command.
        torch.set_num_threads(1)
        with safe_checkpoint_loads(eval_main):
            return call_main(eval_main.main, argv)
    finally:
        eval_main.collect_images = collect
        torch.set_num_threads(threads)
