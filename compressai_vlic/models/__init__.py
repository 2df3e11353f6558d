"""VLIC model package: config, FSQ, encoder, decoder, prior and the CompressAI model.

``VLIC`` is resolved lazily so that importing a light submodule (e.g. ``models.config`` or
``models.prior``) does not build the whole diffusers stack.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from compressai_vlic.models.config import VLICConfig

if TYPE_CHECKING:  # pragma: no cover
    from compressai_vlic.models.vlic import VLIC

__all__ = ["VLIC", "VLICConfig"]


def __getattr__(name: str) -> Any:
    if name == "VLIC":
        from compressai_vlic.models.vlic import VLIC

        return VLIC
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
