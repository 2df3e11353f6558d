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

from compressai_vlic.lazy import lazy_exports

_MODULES = {
    "checkpointing": "CSVLogger SafeCheckpointIO",
    "data": "ImageFolderDataModule PhotosDataModule",
    "ema": "EMA",
    "export": "export_checkpoint export_shipped",
    "preferences": "OfflinePreferences PreferenceBuffer",
    "prior_refit": "PriorRefitModule",
    "mode_seeking": "ModeSeekingModule",
    "stage1": "Stage1Module",
    "stage2": "Stage2Module",
}

_getattr, __all__, _EXPORTS = lazy_exports(__name__, _MODULES)


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
