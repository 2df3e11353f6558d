"""`compressai-vlic demo`: the demo on a CPU, end to end.

The demo lives with the training code (:mod:`compressai_vlic_lightning.demo`); this command
loads it when it runs.
"""

from __future__ import annotations

import argparse
from types import ModuleType

from compressai_vlic.errors import MissingDependencyError
from compressai_vlic.extras import require


def _demo() -> ModuleType:
    return require("compressai_vlic_lightning.demo", "demo", "`compressai-vlic demo`")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    try:
        demo = _demo()
    except MissingDependencyError as exc:
        parser.error(str(exc))
    demo.add_arguments(parser)


def run(args: argparse.Namespace) -> int:
    return _demo().run(args)
