"""The demo's report: report.json, report.md, the plots and side-by-side images, the summary
printed at the end, and the measurements they are made from (timings, CSV logs, the machine)."""

from __future__ import annotations

import csv
import json
import os
import platform
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

from compressai_vlic.extras import require
from compressai_vlic_lightning.demo.plan import (
    AT_RATE_CODECS,
    LABELS,
    DemoReport,
    DemoRun,
    cpu_time,
)


def machine_info() -> dict[str, Any]:
    import torch

    return {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "cuda": torch.cuda.is_available(),
    }


def last_metrics(csv_path: Path) -> dict[str, float]:
    last: dict[str, float] = {}
    if not csv_path.is_file():
        return last
    with csv_path.open() as fh:
        for row in csv.DictReader(fh):
            for k, v in row.items():
                if v not in ("", None) and k not in ("epoch", "step"):
                    last[k] = float(v)
    return last


def csv_series(csv_path: Path, key: str) -> tuple[list[int], list[float]]:
    steps, values = [], []
    if csv_path.is_file():
        with csv_path.open() as fh:
            for row in csv.DictReader(fh):
                if row.get(key) not in ("", None):
                    steps.append(int(float(row["step"])))
                    values.append(float(row[key]))
    return steps, values


#: Which direction is better, per reported metric.
LOWER_IS_BETTER = {"lpips", "lpips_vgg", "dists", "bpp"}


def demo_metric_roles(run: DemoRun) -> dict[str, str]:
    """How each reported metric takes part in the demo's training ("none": it does not): the
    stage-2 judge, its unanimity partner, the stage-1 and stage-2 loss terms, the checkpoint
    choice (``val_lpips``)."""
    from compressai_vlic_lightning.ablation_eval import metric_roles

    stage2 = {  # with the run's judge (the config's, or the VLM the command names)
        **{k: v for k, v in run.configs.stage2["model"]["init_args"].items() if "judge" not in k},
        "judge": run.judge_spec,
    }
    roles = {k: [] if v == "none" else [v] for k, v in metric_roles(stage2).items()}
    stage1 = run.configs.stage1["model"]["init_args"]
    if float(stage1.get("perceptual_weight", 0.0) or 0.0) > 0:
        name = str(stage1.get("perceptual_type", "lpips"))
        if name in roles and not any("loss term" in r for r in roles[name]):
            roles[name].append("loss term (stage 1)")
    if run.plan.selection_type == "val_lpips":
        roles["lpips"].append("checkpoint choice")
    roles["bpp"] = []
    return {k: ", ".join(v) if v else "none" for k, v in roles.items()}


def heldout_differences(
    report: DemoReport, roles: dict[str, str], n_boot: int = 2000
) -> dict[str, Any]:
    """After minus before post-training on the held-out photos, per metric: the mean over photos,
    a 95% paired bootstrap interval over photos, the metric's role in training, and whether
    post-training made it worse beyond that interval."""
    from compressai_vlic.evaluation.paired import paired_difference

    out: dict[str, Any] = {}
    for name in ["bpp", *report.compare.get("metrics", [])]:
        before = {e["image"]: e.get(f"before_{name}") for e in report.per_image}
        after = {e["image"]: e.get(f"after_{name}") for e in report.per_image}
        images = [i for i in before if before[i] is not None and after[i] is not None]
        if not images:
            continue
        diff = paired_difference(
            {0: {i: after[i] for i in images}},
            {0: {i: before[i] for i in images}},
            ("after", "before"),
            n_boot=n_boot if len(images) > 1 else 0,
        )
        lower = name in LOWER_IS_BETTER
        out[name] = {
            "role": roles.get(name, "none"),
            "before": sum(before[i] for i in images) / len(images),
            "after": sum(after[i] for i in images) / len(images),
            "delta": diff.mean,
            "ci95": [diff.low, diff.high],
            "photos": len(images),
            "worse_beyond_interval": diff.low > 0 if lower else diff.high < 0,
            "better_beyond_interval": diff.high < 0 if lower else diff.low > 0,
        }
    report.summary["after_minus_before"] = out
    return out


