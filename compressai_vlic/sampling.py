"""Rectified-flow Euler sampling: time schedules, classifier-free guidance inside a t interval.

Convention: x_t = (1 - t) x + t eps, v = eps - x, so x0_hat = x_t - t v_hat and an Euler step is
x <- x + (t_next - t) v (diffusers' ``FlowMatchEulerDiscreteScheduler`` uses the same, sigma = t).
The sampler is deterministic given the initial noise, which the caller draws from a seeded
generator: that is what makes stochastic decoding reproducible from the seed in the bitstream.

Schedules (the ``num_steps + 1`` noise levels visited, from 1 down to 0):

- ``"power"`` (default, FlowMo's ``pow_p``): ``t_i = ((N - i) / N) ** (1 / p)``, p = ``power``
  (FlowMo: 0.25). At 25 steps 16 of the steps fall below t = 0.2.
- ``"shift"``: ``t_i = s u / (1 + (s - 1) u)`` with ``u = 1 - i / N``, s = ``time_shift``
  (s < 1 spends more steps near low noise; SD3-style shift).
- ``"shift_v1"``: the grid format-1 streams were decoded with (diffusers' scheduler with
  ``shift``): as ``"shift"``, except that its last step before 0 sits at t ~ 2.5e-4, a near-zero
  step that does no useful work. Kept only so that version-1 streams decode exactly as before.

Classifier-free guidance is applied only for t in ``cfg_interval`` (inclusive; FlowMo guides for
EDM sigma in [0.17, 1.02], i.e. t = sigma / (1 + sigma) in [0.1453, 0.5050]); outside it a step
costs one network evaluation instead of two.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

from compressai_vlic.errors import ConfigError

# velocity_fn(x_t, t, guidance_scale) -> guided velocity with the shape of x_t. The sampler passes
# guidance_scale = 1.0 outside the CFG interval: the velocity function then evaluates once.
VelocityFn = Callable[[Tensor, float, float], Tensor]

Schedule = Literal["power", "shift", "shift_v1"]
SCHEDULES: tuple[str, ...] = ("power", "shift", "shift_v1")
NUM_TRAIN_TIMESTEPS = 1000

#: FlowMo's CFG interval (EDM sigma 0.17 .. 1.02) in this package's t convention.
FLOWMO_CFG_INTERVAL: tuple[float, float] = (0.17 / 1.17, 1.02 / 2.02)
#: Documented limits of the sampler settings (a stream outside them is refused).
MAX_NUM_STEPS = 100
MAX_GUIDANCE_SCALE = 20.0
SCHEDULE_PARAM_RANGE: tuple[float, float] = (1.0 / 16.0, 16.0)


def cfg_combine(v_cond: Tensor, v_null: Tensor, guidance_scale: float) -> Tensor:
    """Classifier-free guidance: v_null + g (v_cond - v_null); g = 1 is plain conditioning."""
    return v_null + guidance_scale * (v_cond - v_null)


def seeded_noise(shape: tuple[int, ...], seed: int) -> Tensor:
    """Standard normal noise from a CPU generator: identical for a seed on every machine."""
    generator = torch.Generator(device="cpu").manual_seed(int(seed))
    return torch.randn(shape, generator=generator, dtype=torch.float32)


def power_times(num_steps: int, power: float) -> Tensor:
    """FlowMo's ``pow_p`` grid: ((N - i) / N) ** (1 / p) for i = 0..N (float32, as FlowMo)."""
    steps = torch.arange(0, num_steps + 1).flip(0)
    return steps ** (1 / power) / num_steps ** (1 / power)


def shift_times(num_steps: int, time_shift: float) -> Tensor:
    """Shifted uniform grid s u / (1 + (s - 1) u), u = 1 - i / N, for i = 0..N (ends at 0)."""
    u = torch.linspace(1.0, 0.0, num_steps + 1, dtype=torch.float64)
    return (time_shift * u / (1 + (time_shift - 1) * u)).to(torch.float32)


