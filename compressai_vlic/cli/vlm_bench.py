"""`compressai-vlic vlm-bench`: how well a VLM understands images after each codec.

    compressai-vlic vlm-bench run --task POPE.tsv --task SEEDBench_IMG.tsv \\
        --codec jpeg --codec webp --codec vlic@test --bpp 0.1 0.2 0.4 \\
        --backend openai --model Qwen/Qwen2.5-VL-3B-Instruct \\
        --base-url http://localhost:8000/v1 --api-key-env '' --output-dir vlm-out/
    compressai-vlic vlm-bench gaps --base vlm-out/ --adapted vlm-adapted/ --output-dir gaps/

`run` writes summary.json / summary.csv / table.md (score, real bpp, n and drop from the
uncompressed ceiling per task, codec and rate point), bd.json / bd.md (BD of the task score vs
the reference codec) and rate_accuracy.png; a rerun with the same options resumes. `gaps` splits
the performance gap of each point into the information and the generalisation gap.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from compressai_vlic.cli._args import key_value

DEFAULT_CODECS = ["jpeg", "webp"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from compressai_vlic.options import choices
    from compressai_vlic.vlm.options import BackendType, ImageErrorsType, LossType, PlotType

    sub = parser.add_subparsers(dest="vlm_command", metavar="{run,gaps}", required=True)
    run = sub.add_parser("run", help="answer every task on original and coded images; score")
    run.add_argument(
        "--task",
        action="append",
        dest="tasks",
        required=True,
        metavar="[NAME=]PATH[@TYPE]",
        help="task file, repeatable: VLMEvalKit TSV (POPE, SEEDBench, MMBench, MME) or "
        "JSONL/CSV with image paths; TYPE: yes_no, multiple_choice, short_answer, ocr, caption "
        "(default: inferred)",
    )
    run.add_argument(
        "--codec",
        action="append",
        dest="codecs",
        metavar="SPEC",
        help="codec spec as in `compare`, repeatable: jpeg, webp, avif, jpeg@0.2,q50, "
        "compressai:ARCH@1,2,3, compressai-ckpt:ARCH:PATH, vlic:WEIGHTS (vlic:tiny, vlic:PATH, "
        f"vlic:random:test; older: vlic@test, vlic-ckpt:PATH), folder:PATH (reconstructions + rates), hub:REPO@ENTRY,...  (default: {' '.join(DEFAULT_CODECS)}); the uncompressed images are "
        "always the ceiling",
    )
    run.add_argument(
        "--bpp",
        type=float,
        nargs="+",
        default=[0.1, 0.25, 0.5],
        help="target bpps of Pillow codecs without explicit rate points",
    )
    run.add_argument("--reference-codec", default=None, help="BD anchor (default: first codec)")
    run.add_argument("--backend", choices=choices(BackendType), default="openai")
    run.add_argument("--model", required=True, help="served model name, or HF folder / hub id")
    run.add_argument("--base-url", default=None, help="OpenAI-compatible /v1 URL (openai)")
    run.add_argument(
        "--api-key-env",
        default="OPENAI_API_KEY",
        help="environment variable holding the API key ('' for a local server without one)",
    )
    run.add_argument("--concurrency", type=int, default=8, help="requests in flight (openai)")
    run.add_argument("--timeout-s", type=float, default=120.0, help="per request (openai)")
    run.add_argument("--max-attempts", type=int, default=4, help="per question (openai)")
    run.add_argument("--max-tokens", type=int, default=None, help="answer token limit")
    run.add_argument("--device", default="cpu", help="torch device of the HF model and codecs")
    run.add_argument("--dtype", default="auto", help="HF model dtype")
    run.add_argument("--batch-size", type=int, default=4, help="images per generation (hf)")
    run.add_argument(
        "--adaptor", default=None, help="codec-conditioned adapter file for the HF model"
    )
    run.add_argument(
        "--answerer-option",
        action="append",
        default=[],
        type=key_value,
        metavar="KEY=VALUE",
        help="any other answerer option (e.g. temperature=0.2, seed=1, local_files_only=true)",
    )
    run.add_argument(
        "--yes-no-metric",
        choices=("accuracy", "pope_f1", "mme"),
        default=None,
        help="default: pope_f1 for a task named POPE*, mme for MME*, else accuracy",
    )
    run.add_argument(
        "--short-answer-metric",
        choices=("vqa_accuracy", "exact_match", "ocrbench"),
        default=None,
        help="default: ocrbench for a task named OCRBench*, else vqa_accuracy",
    )
    run.add_argument(
        "--ocr-metric",
        choices=("anls", "exact_match", "ocrbench"),
        default=None,
        help="default: ocrbench for a task named OCRBench*, else anls",
    )
    run.add_argument(
        "--cache",
        type=Path,
        default=None,
        help="answer cache (SQLite; default OUTPUT_DIR/answers-cache.sqlite)",
    )
    run.add_argument("--cache-type", choices=("sqlite", "none"), default="sqlite")
    run.add_argument(
        "--quality-metrics",
        nargs="*",
        default=["psnr", "lpips", "dists"],
        help="image-quality metrics per codec and rate point, correlated with the task scores "
        "(any of compare's; none: omit)",
    )
    run.add_argument(
        "--distribution-metrics",
        nargs="*",
        default=["fid"],
        help="set metrics per codec and rate point over HiFiC patches (fid, kid, fd_dino)",
    )
    run.add_argument("--patch-size", type=int, default=256, help="HiFiC patch size for FID")
    run.add_argument("--max-items", type=int, default=None, help="first N items of each task")
    run.add_argument("--max-pixels", type=int, default=None, help="pixel limit per image")
    run.add_argument(
        "--allow-outside-root",
        action="store_true",
        help="let task files name images outside their own folder (../, absolute paths); by "
        "default such a row is refused",
    )
    from compressai_vlic.cli._args import add_image_limit_arguments

    add_image_limit_arguments(run, pixels=False)
    run.add_argument("--image-errors", choices=choices(ImageErrorsType), default="raise")
    run.add_argument("--plot-type", choices=choices(PlotType), default="all")
    run.add_argument(
        "--no-progress", dest="progress", action="store_false", help="no progress bars"
    )
    run.add_argument("--output-dir", "-o", type=Path, required=True)

    gaps = sub.add_parser("gaps", help="information and generalisation gaps of an adapted VLM")
    gaps.add_argument("--base", type=Path, required=True, help="output dir of the base run")
    gaps.add_argument(
        "--adapted",
        type=Path,
        action="append",
        required=True,
        help="output dir of an adapted run, repeatable: theta* is the best run per codec and rate",
    )
    gaps.add_argument(
        "--loss-type",
        choices=choices(LossType),
        default="score",
        help="score: L = task score, gaps positive when compression costs (the paper's); "
        "error: L = 1 - score",
    )
    gaps.add_argument("--output-dir", "-o", type=Path, required=True)


def run(args: argparse.Namespace) -> int:
    if args.vlm_command == "gaps":
        return _gaps(args)
    return _run(args)


def _answerer_options(args: argparse.Namespace) -> dict:
    options = dict(args.answerer_option)
    if args.backend == "openai":
        options.setdefault("base_url", args.base_url)
        options.setdefault("api_key_env", args.api_key_env or None)
        options.setdefault("concurrency", args.concurrency)
        options.setdefault("timeout_s", args.timeout_s)
        options.setdefault("max_attempts", args.max_attempts)
        if args.max_tokens is not None:
            options.setdefault("max_tokens", args.max_tokens)
    else:
        options.setdefault("device", args.device)
        options.setdefault("dtype", args.dtype)
        options.setdefault("batch_size", args.batch_size)
        options.setdefault("adaptor", args.adaptor)
        if args.max_tokens is not None:
            options.setdefault("max_new_tokens", args.max_tokens)
    return options


def _run(args: argparse.Namespace) -> int:
    from compressai_vlic.cli._args import apply_image_limits
    from compressai_vlic.errors import ConfigError
    from compressai_vlic.evaluation.codecs import make_codec
    from compressai_vlic.vlm.answerers import CachedAnswerer, make_answerer
    from compressai_vlic.vlm.bench import BenchSettings, run_vlm_bench
    from compressai_vlic.vlm.tasks import load_task, parse_task_spec

    apply_image_limits(args)
    if args.adaptor and args.backend != "hf":
        raise ConfigError("--adaptor needs --backend hf (the adaptor changes the vision tower)")
    tasks = []
    for spec in args.tasks:
        name, path, task_type = parse_task_spec(spec)
        tasks.append(
            load_task(
                path,
                task_type,  # type: ignore[arg-type]
                name=name,
                max_items=args.max_items,
                allow_outside_root=args.allow_outside_root,
            )
        )
    codecs = [
        make_codec(spec, default_bpps=args.bpp, device=args.device)
        for spec in (args.codecs or DEFAULT_CODECS)
    ]
    answerer = make_answerer(args.backend, model=args.model, **_answerer_options(args))
    if args.cache_type == "sqlite":
        answerer = CachedAnswerer(answerer, args.cache or args.output_dir / "answers-cache.sqlite")
    settings = BenchSettings(
        reference_codec=args.reference_codec,
        metrics={
            kind: metric
            for kind, metric in (
                ("yes_no", args.yes_no_metric),
                ("short_answer", args.short_answer_metric),
                ("ocr", args.ocr_metric),
            )
            if metric is not None
        },
        max_pixels=args.max_pixels,
        image_errors=args.image_errors,
        device=args.device,
        progress=args.progress,
        plot_type=args.plot_type,
        quality_metrics=args.quality_metrics,
        distribution_metrics=args.distribution_metrics,
        patch_size=args.patch_size,
    )
    try:
        result = run_vlm_bench(tasks, codecs, answerer, args.output_dir, settings)
    finally:
        answerer.close()
    print((args.output_dir / "table.md").read_text())
    print((args.output_dir / "bd.md").read_text())
    print((args.output_dir / "quality.md").read_text())
    print(f"wrote {args.output_dir}/ (summary.json, summary.csv, table.md, bd.md, quality.md)")
    if result.failed or result.skipped_items:
        if result.failed:
            print(
                f"{result.failed} answer(s) failed; run the same command again to ask them",
                file=sys.stderr,
            )
        if result.skipped_items:
            print(
                f"{len(result.skipped_items)} item(s) skipped (see summary.json)", file=sys.stderr
            )
        return 1
    return 0


def _gaps(args: argparse.Namespace) -> int:
    from compressai_vlic.vlm.gaps import (
        bd_gaps,
        bd_gaps_table,
        gaps_from_runs,
        gaps_table,
        write_gaps,
    )

    rows, identities, runs, base = gaps_from_runs(args.base, args.adapted, args.loss_type)
    bd_rows = bd_gaps(base, runs, args.loss_type)
    write_gaps(rows, args.output_dir, args.loss_type, identities, bd_rows)
    print(f"L = {'1 - score' if args.loss_type == 'error' else 'score'}")
    print(gaps_table(rows))
    print(bd_gaps_table(bd_rows))
    print(f"wrote {args.output_dir}/ (gaps.json, gaps.csv, gaps.md)")
    return 0
