"""The training configs (``configs/train/*.yaml``): where they are, and how they are read.

The wheel carries the repository's ``configs/`` folder as ``compressai_vlic/configs/``; a source
checkout has it next to the package. A config is read by the parser LightningCLI builds
(``compressai-vlic-train fit --config ...``), so a value a file leaves out takes the default of
the class's signature, and a file may start from another one: ``config: base.yaml`` (its path
relative to the file) followed by dotted keys (``model.init_args.quality: "2"``) that change
single values of the base; an undotted section (``data:``) replaces the base's section.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import compressai_vlic
from compressai_vlic.errors import ConfigError

__all__ = [
    "config_dirs",
    "config_parser",
    "config_path",
    "list_configs",
    "parse_config",
    "resolve_config",
]

#: The ``compressai_vlic`` folder: its ``configs/`` in a wheel, next to it in a source tree.
_PACKAGE = Path(compressai_vlic.__file__).resolve().parent


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


@functools.cache
def config_parser() -> Any:
    """The parser of ``compressai-vlic-train fit``'s configuration, as LightningCLI builds it:
    ``trainer`` (the Trainer's signature), ``model`` and ``data`` (any module class, by
    ``class_path``), ``seed_everything`` and ``--config``."""
    from typing import Union

    from compressai_vlic.extras import require

    require("jsonargparse", "train", "Reading a training config")
    pl = require("pytorch_lightning", "train", "Reading a training config")
    from jsonargparse import ActionConfigFile
    from pytorch_lightning.cli import LightningArgumentParser

    import compressai_vlic_lightning

    compressai_vlic_lightning.load_all()  # the classes the configs name
    parser = LightningArgumentParser(exit_on_error=False)
    parser.add_argument("-c", "--config", action=ActionConfigFile)
    parser.add_argument("--seed_everything", type=Union[bool, int], default=True)  # noqa: UP007
    parser.add_lightning_class_args(pl.Trainer, "trainer")
    parser.add_lightning_class_args(pl.LightningModule, "model", subclass_mode=True)
    parser.add_lightning_class_args(pl.LightningDataModule, "data", subclass_mode=True)
    return parser


def parse_config(*configs: str | Path, args: Sequence[str] = ()) -> dict[str, Any]:
    """The configuration ``compressai-vlic-train fit --config C1 --config C2 ... ARGS`` runs.

    Args:
        configs: files or shipped config names, laid over each other in order.
        args: command-line style overrides, e.g. ``["--model.init_args.lr", "1e-4"]``.

    Returns:
        The parsed configuration as nested dicts of plain values (YAML-serialisable), every
        option the config leaves out at its class's default (``model`` and ``data``:
        ``{"class_path": ..., "init_args": {...}}``); the files it came from are not included.

    Raises:
        ConfigError: a config file is missing or does not parse.
    """
    argv = [a for c in configs for a in ("--config", str(resolve_config(c)))]
    try:
        namespace = config_parser().parse_args([*argv, *args])
    except Exception as exc:  # jsonargparse's ArgumentError / TypeError on a bad value
        if isinstance(exc, ConfigError):
            raise
        where = " + ".join(map(str, configs)) or "the arguments"
        raise ConfigError(f"{where}: {exc}") from exc
    import yaml

    # the parser's own serialisation (timedeltas, paths...), as `fit` saves its config.yaml
    resolved = yaml.safe_load(
        config_parser().dump(namespace, skip_unset=False, skip_validation=True)
    )
    resolved.pop("config", None)  # the files read
    return resolved
