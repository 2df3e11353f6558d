"""Codecs run elsewhere: a folder of reconstructions with real rates, and a torch.hub codec loaded
from a tiny hub repository the test writes (source="local"; nothing is downloaded)."""

from __future__ import annotations

import io
import json
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from compressai_vlic.errors import CheckpointError, ConfigError
from compressai_vlic.evaluation import CompareSettings, make_codec, run_comparison
from compressai_vlic.evaluation.external import FolderCodec, ReconstructionFolderError

NAMES = ("astronaut", "chelsea", "coffee")


def _crop(img: np.ndarray, h: int = 64, w: int = 80) -> np.ndarray:
    top, left = (img.shape[0] - h) // 2, (img.shape[1] - w) // 2
    return np.ascontiguousarray(img[top : top + h, left : left + w])


def _jpeg(arr: np.ndarray, quality: int) -> tuple[bytes, np.ndarray]:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="JPEG", quality=quality)
    data = buf.getvalue()
    return data, np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))


@pytest.fixture
def originals(photos, tmp_path) -> Path:
    folder = tmp_path / "originals"
    folder.mkdir()
    for name in NAMES:
        Image.fromarray(_crop(photos[name])).save(folder / f"{name}.png")
    return folder


def _recon_folder(originals: Path, root: Path, layout: dict[str, tuple[int, str]]) -> Path:
    """JPEG reconstructions of the originals: rate point -> (quality, "bitstreams"/"json"/"csv")."""
    for point, (quality, kind) in layout.items():
        folder = root / point
        folder.mkdir(parents=True)
        sizes = {}
        for path in sorted(originals.glob("*.png")):
            data, rec = _jpeg(np.asarray(Image.open(path)), quality)
            Image.fromarray(rec).save(folder / f"{path.stem}.png")
            sizes[path.stem] = len(data)
            if kind == "bitstreams":
                (folder / "bitstreams").mkdir(exist_ok=True)
                (folder / "bitstreams" / f"{path.stem}.jpg").write_bytes(data)
        if kind == "json":
            (folder / "bytes.json").write_text(json.dumps(sizes))
        elif kind == "csv":
            rows = "".join(f"{k}.png,{v}\n" for k, v in sizes.items())
            (folder / "bytes.csv").write_text("image,bytes\n" + rows)
    return root


def test_folder_codec_equals_the_same_jpeg_run_in_compare(originals, tmp_path):
    """Stored JPEG decodes with their real sizes give exactly the rows of `jpeg@q20,q60,q90`."""
    layout = {"a_q20": (20, "bitstreams"), "b_q60": (60, "json"), "c_q90": (90, "csv")}
    root = _recon_folder(originals, tmp_path / "mycodec", layout)
    folder = make_codec(f"folder:{root}")
    assert folder.name == "mycodec" and folder.rate_points == ["a_q20", "b_q60", "c_q90"]
    settings = CompareSettings(metrics=["psnr"], distribution_metrics=[], progress=False)
    images = sorted(originals.glob("*.png"))
    result = run_comparison(
        images, [folder, make_codec("jpeg@q20,q60,q90")], tmp_path / "o", settings
    )
    by = {(r.codec, r.rate_point, r.image): r for r in result.rows}
    for image in (p.name for p in images):
        for point, q in (("a_q20", "q20"), ("b_q60", "q60"), ("c_q90", "q90")):
            mine, ref = by[("mycodec", point, image)], by[("jpeg", q, image)]
            assert mine.num_bytes == ref.num_bytes and mine.bpp == ref.bpp
            assert mine.metrics["psnr"] == pytest.approx(ref.metrics["psnr"], abs=1e-9)
    payload = json.loads((tmp_path / "o" / "json" / "mycodec.json").read_text())
    assert len(payload["results"]["bpp"]) == 3
    assert payload["results"]["bpp"] == sorted(payload["results"]["bpp"])


