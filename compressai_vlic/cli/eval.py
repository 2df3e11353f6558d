"""`compressai-vlic eval ...`: CompressAI's own ``eval_model`` with the entry-point plugins registered.

The arguments are CompressAI's, unchanged. Registration happens here, before CompressAI builds its
parser, so the command works with the start-up hook off (``COMPRESSAI_PLUGINS=0``).
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
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


def run_argv(argv: Sequence[str]) -> int:
    """Forward ``argv`` to ``python -m compressai.utils.eval_model``."""
    import torch

    from compressai_vlic.plugins import register_entry_points

    register_entry_points()
    threads = torch.get_num_threads()
    try:
        from compressai.utils.eval_model.__main__ import main

        # CompressAI sets one thread when its module is first imported; do it on every call so
        # repeated in-process runs time the same way as the literal command.
        torch.set_num_threads(1)
        return call_main(main, argv)
    finally:
        torch.set_num_threads(threads)
