"""The demo's steps: prepare, fine-tune (stage 1), post-train (stage 2), refit the prior,
evaluate with CompressAI, compare against JPEG / WebP / AVIF, and duel the two codecs before the
judge; :func:`run` does them in order and writes the report (:mod:`.report`).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import subprocess
import sys
import time
import warnings
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

from compressai_vlic.errors import ConfigError
from compressai_vlic.extras import require
from compressai_vlic.judges.spec import JudgeSpec
from compressai_vlic_lightning.demo.plan import (
    AT_RATE_CODECS,
    CODEC_GRIDS,
    EVAL_PHOTOS,
    INDEPENDENT_JUDGE,
    LABELS,
    Clock,
    DemoConfigs,
    DemoPlan,
    DemoReport,
    DemoRun,
    cpu_time,
)
from compressai_vlic_lightning.demo.report import (
    csv_series,
    last_metrics,
    machine_info,
    side_by_side_image,
    write_report,
)

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


def _judge_spec(args: argparse.Namespace, stage2: dict[str, Any]) -> JudgeSpec:
    """The run's judge: ``tiny_stage2.yaml``'s (LPIPS unanimity) with the judge flags laid over
    it. An endpoint (``--judge-base-url``) makes it the VLM judge, asked in both orders (VLIC's
    noise control)."""
    base = JudgeSpec.from_module_args(stage2["model"]["init_args"])
    backend = args.judge_type or ("openai" if args.judge_base_url else base.backend)
    if backend == "openai" and base.backend != "openai":
        compose = replace(base.compose, order_type="symmetrize")
        base = JudgeSpec(backend="openai", prompt_type="vlic-score", compose=compose)
    spec = JudgeSpec.from_args(args, backend, base)
    if spec.backend == "openai" and not spec.model:
        raise ConfigError("a VLM judge needs --judge-model")
    return spec


def _duration(seconds: float) -> str:
    seconds = max(0, round(seconds))
    return f"{seconds // 60}:{seconds % 60:02d}"


def _step_progress(label: str, total: int, every_s: float) -> Any:
    """A callback printing ``step N/total, rate, time left`` lines (logs without a terminal)."""
    from pytorch_lightning.callbacks import Callback

    class StepProgress(Callback):
        def __init__(self) -> None:
            self.first: tuple[float, int] | None = None  # rate counted from the first step on
            self.last = 0.0

        def on_train_batch_end(self, trainer: Any, *args: Any) -> None:
            now, step = time.perf_counter(), trainer.global_step
            if self.first is None:
                self.first, self.last = (now, step), now
                print(f"[demo]   {label}: step {step}/{total}", flush=True)
                return
            if now - self.last < every_s and step < total:
                return
            self.last = now
            rate = (step - self.first[1]) / max(now - self.first[0], 1e-9)
            left = _duration((total - step) / rate) if rate > 0 else "?"
            print(
                f"[demo]   {label}: step {step}/{total}, {rate:.2f} steps/s, {left} left",
                flush=True,
            )

    return StepProgress()


def _trainer(
    root: Path,
    steps: int,
    callbacks: list[Any],
    log_every: int,
    config: dict[str, Any],
    label: str,
    validate: bool = True,
    keep_every: int | None = None,
) -> Any:
    """A Trainer with the config's device and validation settings and the plan's step counts.

    Progress: Lightning's bar (rate and time left) on a terminal, a line every 30 s otherwise.
    """
    pl = require("pytorch_lightning", "train", "The demo's training")
    from pytorch_lightning.callbacks import ModelCheckpoint

    from compressai_vlic_lightning import CSVLogger  # keeps metrics.csv rows on a resume

    tty = sys.stderr.isatty()
    trainer_args = {k: config["trainer"][k] for k in _TRAINER_KEYS}
    if not validate:
        trainer_args["limit_val_batches"] = 0
    return pl.Trainer(
        **trainer_args,
        max_steps=steps,
        default_root_dir=str(root),
        logger=CSVLogger(str(root), name="", version=""),
        callbacks=[
            *callbacks,
            *([] if tty else [_step_progress(label, steps, every_s=30.0)]),
            ModelCheckpoint(dirpath=str(root / "checkpoints"), save_last=True, save_top_k=0),
            *(
                [
                    ModelCheckpoint(
                        dirpath=str(root / "checkpoints"),
                        filename="step{step}",
                        auto_insert_metric_name=False,
                        every_n_train_steps=keep_every,
                        save_top_k=-1,
                    )
                ]
                if keep_every
                else []
            ),
        ],
        log_every_n_steps=log_every,
        val_check_interval=max(1, steps // 4),
        enable_progress_bar=tty,
        enable_model_summary=False,
    )


def _callback_args(config: dict[str, Any], class_name: str) -> dict[str, Any] | None:
    """``init_args`` of the config's callback named ``class_name`` (None when it has none)."""
    for cb in config["trainer"].get("callbacks") or []:
        if cb["class_path"].rpartition(".")[2] == class_name:
            return dict(cb["init_args"])
    return None


