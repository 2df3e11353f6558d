"""VLIC end to end on real photos: bitstreams, seeds, any size, bpp, checkpoints and the zoo."""

from __future__ import annotations

import copy
import io
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import photo_tensor

from compressai_vlic.bitstream import FIXED_OVERHEAD_BYTES, unpack
from compressai_vlic.errors import (
    BitstreamError,
    CheckpointError,
    ConfigError,
    ModelMismatchError,
)
from compressai_vlic.models import VLIC
from compressai_vlic.sampling import FLOWMO_CFG_INTERVAL
from compressai_vlic.zoo import quality_config, vlic

# The test model's ops are tiny: one thread is faster than two and robust to a busy machine.
pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def astronaut(photos) -> torch.Tensor:
    return photo_tensor(photos["astronaut"], crop=(96, 128))


@pytest.fixture(scope="module")
def coded(net, astronaut):
    return net.compress(astronaut)  # default seed


@pytest.fixture(scope="module")
def decoded(net, coded) -> torch.Tensor:
    # Only the bytes travel: decode a copy with a fresh model rebuilt from the weights.
    other = VLIC.from_state_dict(net.state_dict()).eval()
    data = bytes(bytearray(coded["strings"][0][0]))
    return other.decompress([[data]], coded["shape"])["x_hat"]


def test_round_trip_through_bytes_matches_decode_codes(net, astronaut, coded, decoded):
    (data,) = coded["strings"][0]
    assert isinstance(data, bytes) and coded["shape"] == (96, 128)
    header, _ = unpack(data)
    assert header.seed == net.config.default_seed
    assert (header.num_steps, header.guidance_scale) == (3, 1.5)
    assert (header.schedule, header.schedule_param) == ("power", 0.25)  # FlowMo's pow_0.25
    assert header.cfg_interval == pytest.approx(FLOWMO_CFG_INTERVAL, abs=1e-3)
    assert header.weights_fingerprint == net.weights_fingerprint()
    assert decoded.shape == (1, 3, 96, 128) and 0 <= decoded.min() and decoded.max() <= 1
    layout, enc = net.encode_image(astronaut)
    assert layout.num_tiles > 1  # 96x128 is larger than the 32 px training resolution
    expected = net.decode_codes(enc.indices, seed=net.config.default_seed, layout=layout)
    assert torch.equal(decoded, expected)  # exactly what compress-time decoding gives


def test_bf16_decode_keeps_the_tokens_and_nearly_the_pixels(astronaut):
    """``decode_dtype="bfloat16"``: same stream, same tokens; pixels within bf16 rounding."""
    tiny = vlic("tiny", pretrained=True).eval()
    out = tiny.compress(astronaut)
    full = tiny.decompress(out["strings"], out["shape"])["x_hat"]
    half = tiny.decompress(out["strings"], out["shape"], decode_dtype="bfloat16")["x_hat"]
    assert half.dtype == torch.float32 and half.shape == full.shape
    assert not torch.equal(half, full)  # the network really ran in bf16
    psnr_between = -10 * torch.log10(((half - full) ** 2).mean())
    assert psnr_between > 30, float(psnr_between)
    psnr = [float(-10 * torch.log10(((x - astronaut) ** 2).mean())) for x in (full, half)]
    assert abs(psnr[0] - psnr[1]) < 0.5, psnr
    with pytest.raises(ConfigError, match="decode_dtype"):
        tiny.decompress(out["strings"], out["shape"], decode_dtype="float16")


def test_seeds_reproduce_and_differ(net, astronaut, coded, decoded):
    assert net.compress(astronaut)["strings"] == coded["strings"]
    other_seed = net.compress(astronaut, seed=99)
    header, _ = unpack(other_seed["strings"][0][0])
    assert header.seed == 99
    second = net.decompress(other_seed["strings"], other_seed["shape"])["x_hat"]
    assert (decoded - second).abs().mean() > 1e-3  # stochastic decoding: a new sample
    with pytest.raises(ConfigError, match="uint32"):
        net.compress(astronaut, seed=2**32)


