"""Distil a real teacher (LPIPS-alex, real weights) into a student and measure it on held-out images.

python benchmarks/student_distill.py [--workdir /tmp/student-distill] [--tile 128]

1. Real photos (scikit-image's and scikit-learn's sample images) cut into tiles, each coded by
   JPEG and WebP at matched rates (``compressai_vlic.evaluation.codecs``); every JPEG/WebP pair
   of a tile at similar rates (within 1.6x in bpp: the hard, relevant comparisons, where the
   two codecs' different artifacts decide) is judged by the LPIPS judge into preference datasets,
   one for the training photos and one for the held-out photos (no photo in both).
2. ``compressai-vlic student train`` on the training dataset (pairs + LPIPS's own values as
   point-wise scores), ``compressai-vlic student eval`` on the held-out one: agreement with the
   teacher next to PSNR and MS-SSIM on the same pairs (Wilson intervals; bootstrap over photos).
3. Reliability weighting: the training labels of the least reliable 40% of pairs are flipped at
   a known rate; reliability-weighted vs uniform training, scored against the clean held-out
   labels, over several corruption seeds.
4. Calibration: SSIMULACRA 2 (fitted to human opinion by its authors) as a stand-in for opinion
   scores: a 4-parameter logistic fitted on a few training-photo reconstructions, SRCC/PLCC on the
   held-out photos' reconstructions.
"""

from __future__ import annotations

import argparse
import itertools
import json
import random
import sys
import time
from pathlib import Path

import numpy as np
import torch

JPEG_Q = (8, 15, 25, 40, 60, 85)
WEBP_Q = (5, 15, 30, 50, 70, 90)
# --pair-set hard: ladders reaching down to the shipped VLIC's rate, AVIF, and VLIC decodes
HARD_Q = {
    "jpeg": (1, 4, 8, 15, 25, 40),
    "webp": (0, 3, 8, 15, 30, 50),
    "avif": (0, 8, 20, 35, 50, 65),
}
VLIC_SEEDS = (0, 1, 2)
VLIC_STEPS = (1, 2, 4)
HARD_BPP_RATIO = 1.25


def photos() -> dict[str, np.ndarray]:
    """name -> (H, W, 3) uint8: the real photographs that ship with scikit-image / scikit-learn."""
    import skimage.data as sd
    from sklearn.datasets import load_sample_images

    out = {}
    for name in (
        "astronaut",
        "chelsea",
        "coffee",
        "hubble_deep_field",
        "immunohistochemistry",
        "motorcycle",
        "retina",
        "rocket",
        "camera",
        "brick",
        "grass",
        "gravel",
        "moon",
        "page",
        "coins",
        "horse",
    ):
        try:
            img = sd.stereo_motorcycle()[0] if name == "motorcycle" else getattr(sd, name)()
        except Exception as exc:  # a data file this install lacks (no download here)
            print(
                f"notice: skimage.data.{name} unavailable ({exc.__class__.__name__})",
                file=sys.stderr,
            )
            continue
        img = np.asarray(img)
        if img.dtype == bool:
            continue
        if img.ndim == 2:
            img = np.repeat(img[..., None], 3, axis=2)
        out[name] = np.ascontiguousarray(img[..., :3]).astype(np.uint8)
    sk = load_sample_images()
    for fname, img in zip(sk.filenames, sk.images):
        out[Path(fname).stem] = np.asarray(img, dtype=np.uint8)
    return out


def tiles(img: np.ndarray, tile: int, limit: int) -> list[np.ndarray]:
    h, w = img.shape[:2]
    rows, cols = h // tile, w // tile
    cells = [(r, c) for r in range(rows) for c in range(cols)]
    cy, cx = (rows - 1) / 2, (cols - 1) / 2
    cells.sort(key=lambda p: ((p[0] - cy) ** 2 + (p[1] - cx) ** 2, p))
    return [img[r * tile : (r + 1) * tile, c * tile : (c + 1) * tile] for r, c in cells[:limit]]


