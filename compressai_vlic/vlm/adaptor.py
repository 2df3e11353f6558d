"""A codec-conditioned vision-encoder adaptor for Hugging Face VLMs: C = T(codec, rate level).

A VLM's vision encoder sees a compressed image without knowing how it was compressed. The adaptor
tells it: a one-hot over m codecs x n rate levels, embedded to the encoder's width (one learned
row per codec x level, zero-initialised so the adapted model starts equal to the base), is added
to the position embedding of the vision tower, through a forward hook (no transformers code is
copied or patched):

- towers with learned absolute position embeddings (CLIP, SigLIP: LLaVA, PaliGemma, ...): C is
  added to the output of the embeddings module, i.e. to every row of the position-embedding
  table (``patch + (pos + C)``); :func:`bake_condition` folds it into the table for good.
- rotary towers (Qwen2-VL, Qwen2.5-VL) have no position table to add to (their position enters
  through RoPE inside attention); C is added to the patch embeddings before the first block,
  which is the same additive shift of every token that a position-table offset gives.

Optionally the last N vision blocks are fine-tuned with it (``trainable="condition+last-blocks"``);
the language model is never touched. The adaptor is one safetensors file: tensors
``condition.weight`` (m*n, width) and ``blocks.<parameter name>``, plus JSON metadata in the
header (base model, vision-config and weight hashes, codecs, levels, training bpp per level).

Codec names and levels: level ``i`` of a codec is its ``i``-th rate point at training time
(give them low to high). A codec the adaptor has not seen resolves by this rule, in order:

1. a user mapping (``codec_map={"avif": "webp"}``): that seen codec at the same level;
2. with ``bpp`` given: the seen codec x level whose mean training bpp is nearest in log-bpp;
3. otherwise: the seen codec x level nearest in log-bpp to the mean training bpp of ``level``
   over the seen codecs (with matched-rate training levels, the same level of the seen codec
   that landed closest to that rate).

``"uncompressed"`` (or ``"original"``, ``"none"``) clears the condition (C = 0).
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, get_args

import torch
from torch import nn

from compressai_vlic.errors import AdaptorError, AdaptorMismatchError, ConfigError
from compressai_vlic.options import check_option
from compressai_vlic.vlm.options import TrainableType

FORMAT = "compressai-vlic-adaptor"
FORMAT_VERSION = 1
METADATA_KEY = "compressai_vlic_adaptor"
CONDITION_KEY = "condition.weight"
BLOCK_PREFIX = "blocks."
UNCOMPRESSED_NAMES = ("uncompressed", "original", "none")

TowerKind = Literal["absolute", "rotary"]

_TOWER_NAMES = ("vision_tower", "visual", "vision_model", "vision_encoder")
_BLOCK_LIST_NAMES = ("layers", "blocks", "layer")
_VOLATILE_CONFIG_KEYS = {
    "transformers_version",
    "torch_dtype",
    "dtype",
    "architectures",
    "output_hidden_states",
    "output_attentions",
    "return_dict",
    "use_return_dict",
    "name_or_path",
}
_ATTACHED_ATTR = "_compressai_vlic_adaptor"


# --------------------------------------------------------------------------- locating the tower
@dataclass(frozen=True)
class VisionTower:
    """Where the condition goes in one VLM: the tower, the module whose output gets C, its blocks."""

    kind: TowerKind
    path: str  # the tower's name in model.named_modules()
    module: nn.Module
    hook_path: str  # the module whose output C is added to
    hook_module: nn.Module
    width: int
    blocks_path: str
    blocks: nn.ModuleList


def _find_blocks(tower: nn.Module, tower_path: str) -> tuple[str, nn.ModuleList]:
    for name, sub in tower.named_modules():
        if (
            isinstance(sub, nn.ModuleList)
            and len(sub)
            and name.rsplit(".", 1)[-1] in _BLOCK_LIST_NAMES
        ):
            return (f"{tower_path}.{name}" if tower_path else name), sub
    raise ConfigError(f"{tower_path}: no list of transformer blocks (layers/blocks) in the tower")


def find_vision_tower(model: nn.Module) -> VisionTower:
    """Locate a VLM's vision tower and the module the condition is added to.

    Args:
        model: a loaded image-text-to-text model (LLaVA/CLIP, SigLIP towers, Qwen2-VL, ...).

    Raises :class:`~compressai_vlic.errors.ConfigError` for a tower this adaptor cannot condition.
    """
    for tower_path, tower in model.named_modules():  # noqa: B007 (used after the loop)
        if tower_path.rsplit(".", 1)[-1] in _TOWER_NAMES:
            break
    else:
        raise ConfigError(
            f"{type(model).__name__}: no vision tower found (looked for a sub-module named "
            f"{', '.join(_TOWER_NAMES)})"
        )
    for name, sub in tower.named_modules():
        pos = getattr(sub, "position_embedding", None)
        if isinstance(pos, nn.Embedding) and hasattr(sub, "patch_embedding"):
            hook_path = f"{tower_path}.{name}" if name else tower_path
            blocks_path, blocks = _find_blocks(tower, tower_path)
            return VisionTower(
                "absolute",
                tower_path,
                tower,
                hook_path,
                sub,
                pos.embedding_dim,
                blocks_path,
                blocks,
            )
    patch = getattr(tower, "patch_embed", None)
    if isinstance(patch, nn.Module) and hasattr(tower, "rotary_pos_emb"):
        width = getattr(patch, "embed_dim", None)
        if width is None:
            width = getattr(getattr(patch, "proj", None), "out_channels", None)
        if not isinstance(width, int):
            raise ConfigError(f"{tower_path}.patch_embed: cannot tell its output width")
        blocks_path, blocks = _find_blocks(tower, tower_path)
        return VisionTower(
            "rotary",
            tower_path,
            tower,
            f"{tower_path}.patch_embed",
            patch,
            width,
            blocks_path,
            blocks,
        )
    raise ConfigError(
        f"{tower_path} ({type(tower).__name__}): neither an absolute position embedding "
        "(CLIP/SigLIP-style) nor a rotary patch-embedding tower (Qwen2-VL-style)"
    )


def _vision_config(model: nn.Module, tower: VisionTower) -> dict[str, Any]:
    config = getattr(tower.module, "config", None)
    if config is None:
        config = getattr(getattr(model, "config", None), "vision_config", None)
    if config is None:
        return {}
    data = config.to_dict() if hasattr(config, "to_dict") else dict(vars(config))
    return {
        k: v for k, v in data.items() if not k.startswith("_") and k not in _VOLATILE_CONFIG_KEYS
    }


def _hash_params(named: list[tuple[str, torch.Tensor]]) -> str:
    digest = hashlib.sha256()
    for name, tensor in sorted(named, key=lambda item: item[0]):
        digest.update(name.encode())
        # bf16 bytes: the same weights loaded in float32, bfloat16 or float16 hash alike
        data = tensor.detach().to("cpu", torch.bfloat16).contiguous().view(torch.int16)
        digest.update(data.numpy().tobytes())
    return digest.hexdigest()[:16]


def base_fingerprint(model: nn.Module, tower: VisionTower | None = None) -> dict[str, str]:
    """What an adaptor is checked against: base model id, vision-config hash, weight hash.

    The weight hash covers the conditioned module and the first and last vision block (enough to
    tell another checkpoint of the same architecture apart, cheap on a 600M-parameter tower).
    """
    tower = tower or find_vision_tower(model)
    config_text = json.dumps(_vision_config(model, tower), sort_keys=True, default=str)
    named = [(f"hook.{n}", p) for n, p in tower.hook_module.named_parameters()]
    named += [(f"first.{n}", p) for n, p in tower.blocks[0].named_parameters()]
    named += [(f"last.{n}", p) for n, p in tower.blocks[-1].named_parameters()]
    return {
        "base_model": str(getattr(model, "name_or_path", "") or ""),
        "architecture": type(model).__name__,
        "config_hash": hashlib.sha256(config_text.encode()).hexdigest()[:16],
        "weights_hash": _hash_params(named),
    }


# --------------------------------------------------------------------------- the handle
def _log_distance(a: float, b: float) -> float:
    return abs(math.log(max(a, 1e-9)) - math.log(max(b, 1e-9)))


class AdaptorHandle:
    """An adaptor attached to a model: choose the condition, save it, remove it.

    Made by :func:`create_adaptor` (fresh, zero-initialised, for training) or :func:`load_adaptor`.
    While attached, every forward of the model's vision tower adds C for the current condition;
    with no condition set (or ``"uncompressed"``) C = 0.
    """

    def __init__(
        self,
        model: nn.Module,
        tower: VisionTower,
        codecs: Mapping[str, list[str]],
        bpp: Mapping[str, list[float | None]] | None,
        trainable: TrainableType,
        block_names: list[str],
        fingerprint: dict[str, str],
        codec_map: Mapping[str, str] | None = None,
        training: dict[str, Any] | None = None,
    ) -> None:
        check_option("trainable", trainable, TrainableType)
        if not codecs or any(not levels for levels in codecs.values()):
            raise ConfigError("an adaptor needs at least one codec with at least one rate level")
        if getattr(model, _ATTACHED_ATTR, None) is not None:
            raise AdaptorError(
                "this model already has an adaptor attached; call handle.remove() on it first"
            )
        self.model = model
        self.tower = tower
        self.codecs = {name: list(levels) for name, levels in codecs.items()}
        self.bpp = {
            name: list((bpp or {}).get(name) or [None] * len(levels))
            for name, levels in self.codecs.items()
        }
        self.trainable = trainable
        self.block_names = list(block_names)
        self.fingerprint = dict(fingerprint)
        self.codec_map = dict(codec_map or {})
        self.training = dict(training or {})
        for source, target in self.codec_map.items():
            if target not in self.codecs:
                raise ConfigError(
                    f"codec_map {source!r} -> {target!r}: {target!r} is not one of the adaptor's "
                    f"codecs ({', '.join(self.codecs)})"
                )
        self.num_levels = max(len(levels) for levels in self.codecs.values())
        ref = next(iter(tower.hook_module.parameters()), None)
        device = ref.device if ref is not None else torch.device("cpu")
        self.embedding = nn.Embedding(
            len(self.codecs) * self.num_levels, tower.width, device=device
        )
        nn.init.zeros_(self.embedding.weight)
        params = dict(model.named_parameters())
        missing = [name for name in self.block_names if name not in params]
        if missing:
            raise AdaptorError(f"the model has no parameter {missing[0]!r} (of {len(missing)})")
        self._block_params = {name: params[name] for name in self.block_names}
        # the base values, kept on the CPU so remove() restores the base model exactly
        self._originals = {
            n: p.detach().to("cpu", copy=True) for n, p in self._block_params.items()
        }
        self._index: int | None = None
        self.condition: tuple[str, int] | None = None
        self._id: str | None = None
        self._removed = False
        self._hook = tower.hook_module.register_forward_hook(self._add_condition)
        setattr(model, _ATTACHED_ATTR, self)

    # ---- the condition
    def _add_condition(self, module: nn.Module, args: Any, output: Any) -> Any:
        if self._index is None:
            return None
        if not torch.is_tensor(output):
            raise AdaptorError(
                f"{self.tower.hook_path} returned {type(output).__name__}, not a tensor"
            )
        c = self.embedding.weight[self._index].to(device=output.device, dtype=output.dtype)
        return output + c

    def _flat_index(self, codec: str, level: int) -> int:
        return list(self.codecs).index(codec) * self.num_levels + level

    def resolve(
        self, codec_name: str, rate_level: int, bpp: float | None = None
    ) -> tuple[str, int]:
        """The seen (codec, level) a request maps to (see the module docstring for the rule)."""
        if not isinstance(rate_level, int) or isinstance(rate_level, bool) or rate_level < 0:
            raise ConfigError(f"rate_level must be an integer >= 0, got {rate_level!r}")
        name = self.codec_map.get(codec_name, codec_name)
        if name in self.codecs:
            if rate_level >= len(self.codecs[name]):
                raise ConfigError(
                    f"{codec_name!r} has {len(self.codecs[name])} rate levels in this adaptor "
                    f"({', '.join(self.codecs[name])}); got level {rate_level}"
                )
            return name, rate_level
        known = [
            (codec, level, b)
            for codec, values in self.bpp.items()
            for level, b in enumerate(values)
            if b is not None
        ]
        if bpp is not None:
            if not (math.isfinite(bpp) and bpp > 0):
                raise ConfigError(f"bpp must be a positive number, got {bpp!r}")
            if known:
                codec, level, _ = min(known, key=lambda item: _log_distance(item[2], bpp))
                return codec, level
        if rate_level >= self.num_levels:
            raise ConfigError(
                f"unseen codec {codec_name!r} at level {rate_level}: the adaptor has "
                f"{self.num_levels} levels; give its bpp or a codec_map entry"
            )
        at_level = [b for codec, level, b in known if level == rate_level]
        if at_level:
            reference = sum(at_level) / len(at_level)
            codec, level, _ = min(known, key=lambda item: _log_distance(item[2], reference))
            return codec, level
        for codec, levels in self.codecs.items():  # no bpp recorded: first codec with the level
            if rate_level < len(levels):
                return codec, rate_level
        raise ConfigError(f"no seen codec has rate level {rate_level}")  # unreachable

    def set_condition(
        self, codec_name: str, rate_level: int, bpp: float | None = None
    ) -> tuple[str, int] | None:
        """Condition the vision tower on ``codec_name`` at ``rate_level``; returns what it used.

        Args:
            codec_name: a codec name as in ``compare`` (``jpeg``, ``webp``, ``vlic``, ...);
                ``"uncompressed"`` clears the condition.
            rate_level: index of the rate point (0 = the lowest rate the adaptor was trained on).
            bpp: the image's real bpp, used only to map an unseen codec (default None).
        """
        self._check_attached()
        if codec_name in UNCOMPRESSED_NAMES:
            self.clear_condition()
            return None
        codec, level = self.resolve(codec_name, rate_level, bpp)
        self._index = self._flat_index(codec, level)
        self.condition = (codec, level)
        return codec, level

    def clear_condition(self) -> None:
        """No condition: C = 0 (the base position embeddings)."""
        self._index = None
        self.condition = None

    # ---- parameters, state, identity
    def trainable_parameters(self) -> list[nn.Parameter]:
        """The condition table plus, with ``condition+last-blocks``, the tuned block weights."""
        return [self.embedding.weight, *self._block_params.values()]

    def state_tensors(self) -> dict[str, torch.Tensor]:
        """The tensors the adapter file holds (contiguous CPU copies)."""
        tensors = {CONDITION_KEY: self.embedding.weight.detach().float().cpu().contiguous()}
        for name, param in self._block_params.items():
            tensors[BLOCK_PREFIX + name] = param.detach().cpu().contiguous()
        return tensors

    def metadata(self) -> dict[str, Any]:
        """The JSON metadata stored in the file's header."""
        return {
            "format": FORMAT,
            "version": FORMAT_VERSION,
            "base": self.fingerprint,
            "tower": {
                "kind": self.tower.kind,
                "path": self.tower.path,
                "hook": self.tower.hook_path,
                "width": self.tower.width,
            },
            "codecs": self.codecs,
            "bpp": self.bpp,
            "num_levels": self.num_levels,
            "trainable": self.trainable,
            "block_params": self.block_names,
            "training": self.training,
        }

    def to_bytes(self) -> bytes:
        """The adapter file's bytes (safetensors with the metadata in its header)."""
        from safetensors.torch import save

        meta = {METADATA_KEY: json.dumps(self.metadata(), sort_keys=True)}
        return save(self.state_tensors(), metadata=meta)

    @property
    def adaptor_id(self) -> str:
        """A short content hash of the adapter (its file bytes); names adapted runs in caches."""
        if self._id is None:
            return hashlib.sha256(self.to_bytes()).hexdigest()[:12]
        return self._id

    def save(self, path: str | Path, overwrite: bool = False) -> Path:
        """Write the adapter file (atomically; an existing file is kept unless ``overwrite``)."""
        from compressai_vlic.atomic import atomic_write_bytes, refuse_existing

        refuse_existing(path, overwrite)
        data = self.to_bytes()
        atomic_write_bytes(path, data, overwrite)
        self._id = hashlib.sha256(data).hexdigest()[:12]
        return Path(path)

    # ---- base / adapted switching
    def _check_attached(self) -> None:
        if self._removed:
            raise AdaptorError("this adaptor was removed from its model; load it again")

    def _write_blocks(self, values: Mapping[str, torch.Tensor]) -> None:
        with torch.no_grad():
            for name, param in self._block_params.items():
                param.copy_(values[name].to(device=param.device, dtype=param.dtype))

    @contextmanager
    def bypassed(self) -> Iterator[None]:
        """Run the base model for a while: no condition and the original block weights."""
        self._check_attached()
        index, condition = self._index, self.condition
        tuned = {n: p.detach().clone() for n, p in self._block_params.items()}
        self.clear_condition()
        self._write_blocks(self._originals)
        try:
            yield
        finally:
            self._write_blocks(tuned)
            self._index, self.condition = index, condition

    def _detach(self, restore: bool) -> None:
        self._check_attached()
        self._hook.remove()
        if restore:
            self._write_blocks(self._originals)
        self._removed = True
        if getattr(self.model, _ATTACHED_ATTR, None) is self:
            delattr(self.model, _ATTACHED_ATTR)

    def remove(self) -> None:
        """Detach the adaptor and restore the base model (block weights included)."""
        self._detach(restore=True)

    def __enter__(self) -> AdaptorHandle:
        return self

    def __exit__(self, *exc: object) -> None:
        if not self._removed:
            self.remove()

    def __repr__(self) -> str:
        return (
            f"AdaptorHandle(id={self.adaptor_id}, codecs={list(self.codecs)}, levels={self.num_levels}, "
            f"trainable={self.trainable!r}, condition={self.condition})"
        )


