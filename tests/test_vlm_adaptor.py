"""The codec-conditioned vision-encoder adaptor on tiny VLMs built from configs (no downloads)."""

from __future__ import annotations

import hashlib
import json

import pytest
import torch

pytest.importorskip("transformers")
pytest.importorskip("skimage")

from compressai_vlic.errors import AdaptorError, AdaptorMismatchError, ConfigError
from compressai_vlic.evaluation.codecs import make_codec, pillow_format_available
from compressai_vlic.testing.tiny_vlm import build_tiny_vlm
from compressai_vlic.vlm.adaptor import (
    METADATA_KEY,
    bake_condition,
    create_adaptor,
    find_vision_tower,
    load_adaptor,
)
from compressai_vlic.vlm.adaptor_train import (
    DEFAULT_HELDOUT_PHOTOS,
    DEFAULT_TRAIN_PHOTOS,
    DistillConfig,
    bundled_photos,
    code_crops,
    feature_distances,
    image_features,
    image_inputs,
    random_crops,
    train_adaptor,
)

SIZE = 64
RATES = "q5,q20,q50"


def _load(folder):
    from transformers import AutoModelForImageTextToText, AutoProcessor

    model = AutoModelForImageTextToText.from_pretrained(folder).eval()
    return model, AutoProcessor.from_pretrained(folder)


def _features(model, processor, images):
    items = [image_inputs(processor, x) for x in images]
    batch = {k: torch.cat([i[k] for i in items]) for k in items[0]}
    with torch.no_grad():
        return torch.stack(image_features(model, batch))


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory):
    return build_tiny_vlm(tmp_path_factory.mktemp("tiny_vlm"), image_size=SIZE)


def _coded_train_set(per_photo: int):
    crops = random_crops(bundled_photos(DEFAULT_TRAIN_PHOTOS), SIZE, per_photo, seed=0)
    return code_crops(crops, [make_codec(f"jpeg@{RATES}"), make_codec(f"webp@{RATES}")])


@pytest.fixture(scope="module")
def train_set():
    return _coded_train_set(2)


@pytest.fixture(scope="module")
def heldout_set():
    unseen = "avif" if pillow_format_available("avif") else "compressai:bmshj2018-factorized"
    specs = [f"jpeg@{RATES}", f"webp@{RATES}"]
    specs.append(f"avif@{RATES}" if unseen == "avif" else "vlic@test")
    crops = random_crops(bundled_photos(DEFAULT_HELDOUT_PHOTOS), SIZE, 8, seed=1)
    return code_crops(crops, [make_codec(s) for s in specs])


@pytest.fixture(scope="module")
def trained(tiny_folder):
    """A tiny VLM with an adaptor trained on 480 crops of 5 photos, JPEG + WebP at 3 rates each."""
    model, processor = _load(tiny_folder)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    config = DistillConfig(steps=600, batch_size=32, trainable="condition+patch-embedding")
    result = train_adaptor(model, processor, _coded_train_set(96), config)
    return model, processor, result, before


@pytest.fixture(scope="module")
def quick(tiny_folder, train_set, tmp_path_factory):
    """A few steps of training (the weights move), saved to a file: for the file-format tests."""
    model, processor = _load(tiny_folder)
    config = DistillConfig(steps=6, batch_size=4, lr=1e-2, block_lr=1e-2)
    result = train_adaptor(model, processor, train_set, config)
    path = result.handle.save(tmp_path_factory.mktemp("adaptor") / "tiny.safetensors")
    return model, processor, result, path


@pytest.mark.slow
def test_training_lowers_heldout_feature_distance_also_for_an_unseen_codec(trained, heldout_set):
    model, processor, result, _ = trained
    assert result.losses[0] == pytest.approx(1.0, abs=1e-4)  # zero-init: starts at the base
    rows = feature_distances(model, processor, heldout_set, result.handle)
    by_codec: dict[str, list[dict]] = {}
    for row in rows:
        by_codec.setdefault(row["codec"], []).append(row)
    assert len(by_codec) == 3  # jpeg, webp and the unseen one
    for codec, codec_rows in by_codec.items():
        before = sum(r["before"] for r in codec_rows)
        after = sum(r["after"] for r in codec_rows)
        assert after < 0.99 * before, (codec, codec_rows)
        assert all(r["seen"] == (codec in ("jpeg", "webp")) for r in codec_rows)
    # the lowest rate of each seen codec gains on photos never trained on
    for codec in ("jpeg", "webp"):
        low = next(r for r in by_codec[codec] if r["level"] == 0)
        assert low["after"] < low["before"]