def _plots(run: DemoRun) -> dict[str, str]:
    matplotlib = require("matplotlib", "eval", "The demo's plots")
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out, result = run.out, run.comparison
    files = {}
    metrics = [
        (m, label)
        for m, label in (("psnr", "PSNR (dB)"), ("lpips", "LPIPS"), ("ssimulacra2", "SSIMULACRA 2"))
        if m in result.metric_names
    ]
    fig, axes = plt.subplots(1, len(metrics), figsize=(4.4 * len(metrics), 3.8), squeeze=False)
    styles = {
        "jpeg": ("tab:red", "o-", "JPEG"),
        "webp": ("tab:green", "s-", "WebP"),
        "avif": ("tab:purple", "^-", "AVIF"),
    }
    for ax, (key, label) in zip(axes[0], metrics, strict=True):
        for codec, (color, style, name) in styles.items():
            curve = result.curve(codec) if codec in result.codecs else []
            if curve:
                ax.plot(
                    [p.bpp for p in curve],
                    [p.metrics.get(key) for p in curve],
                    style,
                    color=color,
                    label=name,
                    ms=4,
                )
            matched = (
                result.curve(f"{codec}-at-rate") if f"{codec}-at-rate" in result.codecs else []
            )
            for p in matched:
                ax.scatter(
                    [p.bpp], [p.metrics.get(key)], color=color, marker="x", s=70, zorder=3,
                    label=f"{name} at VLIC's rate",
                )  # fmt: skip
        for codec, color, marker in (
            ("vlic-before", "tab:blue", "D"),
            ("vlic-after", "tab:orange", "*"),
        ):
            for p in result.curve(codec):
                ax.scatter(
                    [p.bpp], [p.metrics.get(key)], color=color, marker=marker, s=150, zorder=4,
                    label=f"VLIC {LABELS[codec.removeprefix('vlic-')]}",
                )  # fmt: skip
        ax.set_xlabel("bits per pixel (real files and bitstreams)")
        ax.set_ylabel(label + (" (lower is better)" if key == "lpips" else ""))
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=7)
    fig.suptitle("Held-out photos (means over images)", fontsize=10)
    fig.tight_layout()
    files["rate_quality_plot"] = str(out / "rate_quality.png")
    fig.savefig(files["rate_quality_plot"], dpi=120)
    plt.close(fig)

    files["training_curves_plot"] = str(training_curves(out, run.report))
    return files


