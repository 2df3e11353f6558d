"""Judge throughput: pairs/s against a loopback chat-completions server with a fixed latency.

python benchmarks/judge_bench.py [--latency-s 0.2] [--concurrency 1 8 32 64] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import platform
import sys

from _judge_bench_lib import format_table, run_judge_bench


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--latency-s", type=float, default=0.2)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32, 64])
    parser.add_argument("--pairs-per-slot", type=int, default=4)
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--prompt-type", default="ab-choice", choices=["ab-choice", "vlic-score"])
    parser.add_argument("--json", help="also write the rows as JSON here")
    args = parser.parse_args(argv)
    rows = run_judge_bench(
        tuple(args.concurrency),
        latency_s=args.latency_s,
        pairs_per_slot=args.pairs_per_slot,
        image_size=args.image_size,
        prompt_type=args.prompt_type,
    )
    print(format_table(rows, args.latency_s))
    print(f"python {platform.python_version()}, {platform.machine()}, images {args.image_size}px")
    if args.json:
        with open(args.json, "w") as f:
            json.dump([r.to_dict() for r in rows], f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