@pytest.mark.slow
def test_only_the_vision_encoder_changes(trained):
    model, _, result, before = trained
    tower = find_vision_tower(model)
    after = model.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed  # the patch embedding trained
    assert all(k.startswith(tower.path + ".") for k in changed), changed
    lm = [k for k in before if "language_model" in k or k.startswith("lm_head")]
    assert lm and all(torch.equal(before[k], after[k]) for k in lm)
    assert all(not p.requires_grad for p in result.handle.trainable_parameters()[:1])


def test_zero_init_equals_base_and_remove_restores_it(tiny_folder, train_set):
    model, processor = _load(tiny_folder)
    images = train_set.coded[("jpeg", 0)][:3]
    base = _features(model, processor, images)
    handle = create_adaptor(model, train_set.codecs, "condition+last-blocks", last_blocks=1)
    handle.set_condition("jpeg", 0)
    assert torch.equal(_features(model, processor, images), base)
    with torch.no_grad():
        handle.embedding.weight.normal_()
        for p in handle.trainable_parameters()[1:]:
            p.add_(0.1)
    assert not torch.allclose(_features(model, processor, images), base)
    with handle.bypassed():
        assert torch.equal(_features(model, processor, images), base)
    handle.remove()
    assert torch.equal(_features(model, processor, images), base)
    with pytest.raises(AdaptorError, match="removed"):
        handle.set_condition("jpeg", 0)


def test_file_round_trip_id_and_other_base_is_a_typed_error(quick, tiny_folder, tmp_path):
    model, processor, result, path = quick
    from safetensors import safe_open

    with safe_open(str(path), "pt") as f:  # a plain safetensors file with JSON metadata
        meta = json.loads(f.metadata()[METADATA_KEY])
        assert set(f.keys()) == {"condition.weight"} | {f"blocks.{n}" for n in meta["block_params"]}
    assert meta["codecs"] == {"jpeg": RATES.split(","), "webp": RATES.split(",")}
    assert meta["base"]["config_hash"] and meta["trainable"] == "condition+patch-embedding"
    assert result.handle.adaptor_id == hashlib.sha256(path.read_bytes()).hexdigest()[:12]

    fresh, _ = _load(tiny_folder)
    handle = load_adaptor(fresh, path)
    assert handle.adaptor_id == result.handle.adaptor_id
    crops = random_crops(bundled_photos(["chelsea"]), SIZE, 2, seed=5)
    images = code_crops(crops, [make_codec("jpeg@q20")]).coded[("jpeg", 0)]
    handle.set_condition("jpeg", 1)
    result.handle.set_condition("jpeg", 1)
    assert torch.allclose(
        _features(fresh, processor, images), _features(model, processor, images), atol=1e-6
    )
    with pytest.raises(AdaptorError, match="already has an adaptor"):
        load_adaptor(fresh, path)
    handle.remove()
    result.handle.clear_condition()

    other, _ = _load(build_tiny_vlm(tmp_path / "other", seed=1, image_size=SIZE))
    with pytest.raises(AdaptorMismatchError, match="vision weights"):
        load_adaptor(other, path)
    wider, _ = _load(build_tiny_vlm(tmp_path / "smaller", image_size=32))
    with pytest.raises(AdaptorMismatchError, match="vision config"):
        load_adaptor(wider, path)


