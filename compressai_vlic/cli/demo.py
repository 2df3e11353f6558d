"""`compressai-vlic demo`: the main job on a CPU, end to end (see :mod:`compressai_vlic.recipes.demo`)."""

from __future__ import annotations

import argparse

from compressai_vlic.judges.spec import JudgeSpec
from compressai_vlic.recipes.demo import INIT_TYPES, PRESETS


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "-o",
        "--output",
        default="reports/vlic-demo",
        help="report folder (default: reports/vlic-demo)",
    )
    parser.add_argument(
        "--preset",
        choices=PRESETS,
        default="full",
        help="full (at most 15 min on 2 cores) or smoke (about a minute)",
    )
    start = parser.add_mutually_exclusive_group()
    start.add_argument(
        "--init-type",
        choices=INIT_TYPES,
        default="shipped",
        help="stage 1 starts from the shipped 'tiny' weights (default: a short fine-tune) or "
        "from scratch (random weights: all of stage 1, configs/train/tiny_stage1_scratch.yaml)",
    )
    start.add_argument(
        "--from-scratch",
        dest="init_type",
        action="store_const",
        const="scratch",
        help="same as --init-type scratch",
    )
    parser.add_argument("--stage1-steps", type=int, help="override the stage-1 steps")
    parser.add_argument("--stage2-steps", type=int, help="override the post-training steps")
    parser.add_argument("--refit-steps", type=int, help="override the prior-refit steps")
    parser.add_argument(
        "--refit-type",
        choices=("auto", "always"),
        default=None,
        help="prior refit after stage 2: auto (default: only when stage 2 trained the encoder) "
        "or always",
    )
    # the judge: tiny_stage2.yaml's, or the VLM at --judge-base-url (default $COMPRESSAI_VLIC_JUDGE_BASE_URL) named by
    # --judge-model (default $COMPRESSAI_VLIC_JUDGE_MODEL)
    JudgeSpec.add_arguments(parser)
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch threads (default 1); stage 2 uses one fewer, keeping a core for the judge",
    )
    parser.add_argument(
        "--posttrain-selection",
        choices=("val_lpips", "last"),
        default=None,
        help="which post-trained codec the report compares: val_lpips (default: the checkpoint, "
        "stage 1 included, with the lowest LPIPS on the training photos) or last",
    )
    parser.add_argument("--seed", type=int, default=0)


def run(args: argparse.Namespace) -> int:
    from compressai_vlic.recipes.demo import run

    return run(args)
