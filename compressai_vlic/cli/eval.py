"""`compressai-vlic eval ...`: CompressAI's own ``eval_model`` with the entry-point plugins registered.

The arguments are CompressAI's, unchanged. Registration happens here, before CompressAI builds its
parser, so the command works with the start-up hook off (``COMPRESSAI_PLUGINS=0``).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from types import ModuleType
from typing import Any

from compressai_vlic.errors import VLICError


def call_main(main: Callable[[list[str]], Any], argv: Sequence[str]) -> int:
    """Run a CompressAI ``main(argv)`` and turn its exits and our typed errors into a status."""
    try:
        main(list(argv))
    except SystemExit as exc:
        if exc.code is None or isinstance(exc.code, int):
            return int(exc.code or 0)
        print(exc.code, file=sys.stderr)
        return 1
    except VLICError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


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
    import torch

    from compressai_vlic.plugins import register_entry_points

    register_entry_points()
    threads = torch.get_num_threads()
    try:
        import compressai.utils.eval_model.__main__ as eval_model

        # CompressAI sets one thread when its module is first imported; do it on every call so
        # repeated in-process runs time the same way as the literal command.
        torch.set_num_threads(1)
        with safe_checkpoint_loads(eval_model):
            return call_main(eval_model.main, argv)
    finally:
        torch.set_num_threads(threads)
