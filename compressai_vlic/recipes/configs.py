"""The training configs (``configs/train/*.yaml``), found in an installed wheel or a source tree.

The wheel carries the repository's ``configs/`` folder as ``compressai_vlic/configs/``; a source
checkout has it next to the package. The demo job reads the same files the trainer
(``compressai-vlic-train fit --config ...``) reads, so their settings exist once.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from compressai_vlic.errors import ConfigError

__all__ = ["config_dirs", "config_path", "load_config"]

_PACKAGE = Path(__file__).resolve().parents[1]


def config_dirs() -> list[Path]:
    """Where training configs are looked up, in order: the installed package, the source tree."""
    return [_PACKAGE / "configs" / "train", _PACKAGE.parent / "configs" / "train"]


def config_path(name: str) -> Path:
    """The path of training config ``name`` (e.g. ``"tiny_stage1"``, with or without ``.yaml``)."""
    filename = name if name.endswith((".yaml", ".yml")) else f"{name}.yaml"
    for folder in config_dirs():
        if (folder / filename).is_file():
            return folder / filename
    raise ConfigError(
        f"training config {filename!r} not found in {' or '.join(map(str, config_dirs()))}"
    )


def load_config(name: str) -> dict[str, Any]:
    """The parsed YAML of training config ``name``."""
    import yaml

    return yaml.safe_load(config_path(name).read_text())
