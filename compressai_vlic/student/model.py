"""The student network: per-channel weighted feature distances (LPIPS-style), saved as safetensors.

``distance(reference, x)`` is a sum over compared layers and channels of learned non-negative
weights times the spatial mean of squared differences of channel-normalised features (raw RGB for
the "pixel" layer). Since only the weights learn, training needs each image's per-channel
distances once (:meth:`StudentModel.channel_distances`), and the same forward gives gradients
for the perceptual-loss use. Weights (backbone included, so a saved student needs no other file)
go to ``student.safetensors``, the config, the head's meaning and any calibration to
``student.json``.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from compressai_vlic.errors import CheckpointError, ConfigError
from compressai_vlic.student.backbone import AlexNetStages, alexnet_features
from compressai_vlic.student.config import StudentConfig

WEIGHTS_FILE = "student.safetensors"
META_FILE = "student.json"
PathLike = str | os.PathLike[str]


def _unit(t: torch.Tensor, eps: float = 1e-10) -> torch.Tensor:
    """``F.normalize(t, dim=1)``, multiplying by the reciprocal norm (a CPU divide over the
    full map costs several times a multiply)."""
    norm = torch.linalg.vector_norm(t, dim=1, keepdim=True)
    return t * norm.clamp_min(eps).reciprocal()


class StudentModel(nn.Module):
    """Full-reference distance (lower = closer to the reference) with learned channel weights.

    Args:
        config: the architecture (default :class:`StudentConfig`).
        features: AlexNet ``features`` to reuse (default: built from ``config``).

    Learned parameters: ``logits`` (channel weights ``softmax(logits)``, so the weights are
    positive and sum to one), ``log_kappa`` (sharpness of P(A) = sigmoid(kappa * (d_B - d_A))),
    and ``alpha``/``log_beta`` of the point-wise head (quality = alpha - beta * distance, in
    standardised teacher units).
    """

    def __init__(self, config: StudentConfig | None = None, features: nn.Module | None = None):
        super().__init__()
        self.config = config or StudentConfig()
        self.backbone = AlexNetStages(self.config, features)
        self.logits = nn.Parameter(torch.zeros(sum(self.config.channels)))
        self.log_kappa = nn.Parameter(torch.tensor(math.log(10.0)))
        self.alpha = nn.Parameter(torch.zeros(()))
        self.log_beta = nn.Parameter(torch.zeros(()))
        self.meta: dict[str, Any] = {}  # calibration, teacher scaling, training summary
        self.min_side = self._min_side()

    # ------------------------------------------------------------------ forward
    def _min_side(self) -> int:
        for side in (8, 16, 32, 48, 64, 96, 128, 192, 256):
            try:
                with torch.no_grad():
                    self.backbone(torch.zeros(1, 3, side, side))
                return side
            except RuntimeError:
                continue
        return 256

    def check(self, x: torch.Tensor, what: str = "image") -> torch.Tensor:
        if x.dim() == 3:
            x = x[None]
        if x.dim() != 4 or x.shape[1] != 3:
            raise ConfigError(
                f"student: {what} must be (N, 3, H, W) or (3, H, W), got {tuple(x.shape)}"
            )
        if min(x.shape[-2:]) < self.min_side:
            raise ConfigError(
                f"student: {what} is {x.shape[-2]}x{x.shape[-1]}; this student needs at least "
                f"{self.min_side} px per side"
            )
        return x

    def feature_maps(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Per compared layer: the map whose squared differences are weighted."""
        x = self.check(x).float()
        acts = self.backbone(x) if self.config.depth else {}
        out = []
        for name in self.config.layers:
            out.append(x if name == "pixel" else _unit(acts[name]))
        return out

    @staticmethod
    def _channel_distances(fr: list[torch.Tensor], fx: list[torch.Tensor]) -> torch.Tensor:
        out = []
        for r, x in zip(fr, fx):
            d = r - x
            d = d.square() if d.requires_grad else d.square_()  # in place when judging
            out.append(d.mean(dim=(-2, -1)))
        return torch.cat(out, dim=1)

    def channel_distances(self, reference: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """(N, channels): per-channel spatial mean squared feature difference."""
        return self._channel_distances(self.feature_maps(reference), self.feature_maps(x))

    @property
    def weights(self) -> torch.Tensor:
        return torch.softmax(self.logits, dim=0)

    @property
    def kappa(self) -> torch.Tensor:
        return self.log_kappa.exp()

    def forward(self, reference: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """(N,) distances of ``x`` to ``reference`` (images in [0, 1]); differentiable in both."""
        return self.channel_distances(reference, x) @ self.weights

    def distance_pair(
        self, reference: torch.Tensor, a: torch.Tensor, b: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Distances of A and B to one reference, running the reference through once."""
        self.check(reference, "reference")
        fr, fa, fb = (self.feature_maps(t) for t in (reference, a, b))
        w = self.weights
        return self._channel_distances(fr, fa) @ w, self._channel_distances(fr, fb) @ w

    def quality(self, distance: torch.Tensor) -> torch.Tensor:
        """Point-wise head: predicted teacher quality (standardised units) of a distance."""
        return self.alpha - self.log_beta.exp() * distance

    # ------------------------------------------------------------------ files
    def save(self, folder: PathLike, overwrite: bool = False) -> Path:
        """Write ``student.safetensors`` and ``student.json`` into ``folder`` (never overwrites
        unless asked)."""
        from safetensors.torch import save_file

        from compressai_vlic.atomic import atomic_path, atomic_write_bytes

        folder = Path(folder)
        targets = [folder / WEIGHTS_FILE, folder / META_FILE]
        if not overwrite and any(t.exists() for t in targets):
            raise ConfigError(
                f"{folder} already holds a student; pass overwrite / use another folder"
            )
        folder.mkdir(parents=True, exist_ok=True)
        state = {k: v.detach().contiguous().cpu() for k, v in self.state_dict().items()}
        with atomic_path(targets[0], overwrite) as tmp:  # a concurrent save is not replaced
            save_file(state, str(tmp))
        meta = {"config": self.config.to_dict(), **self.meta}
        text = json.dumps(meta, indent=2, sort_keys=True) + "\n"
        atomic_write_bytes(targets[1], text.encode(), overwrite)
        return folder


def student_files(path: PathLike) -> tuple[Path, Path]:
    """(weights, json) of a student given its folder or either file."""
    p = Path(path)
    folder = p if p.is_dir() else p.parent
    weights, meta = folder / WEIGHTS_FILE, folder / META_FILE
    if p.is_file() and p.suffix == ".safetensors":
        weights = p
    for f in (weights, meta):
        if not f.is_file():
            raise CheckpointError(
                f"{path}: no student here ({f.name} missing); train one with "
                "`compressai-vlic student train`"
            )
    return weights, meta


def load_student(path: PathLike, device: str = "cpu") -> StudentModel:
    """A saved student (folder or its ``student.safetensors``), in eval mode, frozen."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    weights, meta_file = student_files(path)
    try:
        meta = json.loads(meta_file.read_text())
        config = StudentConfig.from_dict(meta.pop("config"))
    except (ValueError, KeyError, TypeError) as exc:
        raise CheckpointError(f"{meta_file}: not a student config ({exc})") from exc
    try:
        state = load_file(str(weights))
    except (SafetensorError, OSError) as exc:
        raise CheckpointError(f"{weights}: not a readable safetensors file ({exc})") from exc
    # the saved backbone replaces these weights: no registry lookup, no random-init warning
    features = alexnet_features()
    model = StudentModel(config, features)
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        raise CheckpointError(f"{weights} does not match its config ({exc})") from exc
    model.meta = meta
    model.source_path = str(weights)  # type: ignore[attr-defined]
    return model.eval().requires_grad_(False).to(device)