def test_bad_adaptor_files_are_typed_errors(quick, tmp_path):
    from safetensors.torch import save_file

    model, _, result, path = quick
    result.handle.remove()  # free the model for load attempts; restores the base blocks
    try:
        with pytest.raises(AdaptorError, match="no such"):
            load_adaptor(model, tmp_path / "missing.safetensors")
        junk = tmp_path / "junk.safetensors"
        junk.write_bytes(b"\x00\x01not a safetensors file at all")
        with pytest.raises(AdaptorError, match="not a safetensors"):
            load_adaptor(model, junk)
        plain = tmp_path / "plain.safetensors"
        save_file({"x": torch.zeros(2)}, str(plain))
        with pytest.raises(AdaptorError, match="without adaptor metadata"):
            load_adaptor(model, plain)
        from safetensors import safe_open

        with safe_open(str(path), "pt") as f:
            meta = json.loads(f.metadata()[METADATA_KEY])
            tensors = {k: f.get_tensor(k) for k in f.keys()}
        for field, value, message in (
            ("version", 99, "format version"),
            ("format", "other", "does not describe"),
            ("codecs", None, "'codecs'"),
        ):
            bad = dict(meta, **{field: value})
            target = tmp_path / f"bad-{field}.safetensors"
            save_file(tensors, str(target), metadata={METADATA_KEY: json.dumps(bad)})
            with pytest.raises(AdaptorError, match=message):
                load_adaptor(model, target)
        cut = tmp_path / "cut.safetensors"
        cut.write_bytes(path.read_bytes()[:-7])
        with pytest.raises(AdaptorError):
            load_adaptor(model, cut)
        shapes = dict(tensors, **{"condition.weight": torch.zeros(3, 5)})
        target = tmp_path / "shape.safetensors"
        save_file(shapes, str(target), metadata={METADATA_KEY: json.dumps(meta)})
        with pytest.raises(AdaptorError, match="shape"):
            load_adaptor(model, target)
        assert getattr(model, "_compressai_vlic_adaptor", None) is None  # nothing half-attached
    finally:
        result.handle = load_adaptor(model, path)  # later tests may use the trained model


def test_unseen_codec_mapping_rule(quick):
    model, _, result, path = quick
    handle = result.handle
    bpp = handle.bpp
    assert handle.resolve("jpeg", 2) == ("jpeg", 2)
    # nearest in log-bpp among the seen codec x level
    target = bpp["webp"][1] * 1.01
    assert handle.resolve("avif", 0, bpp=target) == ("webp", 1)
    # without bpp: the seen codec x level nearest to the level's mean training bpp
    codec, level = handle.resolve("avif", 0)
    assert codec in ("jpeg", "webp") and level in range(3)
    ref = (bpp["jpeg"][0] + bpp["webp"][0]) / 2
    options = [(c, i) for c in ("jpeg", "webp") for i in range(3)]
    import math

    best = min(options, key=lambda o: abs(math.log(bpp[o[0]][o[1]]) - math.log(ref)))
    assert (codec, level) == best
    assert handle.set_condition("uncompressed", 0) is None and handle.condition is None
    with pytest.raises(ConfigError, match="rate levels"):
        handle.set_condition("jpeg", 3)
    with pytest.raises(ConfigError, match="integer"):
        handle.set_condition("jpeg", -1)
    handle.remove()
    mapped = load_adaptor(model, path, codec_map={"avif": "jpeg"})
    assert mapped.set_condition("avif", 1) == ("jpeg", 1)
    mapped.remove()
    with pytest.raises(ConfigError, match="not one of"):
        load_adaptor(model, path, codec_map={"avif": "heic"})
    result.handle = load_adaptor(model, path)


def _siglip_llava():
    from transformers import (
        LlamaConfig,
        LlavaConfig,
        LlavaForConditionalGeneration,
        SiglipVisionConfig,
    )

    config = LlavaConfig(
        vision_config=SiglipVisionConfig(
            hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
            image_size=32, patch_size=8,
        ),
        text_config=LlamaConfig(
            vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
            num_attention_heads=2, num_key_value_heads=2,
        ),
        image_token_id=5, vision_feature_select_strategy="full", vision_feature_layer=-1,
    )  # fmt: skip
    torch.manual_seed(0)
    return LlavaForConditionalGeneration(config).eval()


