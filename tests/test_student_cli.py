"""`compressai-vlic judge` -> `student train` -> `student eval` -> `judge --judge-type student`."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
import torch
from conftest import photo_tensor

from compressai_vlic.cli.main import main
from compressai_vlic.image_io import save_png
from compressai_vlic.judges.dataset import read_preference_dataset
from compressai_vlic.student.agreement import bootstrap_difference, wilson_interval
from compressai_vlic.student.calibration import fit_calibration, logistic4
from compressai_vlic.student.teacher import read_teacher_pairs


@pytest.fixture(scope="module")
def folders(tmp_path_factory, photos):
    """Photo crops and two noisy reconstructions each (A the cleaner one for half of them)."""
    root = tmp_path_factory.mktemp("student-cli")
    gen = torch.Generator().manual_seed(0)
    k = 0
    for name in ("astronaut", "chelsea", "coffee", "rocket"):
        for crop in ((64, 64), (72, 64), (64, 80)):
            ref = photo_tensor(photos[name], crop=crop)[0]
            sa, sb = (0.02, 0.12) if k % 2 else (0.12, 0.03)
            for folder, s in (("orig", 0.0), ("a", sa), ("b", sb)):
                x = (ref + s * torch.randn(ref.shape, generator=gen)).clamp(0, 1)
                save_png(x, root / folder / f"{name}_{k}.png")
            k += 1
    return root


def test_distil_a_metric_judge_end_to_end(folders, tmp_path, capsys):
    prefs = tmp_path / "prefs.jsonl"
    argv = ["judge", "--originals", str(folders / "orig"), "--recon-a", str(folders / "a")]
    argv += ["--recon-b", str(folders / "b"), "--output", str(prefs), "--judge-type", "psnr"]
    argv += ["--no-progress"]
    assert main([*argv, "--symmetrize"]) == 0
    capsys.readouterr()
    data = read_teacher_pairs(prefs)
    assert len(data.pairs) == 12 and len(data.points) == 24  # PSNR values of every image
    assert all(len(p.votes) == 2 for p in data.pairs)
    student = tmp_path / "student"
    opinions = tmp_path / "opinions.jsonl"
    rows = [
        {"reference": r.reference, "image": img, "opinion": v}
        for r in read_preference_dataset(prefs)
        for img, v in ((r.a, 1.0), (r.b, 0.0))
    ]
    for row, q in zip(rows, data.points):  # PSNR as a stand-in opinion: higher is better
        row["opinion"] = q.value
    opinions.write_text("".join(json.dumps(r) + "\n" for r in rows))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        code = main(
            [
                "student",
                "train",
                "--pairs",
                str(prefs),
                "--output",
                str(student),
                "--steps",
                "150",
                "--layers",
                "pixel",
                "conv1",
                "--opinions",
                str(opinions),
            ]
        )
    assert code == 0
    summary = json.loads(capsys.readouterr().out.split("student written")[0])
    assert summary["labelled_pairs"] == 12 and summary["points"] == 24 and "calibration" in summary
    assert (
        main(["student", "train", "--pairs", str(prefs), "--output", str(student)]) == 2
    )  # never overwrites
    assert "already holds a student" in capsys.readouterr().err
    report = tmp_path / "eval.json"
    assert (
        main(
            [
                "student",
                "eval",
                "--student",
                str(student),
                "--pairs",
                str(prefs),
                "--opinions",
                str(opinions),
                "--json",
                str(report),
            ]
        )
        == 0
    )
    out = json.loads(report.read_text())
    agree = {a["name"]: a["rate"] for a in out["pairs"]["agreement"]}
    assert agree["psnr"] == 1.0 and agree["student"] >= 0.9  # the teacher is PSNR itself
    assert out["opinions"]["srcc"] > 0.8
    # the student judges through the same command as every other judge
    judged = tmp_path / "by-student.jsonl"
    argv[argv.index("--output") + 1] = str(judged)
    argv[argv.index("--judge-type") + 1] = "student"
    assert main([*argv, "--judge-arg", f"path={student}"]) == 0
    rows = read_preference_dataset(judged)
    assert len(rows) == 12 and rows[0].judge == "student"
    teacher = {p.pair_id: p.label for p in data.pairs}
    assert all(r.label == teacher[r.pair_id] for r in rows)


def test_calibration_and_intervals():
    rng = np.random.default_rng(0)
    s = np.linspace(-2, 2, 40)
    mos = logistic4(s, 5.0, 1.0, 0.3, 0.5) + 0.05 * rng.standard_normal(40)
    cal = fit_calibration(s, mos)
    assert cal.plcc_fit > 0.99 and cal.srcc_fit > 0.98
    assert abs(cal.b3 - 0.3) < 0.1
    dmos = -mos  # a decreasing map works too, and SRCC keeps its meaning
    assert fit_calibration(s, dmos).srcc_fit > 0.98
    with pytest.raises(ValueError, match="at least 5"):
        fit_calibration(s[:3], mos[:3])
    lo, hi = wilson_interval(90, 100)
    assert 0.82 < lo < 0.84 and 0.94 < hi < 0.95  # the textbook Wilson interval of 90/100
    a, b = np.ones(50), np.r_[np.ones(25), np.zeros(25)]
    mean, lo, hi = bootstrap_difference(a, b, groups=[str(i % 5) for i in range(50)])
    assert mean == 0.5 and lo > 0.2 and hi <= 1.0
