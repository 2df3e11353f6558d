"""Lightning checkpoint -> CompressAI checkpoint (a bare state dict with the config buffer).

The result loads with ``torch.load(weights_only=True)`` and ``VLIC.from_state_dict`` alone, so
``python -m compressai.utils.eval_model checkpoint IMAGES -a vlic -p OUT`` and
``python -m compressai.utils.update_model --architecture vlic OUT`` take it as is.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from compressai_vlic_lightning.common import WeightsType, read_codec_state_dict


@dataclass(frozen=True)
class ExportResult:
    path: Path
    config_name: str
    weights_type: str
    num_tensors: int
    num_parameters: int


def export_checkpoint(
    checkpoint: str | Path,
    output: str | Path,
    weights_type: WeightsType = "ema",
    overwrite: bool = True,
) -> ExportResult:
    """Write the codec weights of a Lightning (or CompressAI) checkpoint as a bare state dict.

    ``weights_type="ema"`` takes the EMA weights when the run kept them (else the raw ones).
    The model is rebuilt from the written file before returning, so a broken export fails here.

    Args:
        checkpoint: the Lightning or CompressAI checkpoint (loaded with ``weights_only=True``).
        output: the file to write.
        weights_type: "ema" (default) or "raw".
        overwrite: replace ``output`` if it exists (default); False raises
            :class:`~compressai_vlic.atomic.OutputExistsError`.
    """

    from compressai_vlic.checkpoints import load_vlic

    state = read_codec_state_dict(checkpoint, weights_type)
    model = load_vlic(checkpoint, state)  # validates the config buffer and every shape
    out = Path(output)
    out.parent.mkdir(parents=True, exist_ok=True)
    clean = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    from compressai_vlic.atomic import atomic_path

    with atomic_path(out, overwrite) as tmp:  # a full disk leaves no torn checkpoint
        torch.save(clean, tmp)
    from compressai_vlic.checkpoints import load_vlic

    load_vlic(out)  # the written file, read back as every consumer reads it
    return ExportResult(
        path=out,
        config_name=model.config.name,
        weights_type=weights_type,
        num_tensors=len(clean),
        num_parameters=sum(p.numel() for p in model.parameters()),
    )


def _with_config(model, config):
    """The same weights under ``config`` (same architecture, other sampler defaults)."""
    from compressai_vlic.models import VLIC

    out = VLIC(config)
    out.load_state_dict(model.state_dict())  # keeps ``config``'s sampler defaults
    return out.eval()


def export_shipped(
    checkpoint: str | Path,
    folder: str | Path,
    quality: str = "tiny",
    card: dict | None = None,
    weights_type: WeightsType = "ema",
    overwrite: bool = False,
) -> Path:
    """Write ``vlic-<quality>.safetensors`` (float16) and its JSON card for the package to ship.

    The card records the file's sha256 and the model's config hash (checked at every load) plus
    whatever ``card`` adds (training commands, data, figures). When ``quality`` is a zoo quality
    with the same architecture, the stored config takes the zoo's sampler defaults. Existing files
    are kept unless ``overwrite``.
    """
    import json

    import safetensors.torch

    from compressai_vlic.atomic import atomic_path
    from compressai_vlic.checkpoints import load_vlic
    from compressai_vlic.digest import file_sha256
    from compressai_vlic.errors import CheckpointError
    from compressai_vlic.zoo import QUALITIES

    model = load_vlic(checkpoint, read_codec_state_dict(checkpoint, weights_type))
    zoo_config = QUALITIES.get(quality)
    if zoo_config is not None and zoo_config.config_hash() == model.config.config_hash():
        model = _with_config(model, zoo_config)
    folder = Path(folder)
    weights, card_path = folder / f"vlic-{quality}.safetensors", folder / f"vlic-{quality}.json"
    if not overwrite and (weights.exists() or card_path.exists()):
        raise CheckpointError(f"{weights} or {card_path} exists; pass overwrite=True to replace")
    state = {
        k: (v.half() if v.is_floating_point() else v).detach().cpu().contiguous()
        for k, v in model.state_dict().items()
    }
    folder.mkdir(parents=True, exist_ok=True)
    with atomic_path(weights, overwrite) as tmp:
        safetensors.torch.save_file(state, str(tmp))
    entry = {
        "file": weights.name,
        "sha256": file_sha256(weights),
        "config_hash": model.config.config_hash().hex(),
        "config_name": model.config.name,
        "dtype": "float16",
        "num_parameters": sum(p.numel() for p in model.parameters()),
        "source_checkpoint_weights": weights_type,
        **(card or {}),
    }
    with atomic_path(card_path, overwrite) as tmp:
        Path(tmp).write_text(json.dumps(entry, indent=2) + "\n")
    return weights
