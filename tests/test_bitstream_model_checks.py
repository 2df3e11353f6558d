"""Streams checked against the model before any work: old versions, fingerprints, limits, arguments."""

from __future__ import annotations

import json
import struct
import time
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from compressai_vlic.bitstream import StreamHeader, pack, unpack
from compressai_vlic.errors import (
    BitstreamError,
    ConfigError,
    CorruptStreamError,
    DecompressArgumentError,
    ModelMismatchError,
    StreamLimitError,
)
from compressai_vlic.models import VLIC
from compressai_vlic.zoo import vlic

FIXTURE = Path(__file__).parent / "fixtures" / "stream_v1"


@pytest.fixture(scope="module")
def image() -> torch.Tensor:
    gen = torch.Generator().manual_seed(4)
    return torch.rand(1, 3, 40, 56, generator=gen)


@pytest.fixture(scope="module")
def stream(net, image) -> bytes:
    return net.compress(image, seed=3)["strings"][0][0]


def _forge(data: bytes, header: StreamHeader, payload: bytes | None = None) -> bytes:
    """A stream with another header (and payload), checksum recomputed."""
    return pack(header, unpack(data)[1] if payload is None else payload)


def test_version_1_stream_written_by_older_code_still_decodes() -> None:
    meta = json.loads((FIXTURE / "meta.json").read_text())
    state = {
        k: v.float() if v.is_floating_point() else v
        for k, v in load_file(FIXTURE / "model.safetensors").items()
    }
    model = VLIC.from_state_dict(state).eval()
    data = (FIXTURE / "image_64x96_seed1234.vlic").read_bytes()
    header, payload = unpack(data)
    assert header.version == 1 and (header.height, header.width) == (64, 96)
    # It carries no weights fingerprint: refused unless the user vouches for the weights.
    with pytest.raises(ModelMismatchError, match="format version 1"):
        model.check_stream(header, len(payload))
    with pytest.raises(ModelMismatchError, match="allow_model_mismatch"):
        model.decompress([[data]])
    layout = model.check_stream(header, len(payload), allow_model_mismatch=True)
    # The old layout rule: 8 px overlap even though 64x96 is a whole number of 32 px tiles.
    assert (layout.rows, layout.cols) == tuple(meta["tiles"]) == (3, 4)
    expected = np.load(FIXTURE / "expected.npz")
    indices = model.token_coder.decode(
        payload, model.prior, layout.num_tiles, model.config.num_tokens
    )
    assert np.array_equal(indices.numpy(), expected["indices"])
    x_hat = model.decompress([[data]], (64, 96), allow_model_mismatch=True)["x_hat"]
    decoded = (x_hat.clamp(0, 1) * 255).round().to(torch.uint8).numpy()
    diff = np.abs(decoded.astype(int) - expected["x_hat_uint8"].astype(int))
    assert diff.max() <= 1  # the same image (float rounding may move a value by one level)
    # What the new defaults (power schedule, CFG interval) would give is a different image.
    new = model.decode_codes(indices, seed=1234, layout=layout)
    assert (new - x_hat).abs().mean() > 1e-3


def test_new_layout_rule_drops_overlap_for_whole_tiles(net) -> None:
    whole = net.layout_for(64, 96, "whole")
    assert whole.num_tiles == 6 and whole.overlap == 0
    assert net.layout_for(64, 97, "whole").overlap == 8
    assert net.layout_for(64, 96, "blend").overlap == 8  # blended tiles
    seamless = net.layout_for(64, 97)  # the default: whole tiles, deblocked at decode time
    assert seamless.seamless and seamless.overlap == 0 and seamless.num_tiles == 8
    with pytest.raises(ConfigError):
        net.layout_for(64, 96, "none")  # type: ignore[arg-type]
    tile = 256
    from compressai_vlic.tiling import TileLayout

    # The figures at the paper tile: 768x512 took 12 tiles, now 6; 640x480 stays at 6.
    assert TileLayout.for_image(512, 768, tile, 8).num_tiles == 12
    assert TileLayout.for_image(512, 768, tile, 0).num_tiles == 6
    assert TileLayout.for_image(480, 640, tile, 8).num_tiles == 6


def test_grid_has_the_fewest_tiles_for_the_overlap() -> None:
    from compressai_vlic.tiling import TileLayout

    for tile, overlap in ((32, 8), (256, 8), (64, 0)):
        for side in range(1, 700, 7):
            n = TileLayout.for_image(side, side, tile, overlap).rows
            assert n * tile - (n - 1) * overlap >= side  # covers
            assert n == 1 or (n - 1) * tile - (n - 2) * overlap < side  # one fewer does not


