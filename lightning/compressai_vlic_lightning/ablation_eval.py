"""Evaluation of a stage-2 ablation on held-out photos, through real bitstreams.

Every run's last checkpoint and the stage-1 reference compress each held-out photo (the rate is
the bitstream's length) and decode it at several decode seeds (the same tokens, the seed re-packed
into the header). Per (model, photo) one row goes to ``eval/rows.jsonl`` (resumable): the metrics
of each decode against the original and, as a diagnostic, LPIPS/DISTS between the first two
decodes. Photos are the outer loop, so a partial evaluation holds every model on the same photos.

The report marks each metric's role in training (loss term, unanimity partner, judge,
checkpoint choice; "none" = independent), gives each arm's mean over photos and seeds, the
differences ``dpo - control`` and ``dpo - shuffled`` with a paired bootstrap interval over photos
and their spread over training seeds, per-arm diagnostics, and a plot per metric.
"""

from __future__ import annotations

import json
import logging
import math
import subprocess
from pathlib import Path
from typing import Any

import torch

from compressai_vlic.atomic import atomic_write_text
from compressai_vlic.evaluation.paired import arm_means, paired_difference
from compressai_vlic.judges.spec import JudgeSpec
from compressai_vlic_lightning.ablation import (
    Manifest,
    RunSpec,
    checkpoint_step,
    cut_crops,
    judge_config_of,
    make_pair_set,
    read_metrics,
)

log = logging.getLogger(__name__)

#: metric name -> (get_metric name, its keyword arguments, higher is better)
METRICS: dict[str, tuple[str, dict[str, Any], bool]] = {
    "psnr": ("psnr", {}, True),
    "ms_ssim": ("ms_ssim", {}, True),
    "lpips": ("lpips", {"net_type": "alex"}, False),
    "lpips_vgg": ("lpips", {"net_type": "vgg"}, False),
    "dists": ("dists", {}, False),
    "ssimulacra2": ("ssimulacra2", {}, True),
}
REFERENCE = "stage1"
COMPARISONS = (("dpo", "control"), ("dpo", "shuffled"), ("dpo", REFERENCE))


def metric_roles(model_args: dict[str, Any]) -> dict[str, str]:
    """How each evaluation metric takes part in a stage-2 config's training ("none": it does not).

    The ablation's runs keep their last checkpoint, so no metric chooses one.
    """
    roles: dict[str, list[str]] = {name: [] for name in METRICS}

    def mark(judge_type: str, role: str) -> None:
        name = {"lpips": "lpips"}.get(judge_type, judge_type)
        if name in roles:
            roles[name].append(role)

    spec = JudgeSpec.from_module_args(model_args)
    mark(spec.backend, "judge")
    for partner in spec.compose.unanimous_with:
        mark(str(partner), "unanimity partner")
    for partner in spec.compose.weighted:
        mark(str(partner), "judge ensemble")
    if float(model_args.get("perceptual_weight", 0.0) or 0.0) > 0:
        mark(str(model_args.get("perceptual_type", "lpips")), "loss term")
    return {k: ", ".join(v) if v else "none" for k, v in roles.items()}


def decode_at(model: Any, data: bytes, seed: int) -> torch.Tensor:
    """Decode one stream's tokens with another noise seed, (1, 3, H, W)."""
    from compressai_vlic.bitstream import resample, unpack

    header, _ = unpack(data)
    with torch.no_grad():
        return model.decompress([[resample(data, seed)]], (header.height, header.width))["x_hat"]