@pytest.mark.parametrize("family", ["clip", "siglip"])
def test_absolute_towers_hook_equals_baked_position_table(family, tiny_folder):
    if family == "clip":
        model, _ = _load(tiny_folder)
        pixels = torch.rand(2, 3, SIZE, SIZE)
    else:
        model = _siglip_llava()
        pixels = torch.rand(2, 3, 32, 32)
    tower = find_vision_tower(model)
    assert tower.kind == "absolute" and tower.hook_path.endswith("embeddings")
    with torch.no_grad():
        base = torch.stack(image_features(model, {"pixel_values": pixels}))
        handle = create_adaptor(model, {"jpeg": ["q10", "q50"]})
        handle.set_condition("jpeg", 1)
        assert torch.equal(torch.stack(image_features(model, {"pixel_values": pixels})), base)
        handle.embedding.weight.normal_()
        hooked = torch.stack(image_features(model, {"pixel_values": pixels}))
        assert not torch.allclose(hooked, base)
        bake_condition(handle, "jpeg", 1)
        assert getattr(model, "_compressai_vlic_adaptor", None) is None
        baked = torch.stack(image_features(model, {"pixel_values": pixels}))
    torch.testing.assert_close(baked, hooked, rtol=1e-5, atol=1e-5)


def _tiny_qwen2_vl():
    """A two-layer Qwen2-VL built from a config (random weights): a rotary vision tower."""
    from transformers import Qwen2VLConfig, Qwen2VLForConditionalGeneration

    config = Qwen2VLConfig(
        vision_config={
            "depth": 2, "embed_dim": 32, "hidden_size": 32, "num_heads": 2, "patch_size": 4,
            "spatial_merge_size": 2, "temporal_patch_size": 2,
        },
        text_config={
            "vocab_size": 64, "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1,
            "num_attention_heads": 2, "num_key_value_heads": 2,
            "rope_parameters": {"rope_type": "default", "mrope_section": [2, 2, 4], "rope_theta": 1e4},
        },
        image_token_id=5, video_token_id=6, vision_start_token_id=7,
    )  # fmt: skip
    torch.manual_seed(0)
    model = Qwen2VLForConditionalGeneration(config).eval()
    return model


def test_rotary_tower_adds_c_to_patch_embeddings():
    model = _tiny_qwen2_vl()
    tower = find_vision_tower(model)
    assert tower.kind == "rotary" and tower.hook_path.endswith("patch_embed") and tower.width == 32
    grid = torch.tensor([[1, 4, 4]])
    inputs = {"pixel_values": torch.rand(16, 3 * 2 * 4 * 4), "image_grid_thw": grid}
    with torch.no_grad():
        base = torch.cat(image_features(model, inputs))
        handle = create_adaptor(model, {"jpeg": ["q10"], "webp": ["q10"]}, "condition+last-blocks")
        assert all(n.startswith(tower.blocks_path + ".1.") for n in handle.block_names)
        handle.set_condition("webp", 0)
        assert torch.equal(torch.cat(image_features(model, inputs)), base)
        handle.embedding.weight.normal_()
        assert not torch.allclose(torch.cat(image_features(model, inputs)), base)
        with pytest.raises(ConfigError, match="rotary"):
            bake_condition(handle, "webp", 0)
        handle.remove()
        assert torch.equal(torch.cat(image_features(model, inputs)), base)
        patch = create_adaptor(model, {"jpeg": ["q10"]}, "condition+patch-embedding")
        assert patch.block_names == [f"{tower.hook_path}.proj.weight"]
        patch.remove()


