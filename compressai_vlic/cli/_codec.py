"""What encode, decode and bench share: choosing the model and mapping inputs to outputs."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from compressai_vlic.errors import ConfigError, VLICError
from compressai_vlic.jobs import Job, plan_jobs

if TYPE_CHECKING:
    from compressai_vlic.models.vlic import VLIC

# Seed of the untrained `--quality test` weights: encoder and decoder processes must build the
# very same random model, or the decoder's prior would not match the encoder's.
TEST_WEIGHTS_SEED = 0


#: What ``--weights`` takes (the same spec as YAML's ``weights:``), for every command's help.
WEIGHTS_HELP = (
    "the VLIC weights: 'tiny' (the trained model shipped with the package), a checkpoint file "
    "(a Lightning .ckpt uses its EMA weights; append #raw for the raw ones), a "
    "save_pretrained folder, a Hub id (owner/name), or random:test (random weights from a fixed "
    "seed, for tests only: its output is noise); read with weights_only=True or as safetensors"
)


def add_model_arguments(parser: argparse.ArgumentParser, required: bool = True) -> None:
    """--weights (and its aliases --checkpoint, --quality): the decoder needs the exact model
    that encoded a stream."""
    group = parser.add_mutually_exclusive_group(required=required)
    group.add_argument("--weights", metavar="WEIGHTS", help=WEIGHTS_HELP)
    group.add_argument("--checkpoint", type=Path, help="alias of --weights for a checkpoint file")
    group.add_argument(
        "--quality",
        help="alias of --weights for the zoo: 'tiny' (or 0); 'test' is --weights random:test; "
        "1 or 2 take their weights from $COMPRESSAI_VLIC_WEIGHTS",
    )


def weights_of(
    weights: str | None = None, checkpoint: Path | None = None, quality: str | None = None
) -> str | None:
    """The one weights spec of ``--weights`` or its aliases ``--checkpoint`` and ``--quality``."""
    if checkpoint is not None:
        return str(checkpoint)
    if quality is not None:
        return f"random:test:{TEST_WEIGHTS_SEED}" if str(quality) == "test" else str(quality)
    return weights


def _limit(text: str) -> int | None:
    """A non-negative count for a limit option; 0 means no limit (None)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected a number >= 0 (0 = no limit), got {value}")
    return value or None


def _per_tile_limit(text: str) -> int | str | None:
    """As :func:`_limit`, or ``model``: the model's own maximum."""
    return "model" if text == "model" else _limit(text)


def add_max_pixels_argument(parser: argparse.ArgumentParser) -> None:
    """--max-pixels: the stream pixel limit, the same for encode (refused) and decode."""
    from compressai_vlic.options import STREAM_MAX_PIXELS

    parser.add_argument(
        "--max-pixels",
        type=_limit,
        default=STREAM_MAX_PIXELS,
        metavar="N",
        help=f"largest image a stream may hold, in pixels (default {STREAM_MAX_PIXELS}, "
        "4096x4096, for encode and decode alike; 0 = no limit)",
    )


def add_decode_limit_arguments(parser: argparse.ArgumentParser) -> None:
    """The decode limits (checked from each stream's header before any work), settable."""
    add_max_pixels_argument(parser)
    parser.add_argument(
        "--max-evaluations-per-tile",
        type=_per_tile_limit,
        default="model",
        metavar="N",
        help="most network evaluations per tile (default 'model': the model's own maximum, its "
        "configured steps, doubled if guided, so every stream its encoder writes decodes; "
        "0 = no limit)",
    )
    parser.add_argument(
        "--max-evaluations",
        type=_limit,
        default=None,
        metavar="N",
        help="most network evaluations per stream in all, tiles x per tile (default: no limit "
        "beyond pixels x per tile)",
    )


