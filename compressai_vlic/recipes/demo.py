"""`compressai-vlic demo`: the main job on a CPU, end to end, in about 10 minutes on 2 cores.

1. pre-train the tiny "test" codec on the photos bundled with scikit-image / scikit-learn;
2. post-train it with Diffusion-DPO on judge preferences (SSIMULACRA 2 offline by default, a VLM
   behind an OpenAI-compatible endpoint when one is configured);
3. export both models as CompressAI checkpoints and evaluate them with CompressAI's own
   ``python -m compressai.utils.eval_model`` (a subprocess, real bitstreams) on held-out photos;
4. write a report folder: ``report.json``, ``rate_quality.png``, ``training_curves.png`` and
   side-by-side images (original | before | after post-training).

Nothing is downloaded. Training runs with one torch thread by default: the judge works in a
background thread on the second core, and small models run faster without thread hand-offs.
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import os
import platform
import shutil
import subprocess
import sys
import time
import warnings
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from compressai_vlic.errors import ConfigError
from compressai_vlic.extras import require
from compressai_vlic.judges.spec import JudgeSpec
from compressai_vlic.recipes.configs import load_config

JUDGE_URL_ENV = "COMPRESSAI_VLIC_JUDGE_BASE_URL"
JUDGE_MODEL_ENV = "COMPRESSAI_VLIC_JUDGE_MODEL"
PRESETS = ("full", "smoke")
#: The trainer's configs the demo runs (``configs/train/``): model, data and trainer settings.
STAGE1_CONFIG = "tiny_stage1"
STAGE2_CONFIG = "tiny_stage2"
EVAL_PHOTOS = ("chelsea", "flower")
# What the smoke preset changes from the configs (tests: the whole path in about a minute).
SMOKE_OVERRIDES = {
    "stage1_steps": 6,
    "stage2_steps": 4,
    "batch_size": 4,
    "buffer_size": 16,
    "refresh_every": 2,
    "warmup_pairs": 8,
    "dpo_batch_size": 4,
    "duel_crops_per_photo": 4,
}
# Trainer settings the demo takes from the configs; the rest (steps, logging, checkpoints, root
# folder) follow the plan.
_TRAINER_KEYS = (
    "accelerator",
    "devices",
    "precision",
    "check_val_every_n_epoch",
    "limit_val_batches",
    "num_sanity_val_steps",
    "gradient_clip_val",
)


@dataclass(frozen=True)
class DemoPlan:
    """Steps and sizes of one demo run (``full``: the configs as they are; ``smoke``: tests)."""

    stage1_steps: int
    stage2_steps: int
    batch_size: int
    stage1_lr: float
    stage2_lr: float
    buffer_size: int
    refresh_every: int
    warmup_pairs: int
    dpo_batch_size: int
    beta: float
    eval_max_side: int
    duel_crops_per_photo: int

    @classmethod
    def from_configs(cls, stage1: dict[str, Any], stage2: dict[str, Any]) -> DemoPlan:
        """The plan of the trainer's stage-1 and stage-2 configs (``full`` preset)."""
        m1, m2 = stage1["model"]["init_args"], stage2["model"]["init_args"]
        return cls(
            stage1_steps=stage1["trainer"]["max_steps"],
            stage2_steps=stage2["trainer"]["max_steps"],
            batch_size=stage1["data"]["init_args"]["batch_size"],
            stage1_lr=m1["lr"],
            stage2_lr=m2["lr"],
            buffer_size=m2["buffer_size"],
            refresh_every=m2["refresh_every"],
            warmup_pairs=m2["warmup_pairs"],
            dpo_batch_size=m2["dpo_batch_size"],
            beta=m2["beta"],
            eval_max_side=stage1["data"]["init_args"].get("max_side") or 256,
            duel_crops_per_photo=32,
        )

    @classmethod
    def preset(cls, name: str, configs: DemoConfigs | None = None) -> DemoPlan:
        if name not in PRESETS:
            raise ConfigError(f"unknown preset {name!r}; choose from {', '.join(PRESETS)}")
        configs = configs or DemoConfigs.load()
        plan = cls.from_configs(configs.stage1, configs.stage2)
        return plan if name == "full" else replace(plan, **SMOKE_OVERRIDES)


