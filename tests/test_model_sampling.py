"""The sampler's schedules and CFG interval against FlowMo's formulas, and the training-t sampler."""

from __future__ import annotations

import math

import pytest
import torch

from compressai_vlic.errors import ConfigError
from compressai_vlic.models.vlic import sample_t
from compressai_vlic.sampling import FLOWMO_CFG_INTERVAL, RectifiedFlowSampler


def _flowmo_pow(num_steps: int, p: float) -> list[float]:
    # FlowMo's rf_sample: ts = arange(0, N + 1).flip(0) ** (1 / p) / N ** (1 / p), written out.
    return [((num_steps - i) ** (1 / p)) / (num_steps ** (1 / p)) for i in range(num_steps + 1)]


@pytest.mark.parametrize(("steps", "p"), [(25, 0.25), (10, 0.5), (3, 0.25), (7, 1.0)])
def test_power_schedule_is_flowmos_formula(steps: int, p: float) -> None:
    times = RectifiedFlowSampler(steps, schedule="power", power=p).times()
    assert times.shape == (steps + 1,)
    assert times.tolist() == pytest.approx(_flowmo_pow(steps, p), rel=1e-6, abs=1e-12)
    assert times[0] == 1.0 and times[-1] == 0.0


def test_power_schedule_spends_more_steps_at_low_noise_than_the_shift() -> None:
    power = RectifiedFlowSampler(25, schedule="power", power=0.25).times()[:-1]
    shift = RectifiedFlowSampler(25, schedule="shift", time_shift=0.5).times()[:-1]
    assert int((power < 0.2).sum()) == 16 and int((shift < 0.2).sum()) == 8


def test_shift_schedule_has_no_wasted_near_zero_step() -> None:
    s, n = 0.5, 25
    times = RectifiedFlowSampler(n, schedule="shift", time_shift=s).times()
    u = [1 - i / n for i in range(n + 1)]
    assert times.tolist() == pytest.approx([s * v / (1 + (s - 1) * v) for v in u], abs=1e-7)
    assert float(times[-2]) == pytest.approx(0.0204, abs=1e-4)  # last step starts at u = 1/N
    # The format-1 grid (diffusers) ends with a step at t ~ 2.5e-4 that does no useful work.
    old = RectifiedFlowSampler(n, schedule="shift_v1", time_shift=s).times()
    assert float(old[-2]) < 1e-3 and float(old[-3]) == pytest.approx(0.0215, abs=1e-3)


def test_flowmo_cfg_interval_is_its_edm_sigma_interval() -> None:
    lo, hi = FLOWMO_CFG_INTERVAL  # EDM sigma 0.17 .. 1.02 mapped by t = sigma / (1 + sigma)
    assert (lo, hi) == pytest.approx((0.1453, 0.5050), abs=1e-4)


def _count_calls(sampler: RectifiedFlowSampler) -> tuple[int, list[float]]:
    evaluations, guided = 0, []

    def velocity(x, t, g):
        nonlocal evaluations
        evaluations += 1 if g == 1.0 else 2  # what VLIC.decode_codes runs for these arguments
        if g != 1.0:
            guided.append(t)
        return torch.zeros_like(x)

    sampler.sample(velocity, torch.zeros(1, 3, 4, 4))
    return evaluations, guided


def test_cfg_interval_cuts_evaluations_from_50_to_31_at_25_steps() -> None:
    new = RectifiedFlowSampler(
        25, 1.5, schedule="power", power=0.25, cfg_interval=FLOWMO_CFG_INTERVAL
    )
    old = RectifiedFlowSampler(25, 1.5, time_shift=0.5, schedule="shift")
    evaluations, guided = _count_calls(new)
    assert evaluations == new.num_evaluations() == 31
    lo, hi = FLOWMO_CFG_INTERVAL
    assert len(guided) == 6 and all(lo <= t <= hi for t in guided)
    assert _count_calls(old)[0] == old.num_evaluations() == 50
    plain = RectifiedFlowSampler(25, 1.0, schedule="power", cfg_interval=FLOWMO_CFG_INTERVAL)
    assert _count_calls(plain)[0] == plain.num_evaluations() == 25  # g = 1: never two


def test_vlic_decode_runs_the_counted_evaluations() -> None:
    from compressai_vlic.zoo import vlic

    torch.manual_seed(0)
    net = vlic("test", num_steps=25).eval()
    calls = []
    hook = net.decoder.register_forward_pre_hook(lambda m, args: calls.append(args[0].shape[0]))
    indices = torch.zeros(2, net.config.num_tokens, net.config.code_dim, dtype=torch.long)
    try:
        net.decode_codes(indices, seed=0)
    finally:
        hook.remove()
    assert sum(calls) == 2 * net.stream_settings().sampler().num_evaluations() == 2 * 31


def test_bad_sampler_settings_are_config_errors() -> None:
    for kwargs in (
        {"schedule": "cosine"},
        {"power": 0.0},
        {"time_shift": 0.0},
        {"cfg_interval": (0.6, 0.2)},
        {"cfg_interval": (-0.1, 0.5)},
    ):
        with pytest.raises(ConfigError):
            RectifiedFlowSampler(10, **kwargs)


# ----------------------------------------------------------------------- training t


def test_fat_lognormal_tails_have_the_configured_uniform_share() -> None:
    n = 400_000
    gen = torch.Generator().manual_seed(0)
    fat = sample_t(n, "fat_lognormal", uniform_share=0.1, generator=gen)
    pure = sample_t(n, "lognormal", generator=gen)
    assert fat.min() > 0 and fat.max() < 1
    # P(t < 0.02) = 0.1 * 0.02 (uniform part) + 0.9 * Phi(logit(0.02)) for the mixture.
    phi = 0.5 * (1 + math.erf(math.log(0.02 / 0.98) / math.sqrt(2)))
    expected_fat = 0.1 * 0.02 + 0.9 * phi
    assert float((fat < 0.02).float().mean()) == pytest.approx(expected_fat, rel=0.1)
    assert float((pure < 0.02).float().mean()) == pytest.approx(phi, rel=0.35)  # ~ 5e-5
    assert expected_fat / phi > 30  # the low-noise end is trained ~ 40x more often
    both_tails = ((fat < 0.02) | (fat > 0.98)).float().mean()
    assert float(both_tails) == pytest.approx(2 * expected_fat, rel=0.1)
    # Another share is honoured too.
    half = sample_t(n, "fat_lognormal", uniform_share=0.5, generator=gen)
    assert float((half < 0.02).float().mean()) == pytest.approx(0.5 * 0.02 + 0.5 * phi, rel=0.1)


def test_t_sampler_options_are_checked() -> None:
    with pytest.raises(ConfigError, match="fat_lognormal"):
        sample_t(4, "uniform")  # type: ignore[arg-type]
    with pytest.raises(ConfigError):
        sample_t(4, uniform_share=1.5)


def test_noise_share_sets_that_share_of_t_to_pure_noise() -> None:
    gen = torch.Generator().manual_seed(1)
    t = sample_t(100_000, "fat_lognormal", noise_share=0.25, generator=gen)
    assert float((t == 1.0).float().mean()) == pytest.approx(0.25, abs=0.01)
    assert float(t[t < 1].max()) < 1 and float(t.min()) > 0
    assert not (sample_t(10_000, generator=gen) == 1.0).any()  # FlowMo's default: none
    with pytest.raises(ConfigError, match="noise_share"):
        sample_t(4, noise_share=-0.1)
