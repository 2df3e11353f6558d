"""Trained weights that ship inside the package, described as data (one JSON card per file).

Each card names its safetensors file, the file's sha256 and the config hash of the model it
fits; :func:`shipped_weights` checks both before a single tensor is used. The weights are stored
in float16 (half the size) and load into the float32 model.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from compressai_vlic.errors import CheckpointError

FOLDER = Path(__file__).resolve().parent
#: zoo quality -> card file in this folder
CARDS = {"tiny": "vlic-tiny.json"}


@dataclass(frozen=True)
class ShippedWeights:
    """One shipped weights file and what is known about it."""

    quality: str
    path: Path
    sha256: str
    config_hash: str
    card: dict[str, Any]


def shipped_qualities() -> tuple[str, ...]:
    """Zoo qualities whose weights ship with the package."""
    return tuple(q for q, card in CARDS.items() if (FOLDER / card).is_file())


def shipped_weights(quality: str) -> ShippedWeights:
    """The checked shipped weights of ``quality`` (CheckpointError when absent or altered)."""
    if quality not in CARDS:
        raise CheckpointError(
            f"no weights ship with the package for quality {quality!r}; shipped: {', '.join(CARDS)}"
        )
    card_path = FOLDER / CARDS[quality]
    try:
        card = json.loads(card_path.read_text())
        path = FOLDER / card["file"]
        sha256, config_hash = card["sha256"], card["config_hash"]
    except (OSError, ValueError, KeyError) as exc:
        raise CheckpointError(f"shipped weights card {card_path} is unreadable: {exc}") from exc
    if not path.is_file():
        raise CheckpointError(f"shipped weights file {path} is missing (broken installation)")
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    if digest != sha256:
        raise CheckpointError(
            f"shipped weights {path.name} fail their sha256 check (card {sha256[:12]}..., file "
            f"{digest[:12]}...): reinstall compressai-vlic"
        )
    return ShippedWeights(quality, path, sha256, config_hash, card)
