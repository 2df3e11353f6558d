"""Lightning training for compressai-vlic: stage-1 pre-training and stage-2 preference post-training.

Import name ``compressai_vlic_lightning`` (folder ``lightning/``, not itself a package). It builds
on ``pytorch_lightning`` (``pip install 'compressai-vlic[train]'``), never on the ``lightning``
distribution.

The exports load on first use (PEP 562), so tools that need no Lightning (the memory planner,
``compressai-vlic-train --help``) start quickly; a missing ``pytorch_lightning`` is reported by
:func:`compressai_vlic.extras.require` when a Lightning class is first asked for.
"""

from __future__ import annotations

from typing import Any

from compressai_vlic.lazy import lazy_getattr

_EXPORTS = {
    "CSVLogger": "compressai_vlic_lightning.checkpointing",
    "SafeCheckpointIO": "compressai_vlic_lightning.checkpointing",
    "ImageFolderDataModule": "compressai_vlic_lightning.data",
    "PhotosDataModule": "compressai_vlic_lightning.data",
    "EMA": "compressai_vlic_lightning.ema",
    "export_checkpoint": "compressai_vlic_lightning.export",
    "export_shipped": "compressai_vlic_lightning.export",
    "OfflinePreferences": "compressai_vlic_lightning.preferences",
    "PreferenceBuffer": "compressai_vlic_lightning.preferences",
    "PriorRefitModule": "compressai_vlic_lightning.prior_refit",
    "ModeSeekingModule": "compressai_vlic_lightning.mode_seeking",
    "Stage1Module": "compressai_vlic_lightning.stage1",
    "Stage2Module": "compressai_vlic_lightning.stage2",
}

__all__ = sorted(_EXPORTS)

_getattr = lazy_getattr(__name__, _EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        from compressai_vlic.extras import require

        require("pytorch_lightning", "train", "Training (compressai_vlic_lightning)")
    value = _getattr(name)
    globals()[name] = value  # resolved once
    return value


def load_all() -> None:
    """Import every export (the training CLI does, so config class paths resolve at once)."""
    for name in _EXPORTS:
        __getattr__(name)