def _eval_images(folder: Path, max_side: int) -> list[Path]:
    """Held-out photos at the training scale (longest side ``max_side``), as PNG files."""
    import torch.nn.functional as F

    from compressai_vlic.image_io import save_png
    from compressai_vlic_lightning.data import bundled_photos

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


def _mean(values: list[float | None]) -> float | None:
    vals = [v for v in values if v is not None]
    return sum(vals) / len(vals) if vals else None


def _quiet() -> None:
    warnings.filterwarnings("ignore", message=".*torch.jit.script.*")
    warnings.filterwarnings("ignore", message=".*treespec.*")
    warnings.filterwarnings(
        "ignore", message=".*module\\(s\\) in eval mode.*"
    )  # the frozen reference
    warnings.filterwarnings("ignore", message=".*does not have many workers.*")
    # Lightning's start-up tips and device banners would bury the demo's own progress lines.
    # Importing Lightning sets its logger to INFO, so it is imported first.
    require("pytorch_lightning", "train", "The demo's training")
    for name in ("pytorch_lightning", "lightning.pytorch", "lightning.fabric"):
        logging.getLogger(name).setLevel(logging.WARNING)


def _init_type(args: argparse.Namespace) -> str:
    return getattr(args, "init_type", None) or "shipped"


def prepare(args: argparse.Namespace) -> DemoRun:
    """Plan, judge and a clean report folder (earlier runs' stage folders are removed)."""
    import torch

    init_type = _init_type(args)
    configs = DemoConfigs.load(init_type)
    plan = DemoPlan.preset(args.preset, configs)
    steps = {
        k: v
        for k, v in (
            ("stage1_steps", args.stage1_steps),
            ("stage2_steps", args.stage2_steps),
            ("refit_steps", getattr(args, "refit_steps", None)),
        )
        if v is not None
    }
    for arg, key, allowed in (
        ("refit_type", "refit_type", ("auto", "always")),
        ("posttrain_selection", "selection_type", ("val_lpips", "last")),
    ):
        value = getattr(args, arg, None)
        if value is not None:
            if value not in allowed:
                raise ConfigError(f"{arg} must be {' or '.join(allowed)}, got {value!r}")
            plan = replace(plan, **{key: value})
    if any(v < 1 for v in steps.values()):
        raise ConfigError(f"step counts must be >= 1, got {steps}")
    plan = replace(plan, **steps)
    if args.threads is not None and args.threads < 1:
        raise ConfigError(f"--threads must be >= 1, got {args.threads}")
    judge_spec = _judge_spec(args, configs.stage2)
    threads = args.threads or 1
    torch.set_num_threads(threads)
    out = Path(args.output).resolve()
    for sub in ("stage1", "stage2", "prior_refit", "checkpoints", "eval", "side_by_side"):
        shutil.rmtree(out / sub, ignore_errors=True)
    out.mkdir(parents=True, exist_ok=True)
    report = DemoReport(
        command="compressai-vlic demo "
        + " ".join(sys.argv[2:] if sys.argv[1:2] == ["demo"] else sys.argv[1:]),
        preset=args.preset,
        init_type=init_type,
        plan=asdict(plan),
        machine=machine_info(),
        judge={
            "judge_type": judge_spec.backend,
            "judge_kwargs": judge_spec.backend_kwargs(),
            "judge_compose": judge_spec.compose.changed() or None,
        },
    )
    return DemoRun(
        args, plan, configs, judge_spec, out, report, time.perf_counter(), threads, cpu_time()
    )