@dataclass(frozen=True)
class DemoConfigs:
    """The parsed stage-1 and stage-2 training configs."""

    stage1: dict[str, Any]
    stage2: dict[str, Any]

    @classmethod
    def load(cls) -> DemoConfigs:
        return cls(load_config(STAGE1_CONFIG), load_config(STAGE2_CONFIG))


@dataclass
class DemoReport:
    """Everything the demo measured; written as report.json."""

    command: str
    preset: str
    plan: dict[str, Any]
    machine: dict[str, Any]
    judge: dict[str, Any]
    timings_s: dict[str, float] = field(default_factory=dict)
    stage1: dict[str, Any] = field(default_factory=dict)
    stage2: dict[str, Any] = field(default_factory=dict)
    compressai_eval: dict[str, Any] = field(default_factory=dict)
    per_image: list[dict[str, Any]] = field(default_factory=list)
    summary: dict[str, Any] = field(default_factory=dict)
    files: dict[str, str] = field(default_factory=dict)


def _judge_settings(
    args: argparse.Namespace, stage2: dict[str, Any]
) -> tuple[str, dict[str, Any], dict[str, Any] | None]:
    """The run's judge, with the noise control of ``tiny_stage2.yaml`` (LPIPS unanimity)."""
    compose = stage2["model"]["init_args"].get("judge_compose") or None
    judge = args.judge or ("openai" if args.judge_base_url else "ssimulacra2")
    if judge == "openai":
        if not args.judge_model:
            raise ConfigError(f"a VLM judge needs --judge-model (or ${JUDGE_MODEL_ENV})")
        kwargs = {
            "model": args.judge_model,
            "base_url": args.judge_base_url,
            "api_key_env": args.judge_api_key_env or None,
            "prompt_type": "vlic-score",
        }
        # VLIC's noise control: both orders, and unanimity with LPIPS as the config says.
        return judge, kwargs, {**(compose or {}), "order_type": "symmetrize"}
    return judge, {}, compose


def _machine() -> dict[str, Any]:
    import torch

    return {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "cuda": torch.cuda.is_available(),
    }


def _last_metrics(csv_path: Path) -> dict[str, float]:
    last: dict[str, float] = {}
    if not csv_path.is_file():
        return last
    with csv_path.open() as fh:
        for row in csv.DictReader(fh):
            for k, v in row.items():
                if v not in ("", None) and k not in ("epoch", "step"):
                    last[k] = float(v)
    return last


def _series(csv_path: Path, key: str) -> tuple[list[int], list[float]]:
    steps, values = [], []
    if csv_path.is_file():
        with csv_path.open() as fh:
            for row in csv.DictReader(fh):
                if row.get(key) not in ("", None):
                    steps.append(int(float(row["step"])))
                    values.append(float(row[key]))
    return steps, values


