"""Fuzz ``load_image`` with damaged image files of every format the package reads.

Seeds: a crop of a real photo (scikit-image's astronaut; a seeded synthetic image without it)
written as PNG (8-bit RGB, gray, palette, RGBA; 16-bit gray, gray+alpha, RGB, RGBA, every row
filter, Adam7), JPEG (baseline, progressive), GIF (animated), TIFF (8-bit, LZW, 16-bit gray,
int32, float32), WebP (lossy, lossless), BMP, PPM and 16-bit PGM. Mutants, seeded:

- ``byte``: one byte replaced by a random value;
- ``truncate``: the file cut at a random length;
- ``png_crc``: (PNG) one byte inside a chunk replaced and the chunk's CRC recomputed, so the
  change reaches the decoder instead of the checksum test;
- ``png_idat``: (PNG) one byte of the decompressed pixel rows replaced (a filter-type byte half
  of the time), recompressed, CRC recomputed: a well-formed file with bad rows.

Mutants run in child processes, ``--batch-size`` at a time; a child that dies takes only its
current mutant with it (a signal is a ``segfault`` or ``crash``; ``--timeout`` seconds without
progress is a ``hang``) and the next child carries on after it. Each outcome is one of ``ok``
(decoded), ``typed`` (a ``VLICError``, what a bad file must give, naming the file), ``untyped``
(any other exception), ``crash``, ``segfault`` or ``hang``.

    python benchmarks/fuzz_images.py --count 1500
"""

from __future__ import annotations

import argparse
import io
import json
import os
import random
import signal
import struct
import subprocess
import sys
import tempfile
import time
import zlib
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np

OUTCOMES = ("ok", "typed", "untyped", "crash", "segfault", "hang")


# ----------------------------------------------------------------------------- seed files
def _photo(height: int = 40, width: int = 48) -> np.ndarray:
    try:
        import skimage.data

        img = skimage.data.astronaut()[100 : 100 + height, 180 : 180 + width]
        return np.ascontiguousarray(img[..., :3])
    except Exception:  # no scikit-image: a seeded synthetic image
        rng = np.random.default_rng(0)
        ramp = np.linspace(0, 255, width)[None, :, None] * np.ones((height, 1, 3))
        return np.clip(ramp + rng.normal(0, 20, (height, width, 3)), 0, 255).astype(np.uint8)


def seed_files() -> dict[str, bytes]:
    """name -> file bytes, one per format and layout."""
    from PIL import Image

    from compressai_vlic.testing.png16 import png16_bytes

    rgb = _photo()
    gray = np.asarray(Image.fromarray(rgb).convert("L"))
    rng = np.random.default_rng(1)
    deep = rgb.astype(np.uint16) * 256 + rng.integers(0, 256, rgb.shape, dtype=np.uint16)
    deep_gray = deep[..., :1]
    alpha16 = np.full((*deep.shape[:2], 1), 65535, np.uint16)
    alpha16[:8] = 20000
    files: dict[str, bytes] = {}

    def pil(name: str, img: Image.Image, fmt: str, **kw) -> None:
        buf = io.BytesIO()
        img.save(buf, format=fmt, **kw)
        files[name] = buf.getvalue()

    pil("png8_rgb.png", Image.fromarray(rgb), "PNG")
    pil("png8_gray.png", Image.fromarray(gray), "PNG")
    pil("png8_palette.png", Image.fromarray(rgb).quantize(32), "PNG")
    rgba = np.dstack([rgb, np.where(np.arange(rgb.shape[1]) < 10, 0, 255)[None].repeat(40, 0)])
    pil("png8_rgba.png", Image.fromarray(rgba.astype(np.uint8), "RGBA"), "PNG")
    pil("png16_gray.png", Image.fromarray(deep_gray[..., 0]), "PNG")
    files["png16_rgb.png"] = png16_bytes(deep, [0, 1, 2, 3, 4])
    files["png16_rgb_adam7.png"] = png16_bytes(deep, [4, 3], interlace=True)
    files["png16_rgba.png"] = png16_bytes(np.dstack([deep, alpha16]), [1, 4])
    files["png16_gray_alpha.png"] = png16_bytes(np.dstack([deep_gray, alpha16]), [2, 3])
    pil("jpeg.jpg", Image.fromarray(rgb), "JPEG", quality=90)
    pil("jpeg_progressive.jpg", Image.fromarray(rgb), "JPEG", quality=80, progressive=True)
    frames = [Image.fromarray(rgb), Image.fromarray(255 - rgb)]
    buf = io.BytesIO()
    frames[0].save(buf, format="GIF", save_all=True, append_images=frames[1:])
    files["gif_animated.gif"] = buf.getvalue()
    pil("tiff8_rgb.tif", Image.fromarray(rgb), "TIFF")
    pil("tiff8_lzw.tif", Image.fromarray(rgb), "TIFF", compression="tiff_lzw")
    pil("tiff16_gray.tif", Image.fromarray(deep_gray[..., 0]), "TIFF")
    pil("tiff32_int.tif", Image.fromarray(deep_gray[..., 0].astype(np.int32) * 3 - 5000), "TIFF")
    pil("tiff32_float.tif", Image.fromarray(gray.astype(np.float32) / 255.0), "TIFF")
    pil("webp_lossy.webp", Image.fromarray(rgb), "WEBP", quality=80)
    pil("webp_lossless.webp", Image.fromarray(rgb), "WEBP", lossless=True)
    pil("bmp.bmp", Image.fromarray(rgb), "BMP")
    pil("ppm.ppm", Image.fromarray(rgb), "PPM")
    pil("pgm16.ppm", Image.fromarray(deep_gray[..., 0]), "PPM")
    return files


