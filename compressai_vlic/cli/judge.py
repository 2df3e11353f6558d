"""`compressai-vlic judge`: build a preference dataset; `compressai-vlic judge audit`: measure a judge.

Build: for a folder of originals and two folders of reconstructions (matched by relative path
without suffix), or a VLIC codec that decodes each original twice with different noise seeds,
judge every pair and append one JSONL row per pair. Resumable: rerun the same command after an
interruption and it continues where it stopped.

    compressai-vlic judge --originals orig/ --recon-a a/ --recon-b b/ --output prefs.jsonl \\
        --judge-type ssimulacra2 --symmetrize
    compressai-vlic judge --originals orig/ --codec-quality test --output prefs.jsonl
    compressai-vlic judge audit --bapps 2afc/val/traditional --judge-type ssimulacra2 --output-dir audit/
    compressai-vlic judge psychophysics --csv trials.csv --judge-type attribute --output-dir psy/
    compressai-vlic judge rank --candidates decodes/ --originals orig/ --output ranking.jsonl
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from compressai_vlic.cli._codec import WEIGHTS_HELP
from compressai_vlic.errors import ConfigError
from compressai_vlic.judges.spec import JudgeSpec

if TYPE_CHECKING:  # pragma: no cover
    from compressai_vlic.pretrained import Weights


def add_judge_arguments(parser: argparse.ArgumentParser, multi: bool = False) -> None:
    """The shared judge flags (:meth:`JudgeSpec.add_arguments`).

    Args:
        parser: the sub-command's parser.
        multi: ``--judge-type`` may be repeated (audit, psychophysics).
    """
    JudgeSpec.add_arguments(parser, multi=multi)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.description = __doc__
    src = parser.add_argument_group("inputs")
    src.add_argument("--originals", type=Path, help="folder (or file) of original images")
    src.add_argument(
        "--recon-a",
        type=Path,
        help="folder of reconstructions A (matched by relative path without suffix)",
    )
    src.add_argument("--recon-b", type=Path, help="folder of reconstructions B")
    src.add_argument(
        "--missing-type",
        choices=("error", "skip"),
        default="error",
        help="what to do with originals lacking a reconstruction",
    )
    src.add_argument(
        "--weights", help="the codec that decodes each original twice: " + WEIGHTS_HELP
    )
    src.add_argument("--codec-checkpoint", type=Path, help="alias of --weights CHECKPOINT")
    src.add_argument(
        "--codec-quality",
        default=None,
        help="alias of --weights random:QUALITY:SEED (untrained, seeded by --init-seed)",
    )
    src.add_argument(
        "--pairs-per-image",
        type=int,
        default=1,
        help="codec pairs per original (seeds base+2i, base+2i+1)",
    )
    src.add_argument("--base-seed", type=int, default=0)
    src.add_argument(
        "--crop-type",
        choices=("tile", "image"),
        default="tile",
        help="codec pairs: tile = tile-size crops coded as one tile (exact samples of the decoder "
        "given the stored code, what post-training needs); image = whole originals, tile-blended",
    )
    src.add_argument(
        "--tiles-per-image",
        type=int,
        default=1,
        help="codec pairs with --crop-type tile: crops per original, nearest the centre first",
    )
    src.add_argument(
        "--init-seed",
        type=int,
        default=0,
        help="weight init seed of --codec-quality (alias: the seed of --weights random:Q:SEED)",
    )
    src.add_argument(
        "--decode-dir",
        type=Path,
        default=None,
        help="where codec decodes go (default OUTPUT.decodes/)",
    )
    out = parser.add_argument_group("output")
    out.add_argument("--output", type=Path, help="preference dataset (JSONL); rerun to resume")
    out.add_argument("--concurrency", type=int, default=4, help="pairs in flight at once")
    out.add_argument("--limit", type=int, default=None, help="judge at most the first N pairs")
    out.add_argument(
        "--retry-abstentions",
        action="store_true",
        help="on a rerun, ask again the pairs whose row is an abstention from an unusable answer "
        "(empty, refused, wrong format); default: every row already written is final",
    )
    out.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")
    add_judge_arguments(parser)

    sub = parser.add_subparsers(dest="judge_command", metavar="{audit,psychophysics,rank}")
    sub.required = False
    audit = sub.add_parser(
        "audit", help="measure judges against human 2AFC labels (BAPPS layout or CSV)"
    )
    from compressai_vlic.cli.audit import add_audit_arguments

    add_audit_arguments(audit)
    add_judge_arguments(audit, multi=True)
    psy = sub.add_parser(
        "psychophysics",
        help="judges as observers of contrast / colourfulness / preference 2AFC trials: VR %%, "
        "one-vs-many, Spearman vs humans, attribute-weighting fit",
    )
    from compressai_vlic.cli.audit import add_psychophysics_arguments

    add_psychophysics_arguments(psy)
    add_judge_arguments(psy, multi=True)
    rank = sub.add_parser(
        "rank", help="best-of-N: rank each folder of candidates by the judge's soft reward"
    )
    from compressai_vlic.cli.rank import add_rank_arguments

    add_rank_arguments(rank)
    add_judge_arguments(rank)


def _codec_weights(args: argparse.Namespace) -> str | None:
    """The one weights spec of ``--weights`` or its aliases (``--codec-checkpoint``, ...)."""
    if args.codec_checkpoint is not None:
        return str(args.codec_checkpoint)
    if args.codec_quality is not None:
        return f"random:{args.codec_quality}:{args.init_seed}"
    return args.weights


def _codec_identity(weights: Weights) -> dict[str, Any]:
    """Which codec made the pairs: a resumed run must use the same one."""
    if weights.state is None:  # random weights are the same ones on every (resumed) run
        quality = weights.spec.split(":")[1]
        return {"quality": quality, "init_seed": weights.seed, "weights": "random"}
    return {"checkpoint_sha256": weights.identity}


def run_build(args: argparse.Namespace) -> int:
    from compressai_vlic.evaluation.codec_pairs import CodecPairMaker
    from compressai_vlic.judges.compose import describe_judge, public_kwargs
    from compressai_vlic.judges.dataset import build_preference_dataset, pairs_from_folders

    if args.output is None or args.originals is None:
        raise ConfigError(
            "judge needs --originals and --output (or use `compressai-vlic judge audit ...`)"
        )
    given = [args.weights, args.codec_checkpoint, args.codec_quality]
    use_codec = any(g is not None for g in given)
    use_folders = args.recon_a is not None or args.recon_b is not None
    if use_codec == use_folders or (use_folders and (args.recon_a is None or args.recon_b is None)):
        raise ConfigError("give either --recon-a and --recon-b, or a codec (--weights)")
    if sum(g is not None for g in given) > 1:
        raise ConfigError("give --weights or one of its aliases, not several")
    prepare, codec = None, None
    if use_folders:
        pairs, missing = pairs_from_folders(
            args.originals, args.recon_a, args.recon_b, args.missing_type
        )
        if missing:
            print(
                f"skipping {len(missing)} originals without both reconstructions", file=sys.stderr
            )
    else:
        decode_dir = args.decode_dir or args.output.with_name(args.output.name + ".decodes")
        from compressai_vlic.pretrained import load_weights

        weights = load_weights(_codec_weights(args))
        maker = CodecPairMaker(
            weights.model(),
            decode_dir,
            args.pairs_per_image,
            args.base_seed,
            _codec_identity(weights),
            crop_type=args.crop_type,
            tiles_per_image=args.tiles_per_image,
        )
        pairs, prepare = maker.plan(args.originals), maker.prepare
        codec = {
            **_codec_identity(weights),
            "pairs_per_image": args.pairs_per_image,
            "base_seed": args.base_seed,
            "crop_type": args.crop_type,
            "tiles_per_image": args.tiles_per_image,
        }
    if args.limit is not None:
        pairs = pairs[: args.limit]
    spec = JudgeSpec.from_args(args)
    judge = spec.build()
    config = {
        "judge": describe_judge(judge),
        "judge_type": spec.backend,
        "judge_args": public_kwargs(dict(args.judge_option or [])),
    }
    if codec is not None:
        config["codec"] = codec
    summary = build_preference_dataset(
        pairs,
        judge,
        args.output,
        config,
        concurrency=args.concurrency,
        progress=args.progress,
        prepare=prepare,
        retry_abstentions=args.retry_abstentions,
    )
    if codec is not None:  # originals the codec could not use: skipped, named, exit status 1
        summary.skipped.update({f"original {k}": v for k, v in maker.skipped.items()})
    if summary.retried_abstentions:
        print(
            f"asked again {summary.retried_abstentions} pair(s) that abstained on an unusable answer",
            file=sys.stderr,
        )
    if summary.repaired_bytes:
        print(
            f"cut off a torn last line ({summary.repaired_bytes} bytes) left by an interrupted run",
            file=sys.stderr,
        )
    print(f"{args.output}: {summary.line()}")
    if not summary.ok:
        for line in summary.problems():
            print(f"  {line}", file=sys.stderr)
        return 1
    return 0


def run(args: argparse.Namespace) -> int:
    try:
        if getattr(args, "judge_command", None) == "audit":
            from compressai_vlic.cli.audit import run_audit_cli

            return run_audit_cli(args)
        if getattr(args, "judge_command", None) == "psychophysics":
            from compressai_vlic.cli.audit import run_psychophysics_cli

            return run_psychophysics_cli(args)
        if getattr(args, "judge_command", None) == "rank":
            from compressai_vlic.cli.rank import run_rank_cli

            return run_rank_cli(args)
        return run_build(args)
    except KeyboardInterrupt:
        print(
            "\ninterrupted: every pair judged so far is saved; rerun the same command to resume",
            file=sys.stderr,
        )
        return 130
