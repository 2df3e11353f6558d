"""Bits per token on held-out photos: the codec's own prior, a prior-only refit, an intra-token one.

python benchmarks/prior_rate.py --checkpoint CKPT --held-out DIR [DIR ...] [--steps 400]

The codec of CKPT (a Lightning or CompressAI checkpoint) encodes the held-out photos, downscaled
to at most ``--max-side`` pixels as in training, into whole tiles. Three priors code those
tokens:

1. the checkpoint's own prior (trained jointly with the moving encoder);
2. the same, refitted with :class:`PriorRefitModule` for ``--steps`` steps on the codec's frozen
   tokens of the bundled training photos (factorised digits);
3. a causal (intra-token) prior made from it and refitted the same way.

Each is reported as bits per token: the prior's cross-entropy, and the real rANS payload of each
photo through :class:`TokenCoder`. Both refits use the same data, steps and seed.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import torch
import torch.nn.functional as F


def held_out_tiles(folders: list[Path], tile: int, max_side: int) -> dict[str, torch.Tensor]:
    """name -> (N, 3, tile, tile): every whole tile of each photo after downscaling."""
    from compressai_vlic.image_io import find_images, load_image

    out = {}
    for folder in folders:
        for path in find_images(folder):
            img = load_image(path).tensor.float()
            scale = max_side / max(img.shape[-2:])
            if scale < 1:
                size = (round(img.shape[-2] * scale), round(img.shape[-1] * scale))
                img = F.interpolate(img[None], size=size, mode="bilinear", antialias=True)[0]
            img = img.clamp(0, 1)
            rows, cols = img.shape[-2] // tile, img.shape[-1] // tile
            crop = img[:, : rows * tile, : cols * tile]
            tiles = crop.reshape(3, rows, tile, cols, tile).permute(1, 3, 0, 2, 4)
            out[path.name] = tiles.reshape(rows * cols, 3, tile, tile).contiguous()
    return out


def rate(model, tokens: dict[str, torch.Tensor]) -> dict[str, float]:
    """Cross-entropy and real payload bits per token over all held-out photos."""
    from compressai_vlic.coding import TokenCoder

    coder = TokenCoder(model.config.fsq_levels)
    count, xent, real = 0, 0.0, 0
    with torch.no_grad():
        for idx in tokens.values():
            xent += float(model.prior.nll_bits(idx).double().sum())
            payload = coder.encode(idx, model.prior)
            assert torch.equal(coder.decode(payload, model.prior, *idx.shape[:2]), idx)
            real += 8 * len(payload)
            count += idx.shape[0] * idx.shape[1]
    return {"xent_bits_per_token": xent / count, "real_bits_per_token": real / count}


def refit(checkpoint: Path, digits: str | None, steps: int, seed: int, lr: float):
    import pytorch_lightning as pl
    from compressai_vlic_lightning import PhotosDataModule, PriorRefitModule

    pl.seed_everything(seed, verbose=False)
    module = PriorRefitModule(str(checkpoint), prior_digits=digits, lr=lr, warmup_steps=20)
    data = PhotosDataModule(
        crop_size=module.model.config.image_size, batch_size=32, samples_per_epoch=2048
    )
    trainer = pl.Trainer(
        accelerator="cpu",
        max_steps=steps,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
        gradient_clip_val=1.0,
    )
    trainer.fit(module, datamodule=data)
    return module.model.eval(), module.encoder_calls


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", type=Path, required=True)
    parser.add_argument("--held-out", type=Path, nargs="+", required=True)
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--max-side", type=int, default=256)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)

    from compressai_vlic_lightning.common import load_codec

    base = load_codec(args.checkpoint).eval()
    tiles = held_out_tiles(args.held_out, base.config.image_size, args.max_side)
    with torch.no_grad():
        tokens = {name: base.encode(x).indices for name, x in tiles.items()}
    n_tokens = sum(t.shape[0] * t.shape[1] for t in tokens.values())
    print(
        f"held-out: {len(tokens)} photos, {n_tokens} tokens of {base.config.code_dim} digits "
        f"({base.config.bits_per_token:.2f} bits per token before entropy coding)"
    )
    rows = {"checkpoint prior (factorized)": rate(base, tokens)}
    with tempfile.TemporaryDirectory() as tmp:  # refit from a bare copy of the same weights
        bare = Path(tmp) / "codec.pth.tar"
        torch.save(base.state_dict(), bare)
        for label, digits in (("refit, factorized", None), ("refit, causal", "causal")):
            model, calls = refit(bare, digits, args.steps, args.seed, args.lr)
            for name, x in tiles.items():  # the frozen encoder gives the same tokens
                assert torch.equal(model.encode(x).indices, tokens[name])
            rows[f"{label} ({args.steps} steps)"] = rate(model, tokens)
            print(f"  {label}: encoder ran on {calls} training batches, then the cache served")
    for label, r in rows.items():
        print(
            f"{label:<36} {r['xent_bits_per_token']:.4f} bits/token (cross-entropy), "
            f"{r['real_bits_per_token']:.4f} bits/token (rANS payload)"
        )
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
