"""`compressai-vlic compare`: codecs side by side on an image folder.

    compressai-vlic compare IMAGES/ --codec vlic@test --codec jpeg --codec webp \\
        --bpp 0.2 0.4 0.8 --metrics psnr ms_ssim ssimulacra2 lpips dists \\
        --judge-type ssimulacra2 --reference-codec jpeg --output-dir compare-out/

Writes rows.jsonl / rows.csv (per image), json/<codec>.json (CompressAI format: usable with
`python -m compressai.utils.plot`), table.md, bd.md (BD-rates vs the reference codec),
rate_quality.png and crops.png. Reruns reuse cached codec runs and metric values.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from compressai_vlic.cli._args import key_value
from compressai_vlic.errors import ConfigError
from compressai_vlic.judges.spec import JudgeSpec

DEFAULT_CODECS = ["jpeg", "webp"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from compressai_vlic.evaluation.options import DEFAULT_DISTRIBUTION_METRICS, DEFAULT_METRICS

    parser.add_argument("images", type=Path, help="folder of images (or one image file)")
    parser.add_argument(
        "--codec",
        action="append",
        dest="codecs",
        metavar="SPEC",
        help="codec spec, repeatable, NAME=SPEC renames: jpeg, webp, avif (rate points from --bpp, "
        "or jpeg@0.2,q50), "
        "compressai:ARCH@1,2,3, compressai-ckpt:ARCH:PATH, vlic:WEIGHTS (vlic:tiny, vlic:PATH, "
        f"vlic:random:test; older: vlic@test, vlic-ckpt:PATH), folder:PATH (reconstructions + rates), hub:REPO@ENTRY,...  (default: {' '.join(DEFAULT_CODECS)})",
    )
    parser.add_argument(
        "--bpp",
        type=float,
        nargs="+",
        default=[0.25, 0.5, 1.0],
        help="target bpps for Pillow codecs without explicit rate points (matched by quality search)",
    )
    parser.add_argument(
        "--metrics",
        nargs="*",
        default=list(DEFAULT_METRICS),
        help="full-reference metrics per image (missing weights: skipped with a notice)",
    )
    parser.add_argument(
        "--distribution-metrics",
        nargs="*",
        default=list(DEFAULT_DISTRIBUTION_METRICS),
        help="set metrics over HiFiC patches per rate point (fid, kid, fd_dino); none: omit",
    )
    parser.add_argument(
        "--metric-option",
        action="append",
        default=[],
        metavar="METRIC:KEY=VALUE",
        help="option for one metric, e.g. lpips:weights=/w/alexnet.pth fd_dino:model_path=/m",
    )
    parser.add_argument(
        "--patch-size", type=int, default=256, help="HiFiC patch size for FID/KID/FD"
    )
    JudgeSpec.add_arguments(parser)  # the win-rate's judge: none unless --judge-type is given
    parser.add_argument(
        "--reference-codec", default=None, help="codec name the win-rate and BD-rates are against"
    )
    parser.add_argument("--crop", type=int, default=None, help="centre-crop images to this size")
    parser.add_argument("--max-images", type=int, default=None, help="use the first N images")
    parser.add_argument("--device", default="cpu", help="torch device for models and metrics")
    parser.add_argument(
        "--no-progress", dest="progress", action="store_false", help="no progress bar"
    )
    parser.add_argument("--plot-type", choices=("all", "none"), default="all")
    parser.add_argument("--grid-crop", type=int, default=128, help="crop size in crops.png")
    parser.add_argument("--output-dir", "-o", type=Path, required=True)


def _metric_options(items: list[str]) -> dict[str, dict[str, Any]]:
    options: dict[str, dict[str, Any]] = {}
    for item in items:
        metric, sep, rest = item.partition(":")
        if not sep:
            raise ConfigError(f"--metric-option {item!r}: expected METRIC:KEY=VALUE")
        key, value = key_value(rest)
        options.setdefault(metric, {})[key] = value
    return options


def run(args: argparse.Namespace) -> int:
    from compressai_vlic.evaluation.codecs import make_codec
    from compressai_vlic.evaluation.compare import CompareSettings, run_comparison
    from compressai_vlic.image_io import find_images

    images = find_images(args.images)
    if args.max_images is not None:
        images = images[: args.max_images]
    if not images:
        raise ConfigError(f"no images found in {args.images}")
    codecs = [
        make_codec(spec, default_bpps=args.bpp, device=args.device)
        for spec in (args.codecs or DEFAULT_CODECS)
    ]
    reference = args.reference_codec
    if args.judge_type and reference is None:
        raise ConfigError(
            "--judge-type needs --reference-codec (the codec the win-rate is against)"
        )
    settings = CompareSettings(
        metrics=args.metrics,
        distribution_metrics=[m for m in args.distribution_metrics if m != "none"],
        metric_options=_metric_options(args.metric_option),
        patch_size=args.patch_size,
        judge=JudgeSpec.from_args(args) if args.judge_type else None,
        reference_codec=reference,
        device=args.device,
        crop=args.crop,
        progress=args.progress,
    )
    result = run_comparison(images, codecs, args.output_dir, settings)
    out = args.output_dir
    if args.plot_type == "all":
        from compressai_vlic.evaluation.plots import plot_crop_grid, plot_rate_quality

        plot_rate_quality(result, out / "rate_quality.png")
        plot_crop_grid(result, out / "crops.png", crop=args.grid_crop)
    print((out / "table.md").read_text())
    if (out / "bd.md").is_file():
        print((out / "bd.md").read_text())
    print(f"wrote {out}/ (rows.csv, json/, table.md{', plots' if args.plot_type == 'all' else ''})")
    if result.failed_images:
        print(
            f"{len(result.failed_images)} image(s) skipped (left out of every curve):",
            file=sys.stderr,
        )
        for name, reason in result.failed_images.items():
            print(f"  {name}: {reason}", file=sys.stderr)
        return 1
    return 0