def _vlic_decodes(x: torch.Tensor, stem: str, work: Path, net) -> list[dict]:
    """The shipped VLIC's decodes of one tile: one bitstream per sampler setting, several seeds
    (the pairs Diffusion-DPO trains on: two decodes of one code)."""
    from compressai_vlic.image_io import save_png

    recs = []
    base = net.config
    for steps in VLIC_STEPS:
        net.config = base.replace(num_steps=steps)
        for seed in VLIC_SEEDS:
            path = work / "recon" / f"{stem}.vlic-s{steps}-seed{seed}.png"
            with torch.no_grad():
                out = net.compress(x[None], seed=seed)
                x_hat = net.decompress(out["strings"], out["shape"])["x_hat"]
            num_bytes = sum(len(b) for strings in out["strings"] for b in strings)
            if not path.is_file():
                save_png(x_hat[0, :, : x.shape[-2], : x.shape[-1]].clamp(0, 1), path)
            bpp = num_bytes * 8 / (x.shape[-2] * x.shape[-1])
            recs.append({"path": str(path), "codec": "vlic", "bpp": bpp, "code": f"s{steps}"})
    net.config = base
    return recs


def make_data(
    work: Path, tile: int, per_image: int, pair_set: str = "all"
) -> dict[str, list[dict]]:
    """Write tiles and their reconstructions; return per photo its tiles' records."""
    from compressai_vlic.evaluation.codecs import PillowCodec, pillow_format_available
    from compressai_vlic.image_io import save_png

    if pair_set == "hard":
        codecs = {
            name: (PillowCodec(name), q)
            for name, q in HARD_Q.items()
            if pillow_format_available(name)
        }
        from compressai_vlic.zoo import vlic

        net = vlic("tiny", pretrained=True).eval()
    else:
        codecs = {"jpeg": (PillowCodec("jpeg"), JPEG_Q), "webp": (PillowCodec("webp"), WEBP_Q)}
        net = None
    records: dict[str, list[dict]] = {}
    for name, img in sorted(photos().items()):
        for k, t in enumerate(tiles(img, tile, per_image)):
            x = torch.from_numpy(t.copy()).permute(2, 0, 1).float() / 255
            ref = work / "tiles" / f"{name}_{k}.png"
            if not ref.is_file():
                save_png(x, ref)
            recs = []
            for cname, (codec, qualities) in codecs.items():
                for q in qualities:
                    path = work / "recon" / f"{name}_{k}.{cname}{q}.png"
                    coded = codec.code(x, f"q{q}")
                    if not path.is_file():
                        save_png(coded.reconstruction, path)
                    recs.append({"path": str(path), "codec": cname, "bpp": coded.bpp})
            if net is not None:
                recs.extend(_vlic_decodes(x, f"{name}_{k}", work, net))
            records.setdefault(name, []).append({"reference": str(ref), "recons": recs})
    return records


