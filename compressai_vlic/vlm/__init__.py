"""VLMs as consumers of compressed images: task readers, scoring, answerers, the rate-accuracy
benchmark and the two gaps.

Importing this package imports nothing heavy; import the module you need
(``compressai_vlic.vlm.bench``, ``compressai_vlic.vlm.tasks``, ...).
"""