def test_folder_codec_missing_and_extra_images_are_reported(originals, tmp_path, photos):
    root = _recon_folder(originals, tmp_path / "c", {"q30": (30, "bitstreams")})
    (root / "q30" / "coffee.png").unlink()
    (root / "q30" / "bitstreams" / "coffee.jpg").unlink()
    data, rec = _jpeg(_crop(photos["rocket"]), 30)  # an image that is not in the set
    Image.fromarray(rec).save(root / "q30" / "rocket.png")
    (root / "q30" / "bitstreams" / "rocket.jpg").write_bytes(data)
    notices: list[str] = []
    settings = CompareSettings(metrics=["psnr"], distribution_metrics=[], progress=False)
    result = run_comparison(
        sorted(originals.glob("*.png")), [make_codec(f"folder:{root}")], tmp_path / "o",
        settings, notify=notices.append,
    )  # fmt: skip
    assert sorted({r.image for r in result.rows}) == ["astronaut.png", "chelsea.png"]
    assert "no reconstruction of coffee.png" in result.failed_images["coffee.png"]
    assert any("rocket" in n and "unused" in n for n in notices)


def _write(folder: Path, files: dict[str, bytes | str]) -> None:
    for name, content in files.items():
        path = folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content if isinstance(content, bytes) else content.encode())


