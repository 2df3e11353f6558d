"""Sampling quality of sampler settings on one checkpoint, at stated network evaluations per tile.

Each photo is resized (short side ``--short-side``), center-cropped, encoded once, and its tokens
are decoded with every sampler setting below (same tokens, same seed), so the only difference is
the sampler. Prints PSNR, SSIMULACRA 2 and (where its weights are on the machine) LPIPS, averaged
over the photos, with the network evaluations per tile of each setting.

    python benchmarks/sampler_quality.py --checkpoint last.ckpt --images /usr/share/backgrounds/mate/nature
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
from PIL import Image

from compressai_vlic.errors import MetricUnavailableError
from compressai_vlic.metrics import get_metric
from compressai_vlic.models import VLIC
from compressai_vlic.sampling import FLOWMO_CFG_INTERVAL

#: name -> decode_codes settings. "old": the defaults before (shift 0.5, guidance at every
#: step, diffusers' grid); "new": FlowMo's power schedule with its CFG interval.
SETTINGS: dict[str, dict] = {
    "old: shift 0.5, CFG everywhere, 25 steps": {
        "num_steps": 25,
        "schedule": "shift_v1",
        "time_shift": 0.5,
        "cfg_interval": (0.0, 1.0),
    },
    "old: shift 0.5, CFG everywhere, 16 steps": {
        "num_steps": 16,
        "schedule": "shift_v1",
        "time_shift": 0.5,
        "cfg_interval": (0.0, 1.0),
    },
    "new: pow_0.25, CFG in [0.145, 0.505], 25 steps": {
        "num_steps": 25,
        "schedule": "power",
        "power": 0.25,
        "cfg_interval": FLOWMO_CFG_INTERVAL,
    },
    "new: pow_0.25, CFG in [0.145, 0.505], 40 steps": {
        "num_steps": 40,
        "schedule": "power",
        "power": 0.25,
        "cfg_interval": FLOWMO_CFG_INTERVAL,
    },
}


def load_photo(path: Path, short_side: int, crop: tuple[int, int]) -> torch.Tensor:
    img = Image.open(path).convert("RGB")
    scale = short_side / min(img.size)
    img = img.resize((round(img.width * scale), round(img.height * scale)), Image.LANCZOS)
    h, w = crop
    left, top = (img.width - w) // 2, (img.height - h) // 2
    img = img.crop((left, top, left + w, top + h))
    return torch.from_numpy(__import__("numpy").asarray(img).copy()).permute(2, 0, 1)[None] / 255.0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", type=Path, required=True)
    parser.add_argument("--images", type=Path, required=True, help="folder of photos")
    parser.add_argument("--limit", type=int, default=6, help="first N photos (sorted)")
    parser.add_argument("--short-side", type=int, default=192)
    parser.add_argument("--crop", type=int, nargs=2, default=(176, 240), metavar=("H", "W"))
    parser.add_argument("--guidance-scale", type=float, default=1.5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "lightning"))
    from compressai_vlic_lightning.common import read_codec_state_dict

    model = VLIC.from_state_dict(read_codec_state_dict(args.checkpoint, "ema")).eval()
    photos = sorted(p for p in args.images.iterdir() if p.suffix.lower() in (".jpg", ".png"))
    photos = photos[: args.limit]
    metrics = {"psnr": get_metric("psnr"), "ssimulacra2": get_metric("ssimulacra2")}
    try:
        metrics["lpips"] = get_metric("lpips")
    except MetricUnavailableError as exc:
        print(f"LPIPS not measured: {exc}")
    sums = {name: {m: 0.0 for m in metrics} for name in SETTINGS}
    start = time.perf_counter()
    for path in photos:
        x = load_photo(path, args.short_side, tuple(args.crop))
        layout, enc = model.encode_image(x)
        for name, kwargs in SETTINGS.items():
            x_hat = model.decode_codes(
                enc.indices,
                seed=args.seed,
                guidance_scale=args.guidance_scale,
                layout=layout,
                **kwargs,
            )
            for m, metric in metrics.items():
                sums[name][m] += float(metric(x, x_hat).mean())
        print(f"{path.name}: {layout.num_tiles} tiles", file=sys.stderr)
    n = len(photos)
    print(
        f"{model.config.name} checkpoint {args.checkpoint.name}, {n} photos "
        f"{args.crop[0]}x{args.crop[1]}, guidance {args.guidance_scale:g}, seed {args.seed}"
    )
    cols = list(metrics)
    print("| sampler | evaluations per tile | " + " | ".join(cols) + " |")
    print("|---|---:|" + "---:|" * len(cols))
    for name, kwargs in SETTINGS.items():
        settings = model.sampler_settings(
            seed=args.seed, guidance_scale=args.guidance_scale, **kwargs
        )
        evals = settings.sampler().num_evaluations()
        values = " | ".join(f"{sums[name][m] / n:.3f}" for m in cols)
        print(f"| {name} | {evals} | {values} |")
    print(f"wall time {time.perf_counter() - start:.0f} s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