def test_forward_gives_likelihoods_and_the_default_seed_sample(net, astronaut, decoded):
    out = net(astronaut)
    tokens = out["likelihoods"]["tokens"]
    layout, enc = net.encode_image(astronaut)
    cfg = net.config
    assert tokens.shape == (layout.num_tiles, cfg.num_tokens, cfg.code_dim)
    assert (tokens > 0).all() and (tokens <= 1).all()
    torch.testing.assert_close(tokens, net.prior.likelihoods(enc.indices).clamp_min(2**-16))
    # forward's reconstruction is the default-seed sample that compress() streams.
    assert torch.equal(out["x_hat"], decoded)


def test_tile_batches_bound_memory_not_the_result(net, astronaut, coded, decoded):
    small = vlic("test", tile_batch=3).eval()
    small.load_state_dict(net.state_dict())
    calls = []
    hook = small.decoder.register_forward_pre_hook(lambda m, args: calls.append(args[0].shape[0]))
    try:
        x_hat = small.decompress(coded["strings"], coded["shape"])["x_hat"]
    finally:
        hook.remove()
    assert max(calls) <= 2 * 3  # cond + null copies of at most 3 tiles per network call
    torch.testing.assert_close(x_hat, decoded, atol=1e-5, rtol=0)


def test_odd_size_round_trip(net, photos):
    # One Euler step without guidance keeps 187 tiles cheap; the stream carries these settings.
    quick = vlic("test", num_steps=1, guidance_scale=1.0).eval()
    quick.load_state_dict(net.state_dict())
    x = photo_tensor(photos["coffee"], crop=(333, 517))
    out = quick.compress(x, seed=5)
    x_hat = net.decompress(out["strings"], out["shape"])["x_hat"]  # settings come from the bytes
    assert x_hat.shape == (1, 3, 333, 517)
    layout, enc = quick.encode_image(x)
    # seamless tiling (the default): whole 32 px tiles, no overlap
    assert (layout.rows, layout.cols, layout.padded_height, layout.padded_width) == (
        11,
        17,
        352,
        544,
    )
    expected = net.decode_codes(enc.indices, seed=5, num_steps=1, guidance_scale=1.0, layout=layout)
    assert torch.equal(x_hat, expected)


@pytest.mark.parametrize("sharpness", [1.0, 10.0])
def test_real_bits_match_estimated_bits(net, photos, sharpness):
    # Estimated bits: -log2 of forward()'s likelihoods (teacher-forced float32 prior). Real bits:
    # the stream, coded from the float64 step-by-step prior through integer CDFs. sharpness
    # scales the prior's output layer to mimic a confident (trained) prior.
    model = copy.deepcopy(net)
    head = [m for m in model.prior.modules() if isinstance(m, torch.nn.Linear)][-1]
    with torch.no_grad():
        head.weight.mul_(sharpness)
    for name in ("astronaut", "rocket"):
        x = photo_tensor(photos[name], crop=(160, 224))
        _, enc = model.encode_image(x)
        with torch.no_grad():
            estimated = float(-torch.log2(model.token_likelihoods(enc.indices).double()).sum())
        real = len(model.compress(x)["strings"][0][0]) * 8
        assert FIXED_OVERHEAD_BYTES == 41  # 29-byte header, CRC32, rANS flush
        assert abs(real - estimated) <= 0.01 * estimated + 8 * FIXED_OVERHEAD_BYTES, (
            name,
            real,
            estimated,
        )


