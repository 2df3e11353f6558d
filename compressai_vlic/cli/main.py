"""`compressai-vlic` command: one entry point, one module per sub-command.

Each sub-command module defines ``add_arguments(parser)`` and ``run(args) -> int``; it is imported
only when that sub-command runs, so ``compressai-vlic --help`` stays fast. A typed error
(:class:`~compressai_vlic.errors.VLICError`) becomes one ``error:`` line and the module's
``ERROR_STATUS`` (default 2) here, once for every command.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from compressai_vlic.errors import VLICError

DESCRIPTION = (
    "VLIC, a diffusion-autoencoder image codec post-trained with VLM judgments, for CompressAI."
)

# name -> (module, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "encode": (
        "compressai_vlic.cli.encode",
        "compress images (files or folders) to .vlic bitstreams",
    ),
    "decode": ("compressai_vlic.cli.decode", "decode .vlic bitstreams (files or folders) to PNG"),
    "eval": ("compressai_vlic.cli.eval", "run CompressAI's eval_model with the plugins registered"),
    "update": (
        "compressai_vlic.cli.update",
        "run CompressAI's update_model with the plugins registered",
    ),
    "bench": ("compressai_vlic.cli.bench", "codec benchmark: timings, real/estimated bits, memory"),
    "judge": (
        "compressai_vlic.cli.judge",
        "build a preference dataset with a judge; `judge audit` measures a judge",
    ),
    "compare": (
        "compressai_vlic.cli.compare",
        "compare codecs on many metrics; BD-rates and plots",
    ),
    "vlm-bench": (
        "compressai_vlic.cli.vlm_bench",
        "VLM task accuracy on compressed images: rate-accuracy, BD, the two gaps",
    ),
    "adaptor": (
        "compressai_vlic.cli.adaptor",
        "codec-conditioned VLM vision-encoder adaptor: train, eval, apply",
    ),
    "student": (
        "compressai_vlic.cli.student",
        "distil a judge into a fast student (train | eval); judge with --judge-type student",
    ),
    "weights": (
        "compressai_vlic.cli.weights",
        "list and fetch the LPIPS, DISTS and FID weights (no model hub needed)",
    ),
    "demo": (
        "compressai_vlic.cli.demo",
        "the demo: pre-train, post-train, evaluate, report (CPU, ~10 min)",
    ),
}

# Sub-commands that forward their whole argv to another program's parser.
PASSTHROUGH = {"eval", "update"}
# Sub-commands that read input images: they take --max-pixels and --max-image-mb.
IMAGE_COMMANDS = {"encode", "compare", "judge"}

# Their `--help`, printed without importing CompressAI (whose parser needs torch and its models);
# `--compressai-help` forwards `--help` to CompressAI's own parser.
PASSTHROUGH_HELP = {
    "eval": """usage: compressai-vlic eval {checkpoint,pretrained} DATASET -a vlic [options]

CompressAI's `python -m compressai.utils.eval_model`, with the entry-point plugins registered.
  compressai-vlic eval checkpoint IMAGES -a vlic -p vlic-tiny-<sha8>.pth.tar
  compressai-vlic eval pretrained IMAGES -a vlic -q tiny     (-q takes 0 (tiny), 1, 2 or tiny)
Images too small for MS-SSIM (under 161 px a side) or unreadable are reported and skipped.
`compressai-vlic eval checkpoint --help` (or `pretrained --help`, or `--compressai-help`) lists
CompressAI's options.
""",
    "update": """usage: compressai-vlic update CHECKPOINT -a vlic [-n NAME] [-d DIR] [options]

CompressAI's `python -m compressai.utils.update_model`, with the entry-point plugins registered:
writes NAME-<sha256[:8]>.pth.tar and prints its path.
`compressai-vlic update --compressai-help` lists CompressAI's options.
""",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="compressai-vlic", description=DESCRIPTION)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (_module, help_text) in COMMANDS.items():
        sub.add_parser(name, help=help_text, add_help=False)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in {"-h", "--help"} or argv[0] not in COMMANDS:
        parser = build_parser()
        if argv and argv[0] not in {"-h", "--help"}:
            parser.error(f"unknown command {argv[0]!r}; choose from {', '.join(COMMANDS)}")
        parser.print_help()
        return 0 if argv else 2
    name, rest = argv[0], argv[1:]
    if name in PASSTHROUGH and rest in (["-h"], ["--help"]):
        print(PASSTHROUGH_HELP[name], end="")
        return 0
    if name in PASSTHROUGH and rest == ["--compressai-help"]:
        rest = ["--help"]
    module = importlib.import_module(COMMANDS[name][0])
    try:
        if name in PASSTHROUGH:
            return int(module.run_argv(rest) or 0)
        parser = argparse.ArgumentParser(
            prog=f"compressai-vlic {name}", description=COMMANDS[name][1]
        )
        module.add_arguments(parser)
        if name in IMAGE_COMMANDS:
            from compressai_vlic.cli._args import add_image_limit_arguments, apply_image_limits

            add_image_limit_arguments(parser)
        args = parser.parse_args(rest)
        if name in IMAGE_COMMANDS:
            apply_image_limits(args)
        return int(module.run(args) or 0)
    except VLICError as exc:  # every command's typed errors: one line, no traceback
        print(f"error: {exc}", file=sys.stderr)
        return getattr(module, "ERROR_STATUS", 2)


if __name__ == "__main__":
    sys.exit(main())
