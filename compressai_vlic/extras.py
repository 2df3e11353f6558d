"""Optional dependencies: import a package from an extra, or say which extra installs it.

The core install (``pip install compressai-vlic``) is what the codec and CompressAI's
``eval_model -a vlic`` need. Training, VLM judges and evaluation metrics live in extras
(``[train]``, ``[judges]``, ``[eval]``, ``[demo]``, ``[all]``); their imports go through
:func:`require` so a missing package fails with the command that installs it.
"""

from __future__ import annotations

import importlib
from types import ModuleType
from typing import Literal

from compressai_vlic.errors import MissingDependencyError, VLICError

ExtraType = Literal["train", "judges", "eval", "demo"]

DISTRIBUTION = "compressai-vlic"


def install_hint(extra: ExtraType) -> str:
    """The pip command that installs an extra."""
    return f"pip install '{DISTRIBUTION}[{extra}]'"


def require(
    module: str,
    extra: ExtraType,
    feature: str,
    error: type[VLICError] = MissingDependencyError,
) -> ModuleType:
    """Import ``module`` (e.g. ``"scipy.optimize"``) that ``feature`` needs.

    Args:
        module: dotted module name to import.
        extra: the extra that installs it, named in the error.
        feature: what needs it, in a few words (e.g. ``"BD-rate with method='pchip'"``).
        error: error class raised when the package is missing (default MissingDependencyError).

    Raises ``error`` only when the package itself is absent; an import error raised inside an
    installed package propagates unchanged.
    """
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as exc:
        top = module.split(".")[0]
        if exc.name is None or exc.name.split(".")[0] != top:
            raise
        raise error(
            f"{feature} needs the '{top}' package, which is not installed: {install_hint(extra)}"
        ) from exc
