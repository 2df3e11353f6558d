"""The option types of the ``student`` command line, in a module that imports no torch, so its
parser (and ``--help``) builds at once; :mod:`.reliability` imports them from here."""

from __future__ import annotations

from typing import Literal

#: Which reliability signals weight the student's pair-wise loss (:mod:`.reliability`).
ReliabilityType = Literal["all", "uniform", "votes", "order", "score", "prob"]