# --------------------------------------------------------------------------- create / load
def _patch_module(tower: VisionTower) -> str:
    """The patch projection, relative to the conditioned module."""
    if tower.kind == "absolute":
        return "patch_embedding"
    return ""  # rotary: the hooked module is the patch embedding itself


def create_adaptor(
    model: nn.Module,
    codecs: Mapping[str, list[str]],
    trainable: TrainableType = "condition",
    last_blocks: int = 1,
    bpp: Mapping[str, list[float | None]] | None = None,
) -> AdaptorHandle:
    """Attach a fresh, zero-initialised adaptor (the model's outputs are unchanged until trained).

    Args:
        model: a loaded image-text-to-text model.
        codecs: codec name -> its rate point labels, low to high (level i = the i-th).
        trainable: ``"condition"`` (the table only) or ``"condition+last-blocks"``
            (default ``"condition"``).
        last_blocks: how many of the last vision blocks train with ``condition+last-blocks``
            (default 1).
        bpp: codec name -> mean training bpp per level, for mapping unseen codecs (default None).
    """
    check_option("trainable", trainable, TrainableType)
    tower = find_vision_tower(model)
    block_names: list[str] = []
    if trainable == "condition+last-blocks":
        if not 1 <= last_blocks <= len(tower.blocks):
            raise ConfigError(
                f"last_blocks must be in 1..{len(tower.blocks)} for this tower, got {last_blocks}"
            )
        first = len(tower.blocks) - last_blocks
        for i in range(first, len(tower.blocks)):
            block_names += [
                f"{tower.blocks_path}.{i}.{n}" for n, _ in tower.blocks[i].named_parameters()
            ]
    elif trainable == "condition+patch-embedding":
        prefix = ".".join(p for p in (tower.hook_path, _patch_module(tower)) if p)
        patch = model.get_submodule(prefix)
        block_names = [f"{prefix}.{n}" for n, _ in patch.named_parameters()]
    elif trainable == "condition+vision-tower":
        block_names = [f"{tower.path}.{n}" for n, _ in tower.module.named_parameters()]
    return AdaptorHandle(
        model, tower, codecs, bpp, trainable, block_names, base_fingerprint(model, tower)
    )


