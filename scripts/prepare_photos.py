"""Build the training photo folder of the shipped "tiny" model (docs/model.md#the-shipped-tiny-model).

Sources are photographs that ship in registry packages: scikit-image and scikit-learn sample
data, matplotlib's sample data and Debian desktop-background packages extracted with
``apt-get download PKG && dpkg -x PKG.deb ROOT``. Every image is converted to RGB and downscaled
(antialiased, at least 1.4x) to several sizes, which removes JPEG traces, and written as PNG.

Held out (never written here): scikit-image ``chelsea`` and scikit-learn ``flower`` (the main
job's report) and mate-backgrounds' ``nature`` folder (the evaluation table). Reserved for
independent evaluation and refused: plasma-workspace-wallpapers, libjxl-testdata, pyiqa.

    python scripts/prepare_photos.py OUT_DIR [--debian-root ROOT ...]
    python scripts/prepare_photos.py --held-out OUT_DIR --debian-root ROOT   # the table's photos
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
from PIL import Image

SKIMAGE = ("astronaut", "coffee", "rocket", "motorcycle_left", "motorcycle_right")
SKLEARN = ("china",)
HELD_OUT = {"chelsea", "flower"}
RESERVED = ("plasma", "libjxl", "pyiqa")
# Debian backgrounds that are photographs (the packages also hold drawings and logos).
DEBIAN_PHOTOS = (
    "backgrounds/calla.png",
    "backgrounds/city.png",
    "backgrounds/desert.png",
    "backgrounds/goldfish.png",
    "backgrounds/rollpaper.png",
    "backgrounds/string.jpg",
    "backgrounds/the-mouse.jpg",
    "backgrounds/rhythm.jpg",
    "backgrounds/firstgeneration.jpg",
    "backgrounds/2004default.jpg",
    "backgrounds/mate/abstract/Elephants.jpg",
)
SHORT_SIDES = (256, 384, 512)
# The held-out evaluation photos (mate-backgrounds), under a --debian-root.
NATURE = Path("usr/share/backgrounds/mate/nature")


def _skimage() -> dict[str, np.ndarray]:
    import skimage.data as data

    out = {}
    for name in SKIMAGE:
        if name.startswith("motorcycle"):
            left, right, _ = data.stereo_motorcycle()
            out[name] = left if name.endswith("left") else right
        else:
            out[name] = getattr(data, name)()
    return out


def _sklearn() -> dict[str, np.ndarray]:
    from sklearn.datasets import load_sample_images

    images = load_sample_images()
    return {
        Path(f).stem: img
        for f, img in zip(images.filenames, images.images, strict=True)
        if Path(f).stem in SKLEARN
    }


def _matplotlib() -> dict[str, np.ndarray]:
    import matplotlib

    path = Path(matplotlib.get_data_path()) / "sample_data" / "grace_hopper.jpg"
    return {"grace_hopper": np.asarray(Image.open(path).convert("RGB"))}


def _debian(roots: list[Path]) -> dict[str, np.ndarray]:
    out = {}
    for root in roots:
        if any(word in str(root).lower() for word in RESERVED):
            sys.exit(f"{root}: reserved for independent evaluation, not for training")
        for rel in DEBIAN_PHOTOS:
            for base in (root / "usr/share", root):
                path = base / rel
                if path.is_file():
                    out[path.stem] = np.asarray(Image.open(path).convert("RGB"))
                    break
    return out


def held_out(out: Path, roots: list[Path], size: int = 256) -> None:
    """mate-backgrounds' nature photos: short side ``size``, centre ``size`` x ``size`` crop."""
    sources = [p for root in roots for p in sorted((root / NATURE).glob("*.jpg"))]
    if not sources:
        where = ", ".join(str(root / NATURE) for root in roots) or "no --debian-root given"
        sys.exit(
            f"error: no held-out photos found ({where}). They come from Debian's "
            "mate-backgrounds package: `apt-get install mate-backgrounds` and pass "
            "--debian-root /, or `apt-get download mate-backgrounds && dpkg -x "
            "mate-backgrounds_*.deb ROOT` and pass --debian-root ROOT"
        )
    out.mkdir(parents=True, exist_ok=True)
    found = 0
    for path in sources:
        image = Image.open(path).convert("RGB")
        scale = size / min(image.size)
        image = image.resize(
            (round(image.width * scale), round(image.height * scale)),
            Image.Resampling.LANCZOS,
            reducing_gap=3.0,
        )
        left, top = (image.width - size) // 2, (image.height - size) // 2
        image.crop((left, top, left + size, top + size)).save(out / f"{path.stem}.png")
        found += 1
    print(f"{found} held-out photos in {out}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("out", type=Path, nargs="?")
    parser.add_argument("--debian-root", type=Path, action="append", default=[])
    parser.add_argument("--held-out", type=Path, help="write the held-out evaluation photos here")
    args = parser.parse_args()
    if args.held_out is not None:
        held_out(args.held_out, args.debian_root)
        if args.out is None:
            return
    if args.out is None:
        parser.error("give OUT_DIR and/or --held-out DIR")
    images = {**_skimage(), **_sklearn(), **_matplotlib(), **_debian(args.debian_root)}
    assert not HELD_OUT & set(images)
    args.out.mkdir(parents=True, exist_ok=True)
    written = 0
    for name, array in sorted(images.items()):
        image = Image.fromarray(np.ascontiguousarray(array[..., :3]))
        for side in SHORT_SIDES:
            scale = side / min(image.size)
            if scale > 0.7:  # downscale by at least 1.4x
                continue
            size = (round(image.width * scale), round(image.height * scale))
            target = args.out / f"{name}-{side}.png"
            if target.exists():
                continue
            image.resize(size, Image.Resampling.LANCZOS, reducing_gap=3.0).save(target)
            written += 1
    print(f"{len(images)} photos -> {written} new PNGs in {args.out}")


if __name__ == "__main__":
    main()