def evaluate_models(
    models: dict[str, Any],
    images: list[Path],
    rows_path: Path,
    decode_seeds: list[int],
    metrics: list[str],
    evaluate: bool = True,
    shard: tuple[int, int] = (0, 1),
) -> list[dict[str, Any]]:
    """One row per (photo, model), appended to ``rows_path`` (rows already there are kept);
    ``evaluate=False`` only reads the rows there (a report while another process evaluates).
    ``shard=(k, n)`` evaluates photos k, k + n, ... only (one of n processes sharing the file)."""
    from compressai_vlic.image_io import load_image
    from compressai_vlic.jsonl import JsonlAppender, read_jsonl
    from compressai_vlic.metrics import get_metric

    # a row torn by a kill is not read: it is evaluated again
    done = {(row["image"], row["model"]): row for row in read_jsonl(rows_path)}
    if not evaluate:
        return list(done.values())
    meters = {name: get_metric(METRICS[name][0], **METRICS[name][1]) for name in metrics}
    pair_meters = {n: meters[n] for n in ("lpips", "dists") if n in meters}
    k, n = shard
    with JsonlAppender(rows_path) as out:
        for image in images[k::n]:
            x = load_image(image).tensor[None]
            pixels = x.shape[-2] * x.shape[-1]
            for key, model in models.items():
                if (image.name, key) in done:
                    continue
                with torch.no_grad():
                    data = bytes(model.compress(x, seed=decode_seeds[0])["strings"][0][0])
                decodes = [decode_at(model, data, s).clamp(0, 1) for s in decode_seeds]
                values = {
                    name: [float(meter(d, x)[0]) for d in decodes] for name, meter in meters.items()
                }
                between = {}
                if len(decodes) > 1:
                    between = {
                        n: float(m(decodes[1], decodes[0])[0]) for n, m in pair_meters.items()
                    }
                row = {
                    "image": image.name,
                    "model": key,
                    "bpp": 8.0 * len(data) / pixels,
                    "decode_seeds": decode_seeds,
                    "metrics": values,
                    "between_decodes": between,
                }
                out.write(row)
                done[(image.name, key)] = row
    return list(done.values())


def label_agreement(
    pairs: Path, metrics: list[str], n_boot: int = 2000, seed: int = 0
) -> dict[str, dict[str, Any]]:
    """How often the judge's winner of a pair is also the better decode by each metric (against
    the pair's original): 0.5 means the labels carry nothing that metric measures, so learning
    them cannot move it. Ties count one half; abstained pairs are left out.

    Returns ``{metric: {"agreement", "low", "high", "pairs", "mean_gap"}}`` (95% bootstrap
    interval over pairs).
    """
    import numpy as np

    from compressai_vlic.image_io import load_image
    from compressai_vlic.judges.audit.statistics import bootstrap_mean
    from compressai_vlic.judges.dataset import read_preference_dataset
    from compressai_vlic.metrics import get_metric

    rows = [r for r in read_preference_dataset(pairs) if r.winner is not None]
    out: dict[str, dict[str, Any]] = {}
    if not rows:
        return out
    images = [
        tuple(load_image(p).tensor[None] for p in (r.reference, r.winner, r.loser)) for r in rows
    ]
    for name in metrics:
        meter = get_metric(METRICS[name][0], **METRICS[name][1])
        higher = METRICS[name][2]
        agree, gaps = [], []
        with torch.no_grad():
            for x, w, loser in images:
                vw, vl = float(meter(w, x)[0]), float(meter(loser, x)[0])
                better = vw - vl if higher else vl - vw
                agree.append(1.0 if better > 0 else 0.0 if better < 0 else 0.5)
                gaps.append(abs(vw - vl))
        est = bootstrap_mean(np.array(agree), n_boot, np.random.default_rng(seed))
        out[name] = {
            "agreement": est.value,
            "low": est.low,
            "high": est.high,
            "pairs": len(rows),
            "mean_gap": float(np.mean(gaps)),
        }
    return out