class _Memo:
    """A metric with its values remembered per (reference, image) content: the judge computes
    the same numbers, once per image instead of once per pair (SSIMULACRA 2 is slow)."""

    def __init__(self, metric):
        self.metric, self.values = metric, {}
        self.higher_is_better = metric.higher_is_better

    def __call__(self, ref: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        out = []
        for r, d in zip(ref, x):
            key = (hash(r.numpy().tobytes()), hash(d.numpy().tobytes()))
            if key not in self.values:
                self.values[key] = float(self.metric(r[None], d[None]).reshape(-1)[0])
            out.append(self.values[key])
        return torch.tensor(out, dtype=torch.float64)


def keep_pair(a: dict, b: dict, pair_set: str) -> bool:
    """``all``: every pair of a tile's reconstructions. ``hard``: the pairs a metric cannot
    settle by rate: two codecs at matched rates (within HARD_BPP_RATIO in bpp) and two decodes
    of one VLIC bitstream."""
    if pair_set == "all":
        return True
    if a["codec"] == "vlic" and b["codec"] == "vlic":
        return a.get("code") == b.get("code")
    if a["codec"] == b["codec"]:
        return False
    lo, hi = sorted((a["bpp"], b["bpp"]))
    return hi <= HARD_BPP_RATIO * lo


def judge_pairs(
    records: dict[str, list[dict]],
    names: list[str],
    output: Path,
    teacher: str,
    pair_set: str = "all",
) -> None:
    from compressai_vlic.judges.dataset import PairInputs, build_preference_dataset
    from compressai_vlic.judges.spec import JudgeSpec

    pairs = []
    for name in names:
        for rec in records[name]:
            for ra, rb in itertools.combinations(rec["recons"], 2):
                if not keep_pair(ra, rb, pair_set):
                    continue
                pid = f"{Path(ra['path']).stem}|{Path(rb['path']).stem}"
                pairs.append(
                    PairInputs(pid, Path(rec["reference"]), Path(ra["path"]), Path(rb["path"]))
                )
    judge = JudgeSpec(backend=teacher).build()
    judge.metric = _Memo(judge.metric)
    config = {"judge": teacher, "judge_type": teacher, "judge_args": {}}
    summary = build_preference_dataset(pairs, judge, output, config, concurrency=1, progress=False)
    print(f"{output.name}: {summary.line()}")


def pair_kind(pair_id: str) -> str:
    """ "two VLIC decodes of one stream" or "<codec> vs <codec>" from a pair id of make_data."""
    a, b = (x.split(".")[1].rstrip("0123456789").split("-")[0] for x in pair_id.split("|"))
    return "two VLIC decodes of one stream" if a == b == "vlic" else " vs ".join(sorted([a, b]))


def by_kind(student: Path, test_file: Path, baselines: list[str]) -> dict:
    """Agreement per kind of pair (the student and the baselines)."""
    from compressai_vlic.student.evaluate import evaluate_pairs
    from compressai_vlic.student.model import load_student
    from compressai_vlic.student.teacher import read_teacher_pairs
    from compressai_vlic.student.train import ImageStore

    pairs = read_teacher_pairs(test_file).pairs
    groups: dict[str, list] = {}
    for p in pairs:
        groups.setdefault(pair_kind(p.pair_id), []).append(p)
    store, out = ImageStore(), {}
    model = load_student(student)
    for kind, group in sorted(groups.items()):
        rep = evaluate_pairs(model, group, baselines, store)
        out[kind] = rep.to_dict()
        print(f"{kind} ({len(group)} pairs):")
        print("\n".join("  " + line for line in rep.lines()))
    return out


def reliability_experiment(
    train_file: Path, test_file: Path, seeds: int, rate: float, share: float
) -> dict:
    from compressai_vlic.judges.types import Choice
    from compressai_vlic.student.evaluate import evaluate_pairs
    from compressai_vlic.student.reliability import reliability
    from compressai_vlic.student.teacher import TeacherData, read_teacher_pairs
    from compressai_vlic.student.train import ImageStore, train_student

    store = ImageStore()
    test = read_teacher_pairs(test_file).pairs
    rows = []
    for seed in range(seeds):
        train = read_teacher_pairs(train_file).pairs
        weights = reliability(train)
        order = np.argsort(weights)
        low = [i for i in order[: int(share * len(train))] if train[i].label is not Choice.ABSTAIN]
        rng = random.Random(seed)
        flipped = 0
        for i in low:
            if rng.random() < rate:
                p = train[i]
                p.label, p.score = p.label.flipped(), -p.score
                p.prob_a = None if p.prob_a is None else 1 - p.prob_a
                p.votes = [
                    type(v)(**{**v.__dict__, "choice": v.choice.flipped(), "score": -v.score})
                    for v in p.votes
                ]
                flipped += 1
        row = {"seed": seed, "flipped": flipped, "pairs": len(train)}
        for rtype in ("all", "uniform"):
            result = train_student(
                TeacherData(train, []),
                reliability_type=rtype,
                point_weight=0.0,
                store=store,
                seed=seed,
            )
            rep = evaluate_pairs(result.model, test, baselines=(), store=store)
            row[rtype] = rep.results[0].rate
        rows.append(row)
        print(
            f"corruption seed {seed}: flipped {flipped} of {len(train)} labels; held-out agreement "
            f"weighted {100 * row['all']:.1f}%, uniform {100 * row['uniform']:.1f}%"
        )
    return {"rate": rate, "share": share, "runs": rows}


def main(argv: list[str] | None = None) -> int:
    from compressai_vlic.cli.main import main as cli
    from compressai_vlic.metrics import get_metric
    from compressai_vlic.student.opinions import Opinion, write_opinions

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/student-distill"))
    parser.add_argument("--tile", type=int, default=128)
    parser.add_argument(
        "--teachers",
        nargs="+",
        default=["lpips"],
        choices=["lpips", "ssimulacra2"],
        help="teacher judges to distil (ssimulacra2 is slow: about 0.1 s per image)",
    )
    parser.add_argument("--tiles-per-image", type=int, default=2)
    parser.add_argument(
        "--pair-set",
        choices=["all", "hard"],
        default="all",
        help="all: every JPEG/WebP pair of a tile; hard: codecs at matched rates (JPEG, WebP, "
        "AVIF, the shipped VLIC) and two decodes of one VLIC bitstream",
    )
    parser.add_argument(
        "--skip-extras",
        action="store_true",
        help="only the agreement figures (no calibration and reliability experiments)",
    )
    parser.add_argument("--holdout-every", type=int, default=3, help="every N-th photo is held out")
    parser.add_argument("--corruption-rate", type=float, default=0.6)
    parser.add_argument("--corruption-share", type=float, default=0.4)
    parser.add_argument("--corruption-seeds", type=int, default=3)
    parser.add_argument(
        "--fit-count", type=int, default=24, help="labelled images the calibration is fitted on"
    )
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    work = args.workdir
    work.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    records = make_data(work, args.tile, args.tiles_per_image, args.pair_set)
    names = sorted(records)
    held = names[:: args.holdout_every]
    train_names = [n for n in names if n not in held]
    print(
        f"{len(names)} photos, {sum(len(v) for v in records.values())} tiles of {args.tile}px, "
        f"{len(next(iter(records.values()))[0]['recons'])} reconstructions each; held-out photos: {', '.join(held)}"
    )
    for teacher in args.teachers:
        train_file, test_file = work / f"train-{teacher}.jsonl", work / f"heldout-{teacher}.jsonl"
        judge_pairs(records, train_names, train_file, teacher, args.pair_set)
        judge_pairs(records, held, test_file, teacher, args.pair_set)
        print(f"data and {teacher} judgments: {time.perf_counter() - t0:.0f}s")
        student = work / f"student-{teacher}"
        cli(
            [
                "student",
                "train",
                "--pairs",
                str(train_file),
                "--output",
                str(student),
                "--overwrite",
            ]
        )
        baselines = ["psnr", "ms_ssim", *(["lpips"] if teacher != "lpips" else [])]
        argv = ["student", "eval", "--student", str(student), "--pairs", str(test_file)]
        argv += [f"--baseline={b}" for b in baselines]
        cli([*argv, "--json", str(work / f"eval-{teacher}.json")])
        if args.pair_set == "hard":
            kinds = by_kind(student, test_file, baselines)
            (work / f"eval-{teacher}-by-kind.json").write_text(json.dumps(kinds, indent=2))
    if args.skip_extras:
        print(f"total {time.perf_counter() - t0:.0f}s")
        return 0
    train_file, test_file = work / "train-lpips.jsonl", work / "heldout-lpips.jsonl"
    student = work / "student-lpips"

    # calibration to SSIMULACRA 2 (stand-in for opinion scores): fit on a few training-photo
    # reconstructions, score the held-out photos' reconstructions
    ssim2 = get_metric("ssimulacra2")
    from compressai_vlic.image_io import load_image

    def opinions(names_: list[str]) -> list[Opinion]:
        out = []
        for n in names_:
            for rec in records[n]:
                ref = load_image(rec["reference"]).tensor[None]
                for r in rec["recons"]:
                    v = float(ssim2(ref, load_image(r["path"]).tensor[None]).reshape(-1)[0])
                    out.append(Opinion(rec["reference"], r["path"], v))
        return out

    rng = random.Random(0)
    fit_pool = opinions(train_names)
    fit_rows = rng.sample(fit_pool, args.fit_count)
    held_rows = opinions(held)
    write_opinions(fit_rows + held_rows, work / "opinions.jsonl", overwrite=True)
    cli(
        [
            "student",
            "eval",
            "--student",
            str(student),
            "--opinions",
            str(work / "opinions.jsonl"),
            "--fit-count",
            str(args.fit_count),
            "--json",
            str(work / "calibration.json"),
        ]
    )
    from compressai_vlic.student.calibration import correlations, fit_calibration

    context = {}
    for mname in ("psnr", "lpips"):
        metric = get_metric(mname)

        def vals(rows, metric=metric):
            v = [
                float(
                    metric(
                        load_image(o.reference).tensor[None], load_image(o.image).tensor[None]
                    ).reshape(-1)[0]
                )
                for o in rows
            ]
            return np.asarray(v) * (1 if metric.higher_is_better else -1)

        cal = fit_calibration(vals(fit_rows), [o.opinion for o in fit_rows])
        srcc, plcc = correlations(vals(held_rows), [o.opinion for o in held_rows], cal)
        context[mname] = {"srcc": srcc, "plcc": plcc}
        print(
            f"for context, {mname} calibrated the same way: SRCC {srcc:.3f}, PLCC {plcc:.3f} on {len(held_rows)} images"
        )

    rel = reliability_experiment(
        train_file, test_file, args.corruption_seeds, args.corruption_rate, args.corruption_share
    )
    (work / "reliability.json").write_text(json.dumps(rel, indent=2))
    (work / "context.json").write_text(json.dumps(context, indent=2))
    print(f"total {time.perf_counter() - t0:.0f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
