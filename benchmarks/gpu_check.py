"""One-command GPU check at paper scale; prints one JSON object.

    python benchmarks/gpu_check.py                 # on a CUDA machine: paper width and depth
    python benchmarks/gpu_check.py --dry-run       # tiny config on the CPU (automatic without CUDA)

Measured, in this order (each part is skipped, and says so, once ``--time-budget-s`` is spent):
stage-1 and stage-2 step time and peak memory at the configs' micro-batch (bf16 autocast,
gradient checkpointing as configured), model FLOP utilisation, decode time per 256x256 tile at
the config's sampler settings, prior coding time per tile on the GPU and on the CPU, and whether
a stream encoded on one device decodes to identical tokens on the other. No network, no weights:
the codec has random weights (speed and memory do not depend on them). Compare the measured peak
with ``compressai-vlic-train plan`` (``planned_peak_gib`` below when ``--plan`` is given).
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "lightning"))

# dense bf16 peak per GPU (TFLOP/s) for MFU, by a substring of the device name
PEAK_TFLOPS = {"H200": 989.0, "H100": 989.0, "A100": 312.0, "L40S": 362.0, "A10G": 125.0}


class Budget:
    def __init__(self, seconds: float) -> None:
        self.start = time.perf_counter()
        self.seconds = seconds

    @property
    def elapsed(self) -> float:
        return time.perf_counter() - self.start

    def left(self) -> bool:
        return self.elapsed < self.seconds


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def _peak_gib(device: torch.device) -> float | None:
    if device.type != "cuda":
        return None
    return torch.cuda.max_memory_allocated(device) / 2**30


def block_flops(model: Any, config: Any) -> float:
    """Forward FLOPs of one sample through all encoder and decoder blocks (matmuls only)."""
    patches = (config.image_size // config.patch_size) ** 2
    codes = config.num_tokens
    total = 0.0
    for blocks, main, context, width in (
        (model.encoder.blocks, codes, patches, config.encoder_width),
        (model.decoder.transformer.transformer_blocks, patches, codes, config.decoder_width),
    ):
        for block in blocks:
            for name, module in block.named_modules():
                if isinstance(module, torch.nn.Linear):
                    ctx = "context" in name or "add_" in name
                    total += 2.0 * (context if ctx else main) * module.weight.numel()
            n = main + context
            total += 4.0 * n * n * width  # QK^T and AV
    return total


def _images(n: int, size: int, device: torch.device, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.rand(n, 3, size, size, generator=gen).to(device)


def _time_steps(step: Any, steps: int, warmup: int, device: torch.device) -> dict[str, Any]:
    for _ in range(warmup):
        step()
    _sync(device)
    _reset_peak(device)
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    _sync(device)
    return {"step_s": (time.perf_counter() - t0) / steps, "peak_gib": _peak_gib(device)}


def stage1_check(args: Any, setup: Any, device: torch.device, autocast: Any) -> dict[str, Any]:
    from compressai_vlic_lightning.stage1 import Stage1Module

    module = Stage1Module(
        quality=args.quality,
        model_overrides=args.overrides,
        perceptual_type="lpips",
        perceptual_fallback_type="ms_ssim",
        gradient_checkpointing=setup["gradient_checkpointing"],
    ).to(device)
    module.model.train()
    opt = module.configure_optimizers()["optimizer"]
    x = _images(setup["micro_batch"], module.model.config.image_size, device)

    def step() -> None:
        with autocast():
            loss = module.compute_losses(x)["loss"]
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    out = _time_steps(step, args.steps, args.warmup, device)
    out["micro_batch"] = setup["micro_batch"]
    out["perceptual"] = module.perceptual_choice.active
    flops = 3.0 * block_flops(module.model, module.model.config) * setup["micro_batch"]
    out["model_tflop_per_step"] = flops / 1e12
    out["model"] = module.model
    return out


def stage2_check(args: Any, setup: Any, device: torch.device, autocast: Any) -> dict[str, Any]:
    from compressai_vlic_lightning.preferences import PreferenceBatch
    from compressai_vlic_lightning.stage2 import Stage2Module

    module = Stage2Module(
        quality=args.quality,
        model_overrides=args.overrides,
        dpo_batch_size=setup["dpo_batch_size"],
        gradient_checkpointing=setup["gradient_checkpointing"],
    ).to(device)
    module.model.train()
    opt = module.configure_optimizers()["optimizer"]
    size = module.model.config.image_size
    b, n = setup["micro_batch"], setup["dpo_batch_size"]
    originals = _images(b, size, device)
    cpu = torch.device("cpu")
    pairs = PreferenceBatch(
        reference=_images(n, size, cpu, seed=1),
        winner=_images(n, size, cpu, seed=2),
        loser=_images(n, size, cpu, seed=3),
        steps=torch.zeros(n, dtype=torch.long),
    )

    def step() -> None:
        with autocast():
            enc = module.model.encode(originals)
            flow = module.model.flow_matching(originals, enc.codes)
            bits = module.model.token_nll_bits(enc.indices.detach())
            out = module.criterion(*module.dpo_losses(pairs), flow=flow.loss)
            loss = out.loss + bits.float().mean() / size**2
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    out = _time_steps(step, args.steps, args.warmup, device)
    out.update(micro_batch=b, dpo_pairs=n)
    # trained passes: encoder+decoder on b originals, encoder on n, decoder on 2n (x3 for
    # backward); the reference's no-grad passes (encoder on n, decoder on 2n) count once
    model = module.model
    per_sample = block_flops(model, model.config)
    flops = 3.0 * per_sample * (b + 2 * n) + per_sample * 2 * n
    out["model_tflop_per_step"] = flops / 1e12
    return out


def decode_check(model: Any, device: torch.device) -> dict[str, Any]:
    model.eval()
    cfg = model.config
    x = _images(cfg.tile_batch, cfg.image_size, device)
    with torch.no_grad():
        indices = model.encode(x).indices
    out: dict[str, Any] = {"num_steps": cfg.num_steps, "guidance_scale": cfg.guidance_scale}
    for label, rows in (("one_tile", 1), ("tile_batch", cfg.tile_batch)):
        model.decode_codes(indices[:rows], seed=0, num_steps=1)  # warm-up
        _sync(device)
        t0 = time.perf_counter()
        model.decode_codes(indices[:rows], seed=0)
        _sync(device)
        out[f"{label}_s_per_tile"] = (time.perf_counter() - t0) / rows
    out["tile_batch"] = cfg.tile_batch
    return out


def coding_check(model: Any, device: torch.device, budget: Budget) -> dict[str, Any]:
    """Prior coding of one tile on each device, and streams crossing devices."""
    import copy

    cfg = model.config
    x = _images(1, cfg.image_size, device)
    with torch.no_grad():
        indices = model.encode(x).indices.cpu()
    priors = {"cpu": copy.deepcopy(model.prior).cpu().eval()}
    if device.type == "cuda":
        priors["cuda"] = copy.deepcopy(model.prior).to(device).eval()
    out: dict[str, Any] = {"tokens_per_tile": cfg.num_tokens}
    streams = {}
    coder = model.token_coder
    for name, prior in priors.items():
        if not budget.left():
            out[f"{name}_skipped"] = "time budget spent"
            continue
        t0 = time.perf_counter()
        streams[name] = coder.encode(indices, prior)
        out[f"{name}_encode_s_per_tile"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        back = coder.decode(streams[name], prior, batch=1, num_tokens=cfg.num_tokens)
        out[f"{name}_decode_s_per_tile"] = time.perf_counter() - t0
        out[f"{name}_roundtrip_identical"] = bool(torch.equal(back.cpu(), indices))
        out[f"{name}_bytes"] = len(streams[name])
    if "cuda" in priors and len(streams) == 2:
        out["cpu_stream_identical_to_cuda_stream"] = streams["cpu"] == streams["cuda"]
        a = coder.decode(streams["cpu"], priors["cuda"], batch=1, num_tokens=cfg.num_tokens)
        b = coder.decode(streams["cuda"], priors["cpu"], batch=1, num_tokens=cfg.num_tokens)
        out["cpu_to_cuda_tokens_identical"] = bool(torch.equal(a.cpu(), indices))
        out["cuda_to_cpu_tokens_identical"] = bool(torch.equal(b.cpu(), indices))
    elif device.type != "cuda":
        out["cross_device"] = "skipped: no CUDA device"
    return out


def _setup(config_path: Path, dry: bool) -> dict[str, Any]:
    from compressai_vlic_lightning.memory import read_setup

    if dry:
        return {"micro_batch": 2, "dpo_batch_size": 2, "gradient_checkpointing": True}
    s = read_setup(config_path)
    return {
        "micro_batch": s.micro_batch,
        "dpo_batch_size": s.dpo_batch_size or s.micro_batch,
        "gradient_checkpointing": s.gradient_checkpointing,
        "precision": s.precision,
    }


def run(args: argparse.Namespace) -> dict[str, Any]:
    cuda = torch.cuda.is_available()
    dry = args.dry_run or not cuda
    device = torch.device("cuda" if cuda and not dry else "cpu")
    budget = Budget(args.time_budget_s)
    if dry:
        args.quality, args.overrides = "test", None
        args.steps, args.warmup = 1, 0
    else:
        args.quality, args.overrides = args.quality or "1", None
    torch.backends.cuda.matmul.allow_tf32 = True

    def autocast() -> Any:
        return torch.autocast(device.type, dtype=torch.bfloat16)

    report: dict[str, Any] = {
        "dry_run": dry,
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "torch": torch.__version__,
        "python": platform.python_version(),
    }
    s1 = _setup(Path(args.stage1_config), dry)
    s2 = _setup(Path(args.stage2_config), dry)
    peak = args.peak_tflops
    if peak is None and device.type == "cuda":
        peak = next((v for k, v in PEAK_TFLOPS.items() if k in report["device"]), None)
    model = None
    for name, fn, setup in (("stage1", stage1_check, s1), ("stage2", stage2_check, s2)):
        if not budget.left():
            report[name] = {"skipped": "time budget spent"}
            continue
        try:
            result = fn(args, setup, device, autocast)
        except torch.cuda.OutOfMemoryError as exc:  # report, do not crash the whole check
            report[name] = {"error": f"out of memory: {exc}"[:300]}
            continue
        model = result.pop("model", model)
        if peak:
            result["mfu"] = result["model_tflop_per_step"] / result["step_s"] / peak
        report[name] = result
        if device.type == "cuda":
            torch.cuda.empty_cache()
    report["peak_tflops"] = peak
    if model is None:
        from compressai_vlic.zoo import vlic

        model = vlic(args.quality).to(device)
    model.disable_gradient_checkpointing()
    report["decode"] = decode_check(model, device) if budget.left() else {"skipped": "budget"}
    report["coding"] = coding_check(model, device, budget)
    report["elapsed_s"] = budget.elapsed
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dry-run", action="store_true", help="tiny config on the CPU")
    parser.add_argument("--stage1-config", default=str(ROOT / "configs/train/paper_q1_stage1.yaml"))
    parser.add_argument(
        "--stage2-config", default=str(ROOT / "configs/train/stage2_offline_dataset.yaml")
    )
    parser.add_argument("--quality", default=None, help="zoo quality at paper scale (1)")
    parser.add_argument("--steps", type=int, default=3, help="timed optimizer steps")
    parser.add_argument("--warmup", type=int, default=1, help="untimed steps first")
    parser.add_argument("--peak-tflops", type=float, default=None, help="for MFU (H100: 989)")
    parser.add_argument("--time-budget-s", type=float, default=420.0)
    parser.add_argument("--json", help="also write the report here")
    args = parser.parse_args(argv)
    report = run(args)
    text = json.dumps(report, indent=2, default=str)
    print(text)
    if args.json:
        Path(args.json).write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
