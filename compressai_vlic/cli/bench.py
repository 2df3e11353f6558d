"""`compressai-vlic bench`: per-image codec timings, real vs model bits, and peak memory.

Timings come from the model's public typed methods, called the way ``compress``/``decompress``
call them: ``encode_image`` (encoder network + FSQ), ``TokenCoder.encode`` (prior + rANS),
``TokenCoder.decode`` (rANS + prior, step by step), ``decode_codes`` (the sampler's steps). The
end-to-end ``compress``/``decompress`` are timed too, and the component path is checked to give
the same tokens and image. Peak memory is the process's ``ru_maxrss`` high-water mark, measured
in a fresh subprocess per run (``--isolation process``) so that nothing else inflates it; on a GPU
it is ``torch.cuda.max_memory_allocated`` per image.

The prior's coding step is also timed on its own (``--prior-tiles``), next to its float64
matrix-product bound and the transformers reference step
(:func:`compressai_vlic.evaluation.prior_timing.time_prior_step`), either for the model's own prior or,
with ``--prior-size paper``, for a prior of the paper's shape (random weights: timing does not
depend on them) without loading or running the rest of the codec.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from compressai_vlic.cli._codec import (
    add_model_arguments,
    add_threads_argument,
    apply_threads,
    load_model,
    weights_of,
)
from compressai_vlic.errors import VLICError
from compressai_vlic.evaluation.codec_bench import (
    DEFAULT_PHOTOS,
    BenchReport,
    ImageBench,
    _cpu_name,
    _load_inputs,
    _maxrss_mib,
    bench_image,
    bench_prior,
    paper_prior,
)

#: Exit status of a typed error (main prints it): 1, as for a failed input.
ERROR_STATUS = 1


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_model_arguments(parser, required=False)
    parser.add_argument(
        "--images",
        nargs="+",
        type=Path,
        default=None,
        help=f"image files/folders (default: scikit-image photos {', '.join(DEFAULT_PHOTOS)})",
    )
    parser.add_argument("--seed", type=int, default=None, help="decode seed (default: config's)")
    add_threads_argument(parser)
    parser.add_argument(
        "--repeat", type=int, default=1, help="time each step N times and keep the fastest"
    )
    parser.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda")
    parser.add_argument(
        "--isolation",
        choices=("process", "inline"),
        default="process",
        help="process: measure in a fresh subprocess so peak RSS is this run's alone",
    )
    parser.add_argument(
        "--prior-tiles",
        nargs="*",
        type=int,
        default=[1, 12],
        help="time the prior's coding step for these tile counts (default: 1 12; none: skip)",
    )
    parser.add_argument(
        "--prior-size",
        choices=("model", "paper"),
        default="model",
        help="prior to time: the model's own, or one of the paper's shape (quality 1)",
    )
    parser.add_argument(
        "--prior-digits",
        choices=("factorized", "causal"),
        default=None,
        help="with --prior-size paper: intra-token digits of that prior (default: factorized)",
    )
    parser.add_argument(
        "--prior-only", action="store_true", help="time the prior step only, no images"
    )
    parser.add_argument("--json", type=Path, default=None, help="also write the report as JSON")
    parser.add_argument("--worker-json", type=Path, default=None, help=argparse.SUPPRESS)


def run_inline(args: argparse.Namespace) -> BenchReport:
    """Measure in this process (the subprocess of ``--isolation process``)."""
    import torch

    apply_threads(args.threads)
    if args.prior_only:
        return run_prior_only(args)
    inputs = _load_inputs(args.images)
    # Import the model's modules first, so the RSS delta below is the model's own.
    import compressai_vlic.models.vlic
    import compressai_vlic.zoo  # noqa: F401

    rss_before = _maxrss_mib()
    model = _model(args)
    model = model.to(args.device)
    rss_after = _maxrss_mib()
    device = torch.device(args.device)
    report = BenchReport(
        model=model.config.name,
        config_hash=model.config.config_hash().hex(),
        parameters=sum(p.numel() for p in model.parameters()),
        num_steps=model.sampler_settings(args.seed).num_steps,
        guidance_scale=model.sampler_settings(args.seed).guidance_scale,
        evaluations_per_tile=model.stream_settings(args.seed).sampler().num_evaluations(),
        device=str(device),
        threads=torch.get_num_threads(),
        repeat=args.repeat,
        torch_version=torch.__version__,
        cpu=_cpu_name(),
        load_average=os.getloadavg()[0],
        memory_type="cuda max_memory_allocated per image"
        if device.type == "cuda"
        else "process peak RSS (ru_maxrss high-water mark) after the image",
        rss_before_model_mib=rss_before,
        rss_after_model_mib=rss_after,
    )
    # Warm-up on a small crop: first calls pay one-off costs (allocator, scheduler set-up).
    bench_image(model, "warm-up", inputs[0][1][..., :48, :48], args.seed)
    for name, x in inputs:
        report.images.append(bench_image(model, name, x, args.seed, args.repeat))
    if args.prior_tiles:
        prior = model.prior if args.prior_size == "model" else paper_prior(args.prior_digits)
        report.prior_steps = bench_prior(prior, args.prior_tiles, args.repeat, args.device)
    return report


def _model(args: argparse.Namespace) -> Any:
    """The benchmarked model: ``--weights`` (or an alias), else the random test model."""
    spec = weights_of(args.weights, args.checkpoint, args.quality)
    return load_model(weights=spec or weights_of(quality="test"))


def run_prior_only(args: argparse.Namespace) -> BenchReport:
    """``--prior-only``: the prior step and its bound, no codec run."""
    import torch

    if args.prior_size == "paper":
        prior, name, config_hash = paper_prior(args.prior_digits or "factorized"), "paper", ""
    else:
        model = _model(args)
        prior, name = model.prior, model.config.name
        config_hash = model.config.config_hash().hex()
    rss = _maxrss_mib()
    return BenchReport(
        model=f"{name} prior",
        config_hash=config_hash,
        parameters=sum(p.numel() for p in prior.parameters()),
        num_steps=0,
        guidance_scale=0.0,
        evaluations_per_tile=0,
        device=args.device,
        threads=torch.get_num_threads(),
        repeat=args.repeat,
        torch_version=torch.__version__,
        cpu=_cpu_name(),
        load_average=os.getloadavg()[0],
        memory_type="process peak RSS",
        rss_before_model_mib=rss,
        rss_after_model_mib=rss,
        prior_steps=bench_prior(prior, args.prior_tiles or [1], args.repeat, args.device),
    )


def run_subprocess(argv: Sequence[str]) -> BenchReport:
    """Re-run this command in a fresh interpreter and read its report back."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "report.json"
        cmd = [sys.executable, "-m", "compressai_vlic.cli.main", "bench", *argv]
        cmd += ["--isolation", "inline", "--worker-json", str(out)]
        proc = subprocess.run(cmd, stdout=subprocess.DEVNULL, env=os.environ.copy())
        if proc.returncode != 0 or not out.is_file():
            raise VLICError(f"benchmark subprocess failed (exit {proc.returncode})")
        data = json.loads(out.read_text())
    from compressai_vlic.evaluation.prior_timing import PriorStepTiming

    images = [ImageBench(**item) for item in data.pop("images")]
    steps = [PriorStepTiming(**item) for item in data.pop("prior_steps", [])]
    return BenchReport(**data, images=images, prior_steps=steps)


