"""Fuzz ``VLIC.decompress`` with hostile streams and bound what each one may cost.

Streams: real streams of a tiny seeded model, then bit-flipped, truncated, spliced (the head of
one stream on the tail of another), random bytes, and forged: header fields or payload bytes
changed with the CRC32 recomputed, so they pass the checksum and reach the header checks, the
entropy decoder and the sampler. Every stream is decoded in this process with the default
``decompress`` limits; each outcome is one of

- ``typed``: a ``BitstreamError`` (what a bad stream must give);
- ``silent``: decoded to an image although the bytes differ from every real stream (a forgery of
  a field the stream cannot check, e.g. the seed, or tokens that happen to be valid);
- ``crash``: any other exception (MemoryError included);
- ``hang``: slower than ``--time-limit`` seconds.

Peak memory is the resident set size sampled every 5 ms during the stream, minus the size before.

    python benchmarks/fuzz_streams.py --streams 2000
"""

from __future__ import annotations

import argparse
import os
import random
import struct
import sys
import threading
import time
import zlib
from collections import Counter
from dataclasses import dataclass, field

import torch

from compressai_vlic.bitstream import StreamHeader, pack, unpack
from compressai_vlic.errors import BitstreamError
from compressai_vlic.zoo import vlic

KINDS = ("bitflip", "truncate", "splice", "random", "forged_header", "forged_payload")
_PAGE = os.sysconf("SC_PAGE_SIZE")


def _rss() -> int:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * _PAGE


class _PeakRSS:
    """Samples the resident set size in a thread while a block runs."""

    def __enter__(self) -> _PeakRSS:
        self.base = self.peak = _rss()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.wait(0.005):
            self.peak = max(self.peak, _rss())

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, _rss())


def _recrc(body: bytes) -> bytes:
    return body + struct.pack(">I", zlib.crc32(body))


def _forge_header(rng: random.Random, stream: bytes) -> bytes:
    header, payload = unpack(stream)
    fields = dict(header.__dict__)
    name = rng.choice(
        [
            "height",
            "width",
            "size",
            "tile_overlap",
            "seed",
            "num_steps",
            "guidance_scale",
            "schedule_param",
            "cfg_interval",
            "schedule",
            "weights_fingerprint",
            "config_hash",
            "raw",
        ]
    )
    if name == "raw":  # any header byte, any value: values no StreamHeader would hold
        body = bytearray(stream[:-4])
        for _ in range(rng.randint(1, 3)):
            body[rng.randrange(2, 29)] = rng.randrange(256)
        return _recrc(bytes(body))
    if name == "size":
        fields["height"] = rng.choice([1, 2**14, rng.randint(1, 2**14)])
        fields["width"] = rng.choice([1, 2**14, rng.randint(1, 2**14)])
    elif name in ("height", "width"):
        fields[name] = rng.choice(
            [1, 2**14, rng.randint(1, 4096), fields[name] + rng.randint(1, 40)]
        )
    elif name == "tile_overlap":
        fields[name] = rng.randrange(256)
    elif name == "seed":
        fields[name] = rng.randrange(2**32)
    elif name == "num_steps":
        fields[name] = rng.choice([rng.randint(1, 100), 100, 255])
    elif name == "schedule":
        fields[name] = "shift" if fields[name] == "power" else "power"
    elif name in ("weights_fingerprint", "config_hash"):
        fields[name] = rng.randbytes(4)
    elif name == "cfg_interval":
        fields[name] = (rng.random(), rng.random())
    else:
        fields[name] = rng.choice([0.0, 1e-4, rng.uniform(0, 30), 65504.0])
    # Write the fields with the raw struct so values outside the limits can be forged too.
    packed = (2 << 28) | ((fields["height"] - 1) << 14) | (fields["width"] - 1)
    try:
        head = struct.pack(
            ">2sI4s4sBIBeBeee",
            b"VL",
            packed,
            fields["config_hash"],
            fields["weights_fingerprint"],
            fields["tile_overlap"],
            fields["seed"],
            fields["num_steps"],
            fields["guidance_scale"],
            {"shift": 0, "power": 1}[fields["schedule"]],
            fields["schedule_param"],
            *fields["cfg_interval"],
        )
    except (struct.error, OverflowError):
        head = stream[:29]
    return _recrc(head + payload)