def read_adaptor_file(path: str | Path) -> tuple[dict[str, Any], dict[str, torch.Tensor], str]:
    """Metadata, tensors and content id of an adapter file, with typed errors for bad files."""
    from safetensors import SafetensorError
    from safetensors.torch import load

    path = Path(path)
    if not path.is_file():
        raise AdaptorError(f"{path}: no such adaptor file")
    data = path.read_bytes()
    try:
        tensors = load(data)
        header_len = int.from_bytes(data[:8], "little")
        header = json.loads(data[8 : 8 + header_len])
    except (SafetensorError, ValueError, OSError) as exc:
        raise AdaptorError(f"{path}: not a safetensors file ({exc})") from exc
    raw = (header.get("__metadata__") or {}).get(METADATA_KEY)
    if raw is None:
        raise AdaptorError(f"{path}: a safetensors file without adaptor metadata (not an adaptor)")
    try:
        meta = json.loads(raw)
    except ValueError as exc:
        raise AdaptorError(f"{path}: adaptor metadata is not valid JSON ({exc})") from exc
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise AdaptorError(f"{path}: metadata does not describe a {FORMAT} file")
    if meta.get("version") != FORMAT_VERSION:
        raise AdaptorError(
            f"{path}: adaptor format version {meta.get('version')!r}; this package reads "
            f"version {FORMAT_VERSION}"
        )
    required = {"base": dict, "tower": dict, "codecs": dict, "trainable": str, "block_params": list}
    for key, kind in required.items():
        if not isinstance(meta.get(key), kind):
            raise AdaptorError(
                f"{path}: metadata field {key!r} is missing or not a {kind.__name__}"
            )
    if CONDITION_KEY not in tensors:
        raise AdaptorError(f"{path}: no {CONDITION_KEY!r} tensor")
    expected = {CONDITION_KEY} | {BLOCK_PREFIX + n for n in meta["block_params"]}
    if set(tensors) != expected:
        extra = sorted(set(tensors) ^ expected)
        raise AdaptorError(f"{path}: tensors and metadata disagree (e.g. {extra[0]!r})")
    return meta, tensors, hashlib.sha256(data).hexdigest()[:12]