def _trainer(
    root: Path, steps: int, callbacks: list[Any], log_every: int, config: dict[str, Any]
) -> Any:
    """A Trainer with the config's device and validation settings and the plan's step counts."""
    pl = require("pytorch_lightning", "train", "The demo's training")
    from pytorch_lightning.callbacks import ModelCheckpoint
    from pytorch_lightning.loggers import CSVLogger

    return pl.Trainer(
        **{k: config["trainer"][k] for k in _TRAINER_KEYS if k in config["trainer"]},
        max_steps=steps,
        default_root_dir=str(root),
        logger=CSVLogger(str(root), name="", version=""),
        callbacks=[
            *callbacks,
            ModelCheckpoint(dirpath=str(root / "checkpoints"), save_last=True, save_top_k=0),
        ],
        log_every_n_steps=log_every,
        val_check_interval=max(1, steps // 4),
        enable_progress_bar=sys.stderr.isatty(),
        enable_model_summary=False,
    )


def _callback_args(config: dict[str, Any], class_name: str) -> dict[str, Any] | None:
    """``init_args`` of the config's callback named ``class_name`` (None when it has none)."""
    for cb in config["trainer"].get("callbacks") or []:
        if cb["class_path"].rpartition(".")[2] == class_name:
            return dict(cb.get("init_args") or {})
    return None


def _eval_images(folder: Path, max_side: int) -> list[Path]:
    """Held-out photos at the training scale (longest side ``max_side``), as PNG files."""
    import torch.nn.functional as F
    from compressai_vlic_lightning.data import bundled_photos

    from compressai_vlic.image_io import save_png

    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, img in bundled_photos(EVAL_PHOTOS).items():
        # eval_model's MS-SSIM needs more than 160 px on the short side
        scale = max(max_side / max(img.shape[-2:]), 168 / min(img.shape[-2:]))
        size = (round(img.shape[-2] * scale), round(img.shape[-1] * scale))
        img = F.interpolate(img[None], size=size, mode="bilinear", antialias=True)[0].clamp(0, 1)
        paths.append(save_png(img, folder / f"{name}.png"))
    return paths


def _compressai_eval(checkpoints: list[Path], images: Path, out_dir: Path) -> dict[str, Any]:
    """The literal ``python -m compressai.utils.eval_model checkpoint ... -a vlic -p ...``."""
    import compressai_vlic

    package_root = str(Path(compressai_vlic.__file__).resolve().parents[1])
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [package_root, os.environ.get("PYTHONPATH")])),
    }
    args = [
        "checkpoint",
        str(images),
        "-a",
        "vlic",
        "-p",
        *map(str, checkpoints),
        "-d",
        str(out_dir),
        "-o",
        "compressai_eval",
    ]
    commands = [
        [sys.executable, "-m", "compressai.utils.eval_model", *args],
        # without the start-up hook (e.g. running from a source checkout): the registering wrapper
        [sys.executable, "-m", "compressai_vlic.cli.main", "eval", *args],
    ]
    errors = []
    for cmd in commands:
        proc = subprocess.run(
            cmd, capture_output=True, text=True, env=env, cwd=out_dir, timeout=3600
        )
        if proc.returncode == 0:
            result = json.loads(proc.stdout[proc.stdout.index("{") :])
            result["command"] = " ".join(["python", *cmd[1:]])
            return result
        errors.append(proc.stderr[-1500:])
    raise RuntimeError("CompressAI eval_model failed:\n" + "\n---\n".join(errors))


def _decode_like_eval_model(model: Any, x: Any) -> tuple[Any, int]:
    """compress + decompress with eval_model's zero padding to a multiple of 64 (same bytes)."""
    import torch.nn.functional as F

    h, w = x.shape[-2:]
    ph, pw = (64 - h % 64) % 64, (64 - w % 64) % 64
    pad = (pw // 2, pw - pw // 2, ph // 2, ph - ph // 2)
    padded = F.pad(x, pad, mode="constant", value=0)
    enc = model.compress(padded)
    nbytes = sum(len(s) for strings in enc["strings"] for s in strings)
    out = model.decompress(enc["strings"], enc["shape"])["x_hat"]
    out = F.pad(out, tuple(-p for p in pad))
    return out.clamp(0, 1), nbytes


def _side_by_side(panels: list[tuple[str, Any]], path: Path) -> Path:
    from PIL import Image, ImageDraw

    from compressai_vlic.image_io import to_uint8_array

    tiles = [
        Image.fromarray(to_uint8_array(img[0] if img.dim() == 4 else img)) for _, img in panels
    ]
    w, h = tiles[0].size
    header, gap = 18, 4
    canvas = Image.new("RGB", (len(tiles) * w + (len(tiles) - 1) * gap, h + header), "white")
    draw = ImageDraw.Draw(canvas)
    for i, ((label, _img), tile) in enumerate(zip(panels, tiles, strict=True)):
        x = i * (w + gap)
        canvas.paste(tile, (x, header))
        draw.text((x + 3, 3), label, fill="black")
    path.parent.mkdir(parents=True, exist_ok=True)
    canvas.save(path)
    return path


def _plots(report: DemoReport, out: Path, stage1_csv: Path, stage2_csv: Path) -> dict[str, str]:
    matplotlib = require("matplotlib", "eval", "The demo's plots")
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    files = {}
    metrics = [("psnr", "PSNR (dB)"), ("ms_ssim", "MS-SSIM"), ("ssimulacra2", "SSIMULACRA 2")]
    fig, axes = plt.subplots(1, len(metrics), figsize=(4.2 * len(metrics), 3.6))
    for ax, (key, label) in zip(axes, metrics, strict=True):
        for model, color in (("before", "tab:blue"), ("after", "tab:orange")):
            xs = [
                r[f"{model}_bpp"] for r in report.per_image if r.get(f"{model}_{key}") is not None
            ]
            ys = [
                r[f"{model}_{key}"] for r in report.per_image if r.get(f"{model}_{key}") is not None
            ]
            if not xs:
                continue
            name = "stage 1 (before DPO)" if model == "before" else "stage 2 (after DPO)"
            ax.scatter(xs, ys, color=color, alpha=0.5, s=20)
            ax.scatter(
                [sum(xs) / len(xs)], [sum(ys) / len(ys)], color=color, marker="*", s=180, label=name
            )
        ax.set_xlabel("bits per pixel (real bitstreams)")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.suptitle("VLIC tiny codec on held-out photos (dots: images, stars: means)", fontsize=10)
    fig.tight_layout()
    files["rate_quality_plot"] = str(out / "rate_quality.png")
    fig.savefig(files["rate_quality_plot"], dpi=120)
    plt.close(fig)

    fig, axes = plt.subplots(1, 3, figsize=(12.6, 3.4))
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
    )
    for ax, (title, csv_path, series) in zip(axes, panels):
        for key, label in series:
            steps, values = _series(csv_path, key)
            ax.plot(steps, values, label=label)
        ax.set_title(title)
        ax.set_xlabel("step")
        ax.legend(fontsize=8)
    fig.tight_layout()
    files["training_curves_plot"] = str(out / "training_curves.png")
    fig.savefig(files["training_curves_plot"], dpi=110)
    plt.close(fig)
    return files


