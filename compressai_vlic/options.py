"""String options as ``Literal[...]`` types: one definition serves signatures, checks and CLIs.

LightningCLI (jsonargparse) validates ``Literal`` annotations itself; argparse gets
``choices=choices(SomeType)``; plain Python calls get :func:`check_option`'s typed error.
"""

from __future__ import annotations

from typing import Any, Literal, get_args

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


#: The decoder network's arithmetic when sampling: "float32" (default; the same pixels on every
#: machine) or "bfloat16" (autocast: faster on GPUs and CPUs with bf16 units, pixels may differ
#: slightly between machines; the tokens, decoded by the float64 prior, never change).
DecodeDtype = Literal["float32", "bfloat16"]

#: The largest image a VLIC stream may hold by default (4096 x 4096), for ``compress`` and
#: ``decompress`` alike (here, not in the model module, so command-line parsers need no torch).
STREAM_MAX_PIXELS = 1 << 24

#: Default pixel limit of :func:`compressai_vlic.image_io.load_image`: 100 megapixels (e.g.
#: 12000x8333). Decoding one such 8-bit RGB image takes about 2.6 GB.
IMAGE_MAX_PIXELS = 100_000_000
#: Environment variable of the input image pixel limit (0 = no limit).
MAX_PIXELS_ENV = "COMPRESSAI_VLIC_MAX_PIXELS"
#: Environment variable of the image decode memory budget, in MiB (0 = no budget).
MAX_IMAGE_MB_ENV = "COMPRESSAI_VLIC_MAX_IMAGE_MB"


def key_value(text: str) -> tuple[str, Any]:
    """``key=value`` with the value read as JSON when it parses (numbers, booleans, lists).

    Args:
        text: one ``KEY=VALUE`` command-line item.
    """
    import argparse
    import json

    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    try:
        return key, json.loads(value)
    except ValueError:
        return key, value
