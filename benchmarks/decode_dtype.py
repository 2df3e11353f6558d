"""bfloat16 decoding against float32, side by side in one run.

python benchmarks/decode_dtype.py [--size 384x512] [--repeats 2] [--threads 1] [--device cpu]
                                  [--paper-depth 2] [--json out.json]

Two measurements, each dtype timed in the same process, best of ``--repeats``:

- the shipped ``tiny`` model decodes one stream of a photo (``--size``) with
  ``decode_dtype="float32"`` and ``"bfloat16"``: seconds, the ratio, and the PSNR between the two
  decodes (the tokens are the same by construction: the prior runs in float64);
- one decoder network evaluation at the paper width (quality 1: 16 heads of 1088 wide blocks on a
  256x256 tile, ``--paper-depth`` blocks instead of 16, random weights) in float32 and under bf16
  autocast: the per-block cost that dominates a paper-size decode.

Prints the CPU's bf16 support (``cpu_bf16_is_fast``) beside the ratios: on CPUs without bf16
instructions PyTorch's bf16 kernels are slower than float32, so bf16 pays off on GPUs and on CPUs
with AVX512-BF16 or AMX only.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "lightning")]


def _best(fn, repeats: int) -> tuple[float, object]:
    best, out = float("inf"), None
    for _ in range(repeats):
        start = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - start)
    return best, out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", default="384x512", help="HxW of the tiny-model photo")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--paper-depth", type=int, default=2, help="decoder blocks at paper width")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)

    import torch
    import torch.nn.functional as F
    from compressai_vlic_lightning.cli import cpu_bf16_is_fast
    from skimage import data as photos

    from compressai_vlic.zoo import quality_config, vlic

    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    h, w = (int(v) for v in args.size.lower().split("x"))
    report: dict[str, object] = {
        "device": str(device),
        "threads": args.threads,
        "load_average": os.getloadavg()[0],
        "cpu_bf16_is_fast": cpu_bf16_is_fast(),
    }

    x = torch.from_numpy(photos.astronaut()).permute(2, 0, 1)[None].float() / 255
    x = F.interpolate(x, size=(h, w), mode="bicubic", antialias=True).clamp(0, 1)
    tiny = vlic("tiny", pretrained=True).eval().to(device)
    with torch.no_grad():
        out = tiny.compress(x.to(device))
        times = {}
        images = {}
        for dtype in ("float32", "bfloat16"):
            times[dtype], images[dtype] = _best(
                lambda d=dtype: tiny.decompress(out["strings"], out["shape"], decode_dtype=d)[
                    "x_hat"
                ],
                args.repeats,
            )
    mse = float(((images["bfloat16"] - images["float32"]) ** 2).mean())
    report["tiny"] = {
        "size": f"{h}x{w}",
        "float32_s": times["float32"],
        "bfloat16_s": times["bfloat16"],
        "bf16_over_fp32": times["bfloat16"] / times["float32"],
        "psnr_between_db": -10 * torch.log10(torch.tensor(max(mse, 1e-12))).item(),
    }

    torch.manual_seed(0)
    config = quality_config(1, decoder_depth=args.paper_depth, encoder_depth=1, prior_depth=1)
    from compressai_vlic.models import VLIC

    paper = VLIC(config).eval().to(device)
    x_t = torch.randn(1, 3, config.image_size, config.image_size, device=device)
    t = torch.full((1,), 0.5, device=device)
    codes = torch.rand(1, config.num_tokens, config.code_dim, device=device) * 2 - 1

    def evaluate(bf16: bool):
        with torch.no_grad(), torch.autocast(device.type, torch.bfloat16, enabled=bf16):
            return paper.velocity(x_t, t, codes).float()

    fp32_s, _ = _best(lambda: evaluate(False), args.repeats)
    bf16_s, _ = _best(lambda: evaluate(True), args.repeats)
    report["paper_width"] = {
        "decoder_blocks": args.paper_depth,
        "float32_s": fp32_s,
        "bfloat16_s": bf16_s,
        "bf16_over_fp32": bf16_s / fp32_s,
    }
    report["load_average_after"] = os.getloadavg()[0]

    tiny_r, paper_r = report["tiny"], report["paper_width"]
    print(
        f"device {device}, {args.threads} thread(s), bf16 instructions: "
        f"{'yes' if report['cpu_bf16_is_fast'] else 'no'}, load average "
        f"{report['load_average']:.1f} -> {report['load_average_after']:.1f}"
    )
    print(
        f"tiny model, {h}x{w} decode: float32 {tiny_r['float32_s']:.2f} s, bfloat16 "
        f"{tiny_r['bfloat16_s']:.2f} s = {tiny_r['bf16_over_fp32']:.2f}x; PSNR between the two "
        f"decodes {tiny_r['psnr_between_db']:.1f} dB (same tokens)"
    )
    print(
        f"paper width, one decoder evaluation ({args.paper_depth} blocks, 256x256 tile): float32 "
        f"{paper_r['float32_s']:.2f} s, bfloat16 {paper_r['bfloat16_s']:.2f} s = "
        f"{paper_r['bf16_over_fp32']:.2f}x"
    )
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