def _crop_duel(models: dict[str, Any], judge: Any, plan: DemoPlan) -> dict[str, Any]:
    """The judge's 2AFC verdicts, after vs before post-training, on held-out training-size crops.

    Both models decode with the same seeds; every crop and seed is one question. Many crops give
    a far less noisy read of what post-training changed than two full images.
    """
    import torch
    from compressai_vlic_lightning.common import psnr
    from compressai_vlic_lightning.data import PhotosDataModule

    from compressai_vlic.judges.types import JudgeRequest

    size = models["before"].config.image_size
    data = PhotosDataModule(crop_size=size, val_crops_per_photo=plan.duel_crops_per_photo)
    data.setup("validate")
    crops = torch.stack([data.val_set[i] for i in range(len(data.val_set))])
    decoded: dict[str, list[Any]] = {}
    for label, model in models.items():
        with torch.no_grad():
            indices = model.encode(crops).indices
            decoded[label] = [model.decode_codes(indices, seed=seed) for seed in (0, 1)]
    requests = [
        JudgeRequest(crops[i], decoded["after"][s][i], decoded["before"][s][i])
        for s in range(2)
        for i in range(crops.shape[0])
    ]
    verdicts = judge.compare_batch(requests)
    counts = {"after": 0, "before": 0, "abstain": 0}
    for v in verdicts:
        counts[{"A": "after", "B": "before"}.get(v.choice.value, "abstain")] += 1
    decided = counts["after"] + counts["before"]
    return {
        **counts,
        "questions": len(requests),
        "after_win_rate": counts["after"] / decided if decided else None,
        "before_crop_psnr": float(torch.cat([psnr(d, crops) for d in decoded["before"]]).mean()),
        "after_crop_psnr": float(torch.cat([psnr(d, crops) for d in decoded["after"]]).mean()),
    }


def _mean(values: list[float | None]) -> float | None:
    vals = [v for v in values if v is not None]
    return sum(vals) / len(vals) if vals else None


@dataclass
class DemoRun:
    """The state one demo run hands from step to step."""

    args: argparse.Namespace
    plan: DemoPlan
    configs: DemoConfigs
    judge_spec: JudgeSpec
    out: Path
    report: DemoReport
    t_start: float
    data: Any = None
    stage1_ckpt: Path | None = None
    stage2_ckpt: Path | None = None
    exported: list[Path] = field(default_factory=list)
    images: list[Path] = field(default_factory=list)