def training_curves(out: Path, report: DemoReport) -> Path:
    """training_curves.png from the stages' CSV logs under ``out``."""
    import matplotlib.pyplot as plt

    stage1_csv, stage2_csv = out / "stage1" / "metrics.csv", out / "stage2" / "metrics.csv"
    refit_csv = out / "prior_refit" / "metrics.csv"
    fig, axes = plt.subplots(1, 4, figsize=(16.4, 3.4))
    panels = (
        (
            "stage 1 losses",
            stage1_csv,
            (
                ("train/flow", "flow"),
                ("train/perceptual", "perceptual"),
                ("train/bpp_prior", "prior bpp"),
            ),
        ),
        (
            "stage 2 Diffusion-DPO",
            stage2_csv,
            (("train/dpo_loss", "DPO loss"), ("train/implicit_accuracy", "implicit accuracy")),
        ),
        (
            "online preference buffer",
            stage2_csv,
            (("buffer/staleness", "buffer staleness (steps)"), ("buffer/size", "buffer size")),
        ),
        (
            ("prior refit", refit_csv, (("train/bits_per_token", "bits per token"),))
            if not report.prior_refit.get("skipped")
            else (
                "stage 2 regulariser (prior refit skipped)",
                stage2_csv,
                (("train/flow", "flow"), ("train/perceptual", "LPIPS term")),
            )
        ),
    )
    for ax, (title, csv_path, series) in zip(axes, panels, strict=True):
        for key, label in series:
            steps, values = csv_series(csv_path, key)
            ax.plot(steps, values, label=label)
        ax.set_title(title)
        ax.set_xlabel("step")
        ax.legend(fontsize=8)
    fig.tight_layout()
    path = out / "training_curves.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _fmt(value: Any, digits: int = 3) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def _markdown(report: DemoReport, out: Path) -> str:
    """report.md: what a reader wants first, with the pictures."""
    s = report.summary
    duel = s.get("judge_2afc_crops", {})
    diffs = s.get("after_minus_before", {})
    metrics = report.compare.get("metrics", [])
    lines = [
        "# VLIC demo report",
        "",
        f"`{report.command}`: preset `{report.preset}`, stage 1 from "
        + (
            "the shipped `tiny` weights (short fine-tune)"
            if report.init_type == "shipped"
            else "random weights (all of stage 1)"
        )
        + f", judge `{report.judge['judge_type']}`"
        + (
            f" unanimous with {', '.join(report.judge['judge_compose']['unanimous_with'])}"
            if (report.judge.get("judge_compose") or {}).get("unanimous_with")
            else ""
        )
        + f", {report.timings_s.get('total', 0) / 60:.1f} min in all "
        + f"({report.cpu_s.get('total', 0) / 60:.1f} CPU minutes).",
        "",
        "## Held-out photos",
        "",
        "Original, the codec before and after post-training, and JPEG and WebP at the lowest "
        "quality whose file is at least as large as the post-trained codec's bitstream.",
        "",
    ]
    head = ["codec", "setting", "bpp", *metrics]
    for entry in report.per_image:
        lines += [f"### {entry['image']}", "", f"![{entry['image']}](side_by_side/{Path(entry['side_by_side']).name})", ""]  # fmt: skip
        lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for key, label in (
            ("before", LABELS["before"]),
            ("after", LABELS["after"]),
            *((c, LABELS[c]) for c in AT_RATE_CODECS),
        ):
            cells = [label, entry.get(f"{key}_setting", ""), _fmt(entry.get(f"{key}_bpp"), 4)]
            cells += [_fmt(entry.get(f"{key}_{m}"), 4) for m in metrics]
            lines.append("| " + " | ".join(cells) + " |")
        lines.append("")
    lines += ["## Rate-quality", "", "![rate-quality](rate_quality.png)", ""]
    table = Path(report.compare.get("table_md", ""))
    if table.is_file():
        lines += [table.read_text().strip(), ""]
    lines += [
        "## After vs before post-training on the held-out photos",
        "",
        f"Mean over the {len(report.per_image)} held-out photos; the difference is after minus "
        "before with a 95% paired bootstrap interval over photos. Role: how the metric takes "
        "part in the demo's training (none = an independent metric: no loss term, label filter, "
        "checkpoint choice or judge uses it).",
        "",
        "| metric | role | before | after | after - before [95% CI] | |",
        "|---|---|---|---|---|---|",
    ]
    for name, v in diffs.items():
        flag = (
            "**worse after post-training**"
            if v["worse_beyond_interval"]
            else "better after post-training"
            if v["better_beyond_interval"]
            else "no difference beyond the interval"
        )
        lines.append(
            f"| {name} | {v['role']} | {v['before']:.4f} | {v['after']:.4f} | "
            f"{v['delta']:+.4f} [{v['ci95'][0]:+.4f}, {v['ci95'][1]:+.4f}] | {flag} |"
        )
    lines += [
        "",
        "## The judges: after vs before post-training",
        "",
        f"{duel.get('questions', 0)} questions per judge: {duel.get('crops', 0)} held-out "
        f"{duel.get('crop_size')}-px crops of {len(duel.get('photos', []))} photos x "
        f"{duel.get('seeds', 0)} decode seeds, through real bitstreams; intervals: "
        f"{duel.get('ci_method')}.",
        "",
        "| judge | role | after wins | before wins | abstains | after-vs-before win rate [95% CI] |",
        "|---|---|---|---|---|---|",
    ]
    for name, j in duel.get("judges", {}).items():
        rate, ci = j.get("after_win_rate"), j.get("after_win_rate_ci95")
        cell = f"{rate:.1%} [{ci[0]:.1%}, {ci[1]:.1%}]" if rate is not None else "none decided"
        lines.append(
            f"| {name} | {j['role']} | {j['after']} | {j['before']} | {j['abstain']} | {cell} |"
        )
    sel = report.stage2.get("selection")
    if sel:
        lines += [
            "",
            f"Which post-trained codec is compared: of the checkpoints saved during post-training "
            f"and the stage-1 model, the one with the lowest LPIPS on {len(sel['photos'])} "
            f"training photos ({', '.join(sel['photos'])}; real bitstreams, not the held-out "
            "photos above):",
            "",
            "| checkpoint | LPIPS (training photos) | bpp | |",
            "|---|---|---|---|",
        ]
        for label, value in sel["scores"].items():
            mark = "**kept**" if label == sel["chosen"] else ""
            lines.append(f"| {label} | {value:.4f} | {sel['bpp'][label]:.4f} | {mark} |")
        if sel["kept_start"]:
            lines += [
                "",
                'No post-trained checkpoint beat stage 1 there, so the codec marked "after" is '
                "the stage-1 model (with its prior refit when one ran).",
            ]
    res = report.compressai_eval.get("results", {})
    lines += [
        "",
        "## CompressAI eval_model",
        "",
        f"`{report.compressai_eval.get('command', '')}`",
        "",
        "| checkpoint | bpp | PSNR | MS-SSIM |",
        "|---|---|---|---|",
    ]
    for i, label in enumerate(("before", "after")):
        row = [res.get(k, [None, None])[i] for k in ("bpp", "psnr-rgb", "ms-ssim-rgb")]
        lines.append(f"| {LABELS[label]} | " + " | ".join(_fmt(v, 4) for v in row) + " |")
    lines += [
        "",
        "(eval_model pads each image with zeros to a multiple of 64 pixels, so its bpp is a "
        "little above the unpadded bitstreams above.)",
        "",
        "## Training",
        "",
        *(
            [f"Prior refit skipped: {report.prior_refit['skipped']}.", ""]
            if report.prior_refit.get("skipped")
            else []
        ),
        "![training curves](training_curves.png)",
        "",
        "Timings (s): " + ", ".join(f"{k} {v:.0f}" for k, v in report.timings_s.items()),
        "",
        "CPU time (s): " + ", ".join(f"{k} {v:.0f}" for k, v in report.cpu_s.items()),
        "",
    ]
    return "\n".join(lines)


