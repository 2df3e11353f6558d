"""Config, FSQ, tiling and sampler: the VLIC parts that need neither the prior nor the coder."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import photo_tensor

from compressai_vlic.errors import ConfigError
from compressai_vlic.models.config import VLICConfig
from compressai_vlic.models.fsq import FSQ
from compressai_vlic.sampling import RectifiedFlowSampler, cfg_combine, seeded_noise
from compressai_vlic.tiling import TileLayout
from compressai_vlic.zoo import QUALITIES, quality_config


def test_config_json_round_trip_and_hash():
    cfg = quality_config("test")
    again = VLICConfig.from_json(cfg.to_json())
    assert again == cfg
    assert again.config_hash() == cfg.config_hash() and len(cfg.config_hash()) == 4
    # Sampler defaults travel in each stream, so they do not change the hash ...
    assert cfg.replace(num_steps=7, guidance_scale=2.0).config_hash() == cfg.config_hash()
    # ... but anything that changes weights or token syntax does.
    assert cfg.replace(fsq_levels=(8, 8, 5)).config_hash() != cfg.config_hash()
    assert cfg.replace(num_tokens=8).config_hash() != cfg.config_hash()


def test_paper_rate_points():
    q1, q2 = quality_config(1), quality_config(2)
    assert q1.bits_per_token == pytest.approx(18.0)
    assert q2.bits_per_token == pytest.approx(56.0)
    # 256 tokens at 256x256: ~0.07 and ~0.21 bpp before entropy coding (paper).
    assert q1.bpp_before_entropy_coding == pytest.approx(0.0703, abs=1e-4)
    assert q2.bpp_before_entropy_coding == pytest.approx(0.21875)
    assert set(QUALITIES) == {"tiny", "test", "1", "2"}


@pytest.mark.parametrize(
    "bad",
    [
        {"image_size": 30},
        {"fsq_levels": (1, 4)},
        {"encoder_width": 30, "encoder_heads": 4},
        {"tile_overlap": 16},
        {"num_steps": 0},
        {"unknown_field": 1},
    ],
)
def test_config_rejects_bad_values(bad):
    with pytest.raises(ConfigError):
        quality_config("test", **bad)


def test_unknown_quality_is_a_config_error():
    with pytest.raises(ConfigError, match="choose one of"):
        quality_config(7)


def test_fsq_indices_codes_and_gradient():
    fsq = FSQ((8, 5, 5, 4))
    z = (torch.randn(2, 64, 4) * 3).requires_grad_()
    out = fsq(z)
    assert out.indices.dtype == torch.long
    for j, level in enumerate(fsq.levels):
        digits = out.indices[..., j]
        assert digits.min() >= 0 and digits.max() <= level - 1
        # a wide input reaches every level of the grid
        assert digits.unique().numel() == level
    assert out.codes.abs().max() <= 1.0
    torch.testing.assert_close(fsq.indices_to_codes(out.indices), out.codes.detach())
    out.codes.sum().backward()
    assert z.grad is not None and z.grad.abs().sum() > 0  # straight-through estimator


def test_tile_layout_covers_odd_sizes():
    layout = TileLayout.for_image(333, 517, tile=32, overlap=8)
    assert layout.padded_height >= 333 and layout.padded_width >= 517
    assert layout.padded_height - 333 < layout.stride and layout.padded_width - 517 < layout.stride
    covered = torch.zeros(layout.padded_height, layout.padded_width)
    for tile in layout.tiles():
        covered[tile.rows, tile.cols] += 1
    assert covered.min() >= 1 and covered.max() <= 4
    tiny = TileLayout.for_image(5, 7, tile=32, overlap=8)
    assert (tiny.rows, tiny.cols, tiny.padded_height, tiny.padded_width) == (1, 1, 32, 32)


def test_multidiffusion_blend_is_a_normalised_average(photos):
    img = photo_tensor(photos["coffee"], crop=(70, 101))
    layout = TileLayout.for_image(70, 101, tile=32, overlap=8)
    canvas = layout.pad(img)
    seen = []

    def identity(windows, ids):
        seen.append(windows.shape[0])
        return windows

    # Averaging identical values must give them back exactly where they overlap.
    torch.testing.assert_close(layout.blend(canvas, identity, tile_batch=3), canvas)
    assert max(seen) <= 3 and sum(seen) == layout.num_tiles  # bounded tile batches
    torch.testing.assert_close(layout.crop(canvas), img)

    # Per-tile constants: the overlap is a convex combination that ramps between neighbours.
    blended = layout.blend(canvas, lambda w, ids: ids.view(-1, 1, 1, 1).float().expand_as(w), 4)
    assert blended.min() >= 0 and blended.max() <= layout.num_tiles - 1
    first_row = blended[0, 0, 0, :48]  # tile 0 alone, overlap, tile 1 alone
    assert torch.all(first_row[1:] >= first_row[:-1])  # monotone ramp from tile 0 to tile 1
    assert first_row[0] == 0 and first_row[-1] == 1 and 0 < first_row[28] < 1


def test_sampler_grid_is_shifted_towards_low_noise():
    times = RectifiedFlowSampler(num_steps=10, time_shift=0.5).times()
    assert times[0] == pytest.approx(1.0) and times[-1] == 0.0
    assert torch.all(times[1:] < times[:-1])
    plain = RectifiedFlowSampler(num_steps=10, time_shift=1.0).times()
    assert torch.all(times[1:-1] < plain[1:-1])  # more of the steps spent at low noise


def test_sampler_follows_the_rectified_flow_convention(photos):
    # With the exact velocity towards a known image, v = (x_t - x) / t, Euler lands on x.
    target = photo_tensor(photos["astronaut"], crop=(32, 32)) * 2 - 1
    noise = seeded_noise(tuple(target.shape), seed=1)
    sampler = RectifiedFlowSampler(num_steps=4, guidance_scale=1.0, time_shift=0.5)
    x0 = sampler.sample(lambda x_t, t, g: (x_t - target) / t, noise)
    torch.testing.assert_close(x0, target, atol=1e-5, rtol=0)


def test_cfg_and_seeded_noise():
    cond, null = torch.ones(3), torch.zeros(3)
    torch.testing.assert_close(cfg_combine(cond, null, 1.0), cond)
    torch.testing.assert_close(cfg_combine(cond, null, 1.5), cond * 1.5)
    a, b = seeded_noise((2, 3, 4, 4), 7), seeded_noise((2, 3, 4, 4), 7)
    assert torch.equal(a, b) and not torch.equal(a, seeded_noise((2, 3, 4, 4), 8))
    assert abs(float(seeded_noise((1, 3, 64, 64), 0).std()) - 1.0) < 0.05
    assert math.isfinite(float(a.sum()))