def finetune(run: DemoRun) -> Path:
    """Stage 1 as ``tiny_stage1.yaml`` says: a short fine-tune of the shipped codec (or, with
    ``init_type="scratch"``, ``tiny_stage1_scratch.yaml``: all of stage 1 from random weights)."""
    pl = require("pytorch_lightning", "train", "The demo's training")
    from compressai_vlic_lightning import EMA, PhotosDataModule, Stage1Module
    from compressai_vlic_lightning.common import NOT_GIVEN, weights_spec

    plan, out, report, cfg = run.plan, run.out, run.report, run.configs.stage1
    pl.seed_everything(run.args.seed, workers=True, verbose=False)
    model_args = cfg["model"]["init_args"]
    weights = weights_spec(model_args.get("weights"), model_args.get("init_from", NOT_GIVEN))
    start = weights or "random weights"
    what = "fine-tuning" if weights else "pre-training"
    print(
        f"[demo] stage 1: {what} the {model_args['quality']!r} codec from {start} "
        f"for {plan.stage1_steps} steps on bundled photos (held out: {', '.join(EVAL_PHOTOS)})",
        flush=True,
    )
    clock = Clock(report, "stage1")
    run.data = PhotosDataModule(**{**cfg["data"]["init_args"], "batch_size": plan.batch_size})
    if set(run.data.train_photos) & set(EVAL_PHOTOS):
        raise ConfigError(f"the demo's held-out photos {EVAL_PHOTOS} must not be trained on")
    stage1 = Stage1Module(
        **{
            **model_args,
            "lr": plan.stage1_lr,
            "warmup_steps": min(plan.stage1_warmup, plan.stage1_steps // 10),
        }
    )
    ema = _callback_args(cfg, "EMA")
    trainer = _trainer(
        out / "stage1",
        plan.stage1_steps,
        [EMA(**ema)] if ema is not None else [],
        log_every=max(1, plan.stage1_steps // 100),
        config=cfg,
        label="stage 1",
    )
    trainer.fit(stage1, run.data)
    clock.stop()
    report.stage1 = {
        "init_from": weights,
        "quality": model_args.get("quality"),
        "steps": trainer.global_step,
        "train_photos": list(run.data.train_photos),
        "held_out_photos": list(EVAL_PHOTOS),
        "perceptual_loss": asdict(stage1.perceptual_choice),
        "last_logged": last_metrics(out / "stage1" / "metrics.csv"),
    }
    run.stage1_ckpt = out / "stage1" / "checkpoints" / "last.ckpt"
    print(f"[demo]   done in {report.timings_s['stage1']:.0f} s", flush=True)
    return run.stage1_ckpt


def posttrain(run: DemoRun) -> Path:
    """Stage 2: Diffusion-DPO as ``tiny_stage2.yaml`` says, with the run's judge."""
    pl = require("pytorch_lightning", "train", "The demo's training")
    import torch

    from compressai_vlic_lightning import Stage2Module

    plan, out, report, spec = run.plan, run.out, run.report, run.judge_spec
    judge_name = spec.backend if spec.backend != "openai" else f"{spec.backend}:{spec.model}"
    compose = report.judge.get("judge_compose") or {}
    if compose.get("unanimous_with"):
        judge_name += f", unanimous with {' and '.join(compose['unanimous_with'])}"
    print(
        f"[demo] stage 2: Diffusion-DPO post-training for {plan.stage2_steps} steps, "
        f"judge = {judge_name}",
        flush=True,
    )
    clock = Clock(report, "stage2")
    torch.set_num_threads(max(1, run.threads - 1))  # the judge thread keeps a core
    pl.seed_everything(run.args.seed + 1, workers=True, verbose=False)
    stage2 = Stage2Module(
        **{
            **{
                k: v
                for k, v in run.configs.stage2["model"]["init_args"].items()
                if k not in ("judge", "judge_type", "judge_kwargs", "judge_compose")
            },
            "weights": str(run.stage1_ckpt),
            "init_from": "",  # not given: the older name must not override the stage-1 run
            "lr": plan.stage2_lr,
            "beta": plan.beta,
            "dpo_batch_size": plan.dpo_batch_size,
            "judge": spec,
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
        label="stage 2",
        keep_every=(
            max(1, plan.stage2_steps // plan.selection_checkpoints)
            if plan.selection_type == "val_lpips"
            else None
        ),
    )
    print(f"[demo]   judging {plan.warmup_pairs} warm-up pairs first", flush=True)
    trainer.fit(stage2, run.data)
    torch.set_num_threads(run.threads)
    clock.stop()
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
        "last_logged": last_metrics(out / "stage2" / "metrics.csv"),
    }
    run.stage2_ckpt = out / "stage2" / "checkpoints" / "last.ckpt"
    print(
        f"[demo]   done in {report.timings_s['stage2']:.0f} s ({len(judged)} pairs judged, "
        f"{abstained} abstained = {abstained / max(1, len(judged)):.1%}: no label kept)",
        flush=True,
    )
    if plan.selection_type == "val_lpips":
        select_posttrained(run)
    return run.stage2_ckpt


def _step_checkpoints(folder: Path) -> list[tuple[int, Path]]:
    found = []
    for path in folder.glob("step*.ckpt"):
        digits = path.stem[len("step") :]
        if digits.isdigit():
            found.append((int(digits), path))
    return sorted(found)


def select_posttrained(run: DemoRun) -> Path:
    """Keep the post-training checkpoint (or the stage-1 model) with the lowest LPIPS on
    validation photos: the training photos, never the held-out ones the report measures on."""
    from compressai_vlic_lightning import PhotosDataModule
    from compressai_vlic_lightning.demo.selection import Candidate, select_checkpoint

    plan, out, report = run.plan, run.out, run.report
    clock = Clock(report, "selection")
    names = list(run.data.train_photos)[: plan.selection_photos]
    images = PhotosDataModule(max_side=plan.eval_max_side, train_photos=names)._load(names)
    candidates = [Candidate("stage 1", Path(run.stage1_ckpt), "ema", 0)]
    candidates += [
        Candidate(f"step {step}", path, "raw", step)
        for step, path in _step_checkpoints(out / "stage2" / "checkpoints")
    ]
    print(
        f"[demo] choosing the post-trained codec: LPIPS of {len(candidates)} checkpoints "
        f"(stage 1 included) on {len(names)} training photos through real bitstreams",
        flush=True,
    )
    selection = select_checkpoint(candidates, images, names, "lpips", seed=run.args.seed)
    clock.stop()
    report.stage2["selection"] = selection.to_dict()
    run.stage2_ckpt = Path(selection.chosen_path)
    scores = ", ".join(f"{k} {v:.4f}" for k, v in selection.scores.items())
    verdict = (
        "no post-trained checkpoint beat stage 1: the 'after' codec is the stage-1 model"
        if selection.kept_start
        else f"kept {selection.chosen}"
    )
    print(f"[demo]   {scores}; {verdict}", flush=True)
    return run.stage2_ckpt


def refit_prior(run: DemoRun) -> Path:
    """Refit the post-trained codec's token prior to its own tokens (``tiny_prior_refit.yaml``);
    exports both codecs as CompressAI checkpoints (before: stage 1; after: stage 2 + refit)."""
    pl = require("pytorch_lightning", "train", "The demo's training")
    from compressai_vlic_lightning import PhotosDataModule, PriorRefitModule, export_checkpoint

    plan, out, report, cfg = run.plan, run.out, run.report, run.configs.refit
    name = run.configs.stage1["model"]["init_args"]["quality"]
    after = out / "checkpoints" / f"vlic-{name}-after.pth.tar"
    before = export_checkpoint(
        run.stage1_ckpt, out / "checkpoints" / f"vlic-{name}-before.pth.tar"
    ).path
    frozen = run.configs.stage2["model"]["init_args"]["freeze_type"] == "encoder"
    if plan.refit_type == "auto" and frozen:
        # The tokens are stage 1's, and stage 2 kept training the prior on them (prior_weight);
        # refitting on the few bundled photos would only fit those photos' tokens.
        reason = (
            "stage 2 froze the encoder, so the tokens are stage 1's and the prior already "
            "trained on them in stage 2"
        )
        print(f"[demo] prior refit: skipped ({reason}; --refit-type always runs it)", flush=True)
        export_checkpoint(run.stage2_ckpt, after)
        run.exported = {"before": before, "after": after}
        report.prior_refit = {"steps": 0, "skipped": reason}
        return after
    print(f"[demo] prior refit: {plan.refit_steps} steps on the codec's own tokens", flush=True)
    clock = Clock(report, "prior_refit")
    pl.seed_everything(run.args.seed + 2, workers=True, verbose=False)
    args = cfg["model"]["init_args"]
    module = PriorRefitModule(
        **{
            **args,
            "checkpoint": str(run.stage2_ckpt),
            "lr": plan.refit_lr,
            "warmup_steps": min(args["warmup_steps"], plan.refit_steps // 10),
            "export_path": str(after),
        }
    )
    data_args = cfg["data"]["init_args"]
    data = PhotosDataModule(
        **{
            **data_args,
            "samples_per_epoch": plan.refit_samples,
            "batch_size": min(data_args["batch_size"], plan.refit_samples),
        }
    )
    trainer = _trainer(
        out / "prior_refit",
        plan.refit_steps,
        [],
        log_every=max(1, plan.refit_steps // 50),
        config=cfg,
        label="prior refit",
    )
    trainer.fit(module, data)
    run.exported = {"before": before, "after": after}
    metrics = out / "prior_refit" / "metrics.csv"
    _, bits = csv_series(metrics, "train/bits_per_token")
    report.prior_refit = {
        "steps": trainer.global_step,
        "bits_per_token_first": bits[0] if bits else None,
        "bits_per_token_last": bits[-1] if bits else None,
        "last_logged": last_metrics(metrics),
    }
    clock.stop()
    first, last = report.prior_refit["bits_per_token_first"], bits[-1] if bits else None
    print(
        f"[demo]   done in {report.timings_s['prior_refit']:.0f} s"
        + (f" (bits/token {first:.2f} -> {last:.2f})" if bits else ""),
        flush=True,
    )
    return after


def evaluate_compressai(run: DemoRun) -> dict[str, Any]:
    """CompressAI's own ``eval_model`` on both exported codecs (real bitstreams)."""
    clock = Clock(run.report, "compressai_eval")
    images_dir = run.out / "eval" / "images"
    run.images = _eval_images(images_dir, run.plan.eval_max_side)
    print(
        f"[demo] evaluating both codecs with python -m compressai.utils.eval_model "
        f"({len(run.images)} held-out photos x 2 checkpoints)",
        flush=True,
    )
    checkpoints = [run.exported["before"], run.exported["after"]]
    run.report.compressai_eval = _compressai_eval(checkpoints, images_dir, run.out / "eval")
    clock.stop()
    print(f"[demo]   done in {run.report.timings_s['compressai_eval']:.0f} s", flush=True)
    return run.report.compressai_eval


def _compare_codecs(run: DemoRun, targets: dict[str, float] | None) -> list[Any]:
    from compressai_vlic.evaluation.at_rate import AtRateCodec
    from compressai_vlic.evaluation.codecs import PillowCodec, VLICCodec, pillow_format_available

    codecs: list[Any] = []
    for label, path in run.exported.items():
        codec = VLICCodec(checkpoint=path, seed=0)
        codec.name = f"vlic-{label}"
        codec.description = f"VLIC {LABELS[label]} ({path.name})"
        codecs.append(codec)
    if targets is None:
        return codecs
    for name, grid in CODEC_GRIDS.items():
        if pillow_format_available(name):
            codecs.append(PillowCodec(name, list(grid[: run.plan.grid_points])))
    codecs += [AtRateCodec(name, targets, label="at-vlic-rate") for name in AT_RATE_CODECS]
    return codecs


def compare_codecs(run: DemoRun) -> Any:
    """``compare``: both codecs, JPEG / WebP / AVIF at fixed qualities, and JPEG and WebP at the
    lowest quality that reaches the post-trained codec's bpp on each image."""
    from compressai_vlic.evaluation.at_rate import image_key
    from compressai_vlic.evaluation.compare import CompareSettings, run_comparison
    from compressai_vlic.image_io import load_image

    clock = Clock(run.report, "compare")
    folder = run.out / "eval" / "compare"
    settings = CompareSettings(
        metrics=run.plan.compare_metrics, distribution_metrics=(), progress=True
    )
    notices: list[str] = []
    print(
        "[demo] compare: the codec against JPEG, WebP"
        + (" and AVIF" if _avif() else "")
        + " on the held-out photos",
        flush=True,
    )
    # first VLIC alone (its bpp per image sets the classical codecs' rate), then everything:
    # the second run reads VLIC's rows from the first one's cache
    first = run_comparison(run.images, _compare_codecs(run, None), folder, settings, notices.append)
    keys = {path.name: image_key(load_image(path).tensor) for path in run.images}
    targets = {keys[row.image]: row.bpp for row in first.rows if row.codec == "vlic-after"}
    result = run_comparison(
        run.images, _compare_codecs(run, targets), folder, settings, notices.append
    )
    run.comparison = result
    run.report.compare = {
        "folder": str(folder),
        "metrics": result.metric_names,
        "skipped_metrics": dict(result.skipped),
        "notices": notices,
        "points": [
            {
                "codec": p.codec,
                "rate_point": p.rate_point,
                "bpp": p.bpp,
                "num_images": p.num_images,
                **p.metrics,
            }
            for p in result.points
        ],
        "table_md": str(folder / "table.md"),
    }
    clock.stop()
    print(f"[demo]   done in {run.report.timings_s['compare']:.0f} s", flush=True)
    return result


def _avif() -> bool:
    from compressai_vlic.evaluation.codecs import pillow_format_available

    return pillow_format_available("avif")


def side_by_side(run: DemoRun) -> None:
    """Per held-out photo: original | before | after | JPEG | WebP at the codec's rate."""
    from compressai_vlic.image_io import load_image

    result, report = run.comparison, run.report
    rows = {(r.codec, r.image): r for r in result.rows}
    order = [("vlic-before", LABELS["before"]), ("vlic-after", LABELS["after"])]
    order += [(f"{name}-at-rate", LABELS[name]) for name in AT_RATE_CODECS]
    metrics = result.metric_names
    for path in run.images:
        original = result.originals[path.name]
        panels = [("original", original)]
        entry: dict[str, Any] = {"image": path.name, "size": list(original.shape[-2:])}
        for codec, label in order:
            row = rows[(codec, path.name)]
            rate_point = result.codecs[codec].rate_points[0]
            recon = load_image(result.reconstructions[(codec, rate_point, path.name)]).tensor
            setting = f" {row.setting}" if codec.endswith("-at-rate") else ""
            panels.append((f"{label}{setting}\n{row.bpp:.3f} bpp", recon))
            key = codec.removeprefix("vlic-").replace("-at-rate", "")
            entry[f"{key}_bpp"] = row.bpp
            entry[f"{key}_setting"] = row.setting
            for name in metrics:
                entry[f"{key}_{name}"] = row.metrics.get(name)
        entry["side_by_side"] = str(
            side_by_side_image(panels, run.out / "side_by_side" / f"{path.stem}.png")
        )
        report.per_image.append(entry)
    for key in ("before", "after", *AT_RATE_CODECS):
        for name in ["bpp", *metrics]:
            report.summary[f"{key}_{name}"] = _mean(
                [r.get(f"{key}_{name}") for r in report.per_image]
            )


def _duel_crops(plan: DemoPlan) -> tuple[Any, list[int]]:
    """The duel's held-out crops, (N, 3, S, S) at the evaluation scale, and each crop's photo."""
    import torch

    from compressai_vlic_lightning.data import PhotosDataModule, _grid_crops

    size = plan.duel_crop_size
    images = PhotosDataModule(val_photos=list(EVAL_PHOTOS), max_side=plan.eval_max_side)._load(
        EVAL_PHOTOS
    )
    crops, photo = [], []
    for k, img in enumerate(images):
        if min(img.shape[-2:]) < size:  # upscaled so that the judge sees a whole crop
            scale = size / min(img.shape[-2:])
            img = torch.nn.functional.interpolate(
                img[None], scale_factor=scale, mode="bilinear", antialias=True
            )[0].clamp(0, 1)
        for crop in _grid_crops(img, size, plan.duel_crops_per_photo):
            crops.append(crop)
            photo.append(k)
    return torch.stack(crops), photo


def _verdict_counts(
    verdicts: list[Any], photo: list[int], n_photos: int, plan: DemoPlan, seed: int
) -> dict[str, Any]:
    """Counts and the after-vs-before win rate, its 95% interval a bootstrap over photos."""
    import numpy as np

    from compressai_vlic.judges.audit.statistics import bootstrap_ratio
    from compressai_vlic.judges.types import Choice

    wins, decided = np.zeros(n_photos), np.zeros(n_photos)
    counts = {"after": 0, "before": 0, "abstain": 0, "failed": 0}
    for q, v in enumerate(verdicts):
        k = photo[q % len(photo)]
        if getattr(v, "failed", False):
            counts["failed"] += 1
        elif v.choice is Choice.A:
            counts["after"] += 1
            wins[k] += 1
            decided[k] += 1
        elif v.choice is Choice.B:
            counts["before"] += 1
            decided[k] += 1
        else:
            counts["abstain"] += 1
    est = bootstrap_ratio(wins, decided, plan.bootstrap_samples, np.random.default_rng(seed))
    return {
        **counts,
        "after_win_rate": None if np.isnan(est.value) else est.value,
        "after_win_rate_ci95": None if np.isnan(est.value) else [est.low, est.high],
    }


def _crop_duel(
    models: dict[str, Any], judges: dict[str, tuple[Any, str]], plan: DemoPlan, seed: int
) -> dict[str, Any]:
    """2AFC verdicts, after vs before post-training, on held-out crops of ``duel_crop_size`` px
    coded through real bitstreams and decoded with two seeds (every crop and seed one question),
    by each judge: the training judge and one that took no part in training. Win-rate intervals
    are a bootstrap over photos (a photo's crops and seeds stay together)."""
    import torch
    from tqdm.auto import tqdm

    from compressai_vlic.judges.types import JudgeRequest
    from compressai_vlic.metrics import get_metric
    from compressai_vlic_lightning.ablation_eval import decode_at
    from compressai_vlic_lightning.common import psnr

    crops, photo = _duel_crops(plan)
    seeds = (0, 1)
    decoded: dict[str, list[Any]] = {label: [[], []] for label in models}
    bar = tqdm(total=len(models) * crops.shape[0], desc="[demo] duel decodes", unit="crop")
    for label, model in models.items():
        for crop in crops:
            with torch.no_grad():
                data = bytes(model.compress(crop[None], seed=seeds[0])["strings"][0][0])
            for j, s in enumerate(seeds):
                decoded[label][j].append(decode_at(model, data, s)[0].clamp(0, 1))
            bar.update(1)
    bar.close()
    decoded = {label: [torch.stack(d) for d in per_seed] for label, per_seed in decoded.items()}
    requests = [
        JudgeRequest(crops[i], decoded["after"][s][i], decoded["before"][s][i])
        for s in range(len(seeds))
        for i in range(crops.shape[0])
    ]
    out: dict[str, Any] = {
        "photos": list(EVAL_PHOTOS),
        "crops": crops.shape[0],
        "crop_size": plan.duel_crop_size,
        "seeds": len(seeds),
        "questions": len(requests),
        "ci_method": f"percentile bootstrap over photos, {plan.bootstrap_samples} resamples",
        "judges": {},
    }
    for name, (judge, role) in judges.items():
        verdicts = []
        bar = tqdm(total=len(requests), desc=f"[demo] {name}", unit="pair")
        for start in range(0, len(requests), 16):
            verdicts += judge.compare_batch(requests[start : start + 16])
            bar.update(min(16, len(requests) - start))
        bar.close()
        out["judges"][name] = {
            "role": role,
            **_verdict_counts(verdicts, photo, len(EVAL_PHOTOS), plan, seed),
        }
    for label in models:
        out[f"{label}_crop_psnr"] = float(
            torch.cat([psnr(d, crops) for d in decoded[label]]).mean()
        )
    try:
        lpips = get_metric("lpips")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            for label in models:
                values = torch.cat([lpips(crops, d) for d in decoded[label]])
                out[f"{label}_crop_lpips"] = float(values.mean())
    except Exception as exc:  # LPIPS without its weights: said so, not fatal
        out["crop_lpips_unavailable"] = str(exc).split(". ")[0]
    return out


def judge_duel(run: DemoRun) -> None:
    """After vs before post-training, judged by the training judge and by an independent one:
    the full held-out photos (training judge) and many held-out crops (both)."""
    from compressai_vlic.checkpoints import load_vlic
    from compressai_vlic.image_io import load_image

    clock = Clock(run.report, "judge_duel")
    print("[demo] judge duel: after vs before post-training on held-out crops", flush=True)
    models = {label: load_vlic(path).eval() for label, path in run.exported.items()}
    judge = run.judge_spec.build()
    independent = JudgeSpec(backend=INDEPENDENT_JUDGE).build()
    result = run.comparison
    full = {"after": 0, "before": 0, "abstain": 0}
    for entry in run.report.per_image:
        name = entry["image"]
        x = result.originals[name]
        recon = {
            label: load_image(
                result.reconstructions[
                    (f"vlic-{label}", result.codecs[f"vlic-{label}"].rate_points[0], name)
                ]
            ).tensor
            for label in ("before", "after")
        }
        verdict = judge.compare(x, recon["after"], recon["before"])
        key = {"A": "after", "B": "before"}.get(verdict.choice.value, "abstain")
        full[key] += 1
        entry["judge_prefers"] = key
    run.report.summary["judge_2afc_after_vs_before"] = full
    judges = {
        "training judge": (judge, "the judge post-training learned from"),
        f"independent judge ({INDEPENDENT_JUDGE})": (independent, "took no part in training"),
    }
    run.report.summary["judge_2afc_crops"] = _crop_duel(models, judges, run.plan, run.args.seed)
    for j in (judge, independent):
        close = getattr(j, "close", None)
        if callable(close):
            close()
    clock.stop()


def run(args: argparse.Namespace) -> int:
    """The whole job: prepare, fine-tune, post-train, refit, evaluate, compare, report."""
    _quiet()
    demo = prepare(args)
    print(f"[demo] report folder: {demo.out} (torch threads: {demo.threads})", flush=True)
    finetune(demo)
    posttrain(demo)
    refit_prior(demo)
    evaluate_compressai(demo)
    compare_codecs(demo)
    side_by_side(demo)
    judge_duel(demo)
    write_report(demo)
    return 0
