"""Student judge throughput at 256x256 on CPU, side by side with the LPIPS-alex judge.

python benchmarks/student_judge_bench.py [--student DIR] [--threads 2] [--pairs 128] [--repeats 5]

Both judges score the same pairs through ``make_judge(...).compare_batch`` (the path
``compressai-vlic judge`` takes), alternating run by run so a busy machine slows both alike; the
table gives the median pairs/s of each, their ratio, and the 100 pairs/s target. Without
``--student`` an untrained student is saved to a temporary folder (speed does not depend on the
learned weights).
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import tempfile
import time

import torch


def _time(judge, requests) -> float:
    t0 = time.perf_counter()
    judge.compare_batch(requests)
    return len(requests) / (time.perf_counter() - t0)


def main(argv: list[str] | None = None) -> int:
    from compressai_vlic.errors import MetricUnavailableError
    from compressai_vlic.judges import make_judge
    from compressai_vlic.judges.types import JudgeRequest
    from compressai_vlic.student.model import StudentModel

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--student", help="a trained student folder (default: untrained)")
    parser.add_argument("--threads", type=int, default=2, help="torch threads (default 2)")
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--pairs", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--target", type=float, default=100.0)
    parser.add_argument("--json", help="also write the figures as JSON here")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    path = args.student
    if path is None:
        path = tempfile.mkdtemp(prefix="student-bench-")
        StudentModel().save(path)
    judges = {"student": make_judge("student", path=path, batch_size=args.batch_size)}
    try:
        judges["lpips-alex"] = make_judge("lpips")
    except MetricUnavailableError as exc:
        print(f"notice: LPIPS reference unavailable ({exc})", file=sys.stderr)
    refs = torch.rand(args.pairs, 3, args.size, args.size)
    noise = 0.05 * torch.randn_like(refs)
    requests = [
        JudgeRequest(r, (r + n).clamp(0, 1), (r - n).clamp(0, 1)) for r, n in zip(refs, noise)
    ]
    for judge in judges.values():  # warm-up (allocator, oneDNN kernels)
        judge.compare_batch(requests[: args.batch_size])
    rates: dict[str, list[float]] = {name: [] for name in judges}
    for _ in range(args.repeats):
        for name, judge in judges.items():
            rates[name].append(_time(judge, requests))
    med = {name: statistics.median(v) for name, v in rates.items()}
    print(f"{'judge':<12} {'pairs/s (median)':>17} {'min':>8} {'max':>8}")
    for name, v in rates.items():
        print(f"{name:<12} {med[name]:>17.1f} {min(v):>8.1f} {max(v):>8.1f}")
    out = {"size": args.size, "threads": args.threads, "pairs": args.pairs, "rates": rates}
    if "lpips-alex" in med:
        ratio = med["student"] / med["lpips-alex"]
        out["ratio"] = ratio
        print(f"student / lpips-alex: {ratio:.2f}x")
    verdict = "meets" if med["student"] >= args.target else "MISSES"
    print(
        f"student {verdict} the {args.target:g} pairs/s target at {args.size}x{args.size} on {args.threads} threads"
    )
    print(f"python {platform.python_version()}, torch {torch.__version__}, {platform.machine()}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