def _png(h: int = 8, w: int = 8) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.full((h, w, 3), 128, np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


@pytest.mark.parametrize(
    ("files", "message"),
    [
        ({"r/a.png": _png()}, "no rates"),
        ({"r/a.png": _png(), "r/bytes.json": '{"a": 0}'}, "0 bytes cannot be a real rate"),
        ({"r/a.png": _png(), "r/bytes.json": '{"a": 12.5}'}, "not a whole number"),
        ({"r/a.png": _png(), "r/bytes.json": '{"a": "many"}'}, "not a number"),
        ({"r/a.png": _png(), "r/bytes.json": "[1, 2"}, "not valid JSON"),
        ({"r/a.png": _png(), "r/bytes.csv": "name,size\na,3\n"}, "needs columns"),
        ({"r/a.png": _png(), "r/bytes.csv": "image,bytes\na,3\na.png,4\n"}, "listed twice"),
        ({"r/a.png": _png(), "r/bytes.json": '{"a": 3, "b": 4}'}, "without a reconstruction"),
        ({"r/a.png": _png(), "r/b.png": _png(), "r/bytes.json": '{"a": 3}'}, "without a rate"),
        ({"r/a.png": _png(), "r/bitstreams/a.bin": b"", }, "0 bytes"),
        ({"r/a.png": _png(), "r/a.bmp": _png(), "r/bytes.json": '{"a": 3}'}, "two reconstructions"),
        ({"r/a.png": _png(), "r/bytes.json": '{"a": 3}', "r/bytes.csv": "image,bytes\na,3\n"},
         "rates given twice"),
    ],
)  # fmt: skip
def test_bad_folders_raise_typed_errors(tmp_path, files, message):
    _write(tmp_path / "codec", files)
    with pytest.raises(ReconstructionFolderError, match=message):
        FolderCodec(tmp_path / "codec")


def test_impossible_rates_and_sizes_skip_the_image(tmp_path):
    _write(tmp_path / "codec", {"r/a.png": _png(), "r/b.png": _png(9, 8),
                                "r/bytes.json": json.dumps({"a": 8 * 8 * 3 + 1, "b": 10})})  # fmt: skip
    codec = FolderCodec(tmp_path / "codec")
    image = torch.full((3, 8, 8), 128 / 255)
    with pytest.raises(ReconstructionFolderError, match="more than its raw"):
        codec.code_named(image, "r", ["a.png"])
    with pytest.raises(ReconstructionFolderError, match="reconstruction is 8x9"):
        codec.code_named(image, "r", ["b.png"])
    with pytest.raises(ReconstructionFolderError, match="rate-point folder 'x'"):
        FolderCodec(tmp_path / "codec", ["x"])
    with pytest.raises(ReconstructionFolderError, match="no such folder"):
        make_codec(f"folder:{tmp_path / 'nowhere'}")


# ----------------------------------------------------------------------------- torch.hub
HUBCONF = '''
"""A tiny torch.hub repository: MS-ILLM's compress/decompress interface and a CompressAI model."""
from typing import NamedTuple

import torch
import torch.nn.functional as F
from compressai.entropy_models import EntropyBottleneck

dependencies = ["torch", "compressai"]


class CompressedOutput(NamedTuple):  # NeuralCompression's HyperpriorCompressedOutput fields
    latent_strings: list
    hyper_latent_strings: list
    image_size: tuple
    padded_size: tuple


class TinyIllm(torch.nn.Module):
    def __init__(self, step):
        super().__init__()
        self.step = step
        self.analysis = torch.nn.Conv2d(3, 4, 4, stride=4)
        self.hyper = torch.nn.Conv2d(4, 2, 4, stride=4)
        self.synthesis = torch.nn.ConvTranspose2d(4, 3, 4, stride=4)
        self.bottleneck = EntropyBottleneck(4)
        self.hyper_bottleneck = EntropyBottleneck(2)

    def update(self, force=False):
        return self.bottleneck.update(force=force) | self.hyper_bottleneck.update(force=force)

    def compress(self, image, force_cpu=True):
        h, w = image.shape[-2:]
        x = F.pad(image, (0, (-w) % 16, 0, (-h) % 16))
        y = self.analysis(x) / self.step
        z = self.hyper(y)
        return CompressedOutput(self.bottleneck.compress(y), self.hyper_bottleneck.compress(z),
                                (h, w), tuple(x.shape[-2:]))

    def decompress(self, data, force_cpu=True):
        size = (data.padded_size[0] // 4, data.padded_size[1] // 4)
        y = self.bottleneck.decompress(data.latent_strings, size) * self.step
        x = torch.sigmoid(self.synthesis(y))
        return x[:, :, : data.image_size[0], : data.image_size[1]]


def tiny_illm_1(pretrained=False, **kwargs):
    torch.manual_seed(1)
    return TinyIllm(step=0.5)


def tiny_illm_2(pretrained=False, **kwargs):
    torch.manual_seed(1)
    return TinyIllm(step=0.05)


def factorized(pretrained=False, **kwargs):
    from compressai.models import FactorizedPrior
    torch.manual_seed(2)
    return FactorizedPrior(8, 12)


def with_weights(pretrained=True, **kwargs):
    model = tiny_illm_1()
    if pretrained:
        url = "https://example.invalid/tiny_illm-0001.pth"
        model.load_state_dict(torch.hub.load_state_dict_from_url(url, map_location="cpu"))
    return model
'''


@pytest.fixture
def hub_repo(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    repo = tmp_path / "tinyhub"
    repo.mkdir()
    (repo / "hubconf.py").write_text(textwrap.dedent(HUBCONF))
    return repo


def test_hub_codec_real_rates_in_compare(hub_repo, originals, tmp_path):
    codec = make_codec(f"hub:{hub_repo}@tiny_illm_1,tiny_illm_2")
    cai = make_codec(f"cai=hub:{hub_repo}@factorized")
    settings = CompareSettings(metrics=["psnr"], distribution_metrics=[], progress=False)
    images = sorted(originals.glob("*.png"))
    result = run_comparison(images, [codec, cai], tmp_path / "o", settings)
    assert not result.failed_images and len(result.rows) == 3 * 3
    # the rate is the bytes of the entropy-coded strings, recomputed here by hand
    model = torch.hub.load(str(hub_repo), "tiny_illm_2", source="local").eval()
    model.update(force=True)
    x = torch.from_numpy(np.array(Image.open(images[0]))).permute(2, 0, 1)[None] / 255.0
    with torch.no_grad():
        out = model.compress(x)
        rec = model.decompress(out)
    expected = sum(map(len, out.latent_strings)) + sum(map(len, out.hyper_latent_strings))
    row = next(
        r for r in result.rows if r.rate_point == "tiny_illm_2" and r.image == images[0].name
    )
    assert row.num_bytes == expected and row.bpp == expected * 8 / (64 * 80)
    stored = np.asarray(
        Image.open(result.reconstructions[("tinyhub", "tiny_illm_2", images[0].name)])
    )
    assert np.array_equal(stored, rec[0].mul(255).round().byte().permute(1, 2, 0).numpy())
    low, high = (result.curve("tinyhub")[i].bpp for i in (0, 1))
    assert low < high  # a finer quantiser costs more bits
    assert all(r.num_bytes > 0 for r in result.rows if r.codec == "cai")
    assert (
        len(codec.cache_key) > 20
        and codec.cache_key == make_codec(f"hub:{hub_repo}@tiny_illm_1,tiny_illm_2").cache_key
    )


def test_hub_codec_never_downloads(hub_repo, tmp_path):
    codec = make_codec(f"hub:{hub_repo}@with_weights")
    hub_dir = Path(torch.hub.get_dir())
    with pytest.raises(CheckpointError, match="not in the torch hub cache") as info:
        codec.code(torch.rand(3, 16, 16), "with_weights")
    assert str(hub_dir / "checkpoints") in str(info.value)
    # with the file in the hub cache it loads
    (hub_dir / "checkpoints").mkdir(parents=True, exist_ok=True)
    torch.manual_seed(1)
    state = torch.hub.load(str(hub_repo), "tiny_illm_1", source="local").state_dict()
    torch.save(state, hub_dir / "checkpoints" / "tiny_illm-0001.pth")
    coded = make_codec(f"hub:{hub_repo}@with_weights").code(torch.rand(3, 16, 16), "with_weights")
    assert coded.num_bytes > 0 and coded.reconstruction.shape == (3, 16, 16)
    with pytest.raises(ConfigError, match="no entry 'nope'"):
        make_codec(f"hub:{hub_repo}@nope")
    with pytest.raises(CheckpointError, match=r"not in the hub cache .*someone_tinyhub_main"):
        make_codec("hub:someone/tinyhub@tiny_illm_1")
    # a repository in the hub cache is found by owner/name[:ref]
    cached = hub_dir / "someone_tinyhub_v1.0"
    cached.mkdir()
    (cached / "hubconf.py").write_text((hub_repo / "hubconf.py").read_text())
    assert make_codec("hub:someone/tinyhub:v1.0@tiny_illm_1").repo_dir == cached


def test_folder_and_hub_codecs_in_vlm_bench(originals, hub_repo, tmp_path, one_torch_thread):
    from compressai_vlic.testing.tiny_vlm import build_tiny_vlm
    from compressai_vlic.vlm.answerers import HFAnswerer
    from compressai_vlic.vlm.bench import BenchSettings, run_vlm_bench
    from compressai_vlic.vlm.tasks import load_task

    lines = [
        {"id": f"y{i}", "image": f"originals/{n}.png", "question": "Is there a cat?",
         "answer": "yes" if n == "chelsea" else "no"}
        for i, n in enumerate(NAMES)
    ]  # fmt: skip
    (tmp_path / "yn.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    root = _recon_folder(originals, tmp_path / "stored", {"q10": (10, "json"), "q50": (50, "json")})
    codecs = [make_codec(f"folder:{root}"), make_codec(f"hub:{hub_repo}@tiny_illm_1")]
    answerer = HFAnswerer(str(build_tiny_vlm(tmp_path / "vlm", seed=0)), max_new_tokens=2)
    result = run_vlm_bench(
        [load_task(tmp_path / "yn.jsonl")], codecs, answerer, tmp_path / "bench",
        BenchSettings(progress=False, plot_type="none", quality_metrics=["psnr"],
                      distribution_metrics=[]),
    )  # fmt: skip
    assert not result.skipped_items and result.failed == 0
    sizes = json.loads((root / "q10" / "bytes.json").read_text())
    row = result.row("yn", "stored", "q10")
    assert row.complete and row.bpp == pytest.approx(
        np.mean([v * 8 / (64 * 80) for v in sizes.values()])
    )
    assert result.row("yn", "tinyhub", "tiny_illm_1").bpp > 0
    # image quality of the same reconstructions, averaged over the task's images
    psnrs = []
    for name in NAMES:
        ref = np.asarray(Image.open(originals / f"{name}.png"), dtype=np.float64)
        rec = np.asarray(Image.open(root / "q10" / f"{name}.png"), dtype=np.float64)
        psnrs.append(10 * np.log10(255**2 / np.mean((ref - rec) ** 2)))
    assert row.quality["psnr"] == pytest.approx(np.mean(psnrs), rel=1e-6)
    assert {c.quality_metric for c in result.correlations} == {"psnr"}
