"""VLMs as consumers of compressed images: task files, scoring, answerers, the rate-accuracy
benchmark (``compressai-vlic vlm-bench``), the two gaps and the codec-conditioned adaptor.

Importing this package imports nothing heavy; import the module you need
(``compressai_vlic.vlm.bench``, ``compressai_vlic.vlm.tasks``, ...).
"""
