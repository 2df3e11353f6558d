"""The no-reference (LEAF-style) student on the data of ``student_distill.py``, beside the
full-reference student, PSNR and the teacher, on held-out photos.

python benchmarks/student_distill.py --pair-set hard --teachers lpips --skip-extras --workdir W
python benchmarks/student_noref.py --workdir W [--teacher lpips]

1. ``compressai-vlic student train --student-type no-reference`` on W/train-<teacher>.jsonl
   (pairs with reliability weights + the teacher's own values as point-wise scores).
2. Agreement with the teacher on W/heldout-<teacher>.jsonl (photos never trained on): the
   no-reference student, the full-reference student W/student-<teacher>, PSNR and MS-SSIM, with
   Wilson intervals and paired bootstraps over reference images; per kind of pair.
3. Calibration: SSIMULACRA 2 values (a metric fitted to human opinion by its authors) stand in
   for opinion scores: the logistic is fitted on a CSV of 24 training-photo reconstructions
   (image, mos) and SRCC/PLCC are scored on the held-out photos' reconstructions, beside PSNR
   calibrated the same way.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))


def main(argv: list[str] | None = None) -> int:
    from student_distill import pair_kind

    from compressai_vlic.cli.main import main as cli
    from compressai_vlic.metrics import get_metric
    from compressai_vlic.student.calibration import correlations, fit_calibration
    from compressai_vlic.student.model import load_student
    from compressai_vlic.student.noref import (
        calibrate_noref,
        evaluate_noref_pairs,
        load_noref_student,
        noref_scores,
        read_mos_csv,
    )
    from compressai_vlic.student.teacher import read_teacher_pairs
    from compressai_vlic.student.train import ImageStore

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/student-distill"))
    parser.add_argument("--teacher", default="lpips")
    parser.add_argument("--fit-count", type=int, default=24)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    work, t0 = args.workdir, time.perf_counter()
    train_file = work / f"train-{args.teacher}.jsonl"
    test_file = work / f"heldout-{args.teacher}.jsonl"
    out = work / f"noref-{args.teacher}"
    argv_ = ["student", "train", "--student-type", "no-reference", "--pairs", str(train_file)]
    if cli([*argv_, "--output", str(out), "--overwrite"]) != 0:
        return 1
    print(f"trained in {time.perf_counter() - t0:.0f}s")
    model = load_noref_student(out)
    fr_dir = work / f"student-{args.teacher}"
    for _ in range(120):  # student_distill.py may still be training it
        if (fr_dir / "student.json").is_file():
            break
        time.sleep(10)
    fr = load_student(fr_dir)
    pairs = read_teacher_pairs(test_file).pairs
    store = ImageStore()
    report = {"all": evaluate_noref_pairs(model, pairs, ["psnr", "ms_ssim"], store, fr)}
    print(f"all held-out pairs ({report['all']['n_pairs']}):")
    print("\n".join("  " + x for x in report["all"]["lines"]))
    kinds: dict[str, list] = {}
    for p in pairs:
        try:
            kind = pair_kind(p.pair_id)
        except (IndexError, ValueError):  # pair ids not made by student_distill.py
            kind = "other"
        kinds.setdefault(kind, []).append(p)
    for kind, group in sorted(kinds.items()):
        rep = evaluate_noref_pairs(model, group, ["psnr"], store, fr)
        report[kind] = rep
        print(f"{kind} ({rep['n_pairs']} pairs):")
        print("\n".join("  " + x for x in rep["lines"][:3]))

    # calibration on an (image, mos) CSV; SSIMULACRA 2 stands in for opinion scores
    ssim2, psnr = get_metric("ssimulacra2"), get_metric("psnr")
    train_rows = read_teacher_pairs(train_file).pairs
    test_rows = pairs

    def couples(rows: list) -> list[tuple[str, str]]:
        seen = {}
        for p in rows:
            for img in (p.a, p.b):
                seen.setdefault(img, p.reference)
        return [(ref, img) for img, ref in seen.items()]

    def values(metric, cs):
        with torch.inference_mode():
            return np.array(
                [
                    float(metric(store.get(r)[None], store.get(i)[None]).reshape(-1)[0])
                    for r, i in cs
                ]
            )

    rng = random.Random(0)
    fit = rng.sample(couples(train_rows), args.fit_count)
    held = couples(test_rows)
    fit_mos, held_mos = values(ssim2, fit), values(ssim2, held)
    csv = work / "mos-standin.csv"
    csv.write_text(
        "image,mos\n" + "".join(f"{Path(i).resolve()},{m:.4f}\n" for (_, i), m in zip(fit, fit_mos))
    )
    cal = calibrate_noref(model, read_mos_csv(csv), store)
    srcc, plcc = correlations(noref_scores(model, [i for _, i in held], store), held_mos, cal)
    cal_p = fit_calibration(values(psnr, fit), fit_mos)
    srcc_p, plcc_p = correlations(values(psnr, held), held_mos, cal_p)
    report["calibration"] = {
        "n_fit": len(fit),
        "n_held": len(held),
        "noref_student": {"srcc": srcc, "plcc": plcc},
        "psnr": {"srcc": srcc_p, "plcc": plcc_p},
    }
    print(
        f"calibrated on {len(fit)} images, scored on {len(held)} held-out images: no-reference "
        f"student SRCC {srcc:.3f} PLCC {plcc:.3f}; PSNR (full-reference) SRCC {srcc_p:.3f} "
        f"PLCC {plcc_p:.3f}"
    )
    (work / f"eval-noref-{args.teacher}.json").write_text(json.dumps(report, indent=2))
    print(f"total {time.perf_counter() - t0:.0f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