def write_report(run: DemoRun) -> Path:
    """report.json, report.md and the plots; prints the summary."""
    report, out = run.report, run.out
    heldout_differences(report, demo_metric_roles(run), run.plan.bootstrap_samples)
    report.timings_s["total"] = time.perf_counter() - run.t_start
    report.cpu_s["total"] = cpu_time() - run.cpu_start
    report.files = {
        "report": str(out / "report.json"),
        "report_md": str(out / "report.md"),
        "side_by_side": str(out / "side_by_side"),
        "before_checkpoint": str(run.exported["before"]),
        "after_checkpoint": str(run.exported["after"]),
        "compressai_eval_json": str(out / "eval" / "compressai_eval.json"),
        "compare_folder": str(out / "eval" / "compare"),
        **_plots(run),
    }
    (out / "report.json").write_text(json.dumps(asdict(report), indent=2, default=str))
    (out / "report.md").write_text(_markdown(report, out))
    _print_summary(report)
    print(
        f"[demo] report written to {out} (report.md, report.json, rate_quality.png, side_by_side/)",
        flush=True,
    )
    return out / "report.json"


def _print_summary(report: DemoReport) -> None:
    s = report.summary
    res = report.compressai_eval.get("results", {})
    print("[demo] CompressAI eval_model (real bitstreams, held-out photos):")
    print(f"         {'model':<24}{'bpp':>8}{'PSNR':>9}{'MS-SSIM':>10}")
    for i, label in enumerate(("before", "after")):
        row = [res.get(k, [None, None])[i] for k in ("bpp", "psnr-rgb", "ms-ssim-rgb")]
        print(
            f"         {LABELS[label]:<24}"
            + "".join(f"{v:>9.4f}" if v is not None else f"{'-':>9}" for v in row)
        )
    metrics = [m for m in ("psnr", "ssimulacra2", "lpips") if f"after_{m}" in s]
    print("[demo] compare on held-out photos (JPEG/WebP: lowest quality reaching the codec's bpp):")
    print(f"         {'codec':<24}{'bpp':>8}" + "".join(f"{m:>13}" for m in metrics))
    for key in ("before", "after", *AT_RATE_CODECS):
        label = LABELS[key]
        if key in AT_RATE_CODECS and report.per_image:
            label += " " + ",".join(str(e.get(f"{key}_setting", "")) for e in report.per_image)
        values = [s.get(f"{key}_bpp"), *(s.get(f"{key}_{m}") for m in metrics)]
        print(
            f"         {label:<24}"
            + "".join(
                (f"{v:>8.4f}" if i == 0 else f"{v:>13.4f}")
                if v is not None
                else f"{'-':>{8 if i == 0 else 13}}"
                for i, v in enumerate(values)
            )
        )
    duel = s["judge_2afc_crops"]
    for name, j in duel["judges"].items():
        rate, ci = j["after_win_rate"], j["after_win_rate_ci95"]
        print(
            f"[demo] {name} on {duel['questions']} held-out crops x seeds, after vs before: "
            f"after wins {j['after']}, before wins {j['before']}, abstain {j['abstain']}"
            + (
                f": win rate {rate:.1%} (95% CI {ci[0]:.1%}-{ci[1]:.1%}, over photos)"
                if rate is not None
                else ""
            )
        )
    print("[demo] held-out photos, after - before post-training [95% CI over photos] (role):")
    for name, v in s["after_minus_before"].items():
        flag = (
            "  WORSE after post-training"
            if v["worse_beyond_interval"]
            else "  better after post-training"
            if v["better_beyond_interval"]
            else ""
        )
        print(
            f"         {name:<12} {v['delta']:+.4f} [{v['ci95'][0]:+.4f}, {v['ci95'][1]:+.4f}] "
            f"({v['role']}){flag}"
        )
    print("[demo] timings (s): " + ", ".join(f"{k} {v:.0f}" for k, v in report.timings_s.items()))
    print("[demo] CPU time (s): " + ", ".join(f"{k} {v:.0f}" for k, v in report.cpu_s.items()))


def side_by_side_image(panels: list[tuple[str, Any]], path: Path) -> Path:
    from PIL import Image, ImageDraw

    from compressai_vlic.image_io import to_uint8_array

    tiles = [
        Image.fromarray(to_uint8_array(img[0] if img.dim() == 4 else img)) for _, img in panels
    ]
    w, h = tiles[0].size
    header, gap = 30, 4
    canvas = Image.new("RGB", (len(tiles) * w + (len(tiles) - 1) * gap, h + header), "white")
    draw = ImageDraw.Draw(canvas)
    for i, ((label, _img), tile) in enumerate(zip(panels, tiles, strict=True)):
        x = i * (w + gap)
        canvas.paste(tile, (x, header))
        for j, line in enumerate(label.split("\n")[:2]):
            draw.text((x + 3, 2 + 13 * j), line, fill="black")
    path.parent.mkdir(parents=True, exist_ok=True)
    canvas.save(path)
    return path