def test_round_trip_and_new_header_fields(net, image, stream) -> None:
    header, _ = unpack(stream)
    assert header.version == 2 and header.schedule == "power"
    assert header.weights_fingerprint == net.weights_fingerprint()
    x_hat = net.decompress([[stream]], (40, 56))["x_hat"]
    assert x_hat.shape == (1, 3, 40, 56)


def test_fingerprint_is_cached_and_follows_the_weights(net) -> None:
    other = vlic("test").eval()
    other.load_state_dict(net.state_dict())
    assert other.weights_fingerprint() == net.weights_fingerprint()
    with torch.no_grad():
        other.decoder.parameters().__next__().add_(1e-3)  # in place, like an optimizer step
    assert other.weights_fingerprint() != net.weights_fingerprint()
    other.load_state_dict(net.state_dict())
    assert other.weights_fingerprint() == net.weights_fingerprint()
    with torch.no_grad():
        other.encoder.parameters().__next__().add_(1.0)  # the encoder is not needed to decode
    assert other.weights_fingerprint() == net.weights_fingerprint()
    start = time.perf_counter()
    for _ in range(20):
        net.weights_fingerprint()
    assert time.perf_counter() - start < 0.5  # cached: no hashing per call


def test_other_weights_are_refused_unless_allowed(net, stream) -> None:
    other = vlic("test").eval()
    other.load_state_dict(net.state_dict())
    with torch.no_grad():
        next(other.decoder.parameters()).mul_(1.01)  # another decoder: another image, no error
    with pytest.raises(ModelMismatchError, match="allow_model_mismatch"):
        other.decompress([[stream]])
    assert other.decompress([[stream]], allow_model_mismatch=True)["x_hat"].shape == (1, 3, 40, 56)
    with torch.no_grad():
        next(other.prior.parameters()).mul_(1.01)  # another prior is refused too
    with pytest.raises(ModelMismatchError):
        other.decompress([[stream]])


def test_a_tiny_stream_declaring_a_huge_image_is_refused_at_once(net, stream) -> None:
    header, _ = unpack(stream)
    huge = StreamHeader(**{**header.__dict__, "height": 16384, "width": 16384})
    forged = _forge(stream, huge, bytes(8))
    assert len(forged) == 41  # header + 2 payload words + checksum
    start = time.perf_counter()
    with pytest.raises(StreamLimitError, match="max_pixels"):
        net.decompress([[forged]])
    with pytest.raises(CorruptStreamError, match="payload bytes"):
        net.decompress([[forged]], max_pixels=None)  # 466k tiles cannot fit in 8 bytes
    assert time.perf_counter() - start < 2.0


def test_an_overlap_no_config_writes_is_refused(net, stream) -> None:
    header, _ = unpack(stream)
    for overlap in (16, 31, 200):
        forged = _forge(stream, StreamHeader(**{**header.__dict__, "tile_overlap": overlap}))
        with pytest.raises(CorruptStreamError, match="overlap"):
            net.decompress([[forged]])


def test_evaluation_limit(net, stream) -> None:
    header, _ = unpack(stream)
    many = _forge(stream, StreamHeader(**{**header.__dict__, "num_steps": 100}))
    with pytest.raises(StreamLimitError, match="max_evaluations"):
        net.decompress([[many]], max_evaluations=100)
    with pytest.raises(StreamLimitError):
        net.decompress([[stream]], max_evaluations=1)
    body = bytearray(stream[:-4])
    body[19] = 255  # 255 steps, checksum recomputed: outside the documented limit
    with pytest.raises(CorruptStreamError, match="num_steps"):
        net.decompress([[bytes(body) + struct.pack(">I", zlib.crc32(bytes(body)))]])


@pytest.mark.parametrize(
    "strings",
    [None, [], [[]], b"VL", [b"VL"], "streams", [[1, 2]], 7],
)
def test_bad_decompress_arguments_are_typed(net, strings) -> None:
    with pytest.raises(BitstreamError):
        net.decompress(strings)  # type: ignore[arg-type]


def test_mixed_sizes_are_a_typed_error_before_any_decoding(net, image, stream) -> None:
    other = net.compress(image[..., :32, :48], seed=3)["strings"][0][0]
    with pytest.raises(DecompressArgumentError, match="different sizes"):
        net.decompress([[stream, other]])
    with pytest.raises(DecompressArgumentError):
        net.decompress([[]])