def mutate(rng: random.Random, kind: str, streams: list[bytes]) -> bytes:
    """One hostile stream of the given kind, derived from the real ``streams``."""
    a = rng.choice(streams)
    if kind == "bitflip":
        data = bytearray(a)
        for _ in range(rng.randint(1, 8)):
            pos = rng.randrange(len(data) * 8)
            data[pos // 8] ^= 1 << (pos % 8)
        return bytes(data)
    if kind == "truncate":
        return a[: rng.randrange(len(a))]
    if kind == "splice":
        b = rng.choice(streams)
        data = a[: rng.randrange(len(a))] + b[rng.randrange(len(b)) :]
        return _recrc(data[:-4]) if rng.random() < 0.5 and len(data) > 4 else data
    if kind == "random":
        size = rng.choice([0, 1, 4, 32, 41, rng.randint(0, 400)])
        data = rng.randbytes(size)
        return (b"VL" + data) if rng.random() < 0.7 else data
    if kind == "forged_header":
        return _forge_header(rng, a)
    body = bytearray(a[:-4])  # forged_payload: change payload words, keep a valid checksum
    header_bytes = 29
    if rng.random() < 0.3 and len(body) > header_bytes + 8:
        cut = rng.randrange(header_bytes + 8, len(body) + 1, 4)
        body = body[:cut]
    for _ in range(rng.randint(1, 4)):
        pos = rng.randrange(header_bytes, len(body))
        body[pos] = (
            rng.randrange(256) if rng.random() < 0.5 else body[pos] ^ (1 << rng.randrange(8))
        )
    return _recrc(bytes(body))


@dataclass
class FuzzReport:
    counts: dict[str, Counter] = field(default_factory=dict)
    max_seconds: float = 0.0
    max_rss_mib: float = 0.0
    total: int = 0
    examples: dict[str, str] = field(default_factory=dict)

    def totals(self) -> Counter:
        out: Counter = Counter()
        for c in self.counts.values():
            out.update(c)
        return out


def real_streams(model, seed: int = 0) -> list[bytes]:
    gen = torch.Generator().manual_seed(seed)
    sizes = [(40, 56), (32, 32), (64, 96), (33, 70)]
    out = []
    for i, (h, w) in enumerate(sizes):
        x = torch.rand(1, 3, h, w, generator=gen)
        out.append(model.compress(x, seed=i)["strings"][0][0])
    return out


def run_fuzz(num_streams: int, seed: int = 0, time_limit: float = 30.0) -> FuzzReport:
    """Decode ``num_streams`` hostile streams (about equal shares of each kind)."""
    torch.manual_seed(seed)
    model = vlic("test").eval()
    streams = real_streams(model, seed)
    originals = set(streams)
    rng = random.Random(seed)
    report = FuzzReport(counts={k: Counter() for k in KINDS})
    # The streams of the reported attacks first: a 41-byte 16384x16384 stream, an overlap no
    # config writes, 255 steps.
    head, payload = unpack(streams[0])
    special = [
        pack(StreamHeader(**{**head.__dict__, "height": 16384, "width": 16384}), payload[:8]),
        _recrc(streams[0][:14] + bytes([24]) + streams[0][15:-4]),
        _recrc(streams[0][:19] + bytes([255]) + streams[0][20:-4]),
    ]
    for i in range(num_streams):
        kind = KINDS[i % len(KINDS)]
        data = mutate(rng, kind, streams)
        if kind == "forged_header" and i // len(KINDS) < len(special):
            data = special[i // len(KINDS)]
        start = time.perf_counter()
        with _PeakRSS() as mem:
            try:
                model.decompress([[data]])
                outcome = "original" if data in originals else "silent"
            except BitstreamError:
                outcome = "typed"
            except Exception as exc:
                outcome = "crash"
                report.examples.setdefault(f"crash/{kind}", f"{type(exc).__name__}: {exc}")
        seconds = time.perf_counter() - start
        if seconds > time_limit:
            outcome = "hang"
        report.counts[kind][outcome] += 1
        report.total += 1
        report.max_seconds = max(report.max_seconds, seconds)
        report.max_rss_mib = max(report.max_rss_mib, (mem.peak - mem.base) / 2**20)
    return report


def format_report(report: FuzzReport) -> str:
    outcomes = ("typed", "silent", "crash", "hang", "original")
    lines = [f"{'kind':<16}" + "".join(f"{o:>10}" for o in outcomes)]
    for kind, counts in report.counts.items():
        lines.append(f"{kind:<16}" + "".join(f"{counts[o]:>10}" for o in outcomes))
    totals = report.totals()
    lines.append(f"{'total':<16}" + "".join(f"{totals[o]:>10}" for o in outcomes))
    lines.append(
        f"{report.total} streams; slowest {report.max_seconds:.2f} s; "
        f"largest resident-memory increase during one stream {report.max_rss_mib:.0f} MiB"
    )
    lines += [f"{k}: {v}" for k, v in report.examples.items()]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--streams", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--time-limit", type=float, default=30.0, help="seconds = a hang")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    report = run_fuzz(args.streams, args.seed, args.time_limit)
    print(format_report(report))
    print(f"wall time {time.perf_counter() - start:.0f} s")
    totals = report.totals()
    return 1 if totals["crash"] or totals["hang"] else 0


if __name__ == "__main__":
    sys.exit(main())
