"""The training configs (``configs/train/*.yaml``), found in an installed wheel or a source tree.

The wheel carries the repository's ``configs/`` folder as ``compressai_vlic/configs/``; a source
checkout has it next to the package. The demo job reads the same files the trainer
(``compressai-vlic-train fit --config ...``) reads, so their settings exist once.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from compressai_vlic.errors import ConfigError

__all__ = ["config_dirs", "config_path", "list_configs", "load_config", "resolve_config"]

_PACKAGE = Path(__file__).resolve().parents[1]


def config_dirs() -> list[Path]:
    """Where training configs are looked up, in order: the installed package, the source tree."""
    return [_PACKAGE / "configs" / "train", _PACKAGE.parent / "configs" / "train"]


def list_configs() -> list[str]:
    """Names of the training configs that ship with the package (``config_path`` takes them)."""
    names: set[str] = set()
    for folder in config_dirs():
        if folder.is_dir():
            names.update(p.stem for p in folder.iterdir() if p.suffix in {".yaml", ".yml"})
    return sorted(names)


def config_path(name: str) -> Path:
    """The path of training config ``name`` (e.g. ``"tiny_stage1"``, with or without ``.yaml``)."""
    filename = name if name.endswith((".yaml", ".yml")) else f"{name}.yaml"
    for folder in config_dirs():
        if (folder / filename).is_file():
            return folder / filename
    raise ConfigError(
        f"training config {filename!r} not found in {' or '.join(map(str, config_dirs()))}; "
        f"the shipped configs are: {', '.join(list_configs()) or 'none'}"
    )


def resolve_config(path_or_name: str | Path) -> Path:
    """A config file given as a path, or a shipped config by name.

    ``configs/train/paper_q1_stage1.yaml`` works from the repository root, and from any other
    folder (the name is looked up among the shipped configs when no such file exists there);
    ``paper_q1_stage1`` works anywhere.

    Raises:
        ConfigError: neither a file nor a shipped config; the message lists the shipped ones.
    """
    path = Path(path_or_name).expanduser()
    if path.is_file():
        return path
    name = path.name
    filename = name if name.endswith((".yaml", ".yml")) else f"{name}.yaml"
    if any((folder / filename).is_file() for folder in config_dirs()):
        return config_path(name)
    raise ConfigError(
        f"config {str(path_or_name)!r} is neither a file nor a shipped config; the shipped "
        f"configs are: {', '.join(list_configs()) or 'none'}"
    )


def load_config(name: str) -> dict[str, Any]:
    """The parsed YAML of training config ``name``."""
    import yaml

    return yaml.safe_load(config_path(name).read_text())