def format_report(report: BenchReport) -> str:
    """A plain-text table, one row per image, then the totals."""
    head = (
        f"model {report.model} (config {report.config_hash}, {report.parameters:,} parameters), "
        f"{report.num_steps} sampler steps, CFG {report.guidance_scale:g}, "
        f"{report.evaluations_per_tile} network evaluations per tile\n"
        f"device {report.device}, {report.threads} thread(s), best of {report.repeat}, "
        f"torch {report.torch_version}, "
        f"CPU {report.cpu} (load average {report.load_average:.1f})\n"
        f"RSS before model {report.rss_before_model_mib:.0f} MiB, after loading it "
        f"{report.rss_after_model_mib:.0f} MiB; memory column: {report.memory_type}\n"
    )
    columns = [
        ("image", "{:<14}", lambda r: Path(r.name).name[:14]),
        ("size", "{:>9}", lambda r: f"{r.width}x{r.height}"),
        ("tiles", "{:>5}", lambda r: r.tiles),
        ("compress", "{:>8.1f}", lambda r: r.compress_ms),
        ("enc-net", "{:>7.1f}", lambda r: r.encoder_ms),
        ("prior+rANS", "{:>10.1f}", lambda r: r.entropy_encode_ms),
        ("decompress", "{:>10.1f}", lambda r: r.decompress_ms),
        ("rANS+prior", "{:>10.1f}", lambda r: r.entropy_decode_ms),
        ("sampler", "{:>8.1f}", lambda r: r.sampler_ms),
        ("/step", "{:>7.1f}", lambda r: r.sampler_step_ms),
        ("bytes", "{:>7}", lambda r: r.stream_bytes),
        ("bpp", "{:>7.4f}", lambda r: r.bpp),
        ("real/xent", "{:>9.4f}", lambda r: r.real_over_cross_entropy),
        ("payload/xent", "{:>12.4f}", lambda r: r.payload_over_cross_entropy),
        ("peak MiB", "{:>8.0f}", lambda r: r.peak_memory_mib),
    ]
    widths = [
        len(fmt.format(get(report.images[0]))) if report.images else 8 for _, fmt, get in columns
    ]
    lines = [
        "  ".join(
            name.rjust(w) if i else name.ljust(w)
            for i, ((name, _, _), w) in enumerate(zip(columns, widths))
        )
    ]
    for r in report.images:
        lines.append("  ".join(fmt.format(get(r)) for _, fmt, get in columns))
    if not report.images:
        lines = []
    notes = []
    if report.images:
        real = sum(r.real_bits for r in report.images)
        xent = sum(r.cross_entropy_bits for r in report.images)
        pixels = sum(r.height * r.width for r in report.images)
        notes.append(
            f"total: {real} real bits / {xent:.0f} cross-entropy bits = {real / xent:.4f}; "
            f"{real / pixels:.4f} bpp"
        )
    for t in report.prior_steps:
        reference = f"; transformers step {t.reference_ms:.1f} ms" if t.reference_ms else ""
        notes.append(
            f"prior step ({t.parameters:,}-parameter {t.digits} prior, width {t.width}, "
            f"depth {t.depth}, {t.device}, position {t.position}): {t.tiles} tile(s) "
            f"{t.step_ms:.2f} ms per token step, bound {t.bound_ms:.2f} ms "
            f"(float64 weight products alone) = {t.step_over_bound:.2f}x; roofline "
            f"{t.roofline_ms:.2f} ms (weights and KV cache at {t.bandwidth_gb_s:.1f} GB/s, FLOPs "
            f"at {t.peak_gflop_s:.1f} GFLOP/s, both measured now) = {t.step_over_roofline:.2f}x"
            f"{reference}"
        )
    bad = [r.name for r in report.images if not r.component_path_matches]
    if bad:
        notes.append(f"WARNING: component path differs from compress/decompress for {bad}")
    notes.append(
        "times in ms (wall clock): compress = enc-net + prior+rANS (+ container); "
        "decompress = rANS+prior + sampler; /step = sampler / steps"
    )
    return head + "\n".join(lines + notes)


