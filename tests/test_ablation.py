"""The stage-2 ablation runner: arms differ only where they say, shuffled permutes verdicts,
a killed run resumes without losing a step, and the statistics match a hand computation."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from compressai_vlic_lightning import ablation
from compressai_vlic_lightning.ablation import (
    ARM_KEYS,
    LOCATION_KEYS,
    SEED_KEYS,
    config_diff,
    prepare_runs,
    resolve_arm_config,
    shuffle_verdicts,
    train_runs,
)
from PIL import Image

from compressai_vlic.evaluation.paired import arm_means, paired_difference
from compressai_vlic.judges.dataset import PreferenceRow, PreferenceWriter, read_preference_dataset
from compressai_vlic.judges.types import Choice, Judgment

pytestmark = pytest.mark.usefixtures("one_torch_thread")

CONFIG = Path(__file__).resolve().parents[1] / "configs" / "train" / "ablation_tiny_stage2.yaml"


def _resolved(tmp_path, arm, seed, base=None):
    base = base or yaml.safe_load(CONFIG.read_text())
    return resolve_arm_config(
        base, arm, seed, tmp_path / arm / f"seed{seed}", "p.jsonl", "p.shuffled0.jsonl", steps=7
    )


def test_arms_differ_only_where_the_arm_says(tmp_path):
    for seed in (0, 1):
        dpo = _resolved(tmp_path, "dpo", seed)
        for arm in ("control", "shuffled"):
            other = _resolved(tmp_path, arm, seed)
            assert config_diff(dpo, other) - LOCATION_KEYS == ARM_KEYS[arm]
        ctrl = _resolved(tmp_path, "control", seed)
        assert ctrl["model"]["init_args"]["dpo_weight"] == 0.0
        assert "dpo_weight" not in dpo["model"]["init_args"]  # dpo keeps the config's weight
        # same pairs, data, steps and seeds for every arm of one training seed
        for cfg in (dpo, ctrl, _resolved(tmp_path, "shuffled", seed)):
            assert cfg["seed_everything"] == cfg["model"]["init_args"]["seed"] == seed
            assert cfg["trainer"]["max_steps"] == 7
            assert cfg["data"] == dpo["data"]
            assert cfg["model"]["init_args"]["preference_type"] == "offline"
    # between seeds only the seed keys (and the folder) change
    assert (
        config_diff(_resolved(tmp_path, "dpo", 0), _resolved(tmp_path, "dpo", 1)) - LOCATION_KEYS
        == SEED_KEYS
    )
    shuffled = _resolved(tmp_path, "shuffled", 0)
    assert shuffled["model"]["init_args"]["preference_dataset"] == "p.shuffled0.jsonl"
    assert _resolved(tmp_path, "dpo", 0)["model"]["init_args"]["preference_dataset"] == "p.jsonl"


def _dataset(path: Path, labels: list[Choice]) -> Path:
    with PreferenceWriter(path, {"judge": "fixture"}) as writer:
        for i, label in enumerate(labels):
            score = {Choice.A: 1.0, Choice.B: -1.0}.get(label, 0.0)
            writer.append(
                PreferenceRow(
                    pair_id=f"p{i}",
                    reference=f"r{i}.png",
                    a=f"a{i}.png",
                    b=f"b{i}.png",
                    reference_sha256="0" * 64,
                    a_sha256="1" * 64,
                    b_sha256="2" * 64,
                    label=label,
                    judgment=Judgment(score=score, choice=label, prob_a=0.5 + score / 4),
                    judge="fixture",
                    judge_config={"judge": "fixture"},
                )
            )
    return path


def test_shuffled_permutes_winners_and_keeps_pairs(tmp_path):
    labels = [Choice.A] * 12 + [Choice.B] * 8 + [Choice.ABSTAIN] * 3
    labels = [labels[i] for i in np.random.default_rng(5).permutation(len(labels))]
    source = _dataset(tmp_path / "pairs.jsonl", labels)
    changed = shuffle_verdicts(source, tmp_path / "pairs.shuffled0.jsonl", seed=0)
    before = read_preference_dataset(source)
    after = read_preference_dataset(tmp_path / "pairs.shuffled0.jsonl")
    assert [(r.pair_id, r.reference, r.a, r.b) for r in before] == [
        (r.pair_id, r.reference, r.a, r.b) for r in after
    ]
    assert sorted(r.label.value for r in before) == sorted(r.label.value for r in after)
    for r0, r1 in zip(before, after, strict=True):
        assert (r0.label is Choice.ABSTAIN) == (r1.label is Choice.ABSTAIN)
        assert r1.judgment.choice is r1.label  # verdict and label travel together
    assert changed == sum(r0.label != r1.label for r0, r1 in zip(before, after, strict=True))
    assert changed >= 4  # a real permutation, not the identity
    assert after[0].judge_config["shuffled_seed"] == 0
    shuffle_verdicts(source, tmp_path / "pairs.shuffled1.jsonl", seed=1)
    other = read_preference_dataset(tmp_path / "pairs.shuffled1.jsonl")
    assert [r.label for r in other] != [r.label for r in after]
    with pytest.raises(Exception, match="exists"):
        shuffle_verdicts(source, tmp_path / "pairs.shuffled0.jsonl", seed=0)


def test_statistics_match_a_hand_computation():
    # 2 training seeds x 3 images
    a = {0: {"x": 1.0, "y": 2.0, "z": 6.0}, 1: {"x": 3.0, "y": 2.0, "z": 4.0}}
    b = {0: {"x": 0.0, "y": 1.0, "z": 5.0}, 1: {"x": 1.0, "y": 3.0, "z": 1.0}}
    mean, sd = arm_means(a)
    assert mean == pytest.approx(18 / 6)
    assert sd == pytest.approx(np.std([3.0, 3.0], ddof=1))
    d = paired_difference(a, b, ("a", "b"), n_boot=0)
    # per image: x (1+2)/2=1.5, y (1-1)/2=0, z (1+3)/2=2 -> mean 7/6
    assert d.mean == pytest.approx(7 / 6) and d.low == d.high == d.mean
    # per seed: seed0 (1+1+1)/3=1, seed1 (2-1+3)/3=4/3
    assert d.per_seed == pytest.approx([1.0, 4 / 3])
    assert d.seed_sd == pytest.approx(np.std([1.0, 4 / 3], ddof=1))
    boot = paired_difference(a, b, ("a", "b"), n_boot=4000, seed=3)
    per_image = np.array([1.5, 0.0, 2.0])
    idx = np.random.default_rng(3).integers(0, 3, size=(4000, 3))
    lo, hi = np.quantile(per_image[idx].mean(axis=1), [0.025, 0.975])
    assert (boot.low, boot.high) == pytest.approx((lo, hi))
    # one image per group: the group bootstrap is the image bootstrap
    grouped = paired_difference(
        a, b, ("a", "b"), n_boot=4000, seed=3, groups={"x": "1", "y": "2", "z": "3"}
    )
    assert (grouped.low, grouped.high) == pytest.approx((lo, hi))
    assert not boot.excludes_zero() or lo > 0


@pytest.fixture
def tiny_setup(tmp_path, photos):
    """A 'test'-size stage-1 checkpoint, training photos and a stage-2 config using them."""
    from compressai_vlic.zoo import vlic

    torch.manual_seed(0)
    stage1 = tmp_path / "stage1.pth.tar"
    torch.save(vlic("test", pretrained=False).state_dict(), stage1)
    train = tmp_path / "train"
    train.mkdir()
    for name in ("astronaut", "coffee"):
        Image.fromarray(photos[name][:96, :96]).save(train / f"{name}.png")
    # an overlay of the shipped config, as a user writes one: read with the config system
    overlay = {
        "config": str(CONFIG),
        "model.init_args.weights": str(stage1),
        "model.init_args.judge_type": "psnr",
        "model.init_args.judge_compose": None,
        "model.init_args.dpo_batch_size": 2,
        "data.init_args.train_dir": str(train),
        "data.init_args.batch_size": 2,
        "data.init_args.samples_per_epoch": 64,
        "data.init_args.cache_type": "none",
    }
    config = tmp_path / "stage2.yaml"
    config.write_text(yaml.safe_dump(overlay, sort_keys=False))
    return config


def test_resume_after_a_kill_repeats_and_loses_no_step(tiny_setup, tmp_path, monkeypatch):
    from compressai_vlic_lightning.cli import main as train_main
    from compressai_vlic_lightning.stage2 import Stage2Module

    out = tmp_path / "abl"
    specs, manifest = prepare_runs(
        tiny_setup, out, ["dpo"], [0], steps=4, checkpoint_every=2, pair_count=4, pair_crop=32
    )
    assert manifest.data["pairs"]["pairs"] == 4
    run_config = yaml.safe_load(specs[0].config_path.read_text())
    assert run_config["model"]["init_args"]["lr"] == 5e-5  # from the base under the overlay
    assert run_config["model"]["init_args"]["dpo_batch_size"] == 2  # the overlay's
    assert run_config["model"]["init_args"]["label_type"] == "hard"  # the signature's default
    original = Stage2Module.training_step

    def killed_at_step_3(self, batch, batch_idx):
        if self.global_step == 3:
            raise RuntimeError("killed")
        return original(self, batch, batch_idx)

    def in_process(spec, cmd):
        try:
            return train_main(cmd[3:])  # [python, -m, module, fit, ...]
        except RuntimeError:
            return 1

    monkeypatch.setattr(Stage2Module, "training_step", killed_at_step_3)
    assert train_runs(specs, manifest, 4, runner=in_process) == ["dpo/seed0"]
    assert ablation.checkpoint_step(specs[0].last_ckpt) == 2
    monkeypatch.setattr(Stage2Module, "training_step", original)
    assert train_runs(specs, manifest, 4, runner=in_process) == []
    entry = json.loads((out / "manifest.json").read_text())["runs"]["dpo/seed0"]
    assert entry["status"] == "done" and entry["resumed_from_step"] == 2 and entry["steps"] == 4
    ckpt = torch.load(specs[0].last_ckpt, weights_only=True)
    adam_steps = {int(s["step"]) for s in ckpt["optimizer_states"][0]["state"].values()}
    assert adam_steps == {4}  # four optimizer steps in all: none lost, none extra
    rows = ablation.read_metrics(specs[0].folder)
    assert [int(r["step"]) for r in rows if "train/dpo_loss" in r] == [0, 1, 2, 3]
    # step 2 ran before the kill and again after the resume, on the same pairs and noise
    first = next(specs[0].folder.glob("metrics.until2.*.csv"))
    import csv

    with open(first) as fh:
        before = {int(float(r["step"])): r for r in csv.DictReader(fh) if r.get("train/dpo_loss")}
    again = {int(r["step"]): r for r in rows}
    assert float(before[2]["train/dpo_loss"]) == pytest.approx(again[2]["train/dpo_loss"], rel=1e-5)
    # a finished run is not trained again
    assert train_runs(specs, manifest, 4, runner=lambda *a: pytest.fail("retrained")) == []


def test_report_marks_training_metrics_and_pairs_arms_by_seed(tmp_path):
    from compressai_vlic_lightning.ablation import RunSpec
    from compressai_vlic_lightning.ablation_eval import (
        build_report,
        markdown,
        metric_roles,
        plot_metrics,
    )

    model_args = yaml.safe_load(CONFIG.read_text())["model"]["init_args"]
    roles = metric_roles(model_args)
    assert roles["ssimulacra2"] == "judge" and roles["lpips"] == "unanimity partner"
    assert {roles[k] for k in ("psnr", "ms_ssim", "lpips_vgg", "dists")} == {"none"}
    assert "loss term" in metric_roles({**model_args, "perceptual_weight": 0.5})["lpips"]

    rng = np.random.default_rng(0)
    specs = [RunSpec(a, s, tmp_path) for s in (0, 1) for a in ("dpo", "control", "shuffled")]
    rows, truth = [], {}
    for model in ["stage1", *(s.key for s in specs)]:
        for image in ("p@1.png", "p@2.png", "q@1.png"):
            v = [float(x) for x in rng.normal(0.3, 0.05, 2)]
            truth[(model, image)] = sum(v) / 2
            rows.append(
                {
                    "image": image,
                    "model": model,
                    "bpp": 0.1,
                    "metrics": {"lpips": v},
                    "between_decodes": {"lpips": 0.01},
                }
            )
    rows = [r for r in rows if not (r["model"] == "control/seed1" and r["image"] == "q@1.png")]
    table = build_report(rows, specs, roles, n_boot=0, groups={"p@1.png": "p", "p@2.png": "p"})
    assert table["images"] == 2 and table["seeds"] == [0, 1]  # q@1 is not complete
    imgs = ("p@1.png", "p@2.png")
    want = np.mean(
        [truth[(f"dpo/seed{s}", i)] - truth[(f"control/seed{s}", i)] for s in (0, 1) for i in imgs]
    )
    assert table["differences"]["lpips"]["dpo-control"]["mean"] == pytest.approx(want)
    assert table["means"]["lpips"]["stage1"]["mean"] == pytest.approx(
        np.mean([truth[("stage1", i)] for i in imgs])
    )
    assert table["between_decodes"]["dpo"]["lpips_between_decodes"] == pytest.approx(0.01)
    text = markdown(table, {"dpo": {"heldout_implicit_accuracy": 0.5}})
    assert "| lpips | unanimity partner |" in text and "dpo-shuffled" in text
    assert [p.name for p in plot_metrics(table, tmp_path)] == ["lpips.png", "bpp.png"]


def test_workers_train_runs_at_once_and_shards_split_the_photos(tmp_path, photos):
    """``workers`` trains runs concurrently with one manifest; evaluation shards cover every
    (photo, model) once and give the rows one process gives."""
    import threading
    import time

    from compressai_vlic_lightning.ablation import Manifest, RunSpec, _shard
    from compressai_vlic_lightning.ablation_eval import evaluate_models

    from compressai_vlic.errors import ConfigError
    from compressai_vlic.zoo import vlic

    specs = [RunSpec(a, s, tmp_path / a / str(s)) for s in (0, 1) for a in ("dpo", "control")]
    manifest = Manifest(tmp_path / "manifest.json")
    lock, running, peak = threading.Lock(), [0], [0]

    def runner(spec, cmd):
        with lock:
            running[0] += 1
            peak[0] = max(peak[0], running[0])
        time.sleep(0.3)
        if spec.key != "control/seed0":  # this one fails
            spec.last_ckpt.parent.mkdir(parents=True, exist_ok=True)
            torch.save({"global_step": 5}, spec.last_ckpt)
        with lock:
            running[0] -= 1
        return 0

    assert train_runs(specs, manifest, 5, runner=runner, workers=2) == ["control/seed0"]
    assert peak[0] == 2
    saved = json.loads((tmp_path / "manifest.json").read_text())["runs"]
    assert {k: v["status"] for k, v in saved.items()} == {
        "dpo/seed0": "done",
        "control/seed0": "failed",
        "dpo/seed1": "done",
        "control/seed1": "done",
    }
    with pytest.raises(ConfigError, match="workers"):
        train_runs(specs, manifest, 5, runner=runner, workers=0)
    assert _shard("1/3") == (1, 3)
    for bad in ("3/3", "x", "1/0", "-1/2"):
        with pytest.raises(ConfigError, match="eval-shard"):
            _shard(bad)

    torch.manual_seed(0)
    models = {"stage1": vlic("test").eval(), "dpo/seed0": vlic("test").eval()}
    images = []
    for i, name in enumerate(("astronaut", "coffee", "rocket")):
        path = tmp_path / f"{name}.png"
        Image.fromarray(np.ascontiguousarray(photos[name][100 + i : 124 + i, 90:122])).save(path)
        images.append(path)
    one = evaluate_models(models, images, tmp_path / "one.jsonl", [0], ["psnr"])
    for k in (1, 0):  # shard 1 first: each shard appends only its own photos
        evaluate_models(models, images, tmp_path / "two.jsonl", [0], ["psnr"], shard=(k, 2))
    lines = (tmp_path / "two.jsonl").read_text().splitlines()
    assert len(lines) == len(one) == 6
    two = evaluate_models(models, images, tmp_path / "two.jsonl", [0], ["psnr"], evaluate=False)
    key = lambda r: (r["image"], r["model"])  # noqa: E731
    assert sorted(two, key=key) == sorted(one, key=key)


def test_ablate_evaluates_with_a_helper_process_and_reports(tiny_setup, tmp_path, photos):
    """The command a researcher runs: train one arm, then evaluate it on held-out photos with
    ``--workers 2`` (a second process takes every other photo); one report over all rows."""
    from compressai_vlic_lightning.cli import main as train_main

    out = tmp_path / "abl"
    heldout = tmp_path / "heldout"
    heldout.mkdir()
    for i, name in enumerate(("chelsea", "rocket", "coffee")):
        crop = photos[name][60 + i : 92 + i, 60:92]
        Image.fromarray(np.ascontiguousarray(crop)).save(heldout / f"{name}@r0c0.png")
    common = ["ablate", "--config", str(tiny_setup), "--out", str(out), "--arms", "dpo"]
    common += ["--seeds", "0", "--steps", "2", "--pairs", "4", "--pair-crop", "32"]
    assert train_main(common) == 0
    evaluate = [*common, "--evaluate-only", "--heldout", str(heldout), "--heldout-pairs", "0"]
    evaluate += ["--decode-seeds", "0", "--metrics", "psnr,ms_ssim", "--n-boot", "50"]
    assert train_main([*evaluate, "--workers", "2"]) == 0
    rows = [json.loads(line) for line in (out / "eval" / "rows.jsonl").read_text().splitlines()]
    assert sorted((r["image"], r["model"]) for r in rows) == sorted(
        (f"{n}@r0c0.png", m)
        for n in ("chelsea", "rocket", "coffee")
        for m in ("stage1", "dpo/seed0")
    )
    report = json.loads((out / "eval" / "report.json").read_text())
    assert report["images"] == 3 and "dpo-stage1" in report["differences"]["psnr"]
    # the judge here is PSNR: its winner is the better decode by PSNR on every decided pair
    agreement = report["label_agreement"]
    assert agreement["psnr"]["pairs"] >= 1 and agreement["psnr"]["agreement"] == 1.0
    assert 0.0 <= agreement["ms_ssim"]["low"] <= agreement["ms_ssim"]["high"] <= 1.0
    assert "Does the judge's label agree" in (out / "eval" / "report.md").read_text()
    assert (out / "eval" / "report.md").is_file()
