"""The option types and defaults of the ``vlm-bench`` and ``adaptor`` command lines, in a module
that imports no torch, so their parsers (and ``--help``) build at once. The modules that use them
(:mod:`.answerers`, :mod:`.bench`, :mod:`.gaps`, :mod:`.adaptor`, :mod:`.adaptor_train`) import
them from here and still export them."""

from __future__ import annotations

from typing import Literal

#: Who answers the VLM tasks (:func:`compressai_vlic.vlm.answerers.make_answerer`).
BackendType = Literal["openai", "hf"]
#: What the benchmark does with an unreadable image.
ImageErrorsType = Literal["raise", "skip"]
#: Plots the benchmark writes.
PlotType = Literal["all", "none"]
#: The task loss the gaps are measured in.
LossType = Literal["score", "error"]
#: The adaptor's trainable parts.
TrainableType = Literal[
    "condition", "condition+patch-embedding", "condition+last-blocks", "condition+vision-tower"
]
#: scikit-image photos the adaptor trains on, and those it is evaluated on (held out).
DEFAULT_TRAIN_PHOTOS = ("astronaut", "coffee", "rocket", "motorcycle_left", "china")
DEFAULT_HELDOUT_PHOTOS = ("chelsea", "flower")
