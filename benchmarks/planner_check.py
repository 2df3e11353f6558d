"""The memory planner's activation bytes per sample against a measured CPU peak, side by side.

python benchmarks/planner_check.py [--width 512] [--depth 2] [--precision 32-true]
                                   [--batches 2 3] [--json out.json]

A codec at quality 1's token count (4096 patches + 256 codes, 256x256) with ``--width``-wide
encoder and decoder blocks (64-dim heads) and ``--depth`` blocks each runs one training-like step
(encode, flow-matching loss on the codes, prior bits, backward) in a fresh process per batch
size, with and without gradient checkpointing. The process's peak RSS is read after the step;
glibc is told to map every allocation over 64 KiB on its own and to return it when freed
(``MALLOC_MMAP_THRESHOLD_``, ``MALLOC_TRIM_THRESHOLD_``), so the peak follows the tensors that
are alive. The difference between the two largest batches is the measured cost per sample;
the planner's (:func:`compressai_vlic_lightning.memory.measure`: kept activations, plus the
block recomputed during a checkpointed backward) is printed beside it, with the ratio.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "lightning")]

MIB = 2**20


def _config(width: int, depth: int):
    from compressai_vlic.zoo import quality_config

    blocks = {"depth": depth, "width": width, "heads": max(1, width // 64)}
    sizes = {f"{part}_{key}": v for part in ("encoder", "decoder") for key, v in blocks.items()}
    return quality_config(1, prior_depth=2, prior_width=256, prior_heads=4, **sizes)


def _child(width: int, depth: int, precision: str, checkpointing: bool, batch: int) -> int:
    """One step at ``batch`` after a step at batch 1; returns the peak RSS in bytes."""
    import resource

    import torch
    from compressai_vlic_lightning.memory import precision_spec

    from compressai_vlic.models import VLIC

    torch.set_num_threads(1)
    autocast_dtype, _ = precision_spec(precision)
    config = _config(width, depth)
    torch.manual_seed(0)
    model = VLIC(config).train()
    if checkpointing:
        model.enable_gradient_checkpointing()
    else:
        model.disable_gradient_checkpointing()

    def step(b: int) -> None:
        gen = torch.Generator().manual_seed(0)
        x = torch.rand(b, 3, config.image_size, config.image_size, generator=gen)
        with torch.autocast("cpu", dtype=autocast_dtype, enabled=autocast_dtype is not None):
            enc = model.encode(x)
            drop = torch.zeros(b, dtype=torch.bool)
            loss = model.flow_matching(x, enc.codes, drop_mask=drop).loss
            loss = loss + 1e-3 * model.token_nll_bits(enc.indices.detach()).mean()
        loss.backward()

    step(1)  # gradients exist from here on, as in training
    step(batch)
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _planned(width: int, depth: int, precision: str) -> dict[bool, float]:
    from compressai_vlic_lightning.memory import measure

    m = measure(_config(width, depth), precision, "none")
    out = {}
    for checkpointing in (False, True):
        kept = m.kept[checkpointing]
        total = sum(kept[c]["per_sample"] for c in ("encoder", "decoder", "prior"))
        if checkpointing:
            total += max(m.encoder_block_per_sample[False], m.decoder_block_per_sample[False])
        out[checkpointing] = total
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--width", type=int, default=512)
    parser.add_argument("--depth", type=int, default=2)
    parser.add_argument("--precision", default="32-true")
    parser.add_argument("--batches", type=int, nargs=2, default=[2, 3])
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--child", nargs=2, type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        checkpointing, batch = args.child
        print(_child(args.width, args.depth, args.precision, bool(checkpointing), batch))
        return 0

    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536", "MALLOC_TRIM_THRESHOLD_": "0"}
    planned = _planned(args.width, args.depth, args.precision)
    rows = []
    small, large = args.batches
    for checkpointing in (False, True):
        peaks = {}
        for batch in (small, large):
            cmd = [sys.executable, __file__, "--width", str(args.width), "--depth", str(args.depth)]
            cmd += ["--precision", args.precision, "--child", str(int(checkpointing)), str(batch)]
            out = subprocess.run(cmd, capture_output=True, text=True, env=env, check=True)
            peaks[batch] = int(out.stdout.strip().splitlines()[-1])
        measured = (peaks[large] - peaks[small]) / (large - small)
        rows.append(
            {
                "checkpointing": checkpointing,
                "measured_per_sample_mib": measured / MIB,
                "planned_per_sample_mib": planned[checkpointing] / MIB,
                "planned_over_measured": planned[checkpointing] / measured,
                "peak_rss_mib": {b: p / MIB for b, p in peaks.items()},
            }
        )
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2) + "\n")
    print(
        f"width {args.width}, {args.depth}+{args.depth} blocks, 4352 tokens, {args.precision}, "
        f"batches {small} and {large}, load average {os.getloadavg()[0]:.1f}"
    )
    for r in rows:
        print(
            f"checkpointing {'on ' if r['checkpointing'] else 'off'}: measured "
            f"{r['measured_per_sample_mib']:.1f} MiB per sample, planned "
            f"{r['planned_per_sample_mib']:.1f} MiB = {r['planned_over_measured']:.2f}x"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
