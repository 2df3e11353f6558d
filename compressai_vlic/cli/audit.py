"""`compressai-vlic judge audit`: the audit's flags, and the run that prints and writes its report."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

from compressai_vlic.errors import ConfigError
from compressai_vlic.judges.audit.options import ScaleType
from compressai_vlic.judges.spec import DEFAULT_JUDGE, JudgeSpec
from compressai_vlic.options import choices


def add_audit_arguments(parser: Any) -> None:
    src = parser.add_argument_group("human labels")
    src.add_argument(
        "--bapps",
        type=Path,
        help="BAPPS 2AFC folder (ref/ p0/ p1/ judge/) or a folder of category folders",
    )
    src.add_argument(
        "--csv",
        type=Path,
        help="CSV with reference,a,b,human_b (or human_a) [,n_humans,scene,category]",
    )
    src.add_argument(
        "--attribute",
        default=None,
        help="audit only the CSV rows of this attribute (its attribute column)",
    )
    src.add_argument("--limit", type=int, default=None, help="audit only the first N pairs")
    a = parser.add_argument_group("audit")
    a.add_argument(
        "--repeats",
        type=int,
        default=None,
        help="independent answers per pair and order (default: --votes)",
    )
    a.add_argument(
        "--gap-metric",
        default=None,
        help="also bin accuracy by the gap of this metric between A and B (e.g. ssimulacra2)",
    )
    a.add_argument(
        "--scale-type",
        choices=choices(ScaleType),
        default="bradley-terry",
        help="psychometric scaling for scenes with >= 3 stimuli",
    )
    a.add_argument(
        "--bootstrap", type=int, default=1000, help="bootstrap resamples for the intervals"
    )
    a.add_argument("--seed", type=int, default=0)
    a.add_argument("--batch-size", type=int, default=16)
    a.add_argument(
        "--output-dir", type=Path, required=True, help="writes audit.json and audit.png here"
    )
    a.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")


def add_psychophysics_arguments(parser: Any) -> None:
    src = parser.add_argument_group("human labels")
    src.add_argument(
        "--csv",
        type=Path,
        required=True,
        help="CSV with a,b,attribute,human_b (or human_a) [,reference,n_humans,scene]; the "
        "attributes contrast, colorfulness and overall also give the weighting fit",
    )
    a = parser.add_argument_group("psychophysics")
    a.add_argument(
        "--attribute",
        action="append",
        default=None,
        help="attributes to study (default: every one in the CSV)",
    )
    a.add_argument(
        "--repeats", type=int, default=3, help="answers per trial and order (VR %% needs >= 2)"
    )
    a.add_argument("--bootstrap", type=int, default=1000, help="scene-bootstrap resamples")
    a.add_argument("--seed", type=int, default=0)
    a.add_argument("--batch-size", type=int, default=16)
    a.add_argument("--output-dir", type=Path, required=True, help="writes psychophysics.json")
    a.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")


def run_psychophysics_cli(args: Any) -> int:
    """Each judge type answers each attribute (``attribute=...`` passed to it) ``--repeats``
    times; a trial without a reference asks the judge with ``reference=False``."""
    import json

    from compressai_vlic.atomic import atomic_write_text
    from compressai_vlic.judges.audit.psychophysics import format_psychophysics, run_psychophysics
    from compressai_vlic.judges.audit.readers import load_csv

    everything = load_csv(args.csv)
    attributes = args.attribute or sorted({p.attribute for p in everything if p.attribute})
    if not attributes:
        raise ConfigError(f"{args.csv}: no attribute column; name one with --attribute")
    pairs = {a: load_csv(args.csv, a) for a in attributes}
    judge_types = args.judge_type or ["attribute"]
    spec = JudgeSpec.from_args(args, judge_types[0])

    def maker(judge_type: str) -> Any:
        def make(attribute: str) -> Any:
            one = JudgeSpec.from_args(args, judge_type)
            options = {**one.options, "attribute": attribute}
            if all(p.reference is None for p in pairs[attribute]):
                options.setdefault("reference", False)
            compose = replace(one.compose, votes=1, order_type="as-given")
            return replace(one, options=options, compose=compose).build()

        return make

    report = run_psychophysics(
        {t: maker(t) for t in judge_types},
        pairs,
        repeats=args.repeats,
        order_type=spec.compose.order_type,
        combine_type=spec.compose.combine_type,
        n_boot=args.bootstrap,
        seed=args.seed,
        batch_size=args.batch_size,
        progress=args.progress,
        source=str(args.csv),
    )
    print(format_psychophysics(report))
    args.output_dir.mkdir(parents=True, exist_ok=True)
    out = args.output_dir / "psychophysics.json"
    atomic_write_text(out, json.dumps(report.to_dict(), indent=1))
    print(f"\nwrote {out}")
    return 0


def run_audit_cli(args: Any) -> int:
    from compressai_vlic.judges.audit import (
        AuditSettings,
        audit,
        format_report,
        load_bapps,
        load_csv,
        write_report,
    )

    if (args.bapps is None) == (args.csv is None):
        raise ConfigError("judge audit needs exactly one of --bapps DIR or --csv FILE")
    pairs = (
        load_bapps(args.bapps)
        if args.bapps is not None
        else load_csv(args.csv, getattr(args, "attribute", None))
    )
    if args.limit is not None:
        pairs = pairs[: args.limit]
    judge_types = args.judge_type or [DEFAULT_JUDGE]
    spec = JudgeSpec.from_args(args, judge_types[0])
    noise = spec.compose
    # The audit derives orders, votes and unanimity from raw answers; a weighted ensemble is
    # audited as one judge.
    raw = replace(noise, order_type="as-given", votes=1, unanimous_with=[])
    judges = [replace(JudgeSpec.from_args(args, t), compose=raw).build() for t in judge_types]
    settings = AuditSettings(
        repeats=args.repeats or noise.votes,
        order_type=noise.order_type,
        votes=noise.votes,
        combine_type=noise.combine_type,
        majority_type=noise.majority_type,
        unanimous_with=list(noise.unanimous_with),
        gap_metric=args.gap_metric,
        scale_type=args.scale_type,
        bootstrap=args.bootstrap,
        seed=args.seed,
        batch_size=args.batch_size,
        progress=args.progress,
    )
    report = audit(judges, pairs, settings, str(args.bapps or args.csv), spec.make_extra)
    print(format_report(report))
    out_json, out_png = write_report(report, args.output_dir)
    print(f"\nwrote {out_json} and {out_png}")
    return 0
