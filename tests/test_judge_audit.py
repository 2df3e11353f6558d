"""`judge audit`: agreement with human 2AFC labels, computed by hand on small real-photo fixtures."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageFilter
from scipy.stats import spearmanr

from compressai_vlic.cli.main import main
from compressai_vlic.errors import DatasetError
from compressai_vlic.judges.audit import (
    AuditSettings,
    audit,
    bootstrap_mean,
    fit_scale,
    load_bapps,
    load_csv,
)
from compressai_vlic.judges.metric_judge import MetricJudge
from compressai_vlic.judges.types import Choice, Judgment, Vote, choice_from_score


def _distort(crop: np.ndarray, kind: str, level: float, rng: np.random.Generator) -> np.ndarray:
    if kind == "noise":
        return np.clip(crop + rng.normal(0, level, crop.shape), 0, 255).astype(np.uint8)
    return np.asarray(Image.fromarray(crop).filter(ImageFilter.GaussianBlur(level)))


# (category, p0 level, p1 level, fraction of humans preferring p1)
BAPPS_SPEC = [
    ("noise", 4, 12, 0.2),
    ("noise", 15, 5, 1.0),
    ("noise", 8, 9, 0.6),  # humans disagree with the metric-obvious answer
    ("noise", 10, 3, 0.5),  # 50/50 split: no majority
    ("noise", 6, 20, 0.0),
    ("noise", 12, 11, 0.4),
    ("blur", 0.6, 2.0, 0.2),
    ("blur", 2.5, 0.8, 0.8),
    ("blur", 1.0, 1.2, 0.8),  # humans disagree with the metric
    ("blur", 1.5, 0.5, 1.0),
]


@pytest.fixture()
def bapps_root(tmp_path, photos) -> Path:
    """A two-category BAPPS 2AFC folder built from real photo crops."""
    rng = np.random.default_rng(1)
    root = tmp_path / "2afc"
    names = list(photos)
    for i, (cat, l0, l1, h) in enumerate(BAPPS_SPEC):
        img = photos[names[i % len(names)]]
        crop = np.ascontiguousarray(img[60 + 9 * i : 60 + 9 * i + 48, 80 + 7 * i : 80 + 7 * i + 48])
        for sub in ("ref", "p0", "p1", "judge"):
            (root / cat / sub).mkdir(parents=True, exist_ok=True)
        stem = f"{i:06d}"
        Image.fromarray(crop).save(root / cat / "ref" / f"{stem}.png")
        Image.fromarray(_distort(crop, cat, l0, rng)).save(root / cat / "p0" / f"{stem}.png")
        Image.fromarray(_distort(crop, cat, l1, rng)).save(root / cat / "p1" / f"{stem}.png")
        np.save(root / cat / "judge" / f"{stem}.npy", np.array([h], dtype=np.float32))
    return root


def _psnr(ref: Path, dist: Path) -> float:
    x = np.asarray(Image.open(ref), dtype=np.float64)
    y = np.asarray(Image.open(dist), dtype=np.float64)
    return 10 * math.log10(255.0**2 / np.mean((x - y) ** 2))


def test_bapps_audit_gives_the_accuracy_computed_by_hand(bapps_root, tmp_path, capsys):
    pairs = load_bapps(bapps_root)
    assert len(pairs) == len(BAPPS_SPEC) and {p.category for p in pairs} == {"noise", "blur"}
    # by hand: PSNR prefers the p with the higher PSNR; compare with the human majority
    credit, score = [], []
    for p in pairs:
        pick_b = _psnr(p.reference, p.b) > _psnr(p.reference, p.a)
        h = p.human_b
        score.append(h if pick_b else 1 - h)
        if h != 0.5:
            credit.append(float(pick_b == (h > 0.5)))
    want_acc, want_score = float(np.mean(credit)), float(np.mean(score))
    assert 0 < want_acc < 1  # the fixture has both agreements and disagreements

    out = tmp_path / "audit"
    rc = main(
        [
            "judge",
            "audit",
            "--bapps",
            str(bapps_root),
            "--judge-type",
            "psnr",
            "--judge-type",
            "ssimulacra2",
            "--output-dir",
            str(out),
            "--bootstrap",
            "300",
            "--no-progress",
        ]
    )
    assert rc == 0
    text = capsys.readouterr().out
    assert "human ceiling" in text and "psnr" in text and "Cohen's kappa" in text
    report = json.loads((out / "audit.json").read_text())
    assert report["n_pairs"] == len(BAPPS_SPEC)
    psnr = next(j for j in report["judges"] if j["judge"] == "psnr")
    single = next(v for v in psnr["variants"] if v["name"] == "single order")
    assert single["n_majority"] == len(credit)
    assert single["accuracy"]["value"] == pytest.approx(want_acc)
    assert single["accuracy"]["low"] <= want_acc <= single["accuracy"]["high"]
    assert single["bapps_score"]["value"] == pytest.approx(want_score)
    assert single["abstain_rate"] == 0.0
    sym = next(v for v in psnr["variants"] if v["name"] == "symmetrized")
    assert sym["accuracy"]["value"] == pytest.approx(want_acc)  # a metric has no position bias
    assert psnr["position_bias"]["flip_rate"] == 0.0
    assert psnr["position_bias"]["first_shown_rate"] == 0.5
    h = np.array([p.human_b for p in pairs])
    assert report["human"]["human"]["value"] == pytest.approx(np.mean(h**2 + (1 - h) ** 2))
    assert report["human"]["oracle"]["value"] == pytest.approx(np.mean(np.maximum(h, 1 - h)))
    assert {c["name"] for c in psnr["categories"]} == {"noise", "blur"}
    bins = psnr["separability"]
    assert sum(b["n_pairs"] for b in bins) == len(BAPPS_SPEC)
    assert bins[-1]["n_pairs"] == sum(abs(x - 0.5) >= 0.4 for x in h)
    assert len(report["agreement"]) == 1 and report["agreement"][0]["second"] == "ssimulacra2"
    assert (out / "audit.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


class FakeJudge:
    """Protocol-level judge: ``rule(reference, a, b, sample_index) -> score``."""

    def __init__(self, rule, name, k=0):
        self.rule, self.name, self.k = rule, name, k

    def with_sample_index(self, i):
        return FakeJudge(self.rule, self.name, i)

    def compare(self, reference, a, b):
        s = self.rule(reference, a, b, self.k)
        c = choice_from_score(s)
        return Judgment(s, c, votes=[Vote(s, c)])

    def compare_batch(self, requests):
        return [self.compare(r.reference, r.a, r.b) for r in requests]

    async def acompare(self, reference, a, b):
        return self.compare(reference, a, b)


def _mae(x, y):
    return (x - y).abs().mean().item()


def test_position_bias_self_consistency_and_votes(bapps_root):
    pairs = load_bapps(bapps_root)
    first = FakeJudge(lambda r, a, b, k: 1.0, "always-first")

    def noisy(r, a, b, k):  # honest, but sample 1 of every 3 flips its answer
        s = 1.0 if _mae(r, a) < _mae(r, b) else -1.0
        return -s if k % 3 == 1 else s

    report = audit(
        [first, FakeJudge(noisy, "noisy")],
        pairs,
        AuditSettings(repeats=3, order_type="symmetrize", votes=3, bootstrap=100, progress=False),
    )
    fj, nj = report.judges
    assert fj.position_bias.flip_rate == 1.0 and fj.position_bias.first_shown_rate == 1.0
    sym = next(v for v in fj.variants if v.name == "symmetrized")
    assert (
        sym.abstain_rate == 1.0 and sym.accuracy.value == 0.5
    )  # abstentions: half credit, no wins
    single = next(v for v in fj.variants if v.name == "single order")
    assert single.abstain_rate == 0.0
    assert fj.self_consistency is not None and fj.self_consistency.pairwise_agreement == 1.0
    # the noisy judge: 2 of 3 samples agree on every pair and order
    assert nj.self_consistency is not None
    assert nj.self_consistency.pairwise_agreement == pytest.approx(1 / 3)
    assert nj.self_consistency.all_agree_rate == 0.0
    assert [c.name for c in nj.votes_curve] == ["k=1", "k=2", "k=3"]
    k2 = nj.votes_curve[1]
    assert k2.abstain_rate == 1.0  # votes 0 and 1 always disagree: every pair ties
    assert nj.votes_curve[2].accuracy.value == nj.votes_curve[0].accuracy.value  # majority = honest
    assert nj.configured == "symmetrized, majority of 3"
    assert report.agreement[0].first == "always-first"


@pytest.mark.parametrize("scale_type", ["bradley-terry", "thurstone"])
def test_fit_scale_recovers_a_known_ordering(scale_type):
    from scipy.stats import norm

    rng = np.random.default_rng(0)
    truth = np.array([-1.5, -0.9, -0.4, 0.0, 0.3, 0.8, 1.2, 1.9])
    k = truth.size
    wins = np.zeros((k, k))
    for i in range(k):
        for j in range(i + 1, k):
            d = truth[i] - truth[j]
            p = 1 / (1 + np.exp(-d)) if scale_type == "bradley-terry" else norm.cdf(d)
            w = rng.binomial(400, p)
            wins[i, j], wins[j, i] = w, 400 - w
    s = fit_scale(wins, scale_type)
    assert np.argsort(s).tolist() == list(range(k))
    assert abs(s.mean()) < 1e-9
    assert np.allclose(s, truth - truth.mean(), atol=0.2)
    # complete separation (one stimulus always wins) still gives finite, ordered values
    det = np.triu(np.ones((4, 4)), 1).T * 5  # i beats every j < i
    s2 = fit_scale(det, scale_type)
    assert np.all(np.isfinite(s2)) and np.argsort(s2).tolist() == [0, 1, 2, 3]


def test_csv_audit_with_scene_scaling(tmp_path, photos, capsys):
    """Four noise levels per scene, all six pairs judged: scale values follow the noise level."""
    rng = np.random.default_rng(3)
    levels = [2, 6, 12, 24]
    rows = []
    for s, name in enumerate(["astronaut", "chelsea", "coffee"]):
        crop = np.ascontiguousarray(photos[name][80:120, 90:130])
        scene = tmp_path / name
        scene.mkdir()
        Image.fromarray(crop).save(scene / "ref.png")
        for lv in levels:
            Image.fromarray(_distort(crop, "noise", lv, rng)).save(scene / f"n{lv}.png")
        for i, la in enumerate(levels):
            for lb in levels[i + 1 :]:
                # humans prefer the less noisy image (b is noisier here), with some disagreement
                h = 0.1 if s != 1 else 0.3
                rows.append(
                    {
                        "reference": f"{name}/ref.png",
                        "a": f"{name}/n{la}.png",
                        "b": f"{name}/n{lb}.png",
                        "human_a": f"{1 - h}",
                        "n_humans": "10",
                        "scene": name,
                    }
                )
    with open(tmp_path / "labels.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    pairs = load_csv(tmp_path / "labels.csv")
    assert len(pairs) == 18 and pairs[0].human_b == pytest.approx(0.1)
    out = tmp_path / "audit"
    rc = main(
        [
            "judge",
            "audit",
            "--csv",
            str(tmp_path / "labels.csv"),
            "--judge-type",
            "psnr",
            "--scale-type",
            "thurstone",
            "--output-dir",
            str(out),
            "--bootstrap",
            "200",
            "--no-progress",
        ]
    )
    assert rc == 0
    report = json.loads((out / "audit.json").read_text())
    psnr = report["judges"][0]
    single = next(v for v in psnr["variants"] if v["name"] == "single order")
    assert single["accuracy"]["value"] == 1.0
    assert single["bapps_score"]["value"] == pytest.approx(np.mean([1 - p.human_b for p in pairs]))
    scaling = psnr["scaling"]
    assert scaling["scale_type"] == "thurstone" and scaling["n_scenes"] == 3
    assert scaling["spearman"]["value"] == pytest.approx(1.0)
    for sc in scaling["scenes"]:
        order = [Path(sc["stimuli"][i]).stem for i in np.argsort(sc["judge_scale"])[::-1]]
        assert order == ["n2", "n6", "n12", "n24"]  # best first
        assert spearmanr(sc["judge_scale"], sc["human_scale"]).statistic == pytest.approx(1.0)
    assert "Spearman over 3 scenes" in capsys.readouterr().out


def test_bad_inputs_fail_clearly(tmp_path, bapps_root):
    with pytest.raises(DatasetError, match="BAPPS"):
        load_bapps(tmp_path)
    (bapps_root / "noise" / "judge" / "000000.npy").unlink()
    with pytest.raises(DatasetError, match=r"judge/000000\.npy"):
        load_bapps(bapps_root)
    bad = tmp_path / "bad.csv"
    bad.write_text("reference,a,b\nx.png,y.png,z.png\n")
    with pytest.raises(DatasetError, match="human_b"):
        load_csv(bad)
    bad.write_text("reference,a,b,human_b\nx.png,y.png,z.png,0.5\n")
    with pytest.raises(DatasetError, match="does not exist"):
        load_csv(bad)
    assert main(["judge", "audit", "--output-dir", str(tmp_path / "o")]) == 2


def test_bootstrap_interval_brackets_the_mean():
    rng = np.random.default_rng(0)
    x = rng.binomial(1, 0.7, size=400).astype(float)
    est = bootstrap_mean(x, 500, rng)
    assert est.low < est.value < est.high and est.high - est.low < 0.12
    assert abs(est.value - 0.7) < 0.08


def test_metric_judge_used_by_audit_is_order_invariant(bapps_root):
    pairs = load_bapps(bapps_root)[:3]
    judge = MetricJudge("ssimulacra2")
    report = audit([judge], pairs, AuditSettings(bootstrap=0, progress=False))
    assert report.judges[0].position_bias.flip_rate == 0.0
    assert all(v.abstain_rate == 0.0 for v in report.judges[0].variants)
    assert Choice.A.flipped() is Choice.B


def test_audit_of_a_vlm_backend_on_loopback(bapps_root, tmp_path, capsys):
    """The audit drives a real chat-completions client: a position-biased VLM is exposed."""
    from compressai_vlic.testing.loopback_server import ServerScript, run_server

    vlm = [
        "--judge-arg",
        "model=loopback-vlm",
        "--judge-arg",
        "api_key_env=",
        "--judge-arg",
        "prompt_type=ab-choice",
    ]
    with run_server(ServerScript(answer_type="first")) as server:
        out = tmp_path / "audit"
        args = [
            "judge",
            "audit",
            "--bapps",
            str(bapps_root),
            "--judge-type",
            "openai",
            "--judge-arg",
            f"base_url={server.base_url}",
            *vlm,
        ]
        rc = main(
            [
                *args,
                "--repeats",
                "2",
                "--symmetrize",
                "--output-dir",
                str(out),
                "--bootstrap",
                "50",
                "--no-progress",
            ]
        )
        assert rc == 0
        assert server.stats()["requests"] == len(BAPPS_SPEC) * 2 * 2  # pairs x orders x repeats
    jr = json.loads((out / "audit.json").read_text())["judges"][0]
    assert (
        jr["position_bias"]["flip_rate"] == 1.0 and jr["position_bias"]["first_shown_rate"] == 1.0
    )
    sym = next(v for v in jr["variants"] if v["name"] == "symmetrized")
    assert sym["abstain_rate"] == 1.0
    # soft score from the answer-token P(A): the bias cancels to exactly 0.5 after symmetrisation
    assert sym["soft_score"]["value"] == pytest.approx(0.5)
    single = next(v for v in jr["variants"] if v["name"] == "single order")
    assert single["soft_score"] is not None
    assert jr["self_consistency"]["pairwise_agreement"] == 1.0
    assert "openai:loopback-vlm" in capsys.readouterr().out
