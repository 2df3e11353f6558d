"""Reference-free attribute judgments and the psychophysics statistics (VR %, z-scores,
one-vs-many, scene-bootstrap Spearman, attribute-weighting fit), with known answers."""

from __future__ import annotations

import itertools
import json
import math

import numpy as np
import pytest
import torch
from conftest import photo_tensor
from PIL import Image

from compressai_vlic.errors import ConfigError, DatasetError
from compressai_vlic.judges.attribute_judge import AttributeJudge
from compressai_vlic.judges.audit.psychophysics import (
    attribute_weights,
    format_psychophysics,
    one_vs_many,
    psychophysics,
    run_psychophysics,
    spearman_scene_bootstrap,
    variation_ratio,
    vr_percent,
    zscore,
)
from compressai_vlic.judges.audit.readers import load_csv
from compressai_vlic.judges.factory import make_judge
from compressai_vlic.judges.prompts import get_template
from compressai_vlic.judges.types import Choice, JudgeRequest
from compressai_vlic.metrics.attributes import colorfulness, rms_contrast


def stimulus(base: torch.Tensor, contrast: float, saturation: float) -> torch.Tensor:
    """``base`` with its luma contrast scaled about the mean and its chroma scaled."""
    luma = (base * torch.tensor([0.2126, 0.7152, 0.0722]).view(3, 1, 1)).sum(0, keepdim=True)
    chroma = base - luma
    mean = luma.mean()
    return ((luma - mean) * contrast + mean + saturation * chroma).clamp(0, 1)


@pytest.fixture(scope="module")
def bases(photos) -> list[torch.Tensor]:
    return [photo_tensor(photos[n], crop=(40, 40))[0] for n in ("astronaut", "coffee", "chelsea")]


# --------------------------------------------------------------------------- attribute metrics


def test_attribute_metrics_known_values():
    grey = torch.full((1, 3, 8, 8), 0.4)
    assert colorfulness(grey).item() == pytest.approx(0.0, abs=1e-9)
    assert rms_contrast(grey).item() == pytest.approx(0.0, abs=1e-9)
    red = torch.zeros(1, 3, 4, 4)
    red[:, 0] = 1.0  # rg = 255, yb = 127.5 everywhere: M = 0.3 * |(255, 127.5)|
    assert colorfulness(red).item() == pytest.approx(0.3 * math.hypot(255.0, 127.5))
    half = torch.zeros(1, 3, 4, 4)
    half[..., :2] = 1.0  # half black, half white: luma std 0.5
    assert rms_contrast(half).item() == pytest.approx(0.5)
    with pytest.raises(ConfigError, match="B, 3, H, W"):
        colorfulness(torch.zeros(3, 4, 4))


def test_attribute_judges_recover_the_set_ordering(bases):
    """Stimuli whose contrast / saturation the test sets: every pair, both orders, is ordered
    like the settings, with no reference given."""
    levels = [0.4, 0.7, 1.0, 1.3]
    judges = {
        "contrast": make_judge("rms_contrast"),
        "colorfulness": make_judge("colorfulness"),
    }
    for base in bases:
        for attribute, judge in judges.items():
            stims = [
                stimulus(base, k, 1.0) if attribute == "contrast" else stimulus(base, 1.0, k)
                for k in levels
            ]
            reqs = [
                JudgeRequest(None, stims[i], stims[j])
                for i, j in itertools.permutations(range(len(levels)), 2)
            ]
            got = [j.choice for j in judge.compare_batch(reqs)]
            want = [
                Choice.A if levels[i] > levels[j] else Choice.B
                for i, j in itertools.permutations(range(len(levels)), 2)
            ]
            assert got == want, attribute
    # the contrast judge is blind to saturation and vice versa (up to clamping)
    flat = stimulus(bases[0], 1.0, 0.2), stimulus(bases[0], 1.0, 1.2)
    assert abs(rms_contrast(torch.stack(flat)).diff().item()) < 0.01
    overall = AttributeJudge("overall", weights=(1.0, 0.0))
    j = overall.compare(None, stimulus(bases[0], 1.2, 0.2), stimulus(bases[0], 0.8, 1.2))
    assert j.choice is Choice.A  # all weight on contrast


# --------------------------------------------------------------------------- prompts, CSV


def test_reference_free_prompts_show_two_images_only():
    for prompt_type in ("vlic-score", "ab-choice", "reason-choice"):
        for attribute in ("contrast", "colorfulness", "overall"):
            t = get_template(prompt_type, attribute, reference=False)
            parts = t.parts()
            assert [p.image_index for p in parts if p.kind == "image"] == [1, 2]
            assert "Original" not in "".join(p.text for p in parts)
            assert ".noref." in t.version
            assert t.version != get_template(prompt_type, attribute).version
    with pytest.raises(ConfigError, match="needs one"):
        get_template("ab-choice", "fidelity", reference=False)
    # the prompts with an original read exactly as before (cache keys of old answers hold)
    assert get_template("vlic-score").version == "vlic-score.fidelity.v1-f7816d0dc5"
    assert get_template("ab-choice", "contrast").version == "ab-choice.contrast.v1-2ec45607cc"


