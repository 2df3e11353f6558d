"""Imports of third-party code that prints known, irrelevant warnings, with exactly those filtered.

A user should see only what concerns them. ``import compressai`` imports torch_geometric, whose
import calls the deprecated ``torch.jit.script`` (a ``FutureWarning`` on every command), and
``lpips``/torchmetrics build torchvision backbones with the deprecated ``pretrained=`` argument.
The filters are scoped to those calls (``warnings.catch_warnings``), so the same warnings raised by
a user's own code still show. One is filtered for a whole command, at its entry point: Lightning's
own ``LeafSpec`` use (a ``FutureWarning`` from torch on every logged step, attributed to
``pytorch_lightning``), see :func:`ignore_lightning_leafspec`.
"""

from __future__ import annotations

import contextlib
import importlib
import sys
import warnings
from collections.abc import Iterator
from types import ModuleType

# torch_geometric (imported by compressai.registry.transforms) scripts functions at import time.
_TORCH_JIT_DEPRECATED = r"`torch\.jit\.(script|load)` is deprecated"
# torchvision.models._utils, when lpips/torchmetrics call e.g. alexnet(pretrained=False).
_TORCHVISION_PRETRAINED = (
    r"The parameter 'pretrained' is deprecated",
    r"Arguments other than a weight enum or `None` for 'weights' are deprecated",
)

# torch.utils._pytree, when pytorch_lightning.utilities._pytree builds a LeafSpec (each self.log).
_LIGHTNING_LEAFSPEC = r"`isinstance\(treespec, LeafSpec\)` is deprecated"


def import_compressai() -> ModuleType:
    """``import compressai`` without torch_geometric's ``torch.jit.script`` deprecation warning.

    Call it before the first ``from compressai... import``; later calls cost a dict lookup.
    """
    module = sys.modules.get("compressai")
    if module is not None:
        return module
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=_TORCH_JIT_DEPRECATED, category=FutureWarning)
        return importlib.import_module("compressai")


@contextlib.contextmanager
def quiet_torch_jit() -> Iterator[None]:
    """Hide ``torch.jit``'s deprecation warnings inside the block (e.g. a TorchScript file that
    only ever exists as one, loaded to convert its tensors)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=_TORCH_JIT_DEPRECATED, category=FutureWarning)
        yield


@contextlib.contextmanager
def quiet_torchvision_pretrained() -> Iterator[None]:
    """Hide torchvision's ``pretrained=`` deprecation warnings raised while third-party code
    (lpips, torchmetrics) builds its backbone inside the block."""
    with warnings.catch_warnings():
        for message in _TORCHVISION_PRETRAINED:
            warnings.filterwarnings("ignore", message=message, category=UserWarning)
        yield


def ignore_lightning_leafspec() -> None:
    """For the rest of the process (a training command's entry point): hide torch's
    ``LeafSpec`` deprecation raised by Lightning's own code, and only from Lightning's modules."""
    warnings.filterwarnings(
        "ignore",
        message=_LIGHTNING_LEAFSPEC,
        category=FutureWarning,
        module=r"(pytorch_lightning|lightning)\.",
    )
