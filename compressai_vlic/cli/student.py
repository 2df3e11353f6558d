"""`compressai-vlic student train | eval`: distil a judge into a fast student, then measure it.

    compressai-vlic student train --pairs prefs.jsonl --output student/ [--points ratings.jsonl]
        [--opinions mos.jsonl]
    compressai-vlic student eval --student student/ --pairs heldout.jsonl [--baseline psnr]
        [--opinions mos.jsonl [--fit-count 20]]

The student then judges like any other judge (``--judge-type student --judge-arg path=student/``)
and is a training loss (``perceptual_type: student``).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from compressai_vlic.options import choices

ACTIONS = ("train", "eval")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from compressai_vlic.student.config import LAYER_NAMES
    from compressai_vlic.student.options import ReliabilityType

    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.description = __doc__
    sub = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    t = sub.add_parser("train", help="distil a teacher's judgments into a student")
    t.add_argument(
        "--pairs",
        type=Path,
        action="append",
        default=[],
        help="preference dataset (JSONL from `compressai-vlic judge`); repeatable",
    )
    t.add_argument(
        "--points",
        type=Path,
        action="append",
        default=[],
        help="point-wise score file (JSONL); repeatable",
    )
    t.add_argument(
        "--output", type=Path, required=True, help="folder for student.safetensors + student.json"
    )
    t.add_argument(
        "--reliability-type",
        choices=choices(ReliabilityType),
        default="all",
        help="weighting of the pair-wise loss (uniform = none)",
    )
    t.add_argument(
        "--point-weight",
        type=float,
        default=0.5,
        help="weight of the point-wise regression (0 = pairs only)",
    )
    t.add_argument(
        "--metric-points-type",
        choices=("use", "ignore"),
        default="use",
        help="use a metric teacher's own values as point-wise scores",
    )
    t.add_argument("--steps", type=int, default=None, help="default 400 (no-reference: 500)")
    t.add_argument("--lr", type=float, default=None, help="default 0.05 (no-reference: 0.003)")
    t.add_argument(
        "--layers",
        nargs="+",
        choices=LAYER_NAMES,
        default=None,
        help="compared layers (default pixel conv1 conv2 conv3)",
    )
    t.add_argument(
        "--input-pool",
        type=int,
        default=1,
        help="image pooling before the backbone (default 1; 2 is faster but misses fine detail)",
    )
    t.add_argument("--init-type", choices=("imagenet", "random"), default="imagenet")
    t.add_argument(
        "--opinions",
        type=Path,
        help="opinion scores (JSONL/CSV reference,image,opinion) to calibrate on",
    )
    t.add_argument(
        "--student-type",
        choices=("full-reference", "no-reference"),
        default="full-reference",
        help="no-reference: a LEAF-style regressor scoring one image (frozen AlexNet statistics "
        "and a trainable head; --steps default 500, --lr default 0.003)",
    )
    t.add_argument(
        "--mos",
        type=Path,
        help="no-reference student: calibrate on opinion scores, a CSV with columns image,mos",
    )
    t.add_argument("--overwrite", action="store_true", help="replace a student already in --output")
    t.add_argument("--seed", type=int, default=0)
    e = sub.add_parser(
        "eval", help="agreement with a teacher on held-out pairs; SRCC/PLCC on opinions"
    )
    e.add_argument("--student", type=Path, required=True)
    e.add_argument(
        "--pairs",
        type=Path,
        action="append",
        default=[],
        help="held-out preference dataset; repeatable",
    )
    e.add_argument(
        "--baseline",
        action="append",
        default=None,
        help="metric compared on the same pairs (default psnr); repeatable",
    )
    e.add_argument("--opinions", type=Path, help="opinion scores to report SRCC/PLCC on")
    e.add_argument(
        "--fit-count",
        type=int,
        default=0,
        help="fit the calibration on the first N opinion rows, score the rest",
    )
    e.add_argument(
        "--full-reference-student",
        type=Path,
        default=None,
        help="with a no-reference --student: also compare this full-reference student",
    )
    e.add_argument("--json", type=Path, help="also write the figures as JSON here")
    e.add_argument("--seed", type=int, default=0)


def run(args: argparse.Namespace) -> int:
    from compressai_vlic.student import workflow
    from compressai_vlic.student.config import StudentConfig

    if args.action == "train" and args.student_type == "no-reference":
        from compressai_vlic.student.noref import train_noref_from_files

        summary = train_noref_from_files(
            args.output,
            args.pairs,
            args.points,
            args.reliability_type,
            args.point_weight,
            args.steps or 500,
            args.lr or 3e-3,
            args.metric_points_type == "use",
            args.mos,
            args.overwrite,
            args.seed,
            args.init_type,
        )
        print(json.dumps(summary, indent=2))
        print(f"no-reference student written to {args.output}")
        return 0
    if args.action == "eval" and (args.student / "noref.json").is_file():
        from compressai_vlic.student.noref import evaluate_noref_files

        out = evaluate_noref_files(
            args.student, args.pairs, args.baseline or ["psnr"], args.full_reference_student
        )
        print("\n".join(out["lines"]))
        if args.json is not None:
            args.json.write_text(json.dumps(out, indent=2) + "\n")
        return 0
    if args.action == "train":
        config = StudentConfig(
            input_pool=args.input_pool,
            init_type=args.init_type,
            **({"layers": args.layers} if args.layers else {}),
        )
        config.teacher = workflow.teacher_name(args.pairs, args.points)
        result = workflow.train_from_files(
            args.output,
            args.pairs,
            args.points,
            config,
            args.reliability_type,
            args.point_weight,
            args.steps or 400,
            args.lr or 0.05,
            args.metric_points_type == "use",
            args.opinions,
            args.overwrite,
            args.seed,
        )
        print(json.dumps(result.summary, indent=2))
        print(f"student written to {args.output}")
        return 0
    lines, out = workflow.evaluate_files(
        args.student,
        args.pairs,
        args.baseline or ["psnr"],
        args.opinions,
        args.fit_count,
        args.seed,
    )
    print("\n".join(lines))
    if args.json is not None:
        args.json.write_text(json.dumps(out, indent=2) + "\n")
    return 0
