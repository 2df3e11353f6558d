"""Hugging Face Hub files of a VLIC model: ``model.safetensors`` + ``config.json`` + ``README.md``.

``VLIC.save_pretrained`` / ``from_pretrained`` / ``push_to_hub`` come from
``huggingface_hub.PyTorchModelHubMixin``; this module finds the weights file of a saved folder or
a Hub repository and loads it strictly, so the zoo and ``from_pretrained`` share one checked path.
The weights hold the same tensors as CompressAI's bare state dict (``_config_json`` included).
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from compressai_vlic.errors import CheckpointError

if TYPE_CHECKING:  # pragma: no cover
    from compressai_vlic.models.vlic import VLIC

WEIGHTS_NAME = "model.safetensors"
CONFIG_NAME = "config.json"

# "owner/name" as the Hub spells repository ids (one slash, no leading dot or dash).
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]{0,95}/[A-Za-z0-9][\w.-]{0,95}$")

MODEL_CARD_TEMPLATE = """---
{{ card_data }}
---

# {{ model_name }}

A [VLIC]({{ paper_url }}) image codec for [CompressAI](https://github.com/InterDigitalInc/CompressAI):
a transformer diffusion autoencoder with FSQ tokens, an autoregressive prior coded with rANS and
a rectified-flow decoder, saved by compressai-vlic.

- Configuration `{{ model_name }}`: {{ num_tokens }} tokens per {{ image_size }}x{{ image_size }}
  tile, FSQ levels {{ fsq_levels }} ({{ bpp }} bpp before entropy coding).
- Decoder defaults: {{ num_steps }} steps, guidance scale {{ guidance_scale }}; every stream
  carries the settings it was written with.

```python
from compressai_vlic.models import VLIC

net = VLIC.from_pretrained("{{ repo_id }}")
out = net.compress(x)          # x: (1, 3, H, W) in [0, 1]
x_hat = net.decompress(out["strings"], out["shape"])["x_hat"]
```

CompressAI's own tools read the same weights as a bare state dict:
`VLIC.from_state_dict(safetensors.torch.load_file("model.safetensors"))`.
"""


def is_hub_id(location: str | os.PathLike[str]) -> bool:
    """True for an ``owner/name`` string that is not an existing local path."""
    text = os.fspath(location)
    return bool(_HUB_ID.match(text)) and not Path(text).expanduser().exists()


def is_pretrained_folder(path: Path) -> bool:
    """A folder written by ``save_pretrained`` (holds ``model.safetensors``)."""
    return path.is_dir() and (path / WEIGHTS_NAME).is_file()


def weights_file(
    location: str | os.PathLike[str],
    *,
    revision: str | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
    force_download: bool = False,
    local_files_only: bool = False,
    token: str | bool | None = None,
) -> Path:
    """``model.safetensors`` of a local ``save_pretrained`` folder or a Hub repository id.

    Hub files go through ``hf_hub_download`` (its cache, ``HF_HUB_OFFLINE`` and ``HF_TOKEN``).
    """
    path = Path(os.fspath(location)).expanduser()
    if path.is_dir():
        if not is_pretrained_folder(path):
            raise CheckpointError(
                f"{path} has no {WEIGHTS_NAME}; write one with VLIC.save_pretrained(folder)"
            )
        return path / WEIGHTS_NAME
    if not is_hub_id(location):
        raise CheckpointError(
            f"{os.fspath(location)!r} is neither a folder holding {WEIGHTS_NAME} nor a Hub "
            "repository id (owner/name)"
        )
    from huggingface_hub import hf_hub_download

    try:
        return Path(
            hf_hub_download(
                repo_id=os.fspath(location),
                filename=WEIGHTS_NAME,
                revision=revision,
                cache_dir=cache_dir,
                force_download=force_download,
                local_files_only=local_files_only,
                token=token,
            )
        )
    except Exception as exc:  # offline, missing repo or file, auth: one typed error
        raise CheckpointError(
            f"cannot get {WEIGHTS_NAME} of Hub model {os.fspath(location)!r} (no local folder "
            f"of that name either): {exc.__class__.__name__}: {exc}"
        ) from exc


def load_weights(model: VLIC, path: Path, strict: bool = True, device: str = "cpu") -> VLIC:
    """Load a safetensors file into ``model`` (config hash checked), in eval mode."""
    import safetensors.torch

    try:
        safetensors.torch.load_model(model, str(path), strict=strict, device=device)
    except CheckpointError:
        raise
    except (RuntimeError, OSError, ValueError) as exc:  # missing/unexpected keys, bad file
        raise CheckpointError(f"cannot load {path} into {type(model).__name__}: {exc}") from exc
    return model.to(torch.device(device)).eval()


def stored_config_json(path: Path) -> str:
    """The config JSON embedded in a weights file's ``_config_json`` buffer."""
    from safetensors import safe_open

    from compressai_vlic.models.vlic import CONFIG_KEY

    with safe_open(str(path), framework="pt") as f:
        if CONFIG_KEY not in f.keys():
            raise CheckpointError(
                f"{path} has no {CONFIG_KEY!r} entry: not saved from a VLIC model"
            )
        buffer = f.get_tensor(CONFIG_KEY)
    return bytes(buffer.tolist()).decode("utf-8")
