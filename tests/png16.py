"""The 16-bit PNG writer of the tests (see :mod:`compressai_vlic.testing.png16`)."""

from compressai_vlic.testing.png16 import png16_bytes, png_chunk, write_png16

__all__ = ["png16_bytes", "png_chunk", "write_png16"]