def heldout_dpo_diagnostics(
    model_args: dict[str, Any], pairs: Path, codecs: dict[str, Any], draws: int = 4, n: int = 32
) -> dict[str, dict[str, float]]:
    """Implicit DPO accuracy and reward margin of each trained codec on held-out judged pairs.

    The pairs are tiles of decodes by the stage-1 reference; every codec is scored against that
    reference with the same pairs, tiles, timesteps and noise.
    """
    from compressai_vlic_lightning.stage2 import Stage2Module

    keep = {
        k: v
        for k, v in model_args.items()
        if k in ("weights", "init_from", "beta", "weighting_type", "label_type", "t_sampling_type")
    }
    module = Stage2Module(**keep, preference_type="offline", preference_dataset=str(pairs))
    cfg = module.model.config
    from compressai_vlic_lightning.preferences import OfflinePreferences

    offline = OfflinePreferences.from_dataset(pairs, cfg.image_size, cfg.num_tokens, cfg.fsq_levels)
    out = {}
    for key, codec in codecs.items():
        module.model.load_state_dict(codec.state_dict())
        module.eval()
        gen = torch.Generator().manual_seed(0)
        acc, margin = [], []
        with torch.no_grad():
            for _ in range(draws):
                batch = offline.sample(n, gen)
                res = module.criterion(*module.dpo_losses(batch))
                acc.append(float(res.implicit_accuracy))
                margin.append(float(res.reward_margin))
        out[key] = {
            "heldout_implicit_accuracy": sum(acc) / len(acc),
            "heldout_reward_margin": sum(margin) / len(margin),
        }
    return out


def _training_diagnostics(folder: Path, last: int = 10) -> dict[str, float]:
    rows = read_metrics(folder)
    out: dict[str, float] = {}
    for name in ("train/flow", "train/implicit_accuracy", "train/reward_margin", "train/dpo_loss"):
        values = [r[name] for r in rows if name in r][-last:]
        if values:
            out[name.split("/")[1] + f"_last{last}"] = sum(values) / len(values)
    return out


def _fmt(v: float, digits: int = 4) -> str:
    return "n/a" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.{digits}f}"


def build_report(
    rows: list[dict[str, Any]],
    specs: list[RunSpec],
    roles: dict[str, str],
    n_boot: int,
    groups: dict[str, str] | None = None,
) -> dict[str, Any]:
    """Means per arm, paired differences and the complete-cell bookkeeping, as one JSON object."""
    arms = sorted({s.arm for s in specs}, key=lambda a: ("dpo", "control", "shuffled").index(a))
    by_model: dict[str, dict[str, dict[str, Any]]] = {}
    for row in rows:
        by_model.setdefault(row["model"], {})[row["image"]] = row
    # seeds whose every arm has been evaluated (a partial evaluation reports those)
    seeds = sorted({s.seed for s in specs if all(f"{a}/seed{s.seed}" in by_model for a in arms)})
    keys = [f"{a}/seed{s}" for a in arms for s in seeds]
    complete = sorted(
        set.intersection(*(set(by_model.get(k, {})) for k in [*keys, REFERENCE]))
        if seeds and REFERENCE in by_model
        else set()
    )
    names = list(next(iter(rows))["metrics"]) if rows else []
    names = [*names, "bpp"]
    table: dict[str, Any] = {
        "images": len(complete),
        "seeds": seeds,
        "arms": arms,
        "roles": {**roles, "bpp": "none"},
        "means": {},
        "differences": {},
    }
    if not complete:
        return table

    def value(row: dict[str, Any], name: str) -> float:
        if name == "bpp":
            return float(row["bpp"])
        vals = row["metrics"][name]
        return sum(vals) / len(vals)

    for name in names:
        per_arm = {
            arm: {
                s: {i: value(by_model[f"{arm}/seed{s}"][i], name) for i in complete} for s in seeds
            }
            for arm in arms
        }
        ref = {s: {i: value(by_model[REFERENCE][i], name) for i in complete} for s in seeds}
        table["means"][name] = {
            arm: dict(zip(("mean", "seed_sd"), arm_means(per_arm[arm]), strict=True))
            for arm in arms
        }
        table["means"][name][REFERENCE] = {"mean": arm_means(ref)[0], "seed_sd": 0.0}
        diffs = {}
        for a, b in COMPARISONS:
            if a in per_arm and (b in per_arm or b == REFERENCE):
                other = ref if b == REFERENCE else per_arm[b]
                d = paired_difference(per_arm[a], other, (a, b), n_boot=n_boot)
                entry = d.to_dict()
                if groups:
                    g = paired_difference(per_arm[a], other, (a, b), n_boot=n_boot, groups=groups)
                    entry["photo_low"], entry["photo_high"] = g.low, g.high
                diffs[f"{a}-{b}"] = entry
        table["differences"][name] = diffs
    between: dict[str, dict[str, float]] = {}
    for arm in [*arms, REFERENCE]:
        models = [REFERENCE] if arm == REFERENCE else [f"{arm}/seed{s}" for s in seeds]
        for metric in ("lpips", "dists"):
            vals = [
                by_model[m][i]["between_decodes"][metric]
                for m in models
                for i in complete
                if metric in by_model[m][i].get("between_decodes", {})
            ]
            if vals:
                between.setdefault(arm, {})[f"{metric}_between_decodes"] = sum(vals) / len(vals)
    table["between_decodes"] = between
    return table


