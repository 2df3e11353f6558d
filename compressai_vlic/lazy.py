"""PEP 562 lazy exports: a package names its public objects, and each module is imported on first
use, so importing the package pulls in nothing heavy (torch, openai, transformers)."""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from typing import Any


def lazy_exports(
    package: str, modules: Mapping[str, str]
) -> tuple[Callable[[str], Any], list[str], dict[str, str]]:
    """A module-level ``__getattr__``, ``__all__`` and the name-to-module table of a package.

    Args:
        package: the package's ``__name__``.
        modules: submodule (relative to ``package``) -> the space-separated names it exports.
    """
    exports = {
        name: f"{package}.{module}" for module, names in modules.items() for name in names.split()
    }

    def __getattr__(name: str) -> Any:
        if name in exports:
            return getattr(importlib.import_module(exports[name]), name)
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    return __getattr__, sorted(exports), exports
