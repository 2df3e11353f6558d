"""Start-up times of the commands, each next to ``python -c "import torch"`` measured in the same run.

python benchmarks/startup.py [--repeats 3] [--json out.json] [--help-only] [--baseline CHECKOUT]

Every figure is the median wall time of fresh processes (this checkout first on the path):
- ``--help`` of each command and of ``compressai-vlic-train``'s own sub-commands (target: under
  1.5 s); ``--baseline`` also times another checkout's (e.g. a worktree of main), interleaved;
- ``decode`` start-up: a process that imports what ``compressai-vlic decode`` imports and loads the
  shipped ``tiny`` model, minus ``import torch`` in the same process (target: under 1 s);
- a whole ``compressai-vlic decode`` of one 512x384 stream, for scale.
The load average before and after is printed: on a busy machine every figure grows.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

HELP = [
    ["compressai_vlic.cli.main"],
    ["compressai_vlic.cli.main", "encode"],
    ["compressai_vlic.cli.main", "decode"],
    ["compressai_vlic.cli.main", "eval"],
    ["compressai_vlic.cli.main", "update"],
    ["compressai_vlic.cli.main", "bench"],
    ["compressai_vlic.cli.main", "judge"],
    ["compressai_vlic.cli.main", "compare"],
    ["compressai_vlic.cli.main", "vlm-bench"],
    ["compressai_vlic.cli.main", "adaptor"],
    ["compressai_vlic.cli.main", "student"],
    ["compressai_vlic.cli.main", "weights"],
    ["compressai_vlic.cli.main", "demo"],
    ["compressai_vlic_lightning.cli"],
    ["compressai_vlic_lightning.cli", "plan"],
    ["compressai_vlic_lightning.cli", "ablate"],
    ["compressai_vlic_lightning.cli", "export"],
]

# Imports what `decode` imports and loads the model; prints (torch import s, the rest s).
DECODE_STARTUP = """
import time
t0 = time.perf_counter()
import torch
t1 = time.perf_counter()
from compressai_vlic.cli import decode
from compressai_vlic.cli._codec import load_model
from compressai_vlic.image_io import save_png
model = load_model(quality="tiny")
t2 = time.perf_counter()
print(t1 - t0, t2 - t1)
"""


def _env(root: Path = REPO) -> dict[str, str]:
    env = dict(os.environ)
    path = [str(root), str(root / "lightning"), env.get("PYTHONPATH", "")]
    env["PYTHONPATH"] = os.pathsep.join(p for p in path if p)
    return env


def _wall(cmd: list[str], cwd: Path | None = None, root: Path = REPO) -> float:
    start = time.perf_counter()
    subprocess.run(cmd, env=_env(root), cwd=cwd, capture_output=True, check=True, timeout=900)
    return time.perf_counter() - start


def _print_help_rows(
    rows: dict[str, float],
    base_rows: dict[str, float],
    torch_s: float,
    load_before: tuple[float, ...],
    load_after: tuple[float, ...],
) -> None:
    print(f"load average (1, 5, 15 min): before {load_before}, after {load_after}")
    base = f"{'baseline s':>11s}" if base_rows else ""
    print(f"{'command':48s} {'s':>7s} {'/ import torch':>15s} {'< 1.5 s':>8s} {base}")
    for label, seconds in rows.items():
        target = "" if label.startswith("python") else ("yes" if seconds < 1.5 else "NO")
        before = f"{base_rows[label]:11.2f}" if label in base_rows else ""
        print(f"{label:48s} {seconds:7.2f} {seconds / torch_s:15.2f} {target:>8s} {before}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", help="also write the figures as JSON here")
    parser.add_argument("--help-only", action="store_true", help="time --help only, no decode")
    parser.add_argument(
        "--baseline", type=Path, default=None, help="another checkout whose --help to time too"
    )
    args = parser.parse_args(argv)
    py = sys.executable
    load_before = os.getloadavg()
    rows: dict[str, float] = {}
    base_rows: dict[str, float] = {}
    torch_s = statistics.median(_wall([py, "-c", "import torch"]) for _ in range(args.repeats))
    rows["python -c 'import torch'"] = torch_s
    for cmd in HELP:
        label = " ".join([cmd[0].split(".")[0].replace("_", "-"), *cmd[1:], "--help"])
        label = label.replace("compressai-vlic-lightning", "compressai-vlic-train")
        times, base_times = [], []
        for _ in range(args.repeats):  # interleaved, so both see the same load
            times.append(_wall([py, "-m", *cmd, "--help"], cwd=REPO))
            if args.baseline:  # `-m` puts the working folder first on the path: run it there
                base = args.baseline.resolve()
                base_times.append(_wall([py, "-m", *cmd, "--help"], cwd=base, root=base))
        rows[label] = statistics.median(times)
        if base_times:
            base_rows[label] = statistics.median(base_times)
    if args.help_only:
        _print_help_rows(rows, base_rows, torch_s, load_before, os.getloadavg())
        if args.json:
            result = {"load_before": load_before, "load_after": os.getloadavg(), "help_s": rows}
            Path(args.json).write_text(json.dumps({**result, "baseline_help_s": base_rows}))
        return 0
    pairs = []
    for _ in range(args.repeats):
        out = subprocess.run(
            [py, "-c", DECODE_STARTUP], env=_env(), capture_output=True, text=True, check=True
        )
        pairs.append(tuple(float(v) for v in out.stdout.split()))
    torch_in, rest = (statistics.median(p[i] for p in pairs) for i in (0, 1))
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        make = (
            "import numpy as np; from PIL import Image; "
            "Image.fromarray((np.random.default_rng(0).random((384, 512, 3)) * 255)"
            ".astype('uint8')).save('a.png')"
        )
        subprocess.run([py, "-c", make], cwd=folder, check=True)
        cli = [py, "-m", "compressai_vlic.cli.main"]
        _wall([*cli, "encode", "a.png", "-o", "a.vlic", "--quality", "tiny"], folder)
        decode_s = _wall(
            [*cli, "decode", "a.vlic", "-o", "b.png", "--quality", "tiny", "--overwrite"], folder
        )
    load_after = os.getloadavg()
    _print_help_rows(rows, base_rows, torch_s, load_before, load_after)
    print(
        f"decode start-up in one process: import torch {torch_in:.2f} s, then imports + tiny "
        f"model {rest:.2f} s (target < 1 s; {rest / torch_in:.2f}x import torch)"
    )
    print(f"whole decode of one 512x384 stream (tiny): {decode_s:.2f} s")
    if args.json:
        result = {
            "load_before": load_before,
            "load_after": load_after,
            "help_s": rows,
            "baseline_help_s": base_rows,
            "decode_startup_torch_s": torch_in,
            "decode_startup_rest_s": rest,
            "decode_s": decode_s,
        }
        Path(args.json).write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
