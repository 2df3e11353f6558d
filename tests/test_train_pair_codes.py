"""Preference pairs are trained with the code they were decoded from, offline and online."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from compressai_vlic_lightning import OfflinePreferences, PhotosDataModule, Stage2Module
from compressai_vlic_lightning.preferences import PreferenceBuffer
from conftest import photo_tensor
from PIL import Image

from compressai_vlic.cli.main import main as vlic_main
from compressai_vlic.errors import DatasetError
from compressai_vlic.evaluation.codec_pairs import PairCodes
from compressai_vlic.judges.dataset import read_preference_dataset
from compressai_vlic.judges.types import Choice, Judgment, Vote

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture
def codec_ckpt(tmp_path):
    from compressai_vlic.zoo import vlic

    torch.manual_seed(0)
    path = tmp_path / "codec.pth.tar"
    torch.save(vlic("test").state_dict(), path)
    return path


def _record_codes(model, calls):
    """Wrap ``model.flow_matching`` to record the codes each call is conditioned on."""
    inner = model.flow_matching

    def wrapped(x, codes, *args, **kwargs):
        calls.append(codes.detach().clone())
        return inner(x, codes, *args, **kwargs)

    model.flow_matching = wrapped


def _perturb_encoder(model):
    """Move the trainable encoder (as post-training does) so a re-encoding gives other tokens."""
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in model.encoder.parameters():
            p.add_(0.5 * torch.randn(p.shape, generator=g))


def test_codec_dataset_stores_the_codes_and_offline_dpo_trains_on_them(
    tmp_path, photos, codec_ckpt, quiet_cpu_trainer
):
    orig = tmp_path / "orig"
    orig.mkdir()
    for name in ("astronaut", "coffee"):
        Image.fromarray(np.ascontiguousarray(photos[name][100:172, 90:154])).save(
            orig / f"{name}.png"
        )  # 72x64: larger than the 32-px tile
    out = tmp_path / "prefs.jsonl"
    args = ["judge", "--originals", str(orig), "--codec-checkpoint", str(codec_ckpt)]
    args += ["--output", str(out), "--judge-type", "psnr", "--tiles-per-image", "2"]
    assert vlic_main([*args, "--no-progress"]) == 0
    rows = read_preference_dataset(out)
    assert len(rows) == 4 and all(r.codes for r in rows)
    assert rows[0].judge_config["codec"]["crop_type"] == "tile"

    from compressai_vlic.models.vlic import VLIC

    net = VLIC.from_state_dict(torch.load(codec_ckpt, weights_only=True)).eval()
    stored = {}
    for r in rows:
        codes = PairCodes.load(r.codes)
        assert (codes.num_tiles, codes.height, codes.width) == (1, 32, 32)
        ref = torch.from_numpy(np.array(Image.open(r.reference))).permute(2, 0, 1)
        key = r.pair_id.split("#")[0]  # e.g. astronaut@y20x16: the crop's place in the original
        name, pos = key.split("@y")
        top, left = (int(v) for v in pos.split("x"))
        src = photos[name][100:172, 90:154][top : top + 32, left : left + 32]
        assert np.array_equal(ref.permute(1, 2, 0).numpy(), src)
        x = ref[None].float() / 255
        with torch.no_grad():
            assert torch.equal(net.encode(x).indices, codes.indices)  # the codec's own tokens
            # A is a sample of the decoder given exactly these codes (seed 0, the stream's own)
            a = net.decode_codes(codes.indices, seed=r.seeds[0], layout=net.layout_for(32, 32))
        a_png = torch.from_numpy(np.array(Image.open(r.a))).permute(2, 0, 1).float() / 255
        assert float((a[0] - a_png).abs().max()) <= 1 / 255 + 1e-6
        stored[r.reference] = codes

    module = Stage2Module(
        init_from=str(codec_ckpt),
        init_weights_type="raw",
        preference_type="offline",
        preference_dataset=str(out),
        dpo_batch_size=4,
        lr=1e-4,
    )
    module.setup("fit")
    prefs = module.offline
    assert len(prefs) == 4 and all(p.codes is not None for p in prefs.pairs)
    batch = prefs.sample(4, torch.Generator().manual_seed(0))
    assert bool(batch.has_codes.all())
    by_ref = {bytes((p.reference.permute(1, 2, 0).numpy()).tobytes()): p.codes for p in prefs.pairs}
    expected = []
    for i in range(4):
        key = bytes((batch.reference[i] * 255).round().to(torch.uint8).permute(1, 2, 0).numpy())
        expected.append(by_ref[key].indices[0])
    expected_codes = module.model.fsq.indices_to_codes(torch.stack(expected))

    _perturb_encoder(module.model)
    with torch.no_grad():
        reencoded = module.model.encode(batch.reference).codes
    assert not torch.equal(reencoded, expected_codes)  # else the check below could not fail

    policy_calls, ref_calls = [], []
    _record_codes(module.model, policy_calls)
    _record_codes(module.reference, ref_calls)
    outputs = module.dpo_losses(batch)
    assert torch.equal(policy_calls[-1], torch.cat([expected_codes, expected_codes]))
    assert torch.equal(ref_calls[-1], torch.cat([expected_codes, expected_codes]))
    # the encoder still learns from the DPO term (straight-through), as VLIC keeps it trainable
    module.criterion(*outputs).loss.backward()
    assert any(
        p.grad is not None and p.grad.abs().sum() > 0 for p in module.model.encoder.parameters()
    )

    # the same check fails for a trainer that re-encodes the crop
    module._stored_codes = lambda pairs, codes, ref_codes: (codes, ref_codes)
    module.dpo_losses(batch)
    assert not torch.equal(policy_calls[-1], torch.cat([expected_codes, expected_codes]))

    # and the whole offline run goes through Trainer.fit
    module = Stage2Module(
        init_from=str(codec_ckpt),
        preference_type="offline",
        preference_dataset=str(out),
        dpo_batch_size=4,
        lr=1e-4,
    )
    trainer = quiet_cpu_trainer(max_steps=2, limit_val_batches=0, default_root_dir=str(tmp_path))
    trainer.fit(module, PhotosDataModule(crop_size=32, batch_size=4, samples_per_epoch=8))
    assert "train/dpo_loss" in trainer.callback_metrics


def test_pair_codes_round_trip_and_bad_input(tmp_path):
    from compressai_vlic.tiling import TileLayout

    layout = TileLayout.for_image(40, 64, 32, 8)
    idx = torch.randint(0, 5, (layout.num_tiles, 16, 3))
    codes = PairCodes.from_layout(idx, layout, (8, 5, 5))
    codes.save(tmp_path / "c.json")
    back = PairCodes.load(tmp_path / "c.json")
    assert torch.equal(back.indices, idx) and back.tiles == codes.tiles
    assert back.whole_tiles() == [0, 1]  # the second row of tiles reaches into the padding
    with pytest.raises(DatasetError, match="FSQ levels"):
        PairCodes.from_layout(idx + 7, layout, (8, 5, 5))
    with pytest.raises(DatasetError, match="tokens"):
        back.check_model(32, 32, (8, 5, 5))
    (tmp_path / "bad.json").write_text("{")
    with pytest.raises(DatasetError, match="unreadable"):
        PairCodes.load(tmp_path / "bad.json")


def test_tile_crops_need_images_at_least_one_tile(tmp_path, photos, codec_ckpt, capsys):
    orig = tmp_path / "orig"
    orig.mkdir()
    Image.fromarray(np.ascontiguousarray(photos["coffee"][:20, :40])).save(orig / "small.png")
    args = ["judge", "--originals", str(orig), "--codec-checkpoint", str(codec_ckpt)]
    args += ["--output", str(tmp_path / "p.jsonl"), "--judge-type", "psnr"]
    # a reported skip naming the file (exit 1: some input failed), nothing written
    assert vlic_main([*args, "--no-progress"]) == 1
    assert "small.png" in capsys.readouterr().err
    assert not (tmp_path / "p.jsonl").exists() or (tmp_path / "p.jsonl").read_text() == ""


class BrighterJudge:
    """Prefers the brighter decode (deterministic)."""

    name = "brighter"

    def compare(self, reference, a, b):
        d = float(a.mean() - b.mean())
        choice = Choice.A if d > 0 else Choice.B
        return Judgment(
            score=d, choice=choice, prob_a=0.9 if d > 0 else 0.1, votes=[Vote(d, choice)]
        )

    def compare_batch(self, requests):
        return [self.compare(r.reference, r.a, r.b) for r in requests]

    async def acompare(self, reference, a, b):
        return self.compare(reference, a, b)


def test_online_pairs_keep_their_codes_through_a_restart(tmp_path, photos):
    torch.manual_seed(0)
    module = Stage2Module(quality="test", judge=BrighterJudge(), dpo_batch_size=2, seed=0)
    size = module.model.config.image_size
    originals = torch.cat(
        [photo_tensor(photos[n], (size, size)) for n in ("astronaut", "coffee", "rocket")]
    )
    module.buffer = PreferenceBuffer(BrighterJudge(), tmp_path / "buf", worker_type="inline")
    module.model.eval()
    with torch.no_grad():
        made_with = module.model.encode(originals).indices
    module._make_candidates(originals, tag="s0", step=0, round_=0)
    module.buffer.refresh()
    pending = [json.loads(line) for line in (tmp_path / "buf" / "pending.jsonl").open()]
    assert all((tmp_path / "buf" / rec["codes"]).is_file() for rec in pending)
    batch = module.buffer.sample(3, torch.Generator().manual_seed(0))
    assert batch.prob_winner.tolist() == pytest.approx([0.9, 0.9, 0.9])
    module.buffer.close()

    # a restarted run reloads the codes with the pairs
    buffer = PreferenceBuffer(BrighterJudge(), tmp_path / "buf", worker_type="inline")
    assert buffer.restore() == 3
    buffer.refresh()
    batch = buffer.sample(3, torch.Generator().manual_seed(0))
    buffer.close()
    by_ref = {bytes(quantize(originals[i])): made_with[i] for i in range(3)}
    expected = torch.stack([by_ref[bytes(quantize(batch.reference[i]))] for i in range(3)])
    assert torch.equal(batch.indices, expected) and bool(batch.has_codes.all())

    _perturb_encoder(module.model)
    calls = []
    _record_codes(module.model, calls)
    module.dpo_losses(batch)
    want = module.model.fsq.indices_to_codes(expected)
    assert torch.equal(calls[-1], torch.cat([want, want]))


def quantize(x: torch.Tensor) -> np.ndarray:
    return (x * 255).round().clamp(0, 255).to(torch.uint8).numpy()


def test_configs_with_votes_sample_at_a_positive_temperature():
    from pathlib import Path

    from compressai_vlic_lightning.configs import parse_config

    configs = sorted((Path(__file__).resolve().parents[1] / "configs" / "train").glob("*.yaml"))
    checked = 0
    for path in configs:
        args = parse_config(path)["model"]["init_args"]
        votes = (args.get("judge_compose") or {}).get("votes", 1)
        if votes > 1:
            checked += 1
            assert (args.get("judge_kwargs") or {}).get("temperature", 0) > 0, path.name
    assert checked >= 1


def test_whole_image_pairs_train_on_a_whole_tile_with_that_tiles_code(tmp_path, photos, codec_ckpt):
    orig = tmp_path / "orig"
    orig.mkdir()
    img = np.ascontiguousarray(photos["rocket"][200:240, 150:222])  # 40x72: a 2x3 tile grid
    Image.fromarray(img).save(orig / "rocket.png")
    out = tmp_path / "prefs.jsonl"
    args = ["judge", "--originals", str(orig), "--codec-checkpoint", str(codec_ckpt)]
    args += ["--output", str(out), "--judge-type", "psnr", "--crop-type", "image"]
    assert vlic_main([*args, "--no-progress"]) == 0
    (row,) = read_preference_dataset(out)
    assert row.pair_id == "rocket#s0-s1"
    codes = PairCodes.load(row.codes)
    assert (codes.num_tiles, codes.height, codes.width) == (6, 40, 72)
    assert codes.whole_tiles() == [0, 1]  # the others reach into the padding
    prefs = OfflinePreferences.from_dataset(out, 32, 16, (8, 5, 5))
    batch = prefs.sample(8, torch.Generator().manual_seed(0))
    for i in range(8):
        ref = quantize(batch.reference[i])
        k = next(k for k in (0, 1) if np.array_equal(ref, img[codes.window(k)].transpose(2, 0, 1)))
        assert torch.equal(batch.indices[i], codes.indices[k])


def test_pair_decodes_take_their_own_sampler_steps(tmp_path, photos):
    """``num_steps`` changes the decodes, not the code; a folder of other decodes is refused."""
    import asyncio

    from compressai_vlic.errors import ConfigError
    from compressai_vlic.evaluation.codec_pairs import CodecPairMaker
    from compressai_vlic.zoo import vlic

    torch.manual_seed(0)
    model = vlic("test")
    orig = tmp_path / "orig"
    orig.mkdir()
    Image.fromarray(np.ascontiguousarray(photos["coffee"][100:132, 90:122])).save(orig / "c.png")
    decoded = {}
    many = model.max_evaluations_per_tile() + 1  # over the model's own limit for its streams
    for steps in (None, many):
        folder = tmp_path / f"decodes{steps}"
        maker = CodecPairMaker(model, folder, identity={"num_steps": steps}, num_steps=steps)
        (pair,) = maker.plan(orig)
        asyncio.run(maker.prepare(pair))
        decoded[steps or 0] = [np.asarray(Image.open(p)) for p in (pair.a, pair.b)]
        codes = PairCodes.load(pair.codes)
    assert not np.array_equal(decoded[0][0], decoded[many][0])  # the steps really changed
    assert torch.equal(
        codes.indices, PairCodes.load(tmp_path / "decodesNone" / "c.codes.json").indices
    )
    with pytest.raises(ConfigError, match="another codec"):
        CodecPairMaker(
            model, tmp_path / "decodesNone", identity={"num_steps": many}, num_steps=many
        )
    with pytest.raises(ConfigError, match="num_steps"):
        CodecPairMaker(model, tmp_path / "x", num_steps=0)