def check_base(model: nn.Module, meta: dict[str, Any], path: str | Path = "adaptor") -> VisionTower:
    """Raise :class:`AdaptorMismatchError` unless the adaptor was trained on this base model."""
    tower = find_vision_tower(model)
    here = base_fingerprint(model, tower)
    base = meta["base"]
    for key, what in (("config_hash", "vision config"), ("weights_hash", "vision weights")):
        if base.get(key) != here[key]:
            raise AdaptorMismatchError(
                f"{path}: trained on {base.get('base_model') or '?'} ({base.get('architecture')}, "
                f"{what} {base.get(key)}); this model is {here['base_model'] or '?'} "
                f"({here['architecture']}, {what} {here[key]})"
            )
    if meta["tower"].get("width") != tower.width:
        raise AdaptorMismatchError(
            f"{path}: condition width {meta['tower'].get('width')} != tower width {tower.width}"
        )
    return tower


def load_adaptor(
    model: nn.Module, path: str | Path, codec_map: Mapping[str, str] | None = None
) -> AdaptorHandle:
    """Attach an adapter file to ``model`` (a loaded HF image-text-to-text model).

    Args:
        model: the base model the adaptor was trained on (checked by config and weight hash).
        path: the ``.safetensors`` adapter file.
        codec_map: unseen codec name -> seen codec name, overriding the nearest-bpp rule
            (default None).

    Raises :class:`AdaptorError` for a missing or malformed file and
    :class:`AdaptorMismatchError` for an adaptor trained on another base model.
    """
    if getattr(model, _ATTACHED_ATTR, None) is not None:
        raise AdaptorError(
            "this model already has an adaptor attached; call handle.remove() on it first"
        )
    meta, tensors, content_id = read_adaptor_file(path)
    tower = check_base(model, meta, path)
    codecs = meta["codecs"]
    if not all(isinstance(v, list) and v for v in codecs.values()) or not codecs:
        raise AdaptorError(f"{path}: metadata 'codecs' must map names to non-empty level lists")
    num_levels = max(len(v) for v in codecs.values())
    weight = tensors[CONDITION_KEY]
    if tuple(weight.shape) != (len(codecs) * num_levels, tower.width):
        raise AdaptorError(
            f"{path}: {CONDITION_KEY} has shape {tuple(weight.shape)}, expected "
            f"{(len(codecs) * num_levels, tower.width)} for {len(codecs)} codecs x {num_levels} levels"
        )
    params = dict(model.named_parameters())
    for name in meta["block_params"]:
        if name not in params or params[name].shape != tensors[BLOCK_PREFIX + name].shape:
            raise AdaptorMismatchError(f"{path}: {name!r} does not fit this model")
    trainable = meta["trainable"]
    if trainable not in get_args(TrainableType):
        raise AdaptorError(f"{path}: unknown trainable {trainable!r}")
    handle = AdaptorHandle(
        model,
        tower,
        codecs,
        meta.get("bpp"),
        trainable,
        meta["block_params"],
        meta["base"],
        codec_map=codec_map,
        training=meta.get("training"),
    )
    with torch.no_grad():
        handle.embedding.weight.copy_(weight)
    handle._write_blocks({n: tensors[BLOCK_PREFIX + n] for n in handle.block_names})
    handle._id = content_id
    return handle