def test_state_dict_update_and_weights_only_load(net, astronaut, coded):
    buf = io.BytesIO()
    torch.save(net.state_dict(), buf)
    buf.seek(0)
    state = torch.load(buf, weights_only=True)
    assert state["_config_json"].dtype == torch.uint8
    loaded = VLIC.from_state_dict(state).eval()
    assert loaded.config == net.config
    assert isinstance(loaded.update(force=True), bool)
    loaded.load_state_dict(state)  # after update()
    assert loaded.compress(astronaut)["strings"] == coded["strings"]

    # Sampler defaults may differ from the checkpoint's; the architecture may not.
    fast = vlic("test", num_steps=2)
    fast.load_state_dict(state)
    assert fast.config.num_steps == 2
    assert torch.equal(state["_config_json"], net._config_json)  # caller's dict untouched
    with pytest.raises(CheckpointError, match="does not match"):
        vlic("test", num_tokens=8).load_state_dict(state)
    # Also when VLIC is nested in another module (e.g. a LightningModule checkpoint).
    wrapper = torch.nn.ModuleDict({"model": vlic("test", num_steps=25)})
    wrapper.load_state_dict({f"model.{k}": v for k, v in state.items()})
    assert wrapper["model"].config.num_steps == 25
    with pytest.raises(CheckpointError, match="does not match"):
        torch.nn.ModuleDict({"model": vlic("test", num_tokens=8)}).load_state_dict(
            {f"model.{k}": v for k, v in state.items()}
        )
    with pytest.raises(CheckpointError, match="not saved from a VLIC"):
        VLIC.from_state_dict({k: v for k, v in state.items() if k != "_config_json"})


def test_stream_from_another_model_is_refused(coded):
    other = vlic("test", fsq_levels=(5, 5, 5))
    with pytest.raises(ModelMismatchError):
        other.decompress(coded["strings"], coded["shape"])