def markdown(table: dict[str, Any], diagnostics: dict[str, Any]) -> str:
    """The report as markdown: the arms table, the differences and the diagnostics."""
    arms, ref = table["arms"], REFERENCE
    lines = [
        f"Held-out photos: {table['images']}; training seeds: {table['seeds']}. "
        "Role: how the metric takes part in training (none = independent).",
        "",
        "| metric | role | " + " | ".join([*arms, ref]) + " |",
        "|---|---|" + "---|" * (len(arms) + 1),
    ]
    for name, per in table["means"].items():
        cells = [f"{_fmt(per[a]['mean'])} ± {_fmt(per[a]['seed_sd'])}" for a in arms]
        lines.append(
            f"| {name} | {table['roles'].get(name, 'none')} | "
            + " | ".join(cells)
            + f" | {_fmt(per[ref]['mean'])} |"
        )
    lines += [
        "",
        "| metric | difference | mean [95% over photos] | per training seed |",
        "|---|---|---|---|",
    ]
    for name, diffs in table["differences"].items():
        for label, d in diffs.items():
            extra = ""
            if "photo_low" in d:
                extra = f" (by source photo [{_fmt(d['photo_low'])}, {_fmt(d['photo_high'])}])"
            per_seed = ", ".join(_fmt(v) for v in d["per_seed"])
            lines.append(
                f"| {name} | {label} | {_fmt(d['mean'])} [{_fmt(d['low'])}, {_fmt(d['high'])}]{extra} | {per_seed} |"
            )
    agreement = table.get("label_agreement") or {}
    if agreement:
        lines += [
            "",
            "Does the judge's label agree with each metric? Share of the decided training pairs "
            "whose judged winner is also better by the metric (0.5: the labels carry nothing it "
            "measures), with a 95% interval over pairs:",
            "",
            "| metric | role | agreement [95% CI] | pairs | mean gap between the two decodes |",
            "|---|---|---|---|---|",
        ]
        for name, a in agreement.items():
            lines.append(
                f"| {name} | {table['roles'].get(name, 'none')} | {_fmt(a['agreement'])} "
                f"[{_fmt(a['low'])}, {_fmt(a['high'])}] | {a['pairs']} | {_fmt(a['mean_gap'])} |"
            )
    if diagnostics:
        keys = sorted({k for v in diagnostics.values() for k in v})
        lines += [
            "",
            "| diagnostic | " + " | ".join(diagnostics) + " |",
            "|---|" + "---|" * len(diagnostics),
        ]
        for k in keys:
            lines.append(
                f"| {k} | " + " | ".join(_fmt(diagnostics[a].get(k)) for a in diagnostics) + " |"
            )
    return "\n".join(lines) + "\n"


