"""`compressai-vlic weights list|fetch`: the metric weights (LPIPS, DISTS, FID/KID) offline.

compressai-vlic weights list
compressai-vlic weights fetch all
compressai-vlic weights fetch alexnet --file alexnet=/downloads/alexnet-owt-7be5be79.pth
"""

from __future__ import annotations

import argparse
import sys

from compressai_vlic.cli._args import key_value


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from compressai_vlic.metrics.weights import SOURCE_TYPES, SPECS

    sub = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    sub.add_parser("list", help="what each metric needs, where it was found, verified or not")
    fetch = sub.add_parser("fetch", help="put weights into the weight cache, verified")
    fetch.add_argument(
        "names",
        nargs="*",
        default=["all"],
        help=f"weights to fetch: all (default), {', '.join(SPECS)}",
    )
    fetch.add_argument(
        "--file",
        action="append",
        default=[],
        type=key_value,
        metavar="NAME=PATH",
        help="a file you already have (e.g. alexnet=alexnet-owt-7be5be79.pth); tried first",
    )
    fetch.add_argument(
        "--sources",
        nargs="+",
        choices=SOURCE_TYPES,
        default=list(SOURCE_TYPES),
        help="where to look, in order (default: file cache url registry)",
    )
    fetch.add_argument(
        "--url-timeout", type=float, default=5.0, help="seconds before a URL counts as unreachable"
    )
    fetch.add_argument(
        "-v",
        "--verbose",
        action="store_true",
        help="also print each source that failed before one worked (default: each weight's outcome)",
    )


def run(args: argparse.Namespace) -> int:
    from compressai_vlic.metrics import weights

    if args.action == "list":
        located = weights.list_weights(check=True)
        print(weights.format_listing(located))
        return 0
    names = None if "all" in args.names else args.names
    results = weights.fetch(
        names,
        files=dict(args.file),
        sources=args.sources,
        url_timeout=args.url_timeout,
        log=lambda line: print(line, file=sys.stderr),
        verbose=args.verbose,
    )
    missing = [r.name for r in results if r.path is None]
    print(f"weight cache: {weights.cache_dir()}")
    for r in results:
        state = "missing" if r.path is None else ("verified" if r.verified else "unverified")
        print(f"{r.name:12s} {state:10s} {r.source}")
    return 1 if missing else 0
