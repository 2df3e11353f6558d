"""Lightning training for compressai-vlic: stage-1 pre-training and stage-2 preference post-training.

Import name ``compressai_vlic_lightning`` (folder ``lightning/``): the folder itself is not a
package, so ``import lightning`` always finds PyPI's Lightning, never this code.
"""

from compressai_vlic_lightning.data import ImageFolderDataModule, PhotosDataModule
from compressai_vlic_lightning.ema import EMA
from compressai_vlic_lightning.export import export_checkpoint
from compressai_vlic_lightning.preferences import OfflinePreferences, PreferenceBuffer
from compressai_vlic_lightning.prior_refit import PriorRefitModule
from compressai_vlic_lightning.stage1 import Stage1Module
from compressai_vlic_lightning.stage2 import Stage2Module

__all__ = [
    "EMA",
    "ImageFolderDataModule",
    "OfflinePreferences",
    "PhotosDataModule",
    "PreferenceBuffer",
    "PriorRefitModule",
    "Stage1Module",
    "Stage2Module",
    "export_checkpoint",
]