def test_csv_without_reference_and_by_attribute(tmp_path, bases):
    for i, base in enumerate(bases[:2]):
        Image.fromarray((base.permute(1, 2, 0).numpy() * 255).astype(np.uint8)).save(
            tmp_path / f"s{i}.png"
        )
    (tmp_path / "labels.csv").write_text(
        "a,b,attribute,human_b,scene\n"
        "s0.png,s1.png,contrast,0.2,x\n"
        "s0.png,s1.png,colorfulness,0.9,x\n"
        "s1.png,s0.png,contrast,0.7,y\n"
    )
    pairs = load_csv(tmp_path / "labels.csv")
    assert [p.reference for p in pairs] == [None, None, None]
    assert [p.attribute for p in pairs] == ["contrast", "colorfulness", "contrast"]
    contrast = load_csv(tmp_path / "labels.csv", attribute="contrast")
    assert [p.scene for p in contrast] == ["x", "y"]
    with pytest.raises(DatasetError, match="no rows with attribute 'overall'"):
        load_csv(tmp_path / "labels.csv", attribute="overall")


# --------------------------------------------------------------------------- statistics by hand


def test_vr_percent_equals_hand_computation():
    codes = np.array([[1, 1, 1, -1], [1, -1, -1, -1], [1, 1, 0, -1]])  # 3 repeats x 4 trials
    # trial 1: all A -> 0; trial 2: A,A,B... here A,-1,+1 -> mode 2 of 3 -> 1/3;
    # trial 3: A,B,abstain -> mode 1 of 3 -> 2/3; trial 4: all B -> 0
    assert variation_ratio(codes).tolist() == pytest.approx([0.0, 1 / 3, 2 / 3, 0.0])
    assert vr_percent(codes) == pytest.approx(100 * (1 / 3 + 2 / 3) / 4)  # 25 %


def test_weighting_fit_equals_hand_computation():
    c = np.array([1.0, 0.5, -0.5, -1.0, 0.2, 0.0])
    f = np.array([0.3, -0.6, 0.9, -0.2, 0.1, -0.5])
    o = np.array([0.9, 0.1, 0.2, -0.8, 0.4, -0.6])

    def z(x):
        return (x - x.mean()) / np.sqrt(((x - x.mean()) ** 2).mean())

    zc, zf, zo = z(c), z(f), z(o)
    # normal equations of the 2-parameter least squares, solved by Cramer's rule
    a11, a12, a22 = (zc * zc).sum(), (zc * zf).sum(), (zf * zf).sum()
    b1, b2 = (zc * zo).sum(), (zf * zo).sum()
    det = a11 * a22 - a12 * a12
    wc, wf = (b1 * a22 - a12 * b2) / det, (a11 * b2 - a12 * b1) / det
    r2 = 1 - ((zo - wc * zc - wf * zf) ** 2).sum() / (zo**2).sum()
    rng = np.random.default_rng(0)
    fit = attribute_weights(c, f, o, ["s1", "s1", "s2", "s2", "s3", "s3"], 200, rng)
    assert fit.w_contrast.value == pytest.approx(wc)
    assert fit.w_colorfulness.value == pytest.approx(wf)
    assert fit.relative_contrast.value == pytest.approx(wc / (abs(wc) + abs(wf)))
    assert fit.r2 == pytest.approx(r2)
    assert fit.w_contrast.low <= fit.w_contrast.value <= fit.w_contrast.high
    assert fit.w_contrast.low < fit.w_contrast.high  # scenes differ: a real interval
    # an observer whose preference is exactly contrast gets all the weight there
    exact = attribute_weights(c, f, c, ["a", "b", "c", "a", "b", "c"], 0, rng)
    assert exact.w_contrast.value == pytest.approx(1.0)
    assert exact.w_colorfulness.value == pytest.approx(0.0, abs=1e-12)
    assert exact.r2 == pytest.approx(1.0) and exact.identifiable
    # the same answers to both attributes: the weights are not identifiable, and say so
    assert not attribute_weights(c, c, o, ["a"] * 6, 0, rng).identifiable


