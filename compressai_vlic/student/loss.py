"""The student as a differentiable perceptual loss (the "distilled reward" of a training stage)."""

from __future__ import annotations

from torch import Tensor, nn

from compressai_vlic.student.model import load_student


class StudentLoss(nn.Module):
    """Mean student distance between prediction and target; gradients flow to the prediction.

    Args:
        path: the student's folder (or its ``student.safetensors``).
    """

    def __init__(self, path: str) -> None:
        super().__init__()
        self.net = load_student(path)

    def train(self, mode: bool = True) -> StudentLoss:
        return super().train(False)  # frozen, always in eval mode

    def forward(self, prediction: Tensor, target: Tensor) -> Tensor:
        return self.net(target.float(), prediction.float().clamp(0, 1)).mean()