def _child_argv(args: argparse.Namespace) -> list[str]:
    """The measurement options, as arguments for the subprocess."""
    argv: list[str] = []
    spec = weights_of(args.weights, args.checkpoint, args.quality)
    if spec is not None:
        argv += ["--weights", spec]
    if args.images:
        argv += ["--images", *map(str, args.images)]
    for name in ("seed", "threads", "repeat"):
        if getattr(args, name) is not None:
            argv += [f"--{name}", str(getattr(args, name))]
    argv += ["--prior-tiles", *map(str, args.prior_tiles), "--prior-size", args.prior_size]
    if args.prior_digits is not None:
        argv += ["--prior-digits", args.prior_digits]
    if args.prior_only:
        argv.append("--prior-only")
    return [*argv, "--device", args.device]


def run(args: argparse.Namespace) -> int:
    if args.isolation == "process" and args.worker_json is None:
        report = run_subprocess(_child_argv(args))
    else:
        report = run_inline(args)
    from compressai_vlic.atomic import atomic_write_text

    payload = json.dumps(asdict(report), indent=2)
    if args.worker_json is not None:
        atomic_write_text(args.worker_json, payload)
        return 0
    if args.json is not None:
        atomic_write_text(args.json, payload)
    print(format_report(report))
    return 0