def plot_metrics(table: dict[str, Any], out_dir: Path) -> list[Path]:
    """One figure per metric: arm means (error bar: spread over seeds) and the differences."""
    from compressai_vlic.evaluation.plots import _pyplot

    plt = _pyplot()
    paths = []
    for name, per in table["means"].items():
        fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(8, 3))
        labels = list(per)
        ax1.bar(labels, [per[a]["mean"] for a in labels], yerr=[per[a]["seed_sd"] for a in labels])
        lo = min(per[a]["mean"] for a in labels)
        hi = max(per[a]["mean"] for a in labels)
        pad = (hi - lo) * 2 + 1e-6
        ax1.set_ylim(lo - pad, hi + pad)
        ax1.set_title(f"{name} ({table['roles'].get(name, 'none')})")
        diffs = table["differences"].get(name, {})
        for k, d in enumerate(diffs.values()):
            ax2.errorbar(
                [k], [d["mean"]], yerr=[[d["mean"] - d["low"]], [d["high"] - d["mean"]]], fmt="o"
            )
        ax2.axhline(0, color="grey", lw=0.8)
        ax2.set_xticks(range(len(diffs)), list(diffs))
        ax2.set_title("difference, 95% over photos")
        fig.tight_layout()
        path = out_dir / f"{name}.png"
        fig.savefig(path, dpi=100)
        plt.close(fig)
        paths.append(path)
    return paths


