"""The LEAF-style no-reference student: learns a teacher's pair-wise preferences and point-wise
scores with reliability weights from one image at a time, calibrates on an (image, MOS) CSV."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import photo_tensor
from PIL import Image

from compressai_vlic.errors import CheckpointError, ConfigError, DatasetError
from compressai_vlic.judges.types import Choice, Vote
from compressai_vlic.student.agreement import agreement
from compressai_vlic.student.calibration import correlations
from compressai_vlic.student.noref import (
    NoRefConfig,
    NoRefStudent,
    calibrate_noref,
    load_noref_student,
    noref_scores,
    read_mos_csv,
    train_noref,
)
from compressai_vlic.student.teacher import TeacherData, TeacherPair, TeacherPoint

SIGMAS = [0.0, 0.02, 0.05, 0.09, 0.14]
STEPS = 80
pytestmark = pytest.mark.usefixtures("one_torch_thread")


def noisy(base: torch.Tensor, sigma: float, seed: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return (base + sigma * torch.randn(base.shape, generator=gen)).clamp(0, 1)


def teacher(bases, corrupt_share: float = 0.0, seed: int = 0) -> TeacherData:
    """Pairs of noise levels of each base (less noise wins, score = sigma gap); a share of them
    is corrupted to prefer the noisier image, and those labels flip with the display order
    (position bias: their votes disagree, so their reliability is 0)."""
    rng = np.random.default_rng(seed)
    data = TeacherData()
    for k, base in enumerate(bases):
        imgs = [noisy(base, s, 100 * k + i) for i, s in enumerate(SIGMAS)]
        for i in range(len(SIGMAS)):
            data.points.append(TeacherPoint(base, imgs[i], -SIGMAS[i], True, group=str(k)))
            for j in range(i + 1, len(SIGMAS)):
                bad = rng.random() < corrupt_share
                label = Choice.B if bad else Choice.A  # A = imgs[i], the less noisy one
                score = (-1.0 if bad else 1.0) * (SIGMAS[j] - SIGMAS[i]) * 10
                votes = [Vote(score, label, order="AB"), Vote(-score, label.flipped(), order="BA")]
                data.pairs.append(
                    TeacherPair(
                        base,
                        imgs[i],
                        imgs[j],
                        label,
                        score,
                        votes=votes if bad else [],
                        group=str(k),
                    )
                )
    return data


@pytest.fixture(scope="module")
def bases(photos):
    crops = [(48, 48), (56, 40)]
    return [photo_tensor(photos[n], crop=c)[0] for n in photos for c in crops]


def held_out_agreement(model, data: TeacherData) -> float:
    a = noref_scores(model, [p.a for p in data.pairs])
    b = noref_scores(model, [p.b for p in data.pairs])
    return agreement("s", a - b, [p.target for p in data.pairs]).rate


def test_learns_a_no_reference_preference_on_held_out_images(bases):
    train, test = teacher(bases[:6]), teacher(bases[6:], seed=1)
    model = NoRefStudent(NoRefConfig(depth=2, hidden=16, init_type="random"))
    summary = train_noref(train, model, steps=STEPS, lr=1e-2, seed=0)
    assert summary["pairs"] == 60 and summary["points"] == 30
    assert held_out_agreement(model, test) >= 0.9
    # the student scores one image: no reference anywhere
    assert model(test.pairs[0].a).shape == (1,)


def test_reliability_weights_keep_unreliable_labels_out(bases):
    """60% of the labels prefer the noisier image and flip with the display order: weighted
    training follows the reliable 40%, uniform training follows the majority and gets it
    backwards."""
    train, test = teacher(bases[:6], corrupt_share=0.6), teacher(bases[6:], seed=1)
    rates = {}
    for kind in ("all", "uniform"):
        model = NoRefStudent(NoRefConfig(depth=2, hidden=16, init_type="random"))
        train_noref(train, model, reliability_type=kind, point_weight=0.0, steps=STEPS, lr=1e-2)
        rates[kind] = held_out_agreement(model, test)
    assert rates["all"] >= 0.85 and rates["all"] > rates["uniform"] + 0.3


def test_calibration_from_a_mos_csv_and_round_trip(tmp_path, bases):
    model = NoRefStudent(NoRefConfig(depth=2, hidden=16, init_type="random"))
    train_noref(teacher(bases[:4]), model, steps=STEPS, lr=1e-2)
    names = []
    for k, base in enumerate(bases[4:6]):
        for i, s in enumerate(SIGMAS):
            names.append(f"img{k}_{i}.png")
            img = noisy(base, s, 7 * k + i).permute(1, 2, 0).numpy()
            Image.fromarray(np.round(img * 255).astype(np.uint8)).save(tmp_path / names[-1])
    q = noref_scores(model, [str(tmp_path / n) for n in names])
    # opinion scores that are a logistic of the student's score: the fit must recover them
    mos = 1 + 4 / (1 + np.exp(-(q - np.median(q)) / (q.std() + 1e-9)))
    rows = ["image,mos", *(f"{n},{m:.6f}" for n, m in zip(names, mos))]
    (tmp_path / "mos.csv").write_text("\n".join(rows) + "\n")
    rows = read_mos_csv(tmp_path / "mos.csv")
    assert len(rows) == 10 and rows[0][0] == str((tmp_path / names[0]).resolve())
    cal = calibrate_noref(model, rows)
    srcc, plcc = correlations(q, [r[1] for r in rows], cal)
    assert srcc == pytest.approx(1.0) and plcc > 0.99
    assert cal(q) == pytest.approx(mos, abs=0.05)
    model.save(tmp_path / "nr")
    with pytest.raises(ConfigError, match="already holds"):
        model.save(tmp_path / "nr")
    back = load_noref_student(tmp_path / "nr")
    images = [r[0] for r in rows[:3]]
    assert noref_scores(back, images) == pytest.approx(noref_scores(model, images), abs=1e-5)
    assert back.calibration() is not None and back.meta["training"]["steps"] == STEPS
    with pytest.raises(CheckpointError):
        load_noref_student(tmp_path)
    (tmp_path / "bad.csv").write_text("image,score\nx.png,1\n")
    with pytest.raises(DatasetError, match="image,mos"):
        read_mos_csv(tmp_path / "bad.csv")


def test_student_commands_no_reference(tmp_path, photos, capsys):
    from compressai_vlic.cli.main import main

    for d in ("orig", "a", "b"):
        (tmp_path / d).mkdir()
    rows = ["image,mos"]
    for k, name in enumerate(photos):
        base = photo_tensor(photos[name], crop=(40, 40))[0]
        for d, sigma in (("orig", 0.0), ("a", 0.02), ("b", 0.1)):
            img = noisy(base, sigma, k).permute(1, 2, 0).numpy()
            Image.fromarray(np.round(img * 255).astype(np.uint8)).save(tmp_path / d / f"{name}.png")
            rows.append(f"{d}/{name}.png,{5 - 30 * sigma}")
    (tmp_path / "mos.csv").write_text("\n".join(rows) + "\n")
    prefs = tmp_path / "prefs.jsonl"
    judge = ["judge", "--originals", str(tmp_path / "orig"), "--recon-a", str(tmp_path / "a")]
    judge += ["--recon-b", str(tmp_path / "b"), "--output", str(prefs), "--judge-type", "psnr"]
    assert main([*judge, "--no-progress"]) == 0
    out = tmp_path / "nr"
    train = ["student", "train", "--student-type", "no-reference", "--pairs", str(prefs)]
    train += ["--output", str(out), "--init-type", "random", "--steps", "30"]
    assert main([*train, "--mos", str(tmp_path / "mos.csv")]) == 0
    assert (out / "noref.safetensors").is_file() and load_noref_student(out).calibration()
    assert main(train) == 2  # never over an existing student unasked
    capsys.readouterr()
    assert main(["student", "eval", "--student", str(out), "--pairs", str(prefs)]) == 0
    text = capsys.readouterr().out
    assert "no-reference student:" in text and "psnr:" in text and "of 4 pairs" in text
