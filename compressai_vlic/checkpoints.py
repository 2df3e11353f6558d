"""Loading checkpoint files: one place, always ``weights_only=True``, one clear line on failure.

Every checkpoint the package reads (codec weights, CompressAI baselines, metric weights, Lightning
checkpoints) goes through :func:`load_checkpoint`. A file that cannot be used raises
:class:`~compressai_vlic.errors.CheckpointError` (or the error class the caller names) with one
line that names the file, says what is wrong and how to fix it:

- missing, or not a file;
- empty or truncated (cut off in a copy or by a full disk);
- not a PyTorch checkpoint at all (e.g. an image or a text file);
- holding pickled Python objects, which ``weights_only=True`` refuses to run;
- not a state dict of tensors (a foreign format);
- tensors with NaN or infinite values (a run that diverged), see :func:`check_finite`.
"""

from __future__ import annotations

import os
import pickle
import zipfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from compressai_vlic.errors import CheckpointError, VLICError

#: Keys under which training scripts nest the weights (CompressAI's eval_model accepts these).
STATE_KEYS = ("network", "state_dict", "model_state_dict")


def load_checkpoint(path: str | os.PathLike[str], error: type[VLICError] = CheckpointError) -> Any:
    """``torch.load(path, map_location="cpu", weights_only=True)`` with one-line typed errors.

    Args:
        path: the checkpoint file.
        error: the error class to raise (default :class:`CheckpointError`).
    """
    path = Path(path)
    if not path.is_file():
        raise error(f"{path}: no such checkpoint file")
    size = path.stat().st_size
    if size == 0:
        raise error(f"{path}: the checkpoint file is empty (0 bytes); copy or export it again")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        detail = _unpickler_detail(str(exc))
        if "global" in detail.lower():  # a class or function: code weights_only will not run
            raise error(
                f"{path}: holds pickled Python objects that weights_only=True refuses to load "
                f"({detail[:160]}); if you trust the file, re-save only its tensors with "
                "torch.save(model.state_dict(), path)"
            ) from None
        raise error(f"{path}: not a PyTorch checkpoint ({detail[:160]})") from None
    except (EOFError, zipfile.BadZipFile) as exc:
        raise error(
            f"{path}: truncated checkpoint ({size} bytes, {_first_line(exc)}); copy or export it "
            "again"
        ) from None
    except RuntimeError as exc:
        text = str(exc)
        if "central directory" in text or "PytorchStreamReader" in text or "zip archive" in text:
            raise error(
                f"{path}: truncated or damaged checkpoint ({size} bytes); copy or export it again"
            ) from None
        raise error(f"{path}: cannot be loaded ({_first_line(exc)})") from None
    except Exception as exc:  # anything else torch.load can raise on a foreign file
        raise error(
            f"{path}: not a PyTorch checkpoint ({exc.__class__.__name__}: {_first_line(exc)})"
        ) from None


def load_state_dict(
    path: str | os.PathLike[str],
    keys: Sequence[str] = STATE_KEYS,
    error: type[VLICError] = CheckpointError,
    finite: bool = True,
) -> dict[str, torch.Tensor]:
    """A bare state dict of tensors from a checkpoint file (``module.`` prefixes removed).

    Args:
        path: the checkpoint file.
        keys: nesting keys to look under (default :data:`STATE_KEYS`, as CompressAI's tools).
        error: the error class to raise (default :class:`CheckpointError`).
        finite: refuse tensors holding NaN or infinite values (default True).
    """
    state = load_checkpoint(path, error)
    for key in keys:
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
            break
    if not isinstance(state, dict) or not state:
        raise error(f"{path}: does not hold a state dict ({type(state).__name__})")
    tensors = {str(k).removeprefix("module."): v for k, v in state.items()}
    bad = [k for k, v in tensors.items() if not isinstance(v, torch.Tensor)]
    if bad:
        raise error(
            f"{path}: not a state dict of tensors (entry {bad[0]!r} is a "
            f"{type(tensors[bad[0]]).__name__}); is this a checkpoint of another format?"
        )
    if finite:
        check_finite(tensors, path, error)
    return tensors


def check_finite(
    state: Mapping[str, Any],
    path: str | os.PathLike[str],
    error: type[VLICError] = CheckpointError,
) -> None:
    """Refuse floating-point tensors with NaN or infinite values (a diverged run's weights)."""
    bad = [
        k
        for k, v in state.items()
        if isinstance(v, torch.Tensor)
        and v.is_floating_point()
        and not bool(torch.isfinite(v).all())
    ]
    if bad:
        raise error(
            f"{path}: {len(bad)} tensor(s) hold NaN or infinite values (first: {bad[0]!r}); the "
            "run that wrote it diverged: use an earlier checkpoint"
        )


def load_vlic(path: str | os.PathLike[str], state: Mapping[str, Any] | None = None) -> Any:
    """A VLIC model rebuilt from a checkpoint file (the config travels in the state dict).

    ``state`` may be given when the caller already extracted it (e.g. EMA weights of a Lightning
    checkpoint); errors name ``path`` either way.
    """
    from compressai_vlic.models.vlic import VLIC

    if state is None:
        state = load_state_dict(path)
    try:
        return VLIC.from_state_dict(state)
    except CheckpointError as exc:
        raise CheckpointError(
            f"{path}: {exc}; give a checkpoint written by VLIC (compressai-vlic-train export or "
            "`compressai-vlic update`)"
        ) from None
    except RuntimeError as exc:  # shapes or keys of another architecture
        raise CheckpointError(
            f"{path}: does not fit the VLIC architecture it declares ({_first_line(exc)})"
        ) from None


def _unpickler_detail(text: str) -> str:
    """The reason inside torch's long "Weights only load failed" message."""
    marker = "WeightsUnpickler error:"
    if marker in text:
        text = text.split(marker, 1)[1]
    for line in text.strip().splitlines():
        if line.strip():
            return line.strip()
    return "unreadable pickle"


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return (text.splitlines()[0] if text else exc.__class__.__name__)[:200]
