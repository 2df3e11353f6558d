"""Rate and seams of the tilings on real photos with the shipped tiny model.

For each image size and tiling: tiles, real bpp (all stream bytes), nominal bpp (the stream's mean
payload bits per tile over the tile area: the rate if every pixel were coded once), their ratio,
the seam ratio of the decode (:func:`compressai_vlic.tiling.seam_ratio`; about 1 without seams)
next to that of the undecoded photo on the same borders, and PSNR. Photos: scikit-image's,
resized (bicubic, antialiased).

    python benchmarks/tiling_seams.py --sizes 256x256 384x512 512x768 --photos astronaut coffee
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F

from compressai_vlic.bitstream import unpack
from compressai_vlic.tiling import seam_ratio
from compressai_vlic.zoo import vlic


def _photo(name: str, h: int, w: int) -> torch.Tensor:
    import skimage.data

    a = torch.from_numpy(getattr(skimage.data, name)()[..., :3]).permute(2, 0, 1)[None] / 255.0
    return F.interpolate(a.float(), size=(h, w), mode="bicubic", antialias=True).clamp(0, 1)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", nargs="+", default=["256x256", "384x512", "512x768"])
    ap.add_argument("--photos", nargs="+", default=["astronaut", "coffee", "rocket", "chelsea"])
    ap.add_argument("--tilings", nargs="+", default=["blend", "seamless"])
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(1)
    net = vlic("tiny", pretrained=True).eval()
    t = net.config.image_size
    print("size photo tiling tiles real_bpp nominal_bpp ratio seam seam_photo psnr seconds")
    for size in args.sizes:
        h, w = (int(v) for v in size.split("x"))
        for name in args.photos:
            x = _photo(name, h, w)
            for tiling in args.tilings:
                start = time.perf_counter()
                with torch.no_grad():
                    out = net.compress(x, seed=args.seed, tiling_type=tiling)
                    y = net.decompress(out["strings"])["x_hat"]
                stream = out["strings"][0][0]
                header, payload = unpack(stream)
                layout = header.tile_layout(t)
                real = len(stream) * 8 / (h * w)
                nominal = len(payload) * 8 / layout.num_tiles / t**2
                psnr = float(-10 * torch.log10(((y - x) ** 2).mean()))
                print(
                    f"{h}x{w} {name} {tiling} {layout.num_tiles} {real:.4f} {nominal:.4f} "
                    f"{real / nominal:.3f} {seam_ratio(y, layout):.3f} "
                    f"{seam_ratio(x, layout):.3f} {psnr:.2f} {time.perf_counter() - start:.0f}",
                    flush=True,
                )


if __name__ == "__main__":
    main()
