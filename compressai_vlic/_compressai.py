"""The CompressAI objects this package builds on, imported once and quietly.

``import compressai`` imports torch_geometric, whose import warns that ``torch.jit.script`` is
deprecated; :func:`compressai_vlic.thirdparty.import_compressai` filters exactly that warning.
Modules of this package import CompressAI's names from here, so the first import is the quiet one.
"""

from compressai_vlic.thirdparty import import_compressai

import_compressai()

from compressai.ans import BufferedRansEncoder, RansDecoder  # noqa: E402
from compressai.models import CompressionModel  # noqa: E402
from compressai.registry import register_criterion, register_model  # noqa: E402

__all__ = [
    "BufferedRansEncoder",
    "CompressionModel",
    "RansDecoder",
    "register_criterion",
    "register_model",
]
