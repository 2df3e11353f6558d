"""The student network: files, loading, the random-init fallback, the judge and the loss."""

from __future__ import annotations

import json
import warnings

import pytest
import torch
from conftest import photo_tensor

from compressai_vlic.errors import CheckpointError, ConfigError, MetricUnavailableError
from compressai_vlic.judges import JudgeSpec, make_judge
from compressai_vlic.judges.types import Choice, JudgeRequest
from compressai_vlic.student import backbone as backbone_module
from compressai_vlic.student.config import StudentConfig
from compressai_vlic.student.model import StudentModel, load_student


@pytest.fixture(scope="module")
def student_dir(tmp_path_factory):
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the random fallback warns where weights are missing
        model = StudentModel()
    with torch.no_grad():
        model.logits.normal_()
    return model.save(tmp_path_factory.mktemp("student") / "s")


@pytest.fixture(scope="module")
def triplet(photos):
    ref = photo_tensor(photos["astronaut"], crop=(96, 96))[0]
    gen = torch.Generator().manual_seed(0)
    a = (ref + 0.02 * torch.randn(ref.shape, generator=gen)).clamp(0, 1)
    b = (ref + 0.2 * torch.randn(ref.shape, generator=gen)).clamp(0, 1)
    return ref, a, b


def test_save_load_roundtrip_is_exact_and_never_overwrites(student_dir, triplet):
    ref, a, b = triplet
    loaded = load_student(student_dir)
    again = load_student(student_dir / "student.safetensors")
    da, db = loaded.distance_pair(ref[None], a[None], b[None])
    assert torch.allclose(da, again(ref[None], a[None]), rtol=1e-5)  # batch shapes differ
    assert all(torch.equal(v, again.state_dict()[k]) for k, v in loaded.state_dict().items())
    assert torch.allclose(db, again(ref[None], b[None]), rtol=1e-5)
    meta = json.loads((student_dir / "student.json").read_text())
    assert meta["config"]["layers"] == ["pixel", "conv1", "conv2", "conv3"]
    with pytest.raises(ConfigError, match="already holds a student"):
        loaded.save(student_dir)
    assert float(da) < float(db)  # less noise, closer (holds for any positive channel weights)


def test_bad_files_are_typed_errors(tmp_path, student_dir):
    with pytest.raises(CheckpointError, match="no student here"):
        load_student(tmp_path)
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "student.json").write_text((student_dir / "student.json").read_text())
    (bad / "student.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(CheckpointError, match="safetensors"):
        load_student(bad)
    with pytest.raises(ConfigError, match="unknown student layer"):
        StudentConfig(layers=["pixel", "fc6"])
    with pytest.raises(ConfigError, match="forward order"):
        StudentConfig(layers=["conv2", "conv1"])


def test_missing_imagenet_weights_fall_back_loudly(monkeypatch):
    def missing(features):
        raise MetricUnavailableError("alexnet weights not found")

    monkeypatch.setattr(backbone_module, "load_imagenet_features", missing)
    with pytest.warns(UserWarning, match="RANDOMLY INITIALISED"):
        model = StudentModel(StudentConfig())
    assert model.config.backbone_source.startswith("random")


def test_small_images_are_a_clear_error():
    model = StudentModel(StudentConfig(init_type="random"))
    with pytest.raises(ConfigError, match="at least"):
        model(torch.rand(1, 3, 16, 16), torch.rand(1, 3, 16, 16))


def test_student_judge_through_the_judge_spec(student_dir, triplet):
    ref, a, b = triplet
    spec = JudgeSpec.from_config(
        {
            "judge_type": "student",
            "judge_kwargs": {"path": str(student_dir)},
            "judge_compose": {"order_type": "symmetrize"},
        }
    )
    judge = spec.build()
    j = judge.compare(ref, a, b)
    assert j.choice is Choice.A and j.score > 0 and len(j.votes) == 2
    assert {v.order for v in j.votes} == {"AB", "BA"}
    base = make_judge("student", path=str(student_dir), margin=1e9)
    assert base.compare(ref, a, b).choice is Choice.ABSTAIN  # within the margin
    batch = make_judge("student", path=str(student_dir)).compare_batch(
        [JudgeRequest(ref, a, b), JudgeRequest(ref, b, a)]
    )
    assert [x.choice for x in batch] == [Choice.A, Choice.B]
    assert 0.5 < batch[0].prob_a <= 1.0 and batch[1].prob_a == pytest.approx(
        1 - batch[0].prob_a, abs=1e-6
    )
    with pytest.raises(ConfigError, match="path"):
        make_judge("student")


def test_student_as_a_perceptual_loss(student_dir, triplet):
    from compressai_vlic_lightning.perceptual import make_perceptual_loss

    ref, a, _ = triplet
    loss, choice = make_perceptual_loss("student", student_path=str(student_dir))
    assert choice.active == "student"
    pred = a[None].clone().requires_grad_(True)
    value = loss(pred, ref[None])
    value.backward()
    assert value > 0 and pred.grad is not None and pred.grad.abs().sum() > 0
    assert not any(p.requires_grad for p in loss.parameters())  # frozen
    with pytest.raises(ConfigError, match="student_path"):
        make_perceptual_loss("student")


def test_stage2_student_config_builds_the_student_judge(student_dir):
    from pathlib import Path

    import yaml

    config = Path(__file__).resolve().parents[1] / "configs" / "train" / "stage2_student.yaml"
    args = yaml.safe_load(config.read_text())["model"]["init_args"]
    assert args["judge_type"] == "student" and "path" in args["judge_kwargs"]
    fields = {k: args[k] for k in ("judge_type", "judge_kwargs")}
    fields["judge_kwargs"] = {**fields["judge_kwargs"], "path": str(student_dir)}
    judge = JudgeSpec.from_config(fields).build()
    assert judge.backend == "student" and judge.margin == args["judge_kwargs"]["margin"]


def test_the_judge_runs_in_float32_and_refuses_int8(tmp_path):
    """The int8 backbone was removed (it ran on PyTorch's FX quantisation, deprecated for
    removal): a student saved with int8 ranges still loads and judges in float32, "auto" means
    float32 with the same cache identity, and "int8" is refused with a clear error."""
    model = StudentModel(StudentConfig(input_pool=1))
    model.meta["int8_calibration"] = {"ranges": {"activation_post_process_0": [0.0, 1.0]}}
    folder = model.save(tmp_path / "s")
    default = make_judge("student", path=str(folder))
    auto = make_judge("student", path=str(folder), precision="auto")
    assert default.precision == auto.precision == "float32"
    assert default.cache_identity() == auto.cache_identity()
    assert default.cache_identity()["precision"] == "float32"  # float32 caches stay valid
    with pytest.raises(ConfigError, match="int8"):
        make_judge("student", path=str(folder), precision="int8")
