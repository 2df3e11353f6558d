"""The option types of ``compressai-vlic judge audit``, in a module that imports no torch or numpy,
so its parser (and ``--help``) builds at once; :mod:`.scaling` imports them from here."""

from __future__ import annotations

from typing import Literal

#: How per-stimulus scale values are fitted from paired comparisons (:mod:`.scaling`).
ScaleType = Literal["bradley-terry", "thurstone"]