def decode_limits(args: argparse.Namespace) -> dict[str, object]:
    """``VLIC.decompress`` keywords of the options added by :func:`add_decode_limit_arguments`."""
    return {
        "max_pixels": args.max_pixels,
        "max_evaluations": args.max_evaluations,
        "max_evaluations_per_tile": args.max_evaluations_per_tile,
    }


def add_overwrite_argument(parser: argparse.ArgumentParser) -> None:
    """--overwrite: existing output files are refused unless asked for (never an input file)."""
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="replace output files that exist already (default: refuse them; an input file is "
        "never overwritten)",
    )


def add_threads_argument(parser: argparse.ArgumentParser) -> None:
    """--threads: torch's one thread per core is slow on a busy machine (the default adapts)."""
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch CPU threads (default: the cores the load average leaves idle, at least 1; "
        "$COMPRESSAI_VLIC_THREADS overrides it). Outputs are the same for any count",
    )


def apply_threads(threads: int | None) -> None:
    """Set torch's intra-op thread count: ``threads``, or the load-aware default when None."""
    from compressai_vlic.threads import set_default_threads

    if threads is not None and threads < 1:
        raise ConfigError(f"--threads must be >= 1, got {threads}")
    set_default_threads(threads)


def load_state(path: Path) -> dict:
    """A bare state dict (or one under the keys CompressAI's tools accept), weights only."""
    from compressai_vlic.checkpoints import load_state_dict

    return load_state_dict(path)


def load_model(
    checkpoint: Path | None = None, quality: str | None = None, weights: str | None = None
) -> VLIC:
    """The VLIC model of a weights spec (or its aliases), in eval mode on the CPU."""
    from compressai_vlic.pretrained import load_weights

    spec = weights_of(weights, checkpoint, quality)
    if spec is None:
        raise ConfigError("give --weights (a checkpoint, a folder, 'tiny' or random:test)")
    return load_weights(spec).model()


def error_text(source: Path, exc: BaseException) -> str:
    """One line for a per-file failure: the typed message, or the type for anything else."""
    text = str(exc) if isinstance(exc, VLICError) else f"{exc.__class__.__name__}: {exc}"
    return text if text.startswith(str(source)) else f"{source}: {text}"


@dataclass
class Batch:
    """Planned jobs with their model loaded; per-file failures are collected, not raised."""

    jobs: list[Job]
    model: VLIC
    refused: list[str]
    failed: list[str] = field(default_factory=list)

    @property
    def done(self) -> int:
        """Jobs that succeeded so far."""
        return len(self.jobs) - len(self.failed)

    def fail(self, source: Path, exc: BaseException) -> str:
        """Record one file's failure and return its line (for the progress bar)."""
        self.failed.append(error_text(source, exc))
        return self.failed[-1]

    def exit_status(self) -> int:
        """List every refused or failed input on stderr; 1 if there was any, else 0."""
        failures = self.refused + self.failed
        if failures:
            print(f"{len(failures)} input(s) failed:", file=sys.stderr)
            for message in failures:
                print(f"  {message}", file=sys.stderr)
            return 1
        return 0


def open_batch(
    args: argparse.Namespace,
    find: Callable[[Path], list[Path]],
    suffix: str,
    verb: str,
    check: Callable[[VLIC], object] | None = None,
) -> Batch | None:
    """Plan ``args.inputs`` -> ``args.output`` and load the model; None (after printing why)
    when there is nothing to do, so no input is read in vain; an unusable model raises.

    ``check`` runs on the loaded model to reject bad options (e.g. a seed) up front.
    """
    plan = plan_jobs(args.inputs, args.output, find, suffix, getattr(args, "overwrite", False))
    for message in plan.refused:
        print(f"error: {message}", file=sys.stderr)
    if not plan.jobs:
        print(f"error: nothing to {verb}", file=sys.stderr)
        return None
    apply_threads(args.threads)  # a typed error here is the command's error (exit status 1)
    model = load_model(args.checkpoint, args.quality, args.weights)
    if check is not None:
        check(model)
    return Batch(plan.jobs, model, plan.refused)
