"""Decode limits: derived from what the encoder writes, settable, checked from the header first.

The defaults accept every stream ``compress`` writes with the decoding model's config (a 12 MP
photo on ``tiny``, 1800x1800 on ``test``); a forged step count or guidance costs nothing but a
header check unless the user raises the limit; a format-1 stream (no weights fingerprint) is
refused unless allowed; a stream file is bounded by its size and header before it is read.
"""

from __future__ import annotations

import struct
import time
import zlib

import pytest
import torch

from compressai_vlic.bitstream import _FIXED_V1, MAGIC, StreamHeader, pack, unpack
from compressai_vlic.cli.main import main
from compressai_vlic.errors import (
    CorruptStreamError,
    ForeignStreamError,
    ModelMismatchError,
    StreamLimitError,
)
from compressai_vlic.models import VLIC
from compressai_vlic.zoo import vlic

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def stream(net) -> bytes:
    x = torch.rand(1, 3, 40, 56, generator=torch.Generator().manual_seed(4))
    return net.compress(x, seed=3)["strings"][0][0]


class _Evaluations:
    """Counts velocity-network calls (each a batch of tiles) during a block."""

    def __init__(self, model: VLIC) -> None:
        self.model, self.calls = model, 0

    def __enter__(self) -> _Evaluations:
        self.handle = self.model.decoder.register_forward_hook(self._count)
        return self

    def _count(self, *_: object) -> None:
        self.calls += 1

    def __exit__(self, *_: object) -> None:
        self.handle.remove()


