"""Which VLIC weights: the table of known weights and the one loader for every way to name them.

A weights spec is one string, the same for ``--weights`` on every command line, ``weights:`` in
every YAML and :func:`load_weights` in Python:

- a name from :data:`WEIGHTS` (``tiny`` or ``vlic-tiny``; ``zoo:tiny`` and ``0`` also work): the
  weights that ship inside the package, checked against the row's sha256 and config hash;
- ``random:QUALITY[:SEED]``: untrained weights of a zoo quality (default seed 0), for tests;
- a paper quality (``1``, ``2``): no public weights exist, so they come from
  ``$COMPRESSAI_VLIC_WEIGHTS`` (the only way to pass weights to CompressAI's ``eval_model``);
- a folder written by ``VLIC.save_pretrained``, or a Hugging Face Hub id (``owner/name``);
- a checkpoint file or URL: a bare state dict, a ``compressai-vlic update`` export
  (``NAME-<sha8>.pth.tar``, hash checked), a ``.safetensors`` file, or a Lightning checkpoint,
  whose EMA weights are used when it has them (``last.ckpt#raw`` picks the raw weights).

Checkpoints are read with ``weights_only=True`` and the rest as safetensors, so no weights file can
run code. The table follows timm's pretrained configs: one row per weights file.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from compressai_vlic.errors import CheckpointError

if TYPE_CHECKING:  # pragma: no cover
    import torch

    from compressai_vlic.models.config import VLICConfig
    from compressai_vlic.models.vlic import VLIC

FOLDER = Path(__file__).resolve().parent
#: Where ``vlic(q, pretrained=True)`` looks for weights of a quality without a row of its own.
WEIGHTS_ENV = "COMPRESSAI_VLIC_WEIGHTS"
ZOO_PREFIX = "zoo:"
RANDOM_PREFIX = "random:"
_HASHED_NAME = re.compile(r"-(?P<sha>[0-9a-f]{8})\.pth(\.tar)?$")


@dataclass(frozen=True)
class PretrainedCfg:
    """One row of the weights table (the shape of timm's ``PretrainedCfg``).

    Args:
        name: the weights' name (what ``--weights`` takes).
        quality: the zoo quality whose config the weights fit.
        file: the safetensors file in this folder.
        sha256: the file's sha256, checked before a tensor is used.
        config_hash: the config hash of the model the weights fit.
        licence: SPDX id of the weights' licence (default: the package's).
        hub_id: a Hugging Face Hub id holding the same weights ("" when none).
        url: a download URL of the same file ("" when none).

    Next to the file, a JSON card of the same name holds the training record.
    """

    name: str
    quality: str
    file: str
    sha256: str
    config_hash: str
    licence: str = "Apache-2.0"
    hub_id: str = ""
    url: str = ""

    @property
    def path(self) -> Path:
        return FOLDER / self.file

    @property
    def card(self) -> str:
        return Path(self.file).with_suffix(".json").name


#: Every weights file that ships with the package, by name.
WEIGHTS: dict[str, PretrainedCfg] = {
    "vlic-tiny": PretrainedCfg(
        name="vlic-tiny",
        quality="tiny",
        file="vlic-tiny.safetensors",
        sha256="0afc8c358b9489680b59e9696103fed8d54db5bd02b98cd98c24f7f645f7c56e",
        config_hash="17f14011",
    ),
}
#: zoo quality -> card file in this folder
CARDS = {row.quality: row.card for row in WEIGHTS.values()}


@dataclass(frozen=True)
class ShippedWeights:
    """One shipped weights file and what is known about it."""

    quality: str
    path: Path
    sha256: str
    config_hash: str
    card: dict[str, Any]


@dataclass
class Weights:
    """Weights found by :func:`load_weights`: the tensors and where they came from.

    Args:
        spec: the spec as given.
        source: what was read (a file, a Hub id, or the spec of random weights).
        identity: the sha256 of the bytes read, or the spec of random weights: what caches key on.
        state: the state dict (float32), or None for random weights.
        config: the quality's config of random weights (None otherwise: the state holds it).
        seed: the initialisation seed of random weights.
        quality: the zoo quality of a weights name: its model takes the quality's own config
            (sampler settings included) rather than the one stored with the weights.
    """

    spec: str
    source: str
    identity: str
    state: dict[str, torch.Tensor] | None = field(default=None, repr=False)
    config: VLICConfig | None = None
    seed: int = 0
    quality: str | None = None

    @property
    def label(self) -> str:
        """A short name: ``tiny``, ``random:test``, or the file name without its suffixes."""
        if self.quality is not None:
            return self.quality
        if self.state is None:
            return self.spec.split(":")[1]
        if not Path(self.source).is_file():
            return self.spec
        from compressai_vlic.checkpoints import checkpoint_label

        return checkpoint_label(self.source)

    def model(self, config: VLICConfig | None = None) -> VLIC:
        """The VLIC holding these weights, in eval mode.

        Args:
            config: build this config and load the weights into it (CheckpointError unless the
                architectures match; sampler settings may differ). Default: the weights' own.
        """
        import torch

        from compressai_vlic.checkpoints import load_vlic
        from compressai_vlic.models.vlic import VLIC

        if self.state is None:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(self.seed)
                return VLIC(config or self.config).eval()
        if config is None and self.quality is not None:
            from compressai_vlic.zoo import quality_config

            config = quality_config(self.quality)
        if config is None:
            return load_vlic(self.source, self.state).eval()
        net = VLIC(config)
        net.load_state_dict(self.state)  # CheckpointError when made for another architecture
        return net.eval()


def shipped_qualities() -> tuple[str, ...]:
    """Zoo qualities whose weights ship with the package."""
    return tuple(row.quality for row in WEIGHTS.values() if (FOLDER / row.file).is_file())


def weights_row(name: str) -> PretrainedCfg | None:
    """The table's row of a weights name or zoo quality (``vlic-tiny``, ``tiny``, ``0``)."""
    from compressai_vlic.zoo import quality_key

    key = quality_key(name.removeprefix(ZOO_PREFIX))
    return next((r for r in WEIGHTS.values() if key in (r.name, r.quality)), None)