def test_zscore_one_vs_many_and_scene_bootstrap():
    x = np.array([1.0, 2.0, 3.0, 4.0])
    assert zscore(x).tolist() == pytest.approx(((x - 2.5) / math.sqrt(1.25)).tolist())
    assert zscore(np.ones(3)).tolist() == [0.0, 0.0, 0.0]
    zs = {"m1": zscore(x), "m2": zscore(x), "m3": zscore(-x)}
    got = {o.model: o for o in one_vs_many(zs, "contrast")}
    # m3 against mean(m1, m2) = z(x): perfectly reversed; m1 against mean(m2, m3) = 0: undefined
    assert got["m3"].spearman == pytest.approx(-1.0)
    assert got["m3"].mean_abs_z_diff == pytest.approx(2 * np.abs(zscore(x)).mean())
    assert math.isnan(got["m1"].spearman)
    rho = spearman_scene_bootstrap(x, x**2, ["a", "a", "b", "b"], 100, np.random.default_rng(0))
    assert (rho.value, rho.low, rho.high) == pytest.approx((1.0, 1.0, 1.0))


def test_psychophysics_end_to_end_with_attribute_judges(tmp_path, bases):
    """Stimuli with set contrast and saturation, simulated observers who prefer by 0.8 contrast
    + 0.2 colourfulness: the attribute judges agree with the attribute labels, never vary over
    repeats, and the humans' weighting fit puts most weight on contrast."""
    levels = [(0.6, 0.3), (1.0, 1.2), (1.3, 0.6)]
    rows = ["a,b,attribute,human_b,scene"]
    for s, base in enumerate(bases):
        for k, (c, sat) in enumerate(levels):
            img = stimulus(base, c, sat).permute(1, 2, 0).numpy()
            Image.fromarray(np.round(img * 255).astype(np.uint8)).save(tmp_path / f"{s}_{k}.png")
        for n, (i, j) in enumerate(itertools.combinations(range(len(levels)), 2)):
            if (n + s) % 2:  # both presentation orders occur
                i, j = j, i
            (ci, si), (cj, sj) = levels[i], levels[j]
            for attribute, d in (
                ("contrast", cj - ci),
                ("colorfulness", sj - si),
                ("overall", 0.8 * (cj - ci) + 0.2 * (sj - si)),
            ):
                h = 1 / (1 + math.exp(-8 * d))  # fraction preferring b
                rows.append(f"{s}_{i}.png,{s}_{j}.png,{attribute},{h:.4f},scene{s}")
    (tmp_path / "labels.csv").write_text("\n".join(rows) + "\n")
    pairs = {
        a: load_csv(tmp_path / "labels.csv", a) for a in ("contrast", "colorfulness", "overall")
    }
    report = run_psychophysics(
        {"attribute": lambda a: AttributeJudge(a)},
        pairs,
        repeats=2,
        order_type="symmetrize",
        n_boot=100,
        progress=False,
        source="labels.csv",
    )
    stats = {(s.observer, s.attribute): s for s in report.stats}
    for attribute in ("contrast", "colorfulness"):
        s = stats[("attribute", attribute)]
        assert s.vr_percent == 0.0 and s.abstain_rate == 0.0
        # hard +-1 answers against graded human proportions: every sign agrees (accuracy 1 in
        # every separability bin), the rank correlation is high but not 1 (ties)
        assert all(b.accuracy.value == 1.0 for b in s.separability if b.n_pairs)
        rho = s.spearman_vs_human
        assert 0.8 < rho.value < 1.0 and rho.low <= rho.value <= rho.high
    human = report.weights["human"]
    assert human.w_contrast.value > 0.5 > abs(human.w_colorfulness.value)
    assert "attribute" in report.weights
    text = format_psychophysics(report)
    assert "VR %" in text and "w_c/(|w_c|+|w_f|)" in text
    assert report.to_dict()["z_responses"]["attribute"]["contrast"]

    from compressai_vlic.cli.main import main

    out = tmp_path / "psy"
    argv = ["judge", "psychophysics", "--csv", str(tmp_path / "labels.csv"), "--repeats", "2"]
    assert main([*argv, "--bootstrap", "20", "--output-dir", str(out), "--no-progress"]) == 0
    saved = json.loads((out / "psychophysics.json").read_text())
    assert saved["attributes"] == ["colorfulness", "contrast", "overall"]
    assert {s["observer"] for s in saved["stats"]} == {"human", "attribute"}


def test_psychophysics_rejects_mismatched_answers(tmp_path, bases):
    Image.fromarray((bases[0].permute(1, 2, 0).numpy() * 255).astype(np.uint8)).save(
        tmp_path / "x.png"
    )
    (tmp_path / "l.csv").write_text("a,b,human_b\nx.png,x.png,0.5\n")
    pairs = {"contrast": load_csv(tmp_path / "l.csv")}
    with pytest.raises(ConfigError, match="2 answers for 1 trials"):
        psychophysics({"m": {"contrast": np.ones((3, 2))}}, pairs, n_boot=0)