def _quiet() -> None:
    warnings.filterwarnings("ignore", message=".*torch.jit.script.*")
    warnings.filterwarnings("ignore", message=".*treespec.*")
    warnings.filterwarnings(
        "ignore", message=".*module\\(s\\) in eval mode.*"
    )  # the frozen reference
    # Lightning's start-up tips and device banners would bury the demo's own progress lines.
    logging.getLogger("pytorch_lightning").setLevel(logging.WARNING)


def prepare(args: argparse.Namespace) -> DemoRun:
    """Plan, judge and a clean report folder (earlier runs' stage folders are removed)."""
    import torch

    configs = DemoConfigs.load()
    plan = DemoPlan.preset(args.preset, configs)
    if args.stage1_steps is not None or args.stage2_steps is not None:
        plan = DemoPlan(
            **{
                **asdict(plan),
                "stage1_steps": args.stage1_steps or plan.stage1_steps,
                "stage2_steps": args.stage2_steps or plan.stage2_steps,
            }
        )
    judge_type, judge_kwargs, judge_compose = _judge_settings(args, configs.stage2)
    judge_spec = JudgeSpec.from_config(
        {"judge_type": judge_type, "judge_kwargs": judge_kwargs, "judge_compose": judge_compose}
    )
    torch.set_num_threads(max(1, args.threads))
    out = Path(args.output).resolve()
    for sub in ("stage1", "stage2", "checkpoints", "eval", "side_by_side"):
        shutil.rmtree(out / sub, ignore_errors=True)
    out.mkdir(parents=True, exist_ok=True)
    report = DemoReport(
        command="compressai-vlic demo "
        + " ".join(sys.argv[2:] if sys.argv[1:2] == ["demo"] else sys.argv[1:]),
        preset=args.preset,
        plan=asdict(plan),
        machine=_machine(),
        judge={
            "judge_type": judge_type,
            "judge_kwargs": judge_kwargs,
            "judge_compose": judge_compose,
        },
    )
    return DemoRun(args, plan, configs, judge_spec, out, report, time.perf_counter())