def shift_v1_times(num_steps: int, time_shift: float) -> Tensor:
    """The grid of format-1 streams: diffusers' FlowMatchEulerDiscreteScheduler with ``shift``."""
    from diffusers import FlowMatchEulerDiscreteScheduler

    scheduler = FlowMatchEulerDiscreteScheduler(
        num_train_timesteps=NUM_TRAIN_TIMESTEPS, shift=time_shift
    )
    scheduler.set_timesteps(num_steps)
    return scheduler.sigmas.clone().to(torch.float32)


@dataclass(frozen=True)
class RectifiedFlowSampler:
    """Euler sampler on a power or shifted grid, with guidance inside a t interval.

    Args:
        num_steps: Euler steps (network evaluations without guidance).
        guidance_scale: CFG scale g (1.0 = plain conditioning, one evaluation per step).
        time_shift: s of the ``"shift"`` schedules (default 1.0: uniform grid).
        schedule: ``"power"``, ``"shift"`` or ``"shift_v1"`` (default ``"shift"`` for this class;
            models default to ``"power"`` through their config).
        power: p of the ``"power"`` schedule (default 0.25, FlowMo's ``pow_0.25``).
        cfg_interval: (lo, hi): guide only where lo <= t <= hi (default (0, 1): every step).
    """

    num_steps: int
    guidance_scale: float = 1.0
    time_shift: float = 1.0
    schedule: Schedule = "shift"
    power: float = 0.25
    cfg_interval: tuple[float, float] = (0.0, 1.0)

    def __post_init__(self) -> None:
        if self.num_steps < 1:
            raise ConfigError(f"num_steps must be >= 1, got {self.num_steps}")
        if self.schedule not in SCHEDULES:
            raise ConfigError(
                f"schedule must be one of {', '.join(SCHEDULES)}, got {self.schedule!r}"
            )
        if not self.time_shift > 0:
            raise ConfigError(f"time_shift must be > 0, got {self.time_shift}")
        if not self.power > 0:
            raise ConfigError(f"power must be > 0, got {self.power}")
        if not self.guidance_scale >= 0:
            raise ConfigError(f"guidance_scale must be >= 0, got {self.guidance_scale}")
        lo, hi = (float(v) for v in self.cfg_interval)
        if not 0.0 <= lo <= hi <= 1.0:
            raise ConfigError(
                f"cfg_interval must satisfy 0 <= lo <= hi <= 1, got {self.cfg_interval}"
            )
        object.__setattr__(self, "cfg_interval", (lo, hi))

    def times(self) -> Tensor:
        """The num_steps + 1 noise levels t visited, from 1 (pure noise) down to 0."""
        if self.schedule == "power":
            return power_times(self.num_steps, self.power)
        if self.schedule == "shift":
            return shift_times(self.num_steps, self.time_shift)
        return shift_v1_times(self.num_steps, self.time_shift)

    def guided(self, t: float) -> bool:
        """Whether the step at noise level ``t`` uses guidance (two evaluations)."""
        lo, hi = self.cfg_interval
        return self.guidance_scale != 1.0 and lo <= t <= hi

    def num_evaluations(self) -> int:
        """Network evaluations per tile for one sample: one per step, two where guided."""
        return sum(2 if self.guided(float(t)) else 1 for t in self.times()[:-1])

    @torch.no_grad()
    def sample(self, velocity_fn: VelocityFn, noise: Tensor) -> Tensor:
        """Integrate from x_1 = noise to x_0; returns the model-space sample (float32)."""
        times = self.times()
        x = noise.to(torch.float32)
        for i in range(self.num_steps):
            t = float(times[i])
            g = self.guidance_scale if self.guided(t) else 1.0
            v = velocity_fn(x, t, g).to(torch.float32)
            x = x + (times[i + 1] - times[i]).to(x.device) * v
        return x
