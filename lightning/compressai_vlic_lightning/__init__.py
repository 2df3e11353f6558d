"""Lightning training for compressai-vlic: stage-1 pre-training and stage-2 preference post-training.

Import name ``compressai_vlic_lightning`` (folder ``lightning/``, not itself a package). It builds
on ``pytorch_lightning`` (``pip install 'compressai-vlic[train]'``), never on the ``lightning``
distribution.
"""

from compressai_vlic.extras import require

require("pytorch_lightning", "train", "Training (compressai_vlic_lightning)")

from compressai_vlic_lightning.data import ImageFolderDataModule, PhotosDataModule  # noqa: E402
from compressai_vlic_lightning.ema import EMA  # noqa: E402
from compressai_vlic_lightning.export import export_checkpoint, export_shipped  # noqa: E402
from compressai_vlic_lightning.mode_seeking import ModeSeekingModule  # noqa: E402
from compressai_vlic_lightning.preferences import OfflinePreferences, PreferenceBuffer  # noqa: E402
from compressai_vlic_lightning.prior_refit import PriorRefitModule  # noqa: E402
from compressai_vlic_lightning.stage1 import Stage1Module  # noqa: E402
from compressai_vlic_lightning.stage2 import Stage2Module  # noqa: E402

__all__ = [
    "EMA",
    "ImageFolderDataModule",
    "ModeSeekingModule",
    "OfflinePreferences",
    "PhotosDataModule",
    "PreferenceBuffer",
    "PriorRefitModule",
    "Stage1Module",
    "Stage2Module",
    "export_checkpoint",
    "export_shipped",
]
