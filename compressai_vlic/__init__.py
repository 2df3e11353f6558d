"""compressai-vlic: the VLIC codec (diffusion autoencoder + VLM-preference post-training) for CompressAI.

Importing this package is cheap on purpose: heavy modules (torch models, judges, training)
are imported by the submodules that need them, so the CompressAI start-up hook stays light.
"""

from compressai_vlic._version import __version__

__all__ = ["__version__"]
