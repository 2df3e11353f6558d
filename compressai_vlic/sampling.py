"""Rectified-flow sampling with a shifted time grid and classifier-free guidance.

Convention: x_t = (1 - t) x + t eps, v = eps - x, so x0_hat = x_t - t v_hat. diffusers'
``FlowMatchEulerDiscreteScheduler`` uses the same convention (sigma = t, Euler step
x <- x + (t_next - t) v); it supplies the shifted grid t' = s t / (1 + (s - 1) t) and the steps.
The sampler is deterministic given the initial noise, which the caller draws from a seeded
generator: that is what makes stochastic decoding reproducible from the seed in the bitstream.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from diffusers import FlowMatchEulerDiscreteScheduler
from torch import Tensor

from compressai_vlic.errors import ConfigError

# velocity_fn(x_t, t, guidance_scale) -> guided velocity with the shape of x_t.
VelocityFn = Callable[[Tensor, float, float], Tensor]

NUM_TRAIN_TIMESTEPS = 1000


def cfg_combine(v_cond: Tensor, v_null: Tensor, guidance_scale: float) -> Tensor:
    """Classifier-free guidance: v_null + g (v_cond - v_null); g = 1 is plain conditioning."""
    return v_null + guidance_scale * (v_cond - v_null)


def seeded_noise(shape: tuple[int, ...], seed: int) -> Tensor:
    """Standard normal noise from a CPU generator: identical for a seed on every machine."""
    generator = torch.Generator(device="cpu").manual_seed(int(seed))
    return torch.randn(shape, generator=generator, dtype=torch.float32)


@dataclass(frozen=True)
class RectifiedFlowSampler:
    """Euler sampler on a shifted grid: time_shift < 1 spends more steps near low noise."""

    num_steps: int
    guidance_scale: float = 1.0
    time_shift: float = 1.0

    def __post_init__(self) -> None:
        if self.num_steps < 1:
            raise ConfigError(f"num_steps must be >= 1, got {self.num_steps}")
        if self.time_shift <= 0:
            raise ConfigError(f"time_shift must be > 0, got {self.time_shift}")
        if self.guidance_scale < 0:
            raise ConfigError(f"guidance_scale must be >= 0, got {self.guidance_scale}")

    def scheduler(self) -> FlowMatchEulerDiscreteScheduler:
        """A fresh diffusers scheduler (it is stateful: one per sampling run)."""
        scheduler = FlowMatchEulerDiscreteScheduler(
            num_train_timesteps=NUM_TRAIN_TIMESTEPS, shift=self.time_shift
        )
        scheduler.set_timesteps(self.num_steps)
        return scheduler

    def times(self) -> Tensor:
        """The num_steps + 1 noise levels t visited, from 1 (pure noise) down to 0."""
        return self.scheduler().sigmas.clone()

    @torch.no_grad()
    def sample(self, velocity_fn: VelocityFn, noise: Tensor) -> Tensor:
        """Integrate from x_1 = noise to x_0; returns the model-space sample."""
        scheduler = self.scheduler()
        x = noise
        for i, timestep in enumerate(scheduler.timesteps):
            t = float(scheduler.sigmas[i])
            v = velocity_fn(x, t, self.guidance_scale)
            x = scheduler.step(v.to(torch.float32), timestep, x.to(torch.float32)).prev_sample
        return x