def pretrain(run: DemoRun) -> Path:
    """Stage 1: pre-train the tiny codec as ``tiny_stage1.yaml`` says, for the plan's steps."""
    pl = require("pytorch_lightning", "train", "The demo's training")
    from compressai_vlic_lightning import EMA, PhotosDataModule, Stage1Module

    plan, out, report, cfg = run.plan, run.out, run.report, run.configs.stage1
    pl.seed_everything(run.args.seed, workers=True, verbose=False)
    print(
        f"[demo] stage 1: pre-training the tiny codec for {plan.stage1_steps} steps on bundled photos",
        flush=True,
    )
    t0 = time.perf_counter()
    run.data = PhotosDataModule(**{**cfg["data"]["init_args"], "batch_size": plan.batch_size})
    model_args = cfg["model"]["init_args"]
    stage1 = Stage1Module(
        **{
            **model_args,
            "lr": plan.stage1_lr,
            "warmup_steps": min(model_args.get("warmup_steps", 0), plan.stage1_steps // 10),
        }
    )
    ema = _callback_args(cfg, "EMA")
    trainer = _trainer(
        out / "stage1",
        plan.stage1_steps,
        [EMA(**ema)] if ema is not None else [],
        log_every=max(1, plan.stage1_steps // 100),
        config=cfg,
    )
    trainer.fit(stage1, run.data)
    report.timings_s["stage1"] = time.perf_counter() - t0
    report.stage1 = {
        "steps": trainer.global_step,
        "perceptual_loss": asdict(stage1.perceptual_choice),
        "last_logged": _last_metrics(out / "stage1" / "metrics.csv"),
    }
    run.stage1_ckpt = out / "stage1" / "checkpoints" / "last.ckpt"
    print(f"[demo]   done in {report.timings_s['stage1']:.0f} s", flush=True)
    return run.stage1_ckpt


def posttrain(run: DemoRun) -> Path:
    """Stage 2: Diffusion-DPO as ``tiny_stage2.yaml`` says, with the run's judge."""
    pl = require("pytorch_lightning", "train", "The demo's training")
    from compressai_vlic_lightning import Stage2Module

    plan, out, report, spec = run.plan, run.out, run.report, run.judge_spec
    judge_name = spec.backend if spec.backend != "openai" else f"{spec.backend}:{spec.model}"
    print(
        f"[demo] stage 2: Diffusion-DPO post-training for {plan.stage2_steps} steps, judge = {judge_name}",
        flush=True,
    )
    t0 = time.perf_counter()
    pl.seed_everything(run.args.seed + 1, workers=True, verbose=False)
    judge = report.judge
    stage2 = Stage2Module(
        **{
            **run.configs.stage2["model"]["init_args"],
            "init_from": str(run.stage1_ckpt),
            "quality": run.configs.stage1["model"]["init_args"].get("quality", "test"),
            "lr": plan.stage2_lr,
            "beta": plan.beta,
            "dpo_batch_size": plan.dpo_batch_size,
            "judge_type": judge["judge_type"],
            "judge_kwargs": judge["judge_kwargs"],
            "judge_compose": judge["judge_compose"],
            "buffer_size": plan.buffer_size,
            "refresh_every": plan.refresh_every,
            "warmup_pairs": plan.warmup_pairs,
            "seed": run.args.seed,
        }
    )
    trainer = _trainer(
        out / "stage2",
        plan.stage2_steps,
        [],
        log_every=max(1, plan.stage2_steps // 100),
        config=run.configs.stage2,
    )
    trainer.fit(stage2, run.data)
    report.timings_s["stage2"] = time.perf_counter() - t0
    prefs = out / "stage2" / "preferences"
    judged = [
        json.loads(line)
        for line in (prefs / "judged.jsonl").read_text().splitlines()
        if line.strip()
    ]
    abstained = sum(1 for r in judged if r["judgment"]["choice"] == "abstain")
    report.stage2 = {
        "steps": trainer.global_step,
        "judged_pairs": len(judged),
        "abstained_pairs": abstained,
        "preferences_folder": str(prefs),
        "last_logged": _last_metrics(out / "stage2" / "metrics.csv"),
    }
    run.stage2_ckpt = out / "stage2" / "checkpoints" / "last.ckpt"
    print(
        f"[demo]   done in {report.timings_s['stage2']:.0f} s ({len(judged)} pairs judged, "
        f"{abstained} abstained = {abstained / max(1, len(judged)):.1%}: no label kept)",
        flush=True,
    )
    return run.stage2_ckpt


def export_and_evaluate(run: DemoRun) -> dict[str, Any]:
    """Export both stages as CompressAI checkpoints and run CompressAI's ``eval_model`` on them."""
    from compressai_vlic_lightning import export_checkpoint

    out = run.out
    t0 = time.perf_counter()
    run.exported = [
        export_checkpoint(run.stage1_ckpt, out / "checkpoints" / "vlic-test-stage1.pth.tar").path,
        export_checkpoint(run.stage2_ckpt, out / "checkpoints" / "vlic-test-stage2.pth.tar").path,
    ]
    images_dir = out / "eval" / "images"
    run.images = _eval_images(images_dir, run.plan.eval_max_side)
    print(
        "[demo] evaluating both checkpoints with python -m compressai.utils.eval_model", flush=True
    )
    run.report.compressai_eval = _compressai_eval(run.exported, images_dir, out / "eval")
    run.report.timings_s["compressai_eval"] = time.perf_counter() - t0
    return run.report.compressai_eval


def _metrics(report: DemoReport) -> dict[str, Any]:
    from compressai_vlic.metrics import get_metric

    metrics = {}
    for name in ["psnr", "ms_ssim", "ssimulacra2", "lpips"]:
        try:
            metrics[name] = get_metric(name)
        except Exception as exc:  # e.g. LPIPS without its weights: reported, not fatal
            report.summary.setdefault("metrics_unavailable", {})[name] = str(exc).split(". ")[0]
    return metrics


def compare_stages(run: DemoRun) -> None:
    """Per-image metrics and judge verdicts (before vs after), side-by-side pictures, crop duel."""
    import torch

    from compressai_vlic.checkpoints import load_vlic
    from compressai_vlic.image_io import load_image

    report, out = run.report, run.out
    t0 = time.perf_counter()
    models = {
        "before": load_vlic(run.exported[0]).eval(),
        "after": load_vlic(run.exported[1]).eval(),
    }
    metrics = _metrics(report)
    judge = run.judge_spec.build()
    wins = {"after": 0, "before": 0, "abstain": 0}
    for path in run.images:
        x = load_image(path).tensor[None]
        row: dict[str, Any] = {"image": path.name, "size": list(x.shape[-2:])}
        decoded = {}
        for label, model in models.items():
            with torch.no_grad():
                x_hat, nbytes = _decode_like_eval_model(model, x)
            decoded[label] = x_hat
            row[f"{label}_bpp"] = nbytes * 8 / (x.shape[-2] * x.shape[-1])
            for name, metric in metrics.items():
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    row[f"{label}_{name}"] = float(metric(x, x_hat)[0])
        verdict = judge.compare(x[0], decoded["after"][0], decoded["before"][0])
        key = {"A": "after", "B": "before"}.get(verdict.choice.value, "abstain")
        wins[key] += 1
        row["judge_prefers"] = key
        report.per_image.append(row)
        _side_by_side(
            [
                ("original", x),
                ("before DPO (stage 1)", decoded["before"]),
                ("after DPO (stage 2)", decoded["after"]),
            ],
            out / "side_by_side" / f"{path.stem}.png",
        )
    report.summary["judge_2afc_crops"] = _crop_duel(models, judge, run.plan)
    report.timings_s["report"] = time.perf_counter() - t0
    for name in [*metrics, "bpp"]:
        for label in ("before", "after"):
            report.summary[f"{label}_{name}"] = _mean(
                [r.get(f"{label}_{name}") for r in report.per_image]
            )
    report.summary["judge_2afc_after_vs_before"] = wins


def write_report(run: DemoRun) -> Path:
    """report.json and the plots; prints the summary."""
    report, out = run.report, run.out
    report.timings_s["total"] = time.perf_counter() - run.t_start
    report.files = {
        "report": str(out / "report.json"),
        "side_by_side": str(out / "side_by_side"),
        "stage1_checkpoint": str(run.exported[0]),
        "stage2_checkpoint": str(run.exported[1]),
        "compressai_eval_json": str(out / "eval" / "compressai_eval.json"),
        **_plots(report, out, out / "stage1" / "metrics.csv", out / "stage2" / "metrics.csv"),
    }
    (out / "report.json").write_text(json.dumps(asdict(report), indent=2, default=str))
    _print_summary(report)
    print(
        f"[demo] report written to {out} (report.json, rate_quality.png, side_by_side/)", flush=True
    )
    return out / "report.json"


def run(args: argparse.Namespace) -> int:
    """The whole job: prepare, pre-train, post-train, evaluate, compare, report."""
    _quiet()
    demo = prepare(args)
    print(f"[demo] report folder: {demo.out}", flush=True)
    pretrain(demo)
    posttrain(demo)
    export_and_evaluate(demo)
    compare_stages(demo)
    write_report(demo)
    return 0


def _print_summary(report: DemoReport) -> None:
    s = report.summary
    res = report.compressai_eval.get("results", {})
    print("[demo] CompressAI eval_model (real bitstreams, held-out photos):")
    print(f"         {'model':<22}{'bpp':>8}{'PSNR':>9}{'MS-SSIM':>10}")
    for i, label in enumerate(("stage 1 (before DPO)", "stage 2 (after DPO)")):
        row = [res.get(k, [None, None])[i] for k in ("bpp", "psnr-rgb", "ms-ssim-rgb")]
        print(
            f"         {label:<22}"
            + "".join(f"{v:>9.4f}" if v is not None else f"{'-':>9}" for v in row)
        )
    for name in ("ssimulacra2", "lpips"):
        if s.get(f"before_{name}") is not None:
            print(
                f"[demo] {name}: before {s[f'before_{name}']:.3f} -> after {s[f'after_{name}']:.3f}"
            )
    print(
        f"[demo] judge 2AFC, after vs before post-training, full images: {s['judge_2afc_after_vs_before']}"
    )
    duel = s["judge_2afc_crops"]
    rate = duel["after_win_rate"]
    print(
        f"[demo] judge 2AFC on {duel['questions']} held-out crops x seeds: after wins {duel['after']}, "
        f"before wins {duel['before']}, abstain {duel['abstain']}"
        + (f" (after win rate {rate:.1%})" if rate is not None else "")
    )
    print("[demo] timings (s): " + ", ".join(f"{k} {v:.0f}" for k, v in report.timings_s.items()))