def shipped_weights(quality: str) -> ShippedWeights:
    """The checked shipped weights of ``quality`` (CheckpointError when absent or altered)."""
    import json

    from compressai_vlic.digest import file_sha256

    row = weights_row(quality)
    if row is None:
        shipped = ", ".join(f"{ZOO_PREFIX}{q}" for q in CARDS) or "none"
        raise CheckpointError(
            f"{quality}: no weights ship with the package for quality {quality!r} (shipped: "
            f"{shipped}); give a checkpoint file instead"
        )
    path = FOLDER / row.file
    if not path.is_file():
        raise CheckpointError(f"shipped weights file {path} is missing (broken installation)")
    digest = file_sha256(path)
    if digest != row.sha256:
        raise CheckpointError(
            f"shipped weights {path.name} fail their sha256 check (table {row.sha256[:12]}..., "
            f"file {digest[:12]}...): reinstall compressai-vlic"
        )
    try:
        card = json.loads((FOLDER / row.card).read_text())
    except (OSError, ValueError):
        card = {}
    return ShippedWeights(row.quality, path, row.sha256, row.config_hash, card)


def how_to_get_weights() -> str:
    """What to do when a paper quality has no weights (none are public)."""
    return (
        "No public VLIC weights exist. Train a model (compressai-vlic-train), export it with "
        "`compressai-vlic update --architecture vlic CKPT -n vlic-<quality>` (writes "
        "vlic-<quality>-<sha8>.pth.tar) or VLIC.save_pretrained(folder), then pass that file, "
        f"folder or Hub id as the weights (or set {WEIGHTS_ENV} for CompressAI's eval_model)."
    )