def test_stream_errors_are_typed(net, coded):
    data = bytearray(coded["strings"][0][0])
    data[len(data) // 2] ^= 0x10
    with pytest.raises(BitstreamError):
        net.decompress([[bytes(data)]], coded["shape"])
    with pytest.raises(BitstreamError):
        net.decompress([[coded["strings"][0][0]]], (97, 128))


def test_typed_training_methods(net, photos):
    x = torch.cat(
        [photo_tensor(photos[n], crop=(32, 32)) for n in ("astronaut", "chelsea", "coffee")]
    )
    enc = net.encode(x)
    assert enc.indices.shape == (3, 16, 3) and enc.codes.shape == enc.latent.shape
    bits = net.token_nll_bits(enc.indices)
    assert bits.shape == (3,) and (bits > 0).all()
    t = torch.tensor([0.2, 0.5, 0.9])
    noise = torch.randn_like(x)
    fm = net.flow_matching(x, enc.codes, t=t, noise=noise, drop_mask=torch.tensor([0, 0, 1]).bool())
    torch.testing.assert_close(fm.v_target, noise - (2 * x - 1))
    torch.testing.assert_close(
        fm.x_t, (1 - t.view(-1, 1, 1, 1)) * (2 * x - 1) + t.view(-1, 1, 1, 1) * noise
    )
    torch.testing.assert_close(fm.x0_hat, (fm.x_t - t.view(-1, 1, 1, 1) * fm.v_pred + 1) / 2)
    torch.testing.assert_close(fm.loss, fm.loss_per_sample.mean())
    # The loss trains encoder and decoder through the FSQ straight-through codes.
    fm.loss.backward()
    assert net.encoder.proj_out.weight.grad is not None
    assert net.decoder.null_code.grad is not None  # sample 3 used the null code
    net.zero_grad()
    null = net.velocity(fm.x_t, t, None)
    torch.testing.assert_close(null[2], fm.v_pred[2].detach())
    tiles = net.decode_codes(enc.indices, seed=3)
    assert tiles.shape == x.shape
    assert torch.equal(tiles, net.decode_codes(enc.codes.detach(), seed=3))
    with pytest.raises(ValueError, match="training-size tiles"):
        net.encode(photo_tensor(photos["astronaut"], crop=(40, 32)))


def test_paper_configs_on_meta_device():
    for quality, bits in ((1, 18), (2, 56)):
        with torch.device("meta"):
            model = VLIC(quality_config(quality))
        assert model.config.bits_per_token == bits
        autoencoder = sum(p.numel() for m in (model.encoder, model.decoder) for p in m.parameters())
        assert 0.95e9 < autoencoder < 1.06e9, autoencoder  # paper: ~1.01B
        assert model.config.num_tokens * bits / 256**2 == pytest.approx(
            {1: 0.07, 2: 0.21}[quality], abs=0.01
        )
        assert math.isclose(model.config.bits_per_token, bits)


def test_pretrained_needs_a_checked_file(net, tmp_path, monkeypatch):
    monkeypatch.delenv("COMPRESSAI_VLIC_WEIGHTS", raising=False)
    with pytest.raises(CheckpointError, match="No public VLIC weights"):
        vlic("test", pretrained=True)
    import hashlib

    raw = tmp_path / "raw.pth.tar"
    torch.save(net.state_dict(), raw)
    sha = hashlib.sha256(raw.read_bytes()).hexdigest()[:8]
    good = tmp_path / f"vlic-test-{sha}.pth.tar"
    raw.rename(good)
    monkeypatch.setenv("COMPRESSAI_VLIC_WEIGHTS", str(tmp_path))
    loaded = vlic("test", pretrained=True)
    assert torch.equal(loaded.decoder.null_code, net.decoder.null_code)
    bad = tmp_path / "bad" / "vlic-test-00000000.pth.tar"
    bad.parent.mkdir()
    bad.write_bytes(good.read_bytes())
    with pytest.raises(CheckpointError, match="hash check failed"):
        vlic("test", pretrained=True, weights=bad)
    with pytest.raises(CheckpointError, match="does not match"):
        vlic("test", pretrained=True, weights=good, fsq_levels=(5, 5, 5))


@pytest.mark.slow
def test_decompress_in_another_process_gives_the_same_image(net, tmp_path, photos):
    """Encode with 2 threads here, decode in a fresh 1-thread process: identical pixels."""
    x = photo_tensor(photos["rocket"], crop=(72, 80))
    torch.set_num_threads(2)
    try:
        stream = net.compress(x, seed=31)["strings"][0][0]
    finally:
        torch.set_num_threads(1)
    torch.save(net.state_dict(), tmp_path / "net.pth")
    (tmp_path / "stream.bin").write_bytes(stream)
    script = (
        "import sys, torch\n"
        "torch.set_num_threads(1)\n"
        "from compressai_vlic.models import VLIC\n"
        "net = VLIC.from_state_dict(torch.load(sys.argv[1], weights_only=True)).eval()\n"
        "data = open(sys.argv[2], 'rb').read()\n"
        "torch.save(net.decompress([[data]], None)['x_hat'], sys.argv[3])\n"
    )
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    subprocess.run(
        [
            sys.executable,
            "-c",
            script,
            tmp_path / "net.pth",
            tmp_path / "stream.bin",
            tmp_path / "x_hat.pt",
        ],
        check=True,
        env=env,
        timeout=300,
    )
    other = torch.load(tmp_path / "x_hat.pt", weights_only=True)
    assert torch.equal(other, net.decompress([[stream]], (72, 80))["x_hat"])


def test_sampler_settings_are_what_the_header_can_hold(net, photos):
    odd = vlic("test", guidance_scale=1.3, time_shift=0.3, schedule="shift").eval()
    odd.load_state_dict(net.state_dict())
    settings = odd.stream_settings(seed=8)
    # float16 in the header: the decoder uses the rounded values, and so must any comparison.
    assert settings.guidance_scale != 1.3 and abs(settings.guidance_scale - 1.3) < 1e-3
    x = photo_tensor(photos["chelsea"], crop=(40, 44))
    out = odd.compress(x, seed=8)
    layout, enc = odd.encode_image(x)
    expected = odd.decode_codes(
        enc.indices,
        seed=8,
        guidance_scale=settings.guidance_scale,
        time_shift=settings.time_shift,
        layout=layout,
        schedule=settings.schedule,
        cfg_interval=settings.cfg_interval,
    )
    assert torch.equal(odd.decompress(out["strings"], out["shape"])["x_hat"], expected)