def evaluate_ablation(
    out: Path,
    specs: list[RunSpec],
    manifest: Manifest,
    heldout: Path,
    decode_seeds: list[int],
    metrics: list[str],
    heldout_pairs: int = 48,
    pair_crop: int = 128,
    n_boot: int = 2000,
    report_only: bool = False,
    shard: tuple[int, int] | None = None,
    helpers: list[list[str]] | None = None,
) -> dict[str, Any]:
    """Evaluate every finished run and the reference; write report.md / report.json / plots.

    Args:
        report_only: write the report from the rows evaluated so far, evaluating nothing more.
        shard: ``(k, n)``: evaluate photos k, k + n, ... only and write no report (one of n
            processes or machines sharing ``OUT/eval``; a ``report_only`` call writes it).
        helpers: commands started first (other shards' processes); this process evaluates
            shard 0, waits for them, then writes the report from all rows.
    """
    import yaml

    from compressai_vlic.errors import ConfigError
    from compressai_vlic.image_io import find_images
    from compressai_vlic.judges.dataset import read_preference_dataset
    from compressai_vlic.judges.types import Choice
    from compressai_vlic_lightning.common import load_codec

    unknown = sorted(set(metrics) - set(METRICS))
    if unknown:
        raise ConfigError(f"unknown ablation metrics {unknown}; choose from {sorted(METRICS)}")
    steps = int(manifest.data["settings"]["steps"])
    base = yaml.safe_load(specs[0].config_path.read_text())
    model_args = base["model"]["init_args"]
    reference = manifest.data["settings"]["reference"]
    eval_dir = out / "eval"
    eval_dir.mkdir(parents=True, exist_ok=True)
    models: dict[str, Any] = {REFERENCE: load_codec(reference, "ema").eval()}
    for spec in specs:
        if checkpoint_step(spec.last_ckpt) == steps:
            models[spec.key] = load_codec(str(spec.last_ckpt), "ema").eval()
        else:
            log.warning("%s is not finished; left out of the evaluation", spec.key)
    images = sorted(find_images(heldout))
    if not images:
        raise ConfigError(f"{heldout}: no held-out photos")
    rows_path = eval_dir / "rows.jsonl"
    if shard is not None:
        evaluate_models(models, images, rows_path, decode_seeds, metrics, shard=shard)
        return {}
    started = [] if report_only else [subprocess.Popen(cmd) for cmd in helpers or []]
    try:
        diagnostics: dict[str, dict[str, float]] = {}
        pairs_path = eval_dir / "heldout_pairs.jsonl"
        heldout_pairs = (
            heldout_pairs if (eval_dir / "heldout_pairs.done").is_file() or not report_only else 0
        )
        if heldout_pairs > 0:
            if not (eval_dir / "heldout_pairs.done").is_file() and not report_only:
                cut_crops(images, eval_dir / "heldout_crops", heldout_pairs, pair_crop, seed=1)
                make_pair_set(
                    reference,
                    eval_dir / "heldout_crops",
                    pairs_path,
                    judge_config_of(model_args),
                    num_steps=model_args.get("decode_num_steps"),
                )
                atomic_write_text(eval_dir / "heldout_pairs.done", "")
            held = heldout_dpo_diagnostics(model_args, pairs_path, models)
            rows = read_preference_dataset(pairs_path)
            heldout_abstain = sum(r.label is Choice.ABSTAIN for r in rows) / max(1, len(rows))
        shards = len(started) + 1
        rows = evaluate_models(
            models, images, rows_path, decode_seeds, metrics, not report_only, (0, shards)
        )
    finally:
        codes = [p.wait() for p in started]
    if any(codes):
        raise ConfigError(
            f"evaluation helper processes exited with {codes}; rerun to evaluate what is missing"
        )
    if started:  # with the rows the helpers wrote
        rows = evaluate_models(models, images, rows_path, decode_seeds, metrics, evaluate=False)
    roles = metric_roles(model_args)
    groups = (
        {p.name: p.name.split("@")[0] for p in images}
        if any("@" in p.name for p in images)
        else None
    )
    table = build_report(rows, specs, roles, n_boot, groups)
    pairs_info = manifest.data.get("pairs", {})
    agreement_path = eval_dir / "label_agreement.json"
    saved = json.loads(agreement_path.read_text()) if agreement_path.is_file() else None
    if saved is not None and (report_only or set(saved) == set(metrics)):
        table["label_agreement"] = saved  # computed once per metric set (the pairs do not change)
    elif pairs_info.get("path") and Path(pairs_info["path"]).is_file() and not report_only:
        table["label_agreement"] = label_agreement(Path(pairs_info["path"]), metrics)
        atomic_write_text(agreement_path, json.dumps(table["label_agreement"], indent=2) + "\n")
    train_abstain = None
    if pairs_info.get("pairs"):
        train_abstain = pairs_info["abstained"] / pairs_info["pairs"]
    for arm in [*table["arms"], REFERENCE]:
        keys = (
            [REFERENCE]
            if arm == REFERENCE
            else [s.key for s in specs if s.arm == arm and s.key in models]
        )
        entry: dict[str, float] = {}
        if heldout_pairs > 0:
            for k in ("heldout_implicit_accuracy", "heldout_reward_margin"):
                entry[k] = sum(held[m][k] for m in keys) / len(keys)
            entry["judge_abstain_heldout_pairs"] = heldout_abstain
        if train_abstain is not None:
            entry["judge_abstain_training_pairs"] = train_abstain
        if arm != REFERENCE:
            per_run = [
                _training_diagnostics(s.folder) for s in specs if s.arm == arm and s.key in models
            ]
            for k in sorted({k for d in per_run for k in d}):
                entry[k] = sum(d[k] for d in per_run if k in d) / len(per_run)
        entry.update(table.get("between_decodes", {}).get(arm, {}))
        diagnostics[arm] = entry
    table["diagnostics"] = diagnostics
    table["fid_kid"] = (
        f"not computed: {len(images)} held-out photos are too few patches for FID/KID"
        if len(images) < 500
        else "not computed"
    )
    atomic_write_text(eval_dir / "report.json", json.dumps(table, indent=2) + "\n")
    text = markdown(table, diagnostics)
    atomic_write_text(eval_dir / "report.md", text)
    if table["means"]:
        plot_metrics(table, eval_dir)
    print(text, flush=True)
    return table
