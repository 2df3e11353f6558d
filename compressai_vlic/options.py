"""String options as ``Literal[...]`` types: one definition serves signatures, checks and CLIs.

LightningCLI (jsonargparse) validates ``Literal`` annotations itself; argparse gets
``choices=choices(SomeType)``; plain Python calls get :func:`check_option`'s typed error.
"""

from __future__ import annotations

from typing import Any, get_args

from compressai_vlic.errors import ConfigError, VLICError


def choices(options: Any) -> tuple[str, ...]:
    """The values of a ``Literal[...]`` type, e.g. for argparse ``choices=``."""
    values = get_args(options)
    if not values:
        raise TypeError(f"{options!r} is not a Literal type")
    return values


def check_option(name: str, value: Any, options: Any, error: type[VLICError] = ConfigError) -> None:
    """Raise ``error`` unless ``value`` is one of the ``Literal`` type's values."""
    allowed = choices(options)
    if value not in allowed:
        raise error(f"unknown {name} {value!r}; choose from {', '.join(map(repr, allowed))}")


#: The largest image a VLIC stream may hold by default (4096 x 4096), for ``compress`` and
#: ``decompress`` alike (here, not in the model module, so command-line parsers need no torch).
STREAM_MAX_PIXELS = 1 << 24