def load_weights(
    spec: str | os.PathLike[str], quality: str | None = None, ema: bool = True
) -> Weights:
    """The one loader: find and read the weights a spec names (see the module docstring).

    Args:
        spec: a weights name, ``random:QUALITY[:SEED]``, a file, folder, URL or Hub id; a
            ``#raw`` or ``#ema`` suffix picks the weights of a Lightning checkpoint.
        quality: the zoo quality the caller builds, used to find ``vlic-<quality>-<sha8>.pth.tar``
            when the spec is a folder of such exports.
        ema: a Lightning checkpoint's EMA weights when it has them (default), else the raw ones.
    """
    from compressai_vlic.checkpoints import is_url
    from compressai_vlic.models.vlic import CONFIG_KEY, config_to_tensor
    from compressai_vlic.zoo import QUALITIES, quality_config, quality_key

    text = os.fspath(spec).strip()
    base, _, fragment = text.rpartition("#") if text.endswith(("#raw", "#ema")) else (text, "", "")
    ema = ema if not fragment else fragment == "ema"
    if base.startswith(RANDOM_PREFIX):
        quality_name, _, seed = base[len(RANDOM_PREFIX) :].partition(":")
        if seed and not seed.isdigit():
            raise CheckpointError(f"{text}: the seed of random weights must be a whole number")
        config = quality_config(quality_name)  # ConfigError names the qualities
        return Weights(text, text, text, None, config, int(seed or 0))
    row = weights_row(base)  # names come before paths: a folder named "tiny" is ./tiny
    if row is not None:
        shipped = shipped_weights(row.quality)
        state = _safetensors_state(shipped.path)
        # the zoo config (same hash): its sampler settings, as vlic(quality) builds the model
        state[CONFIG_KEY] = config_to_tensor(quality_config(row.quality))
        return Weights(text, str(shipped.path), row.sha256, state, quality=row.quality)
    if base.startswith(ZOO_PREFIX):
        shipped_weights(base[len(ZOO_PREFIX) :])  # raises: names what does ship
    if quality_key(base) in QUALITIES:
        location = os.environ.get(WEIGHTS_ENV)
        if not location:
            raise CheckpointError(f"{base}: no weights for this quality. {how_to_get_weights()}")
        return replace(load_weights(location, quality_key(base), ema), quality=quality_key(base))
    path = Path(base).expanduser()
    if is_url(base):
        return _checkpoint(text, base, ema)
    if path.is_dir():
        return replace(_folder_weights(path, quality, ema), spec=text)
    if path.is_file():
        if path.suffix == ".safetensors":
            from compressai_vlic.digest import file_sha256

            return Weights(text, str(path), file_sha256(path), _safetensors_state(path))
        return _checkpoint(text, path, ema)
    from compressai_vlic.models.hub import is_hub_id, weights_file

    if is_hub_id(base):
        return replace(load_weights(weights_file(base)), spec=text)
    names = ", ".join([*WEIGHTS, *(r.quality for r in WEIGHTS.values())])
    raise CheckpointError(
        f"{text}: no such checkpoint file or folder, and not a weights name ({names}), "
        "random:QUALITY, URL or Hub id (owner/name)"
    )


def _folder_weights(path: Path, quality: str | None, ema: bool) -> Weights:
    """A ``save_pretrained`` folder, or one holding a single ``vlic-<quality>-<sha8>`` export."""
    from compressai_vlic.models.hub import WEIGHTS_NAME

    if (path / WEIGHTS_NAME).is_file():
        return load_weights(path / WEIGHTS_NAME)
    if quality is not None:
        pattern = re.compile(rf"^vlic-{re.escape(quality)}-[0-9a-f]{{8}}\.pth(\.tar)?$")
        matches = sorted(p for p in path.iterdir() if pattern.match(p.name))
        if len(matches) == 1:
            return load_weights(matches[0], ema=ema)
        listed = "none" if not matches else ", ".join(p.name for p in matches)
        raise CheckpointError(
            f"expected exactly one vlic-{quality}-<sha8>.pth.tar in {path}, found {listed}. "
            f"{how_to_get_weights()}"
        )
    raise CheckpointError(
        f"{path} has no {WEIGHTS_NAME}; write one with VLIC.save_pretrained(folder)"
    )


def _safetensors_state(path: Path) -> dict[str, torch.Tensor]:
    """A safetensors file's tensors, half-precision ones in float32 (the model's dtype)."""
    import safetensors.torch
    import torch

    try:
        state = safetensors.torch.load_file(str(path))
    except Exception as exc:  # a truncated or foreign file: one typed line
        raise CheckpointError(f"{path}: not a readable safetensors file ({exc})") from None
    return {
        k: v.float() if v.dtype in (torch.float16, torch.bfloat16) else v for k, v in state.items()
    }


def _checkpoint(spec: str, location: str | Path, ema: bool) -> Weights:
    """The codec's state dict from a torch checkpoint (``weights_only=True``), any layout."""
    from compressai_vlic.checkpoints import is_url, load_state_dict
    from compressai_vlic.digest import file_sha256

    name = str(location)
    identity = name
    if not is_url(location):
        identity = file_sha256(location)
        match = _HASHED_NAME.search(Path(location).name)
        if match is not None and identity[:8] != match.group("sha"):
            raise CheckpointError(
                f"hash check failed for {location}: name says {match.group('sha')}, content is "
                f"{identity[:8]} (corrupted or renamed file)"
            )

    def lightning(ckpt: Any) -> Any:
        """A Lightning checkpoint's codec weights (EMA when asked and present), else ``ckpt``."""
        nested = ckpt.get("state_dict") if isinstance(ckpt, dict) else None
        if not isinstance(nested, dict) or not any(str(k).startswith("model.") for k in nested):
            return ckpt
        if ema and isinstance(ckpt.get("ema_state_dict"), dict):
            nested = ckpt["ema_state_dict"]
        return {k[len("model.") :]: v for k, v in nested.items() if k.startswith("model.")}

    state = load_state_dict(location, unwrap=lightning)  # weights_only; finite tensors only
    return Weights(spec, name, identity, state)
