"""`compressai-vlic bench`: per-image codec timings, real vs model bits, and peak memory.

Timings come from the model's public typed methods, called the way ``compress``/``decompress``
call them: ``encode_image`` (encoder network + FSQ), ``TokenCoder.encode`` (prior + rANS),
``TokenCoder.decode`` (rANS + prior, step by step), ``decode_codes`` (the sampler's steps). The
end-to-end ``compress``/``decompress`` are timed too, and the component path is checked to give
the same tokens and image. Peak memory is the process's ``ru_maxrss`` high-water mark, measured
in a fresh subprocess per run (``--isolation process``) so that nothing else inflates it; on a GPU
it is ``torch.cuda.max_memory_allocated`` per image.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from compressai_vlic.cli._codec import (
    add_model_arguments,
    add_threads_argument,
    apply_threads,
    load_model,
)
from compressai_vlic.errors import VLICError

DEFAULT_PHOTOS = ("astronaut", "chelsea", "coffee", "rocket")  # scikit-image, shipped offline
T = TypeVar("T")


@dataclass
class ImageBench:
    """Measurements for one image (times in milliseconds, memory in MiB)."""

    name: str
    height: int
    width: int
    tiles: int
    compress_ms: float
    decompress_ms: float
    encoder_ms: float
    entropy_encode_ms: float
    entropy_decode_ms: float
    sampler_ms: float
    sampler_step_ms: float
    stream_bytes: int
    payload_bytes: int
    real_bits: int
    cross_entropy_bits: float
    coder_estimate_bits: float
    bits_before_entropy_coding: float
    bpp: float
    real_over_cross_entropy: float
    payload_over_cross_entropy: float
    component_path_matches: bool
    peak_memory_mib: float


@dataclass
class BenchReport:
    """One benchmark run: the environment, the model and per-image results."""

    model: str
    config_hash: str
    parameters: int
    num_steps: int
    guidance_scale: float
    device: str
    threads: int
    repeat: int
    torch_version: str
    cpu: str
    load_average: float
    memory_type: str
    rss_before_model_mib: float
    rss_after_model_mib: float
    images: list[ImageBench] = field(default_factory=list)


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
    parser.add_argument("--json", type=Path, default=None, help="also write the report as JSON")
    parser.add_argument("--worker-json", type=Path, default=None, help=argparse.SUPPRESS)


def _maxrss_mib() -> float:
    # Linux reports KiB, macOS bytes.
    scale = 1 / 1024 if sys.platform != "darwin" else 1 / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _load_inputs(images: Sequence[Path] | None) -> list[tuple[str, Any]]:
    """(name, (1, 3, H, W) tensor) pairs; conversions are reported on stderr."""
    import numpy as np
    import torch

    from compressai_vlic.image_io import find_images, load_image

    if not images:
        import skimage.data

        out = []
        for name in DEFAULT_PHOTOS:
            arr = np.ascontiguousarray(getattr(skimage.data, name)()[..., :3])
            out.append((name, torch.from_numpy(arr).permute(2, 0, 1)[None].float() / 255))
        return out
    out = []
    for root in images:
        for path in find_images(root):
            loaded = load_image(path)
            if loaded.conversions:
                print(f"notice: {path}: {'; '.join(loaded.conversions)}", file=sys.stderr)
            out.append((str(path), loaded.tensor[None]))
    return out


def bench_image(model: Any, name: str, x: Any, seed: int | None, repeat: int = 1) -> ImageBench:
    """Time one image through the end-to-end and the component paths (best of ``repeat``)."""
    import torch

    from compressai_vlic.image_io import to_uint8

    device = model._config_json.device
    cuda = device.type == "cuda"

    def timed(fn: Callable[[], T]) -> tuple[T, float]:
        best = float("inf")
        for _ in range(max(1, repeat)):
            if cuda:
                torch.cuda.synchronize(device)
            start = time.perf_counter()
            result = fn()
            if cuda:
                torch.cuda.synchronize(device)
            best = min(best, time.perf_counter() - start)
        return result, best * 1000

    if cuda:
        torch.cuda.reset_peak_memory_stats(device)
    x = x.to(device)
    settings = model.sampler_settings(seed)
    with torch.no_grad():
        out, compress_ms = timed(lambda: model.compress(x, seed=seed))
        stream = b"".join(out["strings"][0])
        dec, decompress_ms = timed(lambda: model.decompress(out["strings"], out["shape"]))
        (layout, enc), encoder_ms = timed(lambda: model.encode_image(x))
        indices = enc.indices.cpu()
        coder, prior, cfg = model.token_coder, model.prior, model.config
        payload, entropy_encode_ms = timed(lambda: coder.encode(indices, prior))
        decoded, entropy_decode_ms = timed(
            lambda: coder.decode(payload, prior, batch=layout.num_tiles, num_tokens=cfg.num_tokens)
        )
        image, sampler_ms = timed(
            lambda: model.decode_codes(
                decoded,
                seed=settings.seed,
                num_steps=settings.num_steps,
                guidance_scale=settings.guidance_scale,
                time_shift=settings.time_shift,
                layout=layout,
            )
        )
        xent = float(prior.nll_bits(enc.indices).double().sum())
        estimate = float(coder.estimate_bits(indices, prior))
    matches = torch.equal(decoded, indices) and torch.equal(
        to_uint8(image.cpu()), to_uint8(dec["x_hat"].cpu())
    )
    pixels = int(x.shape[-2]) * int(x.shape[-1])
    memory = torch.cuda.max_memory_allocated(device) / 2**20 if cuda else _maxrss_mib()
    return ImageBench(
        name=name,
        height=int(x.shape[-2]),
        width=int(x.shape[-1]),
        tiles=layout.num_tiles,
        compress_ms=compress_ms,
        decompress_ms=decompress_ms,
        encoder_ms=encoder_ms,
        entropy_encode_ms=entropy_encode_ms,
        entropy_decode_ms=entropy_decode_ms,
        sampler_ms=sampler_ms,
        sampler_step_ms=sampler_ms / settings.num_steps,
        stream_bytes=len(stream),
        payload_bytes=len(payload),
        real_bits=8 * len(stream),
        cross_entropy_bits=xent,
        coder_estimate_bits=estimate,
        bits_before_entropy_coding=layout.num_tiles * cfg.num_tokens * cfg.bits_per_token,
        bpp=8 * len(stream) / pixels,
        real_over_cross_entropy=8 * len(stream) / xent,
        payload_over_cross_entropy=8 * len(payload) / xent,
        component_path_matches=matches,
        peak_memory_mib=memory,
    )


def run_inline(args: argparse.Namespace) -> BenchReport:
    """Measure in this process (the subprocess of ``--isolation process``)."""
    import torch

    apply_threads(args.threads)
    inputs = _load_inputs(args.images)
    # Import the model's modules first, so the RSS delta below is the model's own.
    import compressai_vlic.models.vlic
    import compressai_vlic.zoo  # noqa: F401

    rss_before = _maxrss_mib()
    quality = args.quality if args.checkpoint is None and args.quality else None
    model = load_model(args.checkpoint, quality or ("test" if args.checkpoint is None else None))
    model = model.to(args.device)
    rss_after = _maxrss_mib()
    device = torch.device(args.device)
    report = BenchReport(
        model=model.config.name,
        config_hash=model.config.config_hash().hex(),
        parameters=sum(p.numel() for p in model.parameters()),
        num_steps=model.sampler_settings(args.seed).num_steps,
        guidance_scale=model.sampler_settings(args.seed).guidance_scale,
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
    return report


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
    images = [ImageBench(**item) for item in data.pop("images")]
    return BenchReport(**data, images=images)


def format_report(report: BenchReport) -> str:
    """A plain-text table, one row per image, then the totals."""
    head = (
        f"model {report.model} (config {report.config_hash}, {report.parameters:,} parameters), "
        f"{report.num_steps} sampler steps, CFG {report.guidance_scale:g}\n"
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
    notes = []
    if report.images:
        real = sum(r.real_bits for r in report.images)
        xent = sum(r.cross_entropy_bits for r in report.images)
        pixels = sum(r.height * r.width for r in report.images)
        notes.append(
            f"total: {real} real bits / {xent:.0f} cross-entropy bits = {real / xent:.4f}; "
            f"{real / pixels:.4f} bpp"
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
    if args.checkpoint is not None:
        argv += ["--checkpoint", str(args.checkpoint)]
    if args.quality is not None:
        argv += ["--quality", str(args.quality)]
    if args.images:
        argv += ["--images", *map(str, args.images)]
    for name in ("seed", "threads", "repeat"):
        if getattr(args, name) is not None:
            argv += [f"--{name}", str(getattr(args, name))]
    return [*argv, "--device", args.device]


def run(args: argparse.Namespace) -> int:
    try:
        if args.isolation == "process" and args.worker_json is None:
            report = run_subprocess(_child_argv(args))
        else:
            report = run_inline(args)
    except VLICError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    from compressai_vlic.atomic import atomic_write_text

    payload = json.dumps(asdict(report), indent=2)
    if args.worker_json is not None:
        atomic_write_text(args.worker_json, payload)
        return 0
    if args.json is not None:
        atomic_write_text(args.json, payload)
    print(format_report(report))
    return 0
