"""Default thread count against the best one, on the machine as found and under a deliberate load.

python benchmarks/threads.py [--size 192x256] [--repeats 2] [--busy N] [--json out.json]

Decodes one stream of the shipped ``tiny`` model at every thread count from 1 to the cores and at
the default (:func:`compressai_vlic.threads.default_threads`, what the CLI uses), first on the
machine as found, then with ``--busy`` busy-loop processes started on purpose (default: one per
core; the default is read once the load average has risen). Prints default / best per phase with
the load average; the targets are within 1.05x as found on an idle machine and 1.2x loaded.
The decoded pixels are compared across thread counts (they must be identical).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "lightning")]


def _spin(stop: mp.Event) -> None:  # type: ignore[valid-type]
    while not stop.is_set():
        for _ in range(100_000):
            pass


def _decode_seconds(model, data: bytes, threads: int, repeats: int):
    import torch

    torch.set_num_threads(threads)
    best, out = float("inf"), None
    for _ in range(repeats):
        start = time.perf_counter()
        out = model.decompress([[data]], None)["x_hat"]
        best = min(best, time.perf_counter() - start)
    return best, out


def _phase(name, model, data, cores, repeats):
    import torch

    from compressai_vlic.threads import default_threads

    default = default_threads()
    load = os.getloadavg()
    times, outputs = {}, {}
    for threads in sorted(set(range(1, cores + 1)) | {default}):
        times[threads], outputs[threads] = _decode_seconds(model, data, threads, repeats)
    same = all(torch.equal(outputs[1], o) for o in outputs.values())
    best = min(times, key=times.get)
    ratio = times[default] / times[best]
    row = {
        "phase": name,
        "load_avg_at_default": load,
        "load_avg_after": os.getloadavg(),
        "default_threads": default,
        "best_threads": best,
        "seconds": times,
        "default_over_best": ratio,
        "torch_default_over_best": times[cores] / times[best],
        "identical_output": same,
    }
    print(
        f"{name:8s} load {load[0]:5.2f} -> {row['load_avg_after'][0]:5.2f}: "
        + ", ".join(f"{t} thr {s:.2f} s" for t, s in times.items())
        + f"; default {default} / best {best} = {ratio:.2f}x"
        + f" (torch's {cores} threads: {row['torch_default_over_best']:.2f}x);"
        + f" identical output: {same}"
    )
    return row


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", default="192x256", help="HxW of the decoded image")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--busy", type=int, default=None, help="busy processes (default: cores)")
    parser.add_argument(
        "--settle-s",
        type=float,
        default=60.0,
        help="most seconds to wait for the load average to rise",
    )
    parser.add_argument("--json", help="also write the rows as JSON here")
    args = parser.parse_args(argv)
    import torch

    from compressai_vlic.threads import available_cores
    from compressai_vlic.zoo import vlic

    cores = available_cores()
    height, width = (int(v) for v in args.size.split("x"))
    model = vlic("tiny", pretrained=True).eval()
    x = torch.rand(1, 3, height, width, generator=torch.Generator().manual_seed(0))
    data = model.compress(x)["strings"][0][0]
    rows = [_phase("as found", model, data, cores, args.repeats)]
    busy = cores if args.busy is None else args.busy
    stop = mp.Event()
    procs = [mp.Process(target=_spin, args=(stop,), daemon=True) for _ in range(busy)]
    for p in procs:
        p.start()
    try:
        start = time.perf_counter()
        target = os.getloadavg()[0] + 0.8 * busy
        while os.getloadavg()[0] < target and time.perf_counter() - start < args.settle_s:
            time.sleep(2)
        rows.append(_phase(f"+{busy} busy", model, data, cores, args.repeats))
    finally:
        stop.set()
        for p in procs:
            p.join(timeout=5)
    print(f"{cores} cores, torch {torch.__version__}, image {height}x{width}, tiny model")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