def bake_condition(handle: AdaptorHandle, codec_name: str, rate_level: int) -> tuple[str, int]:
    """Fold C for one condition into the position-embedding table and detach the hook.

    The model then carries the adaptation as plain weights (``save_pretrained`` writes a normal
    checkpoint). Only towers with an absolute position table can take it: a rotary tower's patch
    projection has no bias to fold C into, so load the adaptor at run time there instead.
    """
    if handle.tower.kind != "absolute":
        raise ConfigError(
            f"{handle.tower.path} is a rotary tower: there is no position table to fold C into; "
            "attach the adaptor at run time with load_adaptor()"
        )
    used = handle.set_condition(codec_name, rate_level)
    if used is None:
        raise ConfigError("choose a codec and level to bake, not 'uncompressed'")
    table = handle.tower.hook_module.position_embedding.weight
    with torch.no_grad():
        table.add_(handle.embedding.weight[handle._index].to(table.dtype))
    handle._detach(restore=False)
    return used


def save_adapted_model(
    model: nn.Module,
    processor: Any,
    handle: AdaptorHandle,
    codec_name: str,
    rate_level: int,
    folder: str | Path,
) -> tuple[str, int]:
    """Write ``model`` adapted for one condition as a normal Hugging Face model folder.

    The condition is folded into the position table (:func:`bake_condition`), tuned blocks stay
    in place, and ``config.json`` records the adaptor id and condition. ``folder`` must be new or
    empty: nothing is overwritten.
    """
    folder = Path(folder)
    if folder.exists() and (not folder.is_dir() or any(folder.iterdir())):
        raise ConfigError(f"{folder}: exists and is not an empty folder; choose a new one")
    adaptor_id = handle.adaptor_id
    used = bake_condition(handle, codec_name, rate_level)
    model.config.compressai_vlic_adaptor = {
        "adaptor_id": adaptor_id,
        "codec": used[0],
        "rate_level": used[1],
        "requested": [codec_name, rate_level],
    }
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder)
    if processor is not None:
        processor.save_pretrained(folder)
    return used
