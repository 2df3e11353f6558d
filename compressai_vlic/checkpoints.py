"""Loading checkpoint files: one place, always ``weights_only=True``, one clear line on failure.

Every checkpoint the package reads (codec weights, CompressAI baselines, metric weights, Lightning
checkpoints, including ``fit --ckpt_path`` resumes and remote ``http(s)://`` or fsspec URLs) goes
through :func:`load_checkpoint`, so loading one cannot run code. A file that cannot be used raises
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
import shutil
import tempfile
import zipfile
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import IO, Any

import torch

from compressai_vlic.errors import CheckpointError, VLICError

#: Keys under which training scripts nest the weights (CompressAI's eval_model accepts these).
STATE_KEYS = ("network", "state_dict", "model_state_dict")
#: Seconds a remote checkpoint's server may stay silent before the download fails.
DOWNLOAD_TIMEOUT_S = 60.0
CHUNK_BYTES = 1 << 20


def checkpoint_label(path: str | os.PathLike[str]) -> str:
    """``vlic-test-stage2.pth.tar`` -> ``vlic-test-stage2``: a short name of a checkpoint file."""
    name = Path(path).name
    for suffix in (".tar", ".pth", ".pt", ".ckpt", ".safetensors"):
        name = name.removesuffix(suffix)
    return name or Path(path).name


def is_url(path: object) -> bool:
    """Whether ``path`` names a remote checkpoint (``https://...``, ``s3://...``, ``file://...``)."""
    return isinstance(path, str) and "://" in path and not path.startswith("zoo:")


def load_checkpoint(path: str | os.PathLike[str], error: type[VLICError] = CheckpointError) -> Any:
    """``torch.load(path, map_location="cpu", weights_only=True)`` with one-line typed errors.

    ``path`` may be a URL: ``http(s)://`` is downloaded to a temporary file, other schemes
    (``s3://``, ``gs://``, ``memory://``, ...) are read through fsspec; either way the bytes are
    loaded with ``weights_only=True``, so a checkpoint cannot run code wherever it comes from.

    Args:
        path: the checkpoint file or URL.
        error: the error class to raise (default :class:`CheckpointError`).
    """
    if is_url(path):
        url = str(path)
        if url.startswith("file://"):
            from urllib.parse import unquote, urlparse

            return load_checkpoint(unquote(urlparse(url).path), error)
        name = _display_url(url)
        with tempfile.TemporaryFile(prefix="vlic-ckpt-") as fh:
            size = _download(url, name, fh, error)
            if size == 0:
                raise error(f"{name}: the checkpoint is empty (0 bytes)")
            fh.seek(0)
            return _torch_load(fh, name, size, error)
    path = Path(path)
    if not path.is_file():
        raise error(f"{path}: no such checkpoint file")
    size = path.stat().st_size
    if size == 0:
        raise error(f"{path}: the checkpoint file is empty (0 bytes); copy or export it again")
    return _torch_load(path, path, size, error)


def _torch_load(source: Any, name: object, size: int, error: type[VLICError]) -> Any:
    """``torch.load(weights_only=True)`` of a file or file object; failures become ``error``."""
    try:
        return torch.load(source, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        detail = _unpickler_detail(str(exc))
        if "global" in detail.lower():  # a class or function: code weights_only will not run
            raise error(
                f"{name}: holds pickled Python objects that weights_only=True refuses to load "
                f"({detail[:160]}); if you trust the file, re-save only its tensors with "
                "torch.save(model.state_dict(), path)"
            ) from None
        raise error(f"{name}: not a PyTorch checkpoint ({detail[:160]})") from None
    except (EOFError, zipfile.BadZipFile) as exc:
        raise error(
            f"{name}: truncated checkpoint ({size} bytes, {_first_line(exc)}); copy or export it "
            "again"
        ) from None
    except RuntimeError as exc:
        text = str(exc)
        if "central directory" in text or "PytorchStreamReader" in text or "zip archive" in text:
            raise error(
                f"{name}: truncated or damaged checkpoint ({size} bytes); copy or export it again"
            ) from None
        raise error(f"{name}: cannot be loaded ({_first_line(exc)})") from None
    except Exception as exc:  # anything else torch.load can raise on a foreign file
        raise error(
            f"{name}: not a PyTorch checkpoint ({exc.__class__.__name__}: {_first_line(exc)})"
        ) from None


def _display_url(url: str) -> str:
    """``url`` without user name, password or query (they may hold credentials)."""
    from urllib.parse import urlsplit, urlunsplit

    parts = urlsplit(url)
    host = parts.netloc.rsplit("@", 1)[-1]
    return urlunsplit((parts.scheme, host, parts.path, "", ""))


def _download(url: str, name: str, fh: IO[bytes], error: type[VLICError]) -> int:
    """Copy the remote checkpoint ``url`` into ``fh``; the number of bytes, or ``error``."""
    try:
        if url.startswith(("http://", "https://")):
            import urllib.error
            import urllib.request

            try:
                with urllib.request.urlopen(url, timeout=DOWNLOAD_TIMEOUT_S) as response:
                    shutil.copyfileobj(response, fh, CHUNK_BYTES)
            except urllib.error.HTTPError as exc:
                raise error(f"{name}: cannot download the checkpoint (HTTP {exc.code})") from None
        else:
            try:
                import fsspec
            except ImportError:
                raise error(
                    f"{name}: reading a checkpoint from this location needs fsspec "
                    "(pip install fsspec and the file system's package)"
                ) from None
            with fsspec.open(url, "rb") as remote:
                shutil.copyfileobj(remote, fh, CHUNK_BYTES)
    except VLICError:
        raise
    except FileNotFoundError:
        raise error(f"{name}: no such checkpoint") from None
    except Exception as exc:  # URLError, timeouts, file-system errors: one line, typed
        reason = getattr(exc, "reason", None) or _first_line(exc)
        raise error(f"{name}: cannot download the checkpoint ({reason})") from None
    return fh.tell()


def load_state_dict(
    path: str | os.PathLike[str],
    keys: Sequence[str] = STATE_KEYS,
    error: type[VLICError] = CheckpointError,
    finite: bool = True,
    unwrap: Callable[[Any], Any] | None = None,
) -> dict[str, torch.Tensor]:
    """A bare state dict of tensors from a checkpoint file (``module.`` prefixes removed).

    Args:
        path: the checkpoint file.
        keys: nesting keys to look under (default :data:`STATE_KEYS`, as CompressAI's tools).
        error: the error class to raise (default :class:`CheckpointError`).
        finite: refuse tensors holding NaN or infinite values (default True).
        unwrap: applied to the loaded object first (e.g. picks a Lightning checkpoint's weights).
    """
    state = load_checkpoint(path, error)
    if unwrap is not None:
        state = unwrap(state)
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