# ----------------------------------------------------------------------------- mutants
def _png_chunks(data: bytes) -> list[tuple[int, int, bytes]]:
    """(offset of the length field, data length, type) of every chunk."""
    chunks, pos = [], 8
    while pos + 8 <= len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        kind = data[pos + 4 : pos + 8]
        if pos + 12 + length > len(data):
            break
        chunks.append((pos, length, kind))
        pos += 12 + length
    return chunks


def _with_crc(data: bytearray, pos: int, length: int) -> bytes:
    body = bytes(data[pos + 4 : pos + 8 + length])
    data[pos + 8 + length : pos + 12 + length] = struct.pack(">I", zlib.crc32(body))
    return bytes(data)


def mutate(name: str, data: bytes, kind: str, rng: random.Random) -> bytes:
    """One mutant of a seed file."""
    if kind == "truncate":
        return data[: rng.randrange(0, len(data))]
    if kind == "byte":
        out = bytearray(data)
        pos = rng.randrange(len(out))
        out[pos] = (out[pos] + rng.randrange(1, 256)) % 256
        return bytes(out)
    chunks = _png_chunks(data)
    if kind == "png_crc":
        pos, length, _kind = rng.choice([c for c in chunks if c[1] > 0])
        out = bytearray(data)
        at = pos + 8 + rng.randrange(length)
        out[at] = (out[at] + rng.randrange(1, 256)) % 256
        return _with_crc(out, pos, length)
    if kind == "png_idat":
        idat = [c for c in chunks if c[2] == b"IDAT"]
        raw = bytearray(zlib.decompress(b"".join(data[p + 8 : p + 8 + n] for p, n, _ in idat)))
        header = next(c for c in chunks if c[2] == b"IHDR")
        width, _height, depth, color = struct.unpack(">IIBB", data[16:26])
        planes = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}.get(color, 3)
        stride = 1 + (width * planes * depth + 7) // 8
        del header
        if rng.random() < 0.5:  # a filter-type byte (exact for non-interlaced files)
            at = stride * rng.randrange(max(1, len(raw) // stride))
            raw[min(at, len(raw) - 1)] = rng.choice([5, 6, 7, 64, 255])
        else:
            at = rng.randrange(len(raw))
            raw[at] = (raw[at] + rng.randrange(1, 256)) % 256
        body = zlib.compress(bytes(raw))
        first, last = idat[0][0], idat[-1][0] + 12 + idat[-1][1]
        chunk = struct.pack(">I", len(body)) + b"IDAT" + body
        chunk += struct.pack(">I", zlib.crc32(b"IDAT" + body))
        return data[:first] + chunk + data[last:]
    raise ValueError(kind)


def kinds_for(name: str) -> tuple[str, ...]:
    return (
        ("byte", "truncate", "png_crc", "png_idat")
        if name.endswith(".png")
        else ("byte", "truncate")
    )


def make_mutants(count: int, seed: int, folder: Path) -> list[tuple[str, str, Path]]:
    """(seed name, mutant kind, file) for ``count`` mutants spread evenly over the seeds."""
    rng = random.Random(seed)
    seeds = seed_files()
    names = sorted(seeds)
    out = []
    for i in range(count):
        name = names[i % len(names)]
        kind = rng.choice(kinds_for(name))
        path = folder / f"{i:05d}-{kind}-{name}"
        path.write_bytes(mutate(name, seeds[name], kind, rng))
        out.append((name, kind, path))
    return out


# ----------------------------------------------------------------------------- running
def _child(paths: list[str]) -> None:
    """Child process: load every file, one JSON line per file (flushed before the next)."""
    from compressai_vlic.errors import VLICError
    from compressai_vlic.image_io import load_image

    for path in paths:
        print(json.dumps({"start": path}), flush=True)
        try:
            load_image(path)
            result = {"outcome": "ok"}
        except VLICError as exc:
            named = Path(path).name in str(exc)
            result = {"outcome": "typed", "named": named, "error": type(exc).__name__}
        except Exception as exc:
            result = {"outcome": "untyped", "error": f"{type(exc).__name__}: {exc}"[:200]}
        print(json.dumps({"path": path, **result}), flush=True)


def run_batch(paths: list[Path], timeout: float, start_timeout: float = 300.0) -> dict[Path, dict]:
    """Outcomes of ``paths``; a child that dies or hangs is replaced after the file it was on.

    A child gets ``start_timeout`` seconds for its imports (a loaded machine can take minutes);
    one that is stopped for that reason, before its first file, is started again once: a slow
    start is not a crash of any file.
    """
    results: dict[Path, dict] = {}
    todo = list(paths)
    restarts = 0
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    while todo:
        proc = subprocess.Popen(
            [sys.executable, __file__, "--child", *map(str, todo)],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
            env=env,
        )
        current = None
        deadline = time.monotonic() + start_timeout  # the child's imports
        import selectors

        sel = selectors.DefaultSelector()
        assert proc.stdout is not None
        sel.register(proc.stdout, selectors.EVENT_READ)
        hung = False
        while True:
            if not sel.select(timeout=max(0.0, deadline - time.monotonic())):
                hung = True
                proc.kill()
                break
            line = proc.stdout.readline()
            if not line:
                break
            msg = json.loads(line)
            if "start" in msg:
                current = Path(msg["start"])
                deadline = time.monotonic() + timeout
            else:
                results[Path(msg["path"])] = msg
                current = None
        code = proc.wait()
        done = [p for p in todo if p in results]
        todo = [p for p in todo if p not in results]
        if current is not None:
            if hung:
                results[current] = {"outcome": "hang"}
            elif code == -signal.SIGSEGV:
                results[current] = {"outcome": "segfault"}
            else:
                results[current] = {"outcome": "crash", "error": f"exit status {code}"}
            todo.remove(current)
        elif hung and not done and restarts == 0:
            restarts += 1  # stopped while importing: start it again
        elif todo and not done:
            for p in todo:  # the child died before its first file: count them all
                results[p] = {"outcome": "crash", "error": f"exit status {code}"}
            todo = []
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=1500, help="mutants in all")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--batch-size", type=int, default=250, help="mutants per child process")
    parser.add_argument("--timeout", type=float, default=30.0, help="seconds per file = a hang")
    parser.add_argument("--keep", type=Path, default=None, help="copy bad mutants here")
    parser.add_argument("--child", nargs="*", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child is not None:
        _child(args.child)
        return 0
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="vlic-fuzz-images-") as tmp:
        mutants = make_mutants(args.count, args.seed, Path(tmp))
        results: dict[Path, dict] = {}
        for i in range(0, len(mutants), args.batch_size):
            results.update(
                run_batch([m[2] for m in mutants[i : i + args.batch_size]], args.timeout)
            )
        by_seed: dict[str, Counter] = defaultdict(Counter)
        by_kind: dict[str, Counter] = defaultdict(Counter)
        total: Counter = Counter()
        unnamed = 0
        bad = []
        for name, kind, path in mutants:
            r = results[path]
            by_seed[name][r["outcome"]] += 1
            by_kind[kind][r["outcome"]] += 1
            total[r["outcome"]] += 1
            unnamed += r["outcome"] == "typed" and not r.get("named", False)
            if r["outcome"] not in ("ok", "typed"):
                bad.append((path, r))
                if args.keep is not None:
                    args.keep.mkdir(parents=True, exist_ok=True)
                    (args.keep / path.name).write_bytes(path.read_bytes())
    width = max(len(n) for n in by_seed) + 2
    print(f"{'seed file':<{width}}" + "".join(f"{o:>10}" for o in OUTCOMES))
    for label, table in (*sorted(by_seed.items()), ("", {}), *sorted(by_kind.items())):
        if not label:
            print()
            continue
        print(f"{label:<{width}}" + "".join(f"{table.get(o, 0):>10}" for o in OUTCOMES))
    print(f"{'total':<{width}}" + "".join(f"{total.get(o, 0):>10}" for o in OUTCOMES))
    print(
        f"{len(mutants)} mutants of {len(by_seed)} seed files (seed {args.seed}) in "
        f"{time.perf_counter() - start:.1f} s; typed errors not naming the file: {unnamed}"
    )
    for path, r in bad[:20]:
        print(f"  {r['outcome']}: {path.name}: {r.get('error', '')}")
    failures = sum(total[o] for o in ("untyped", "crash", "segfault", "hang")) + unnamed
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