def test_cli_train_check_apply_eval(tiny_folder, tmp_path, capsys):
    from transformers import AutoModelForImageTextToText

    from compressai_vlic.cli.main import main

    out = tmp_path / "a.safetensors"
    argv = ["adaptor", "train", "--model", str(tiny_folder), "--out", str(out),
            "--codecs", "jpeg@q10,q40", "webp@q10,q40", "--photos", "astronaut,coffee",
            "--crops-per-photo", "3", "--steps", "12", "--batch-size", "4",
            "--heldout-codecs", "avif@q20" if pillow_format_available("avif") else "jpeg2=jpeg@q20",
            "--heldout-photos", "chelsea", "--heldout-crops-per-photo", "2",
            "--report", str(tmp_path / "r.json")]  # fmt: skip
    assert main(argv) == 0
    report = json.loads((tmp_path / "r.json").read_text())
    assert {r["codec"] for r in report["heldout"]} >= {"jpeg", "webp"}
    assert main(argv) == 2  # never overwrites the adapter unasked
    assert "exists already" in capsys.readouterr().err
    assert (
        main(["adaptor", "apply", "--model", str(tiny_folder), "--adaptor", str(out), "--check"])
        == 0
    )
    assert "fits" in capsys.readouterr().out
    folder = tmp_path / "adapted"
    assert main(["adaptor", "apply", "--model", str(tiny_folder), "--adaptor", str(out),
                 "--condition", "jpeg:1", "--out", str(folder)]) == 0  # fmt: skip
    adapted = AutoModelForImageTextToText.from_pretrained(folder).eval()
    assert adapted.config.compressai_vlic_adaptor["codec"] == "jpeg"
    base, processor = _load(tiny_folder)
    handle = load_adaptor(base, out)
    handle.set_condition("jpeg", 1)
    images = random_crops(bundled_photos(["chelsea"]), SIZE, 2, seed=3)
    torch.testing.assert_close(
        _features(adapted, processor, images),
        _features(base, processor, images),
        rtol=1e-5,
        atol=1e-5,
    )
    assert main(["adaptor", "eval", "--model", str(tiny_folder), "--adaptor", str(out),
                 "--codecs", "jpeg@q10", "--photos", "chelsea", "--crops-per-photo", "2"]) == 0  # fmt: skip
    assert "jpeg" in capsys.readouterr().out
    other = build_tiny_vlm(tmp_path / "other", seed=2, image_size=SIZE)
    assert main(["adaptor", "apply", "--model", str(other), "--adaptor", str(out), "--check"]) == 2
    assert "trained on" in capsys.readouterr().err


def test_a_condition_on_the_rotary_angles_cancels_in_attention():
    """Why C goes to the patch embeddings of a rotary tower: one shift d of every token's RoPE
    angles (the paper's reference code adds its codec embedding there) rotates queries and keys
    alike, so q_i . k_j, and with it the tower's output, does not change."""
    model = _tiny_qwen2_vl()
    tower = find_vision_tower(model)
    rotary = tower.module.rotary_pos_emb
    with torch.no_grad():  # sharp attention, so that rotating queries and keys can matter
        for block in tower.blocks:
            block.attn.qkv.weight.mul_(30.0)
    inputs = {
        "pixel_values": torch.rand(16, 3 * 2 * 4 * 4),
        "image_grid_thw": torch.tensor([[1, 4, 4]]),
    }
    half = None

    def shift_angles(module, args, output):  # (cos, sin) of angle + d, d the same for all tokens
        cos, sin = output
        d = torch.cat([half, half]).to(cos.dtype)
        return cos * d.cos() - sin * d.sin(), sin * d.cos() + cos * d.sin()

    with torch.no_grad():
        base = torch.cat(image_features(model, inputs))
        hook = rotary.register_forward_hook(shift_angles)
        half = torch.randn(tower.module.rotary_pos_emb.inv_freq.numel() * 2) * 3.0
        shifted = torch.cat(image_features(model, inputs))
        hook.remove()
        torch.testing.assert_close(shifted, base, rtol=1e-4, atol=1e-5)

        # the same d on only some tokens does change it: the hook does reach the attention
        def shift_some(module, args, output):
            cos, sin = output
            d = torch.cat([half, half]).to(cos.dtype).expand_as(cos).clone()
            d[: cos.shape[0] // 2] = 0
            return cos * d.cos() - sin * d.sin(), sin * d.cos() + cos * d.sin()

        hook = rotary.register_forward_hook(shift_some)
        changed = torch.cat(image_features(model, inputs))
        assert (changed - base).abs().max() > 100 * (shifted - base).abs().max() + 1e-3
        hook.remove()