def _payload_bytes(model: VLIC, layout) -> int:
    """A payload length within the bounds the tile count implies (a whole number of words)."""
    least = model._min_payload_bytes(layout.num_tiles)
    return max(8, -(-least // 4) * 4)


@pytest.mark.parametrize(
    ("quality", "size", "tiling_type"),
    [
        ("tiny", (3000, 4000), "seamless"),  # the default tiling
        ("tiny", (3000, 4000), "blend"),
        ("test", (1800, 1800), "blend"),
    ],
)
def test_default_limits_accept_what_the_encoder_writes(quality, size, tiling_type) -> None:
    # A 12 MP photo on `tiny` and 1800x1800 on `test`: over the old fixed limit of 20,000 network
    # evaluations (30,602 and 22,500 with the blend tiling).
    model = vlic(quality).eval()
    layout = model.layout_for(*size, tiling_type)
    header = model.stream_header(layout)
    per_tile = model._header_settings(header).sampler().num_evaluations()
    assert layout.num_tiles * per_tile > 20_000  # the old fixed limit refused them
    assert model.check_stream(header, _payload_bytes(model, layout)) == layout
    assert per_tile <= model.max_evaluations_per_tile()


def test_forged_step_counts_cost_no_more_than_the_limit(net, stream) -> None:
    header, _ = unpack(stream)
    forged = pack(
        StreamHeader(**{**header.__dict__, "num_steps": 100, "cfg_interval": (0.0, 1.0)}),
        unpack(stream)[1],
    )
    start = time.perf_counter()
    with _Evaluations(net) as count, pytest.raises(StreamLimitError, match="200 network"):
        net.decompress([[forged]])  # default: the model's own 3 steps x 2 = 6 per tile
    assert count.calls == 0 and time.perf_counter() - start < 1.0
    with _Evaluations(net) as count, pytest.raises(StreamLimitError, match="over the limit of 150"):
        net.decompress([[forged]], max_evaluations_per_tile=150)  # a limit the user set
    assert count.calls == 0
    with _Evaluations(net) as count, pytest.raises(StreamLimitError, match="over the limit of 799"):
        net.decompress([[forged]], max_evaluations_per_tile=None, max_evaluations=799)
    assert count.calls == 0  # 4 tiles x 200 = 800
    # The user lifts the limit: a stream just over the model's own cost then decodes.
    dearer = pack(
        StreamHeader(**{**header.__dict__, "num_steps": 4, "cfg_interval": (0.0, 1.0)}),
        unpack(stream)[1],
    )
    with pytest.raises(StreamLimitError, match="per tile"):
        net.decompress([[dearer]])
    with _Evaluations(net) as count:
        assert net.decompress([[dearer]], max_evaluations_per_tile=8)["x_hat"].shape[-1] == 56
    assert count.calls >= 4
    with _Evaluations(net) as count, pytest.raises(StreamLimitError):
        net.decompress([[stream]], max_evaluations_per_tile=1)  # a lower limit than the model's
    assert count.calls == 0


def _as_format_1(stream: bytes) -> bytes:
    """The same stream rewritten as format 1 (no fingerprint), checksum recomputed."""
    h, payload = unpack(stream)
    packed = (1 << 28) | ((h.height - 1) << 14) | (h.width - 1)
    head = _FIXED_V1.pack(
        MAGIC, packed, h.config_hash, h.tile_overlap, h.seed, h.num_steps, h.guidance_scale, 0.5
    )
    body = head + payload
    return body + struct.pack(">I", zlib.crc32(body))


def test_a_format_1_rewrite_is_refused_unless_allowed(net, stream) -> None:
    old = _as_format_1(stream)
    assert unpack(old)[0].version == 1
    with _Evaluations(net) as count, pytest.raises(ModelMismatchError, match="no weights"):
        net.decompress([[old]])
    assert count.calls == 0
    assert net.decompress([[old]], allow_model_mismatch=True)["x_hat"].shape == (1, 3, 40, 56)


def test_compress_refuses_what_the_default_decoder_would(net) -> None:
    x = torch.rand(1, 3, 40, 56)
    with pytest.raises(StreamLimitError, match="max_pixels"):
        net.compress(x, max_pixels=40 * 56 - 1)
    data = net.compress(x, max_pixels=None)["strings"][0][0]
    with pytest.raises(StreamLimitError, match="max_pixels"):
        net.decompress([[data]], max_pixels=40 * 56 - 1)


def test_stream_files_are_bounded_by_size_and_header_before_reading(net, stream, tmp_path) -> None:
    good = tmp_path / "good.vlic"
    good.write_bytes(stream)
    assert net.read_stream(good) == stream
    huge = tmp_path / "huge.vlic"
    with huge.open("wb") as fh:  # a sparse 5 GB file behind a valid stream: never read whole
        fh.write(stream)
        fh.truncate(5 << 30)
    start = time.perf_counter()
    with pytest.raises(StreamLimitError, match="no valid stream"):
        net.read_stream(huge)
    foreign = tmp_path / "foreign.vlic"
    with foreign.open("wb") as fh:
        fh.write(b"\x89PNG\r\n\x1a\n")
        fh.truncate(5 << 30)
    with pytest.raises(ForeignStreamError, match="PNG"):
        net.read_stream(foreign)
    assert time.perf_counter() - start < 1.0
    big = tmp_path / "big.vlic"
    forged = pack(
        StreamHeader(**{**unpack(stream)[0].__dict__, "height": 5000, "width": 5000}), bytes(8)
    )
    big.write_bytes(forged)
    with pytest.raises(StreamLimitError, match="max_pixels"):
        net.read_stream(big)
    assert net.read_stream(big, max_pixels=None) == forged


def test_a_few_bytes_declaring_a_large_image_are_refused_before_the_prior_runs(net, stream):
    # 49 bytes declaring 4096x4096 (within max_pixels): 29,241 tiles cannot fit in 16 bytes,
    # since every tile's first digit is coded with the same table (at least 0.6 bits here).
    header, _ = unpack(stream)
    forged = pack(StreamHeader(**{**header.__dict__, "height": 4096, "width": 4096}), bytes(16))
    assert len(forged) == 49
    bits, digits = net.token_coder.first_group_bits(net.prior)
    assert bits > 0.1 and digits >= 1
    start = time.perf_counter()
    with pytest.raises(CorruptStreamError, match="payload bytes"):
        net.decompress([[forged]])
    assert time.perf_counter() - start < 2.0
    # real streams are within the bound
    layout = header.tile_layout(32)
    assert net._min_payload_bytes(layout.num_tiles) <= len(unpack(stream)[1])


def test_decode_cli_limits_are_settable(net, stream, tmp_path, capsys) -> None:
    header, payload = unpack(stream)
    settings = {"num_steps": 4, "cfg_interval": (0.0, 1.0)}  # 8 per tile, over the model's 6
    forged = pack(StreamHeader(**{**header.__dict__, **settings}), payload)
    src = tmp_path / "forged.vlic"
    src.write_bytes(forged)
    args = ["decode", str(src), "--quality", "test"]
    assert main([*args, "-o", str(tmp_path / "a.png")]) == 1
    assert "--max-evaluations-per-tile" in capsys.readouterr().err
    assert not (tmp_path / "a.png").exists()
    assert main([*args, "-o", str(tmp_path / "b.png"), "--max-evaluations", "50"]) == 1
    assert "--max-evaluations-per-tile" in capsys.readouterr().err  # both limits apply
    over = ["--max-evaluations-per-tile", "8", "--max-evaluations", "31"]
    assert main([*args, "-o", str(tmp_path / "c.png"), *over]) == 1  # 4 tiles x 8 = 32
    assert "over the limit of 31" in capsys.readouterr().err
    assert main([*args, "-o", str(tmp_path / "d.png"), "--max-evaluations-per-tile", "0"]) == 0
    assert (tmp_path / "d.png").is_file()
    assert main([*args, "-o", str(tmp_path / "e.png"), "--max-pixels", "100"]) == 1
    assert "max-pixels" in capsys.readouterr().err


@pytest.mark.slow
def test_a_stream_over_the_old_fixed_limit_round_trips_with_default_limits() -> None:
    # The smaller equivalent of a 12 MP photo on `tiny`: more steps per tile instead of more tiles,
    # so that the stream needs more network evaluations than the old fixed limit of 20,000.
    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = vlic("test", num_steps=100, guidance_scale=1.5).eval()
    x = torch.rand(1, 3, 448, 448, generator=torch.Generator().manual_seed(5))
    layout = model.layout_for(448, 448)
    header = model.stream_header(layout)
    per_tile = model._header_settings(header).sampler().num_evaluations()
    assert layout.num_tiles * per_tile > 20_000
    out = model.compress(x, seed=2)
    with _Evaluations(model) as counted:
        x_hat = model.decompress(out["strings"], out["shape"])["x_hat"]
    assert x_hat.shape == x.shape
    assert counted.calls > 0
