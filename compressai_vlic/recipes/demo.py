"""`compressai-vlic demo`: the main job on a CPU, end to end, in at most 15 minutes on 2 cores.

1. stage 1: a short fine-tune of the shipped ``"tiny"`` codec on the photos bundled with
   scikit-image / scikit-learn (``chelsea`` and ``flower`` are held out and never trained on);
   ``init_type="scratch"`` (``--from-scratch``) runs the whole of stage 1 from random weights;
2. stage 2: Diffusion-DPO post-training on judge preferences (SSIMULACRA 2 unanimous with LPIPS
   offline by default, a VLM behind an OpenAI-compatible endpoint when one is configured);
3. a prior-only refit of the post-trained codec on its own tokens (skipped by default when stage
   2 froze the encoder: the tokens are then stage 1's);
4. CompressAI's own ``python -m compressai.utils.eval_model`` (a subprocess, real bitstreams) on
   the held-out photos, and this package's ``compare`` against JPEG, WebP (and AVIF when Pillow
   writes it), with JPEG and WebP also at the lowest quality that reaches the codec's rate;
5. a report folder: ``report.md``, ``report.json``, ``rate_quality.png``, ``training_curves.png``
   and side-by-side images (original | before | after post-training | JPEG | WebP).

Nothing is downloaded. One torch thread by default (``--threads N``: stage 1, the refit and
the evaluation use N, stage 2 one fewer so that the judge keeps a core for its background thread):
small models run fastest without thread hand-offs, and the judge works on the second core.
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
from typing import Any, Literal, get_args

from compressai_vlic.errors import ConfigError
from compressai_vlic.extras import require
from compressai_vlic.judges.spec import JudgeSpec
from compressai_vlic.recipes.configs import load_config

JUDGE_URL_ENV = "COMPRESSAI_VLIC_JUDGE_BASE_URL"
JUDGE_MODEL_ENV = "COMPRESSAI_VLIC_JUDGE_MODEL"
PresetType = Literal["full", "smoke"]
PRESETS: tuple[str, ...] = get_args(PresetType)
#: Where stage 1 starts: the shipped ``"tiny"`` weights (a short fine-tune) or random weights.
InitType = Literal["shipped", "scratch"]
INIT_TYPES: tuple[str, ...] = get_args(InitType)
#: The trainer's configs the demo runs (``configs/train/``): model, data and trainer settings.
STAGE1_CONFIGS = {"shipped": "tiny_stage1", "scratch": "tiny_stage1_scratch"}
STAGE2_CONFIG = "tiny_stage2"
REFIT_CONFIG = "tiny_prior_refit"
EVAL_PHOTOS = ("chelsea", "flower")
#: Fixed-quality points of the classical codecs on the rate-quality plot.
CODEC_GRIDS = {
    "jpeg": ("q1", "q5", "q10", "q20", "q35", "q50"),
    "webp": ("q0", "q5", "q15", "q30", "q50", "q75"),
    "avif": ("q0", "q10", "q25", "q40", "q55", "q70"),
}
#: Codecs shown side by side at the post-trained codec's rate (lowest quality reaching it).
AT_RATE_CODECS = ("jpeg", "webp")
COMPARE_METRICS = ("psnr", "ms_ssim", "ssimulacra2", "lpips", "dists")
# What the smoke preset changes from the configs (tests: the whole path in about a minute).
SMOKE_OVERRIDES = {
    "stage1_steps": 6,
    "stage2_steps": 4,
    "refit_steps": 4,
    "batch_size": 4,
    "buffer_size": 16,
    "refresh_every": 2,
    "warmup_pairs": 8,
    "dpo_batch_size": 4,
    "refit_samples": 64,
    "duel_crops_per_photo": 4,
    "grid_points": 2,
    "compare_metrics": ("psnr", "ssimulacra2", "lpips"),
    "selection_photos": 1,
    "selection_checkpoints": 2,
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
_LABELS = {
    "before": "before post-training",
    "after": "after post-training",
    "jpeg": "JPEG",
    "webp": "WebP",
}


@dataclass(frozen=True)
class DemoPlan:
    """Steps and sizes of one demo run (``full``: the configs as they are; ``smoke``: tests)."""

    init_type: str
    stage1_steps: int
    stage2_steps: int
    refit_steps: int
    batch_size: int
    stage1_lr: float
    stage1_warmup: int
    stage2_lr: float
    refit_lr: float
    refit_samples: int
    buffer_size: int
    refresh_every: int
    warmup_pairs: int
    dpo_batch_size: int
    beta: float
    eval_max_side: int
    duel_crops_per_photo: int = 32
    grid_points: int = 6
    compare_metrics: tuple[str, ...] = COMPARE_METRICS
    bootstrap_samples: int = 2000
    selection_type: str = "val_lpips"
    refit_type: str = "auto"
    selection_photos: int = 6
    selection_checkpoints: int = 4

    @classmethod
    def from_configs(cls, configs: DemoConfigs) -> DemoPlan:
        """The plan of the trainer's configs (``full`` preset)."""
        stage1, stage2, refit = configs.stage1, configs.stage2, configs.refit
        m1, m2 = stage1["model"]["init_args"], stage2["model"]["init_args"]
        return cls(
            init_type=configs.init_type,
            stage1_steps=stage1["trainer"]["max_steps"],
            stage2_steps=stage2["trainer"]["max_steps"],
            refit_steps=refit["trainer"]["max_steps"],
            batch_size=stage1["data"]["init_args"]["batch_size"],
            stage1_lr=m1["lr"],
            stage1_warmup=m1.get("warmup_steps", 0),
            stage2_lr=m2["lr"],
            refit_lr=refit["model"]["init_args"].get("lr", 3e-4),
            refit_samples=refit["data"]["init_args"].get("samples_per_epoch", 2048),
            buffer_size=m2["buffer_size"],
            refresh_every=m2["refresh_every"],
            warmup_pairs=m2["warmup_pairs"],
            dpo_batch_size=m2["dpo_batch_size"],
            beta=m2["beta"],
            eval_max_side=stage1["data"]["init_args"].get("max_side") or 256,
        )

    @classmethod
    def preset(
        cls, name: str, configs: DemoConfigs | None = None, init_type: str = "shipped"
    ) -> DemoPlan:
        if name not in PRESETS:
            raise ConfigError(f"unknown preset {name!r}; choose from {', '.join(PRESETS)}")
        plan = cls.from_configs(configs or DemoConfigs.load(init_type))
        return plan if name == "full" else replace(plan, **SMOKE_OVERRIDES)


@dataclass(frozen=True)
class DemoConfigs:
    """The parsed stage-1, stage-2 and prior-refit training configs."""

    init_type: str
    stage1: dict[str, Any]
    stage2: dict[str, Any]
    refit: dict[str, Any]

    @classmethod
    def load(cls, init_type: str = "shipped") -> DemoConfigs:
        if init_type not in INIT_TYPES:
            raise ConfigError(f"unknown init_type {init_type!r}; choose {', '.join(INIT_TYPES)}")
        return cls(
            init_type,
            load_config(STAGE1_CONFIGS[init_type]),
            load_config(STAGE2_CONFIG),
            load_config(REFIT_CONFIG),
        )


@dataclass
class DemoReport:
    """Everything the demo measured; written as report.json (and report.md)."""

    command: str
    preset: str
    init_type: str
    plan: dict[str, Any]
    machine: dict[str, Any]
    judge: dict[str, Any]
    timings_s: dict[str, float] = field(default_factory=dict)
    cpu_s: dict[str, float] = field(default_factory=dict)  # process + children CPU time
    stage1: dict[str, Any] = field(default_factory=dict)
    stage2: dict[str, Any] = field(default_factory=dict)
    prior_refit: dict[str, Any] = field(default_factory=dict)
    compressai_eval: dict[str, Any] = field(default_factory=dict)
    compare: dict[str, Any] = field(default_factory=dict)
    per_image: list[dict[str, Any]] = field(default_factory=list)
    summary: dict[str, Any] = field(default_factory=dict)
    files: dict[str, str] = field(default_factory=dict)


def _judge_spec(args: argparse.Namespace, stage2: dict[str, Any]) -> JudgeSpec:
    """The run's judge: ``tiny_stage2.yaml``'s (LPIPS unanimity) with the judge flags laid over
    it. An endpoint (``--judge-base-url`` or the environment) makes it the VLM judge, asked in
    both orders (VLIC's noise control)."""
    base = JudgeSpec.from_module_args(stage2["model"]["init_args"])
    if getattr(args, "judge_base_url", None) is None:
        args.judge_base_url = os.environ.get(JUDGE_URL_ENV)
    if getattr(args, "judge_model", None) is None:
        args.judge_model = os.environ.get(JUDGE_MODEL_ENV)
    backend = args.judge_type or ("openai" if args.judge_base_url else base.backend)
    if backend == "openai" and base.backend != "openai":
        compose = replace(base.compose, order_type="symmetrize")
        base = JudgeSpec(backend="openai", prompt_type="vlic-score", compose=compose)
    spec = JudgeSpec.from_args(args, backend, base)
    if spec.backend == "openai" and not spec.model:
        raise ConfigError(f"a VLM judge needs --judge-model (or ${JUDGE_MODEL_ENV})")
    return spec


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


def _cpu_time() -> float:
    """CPU seconds of this process (all threads) and its finished children (eval_model)."""
    import resource

    own, kids = (
        resource.getrusage(resource.RUSAGE_SELF),
        resource.getrusage(resource.RUSAGE_CHILDREN),
    )
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


class _Clock:
    """Wall and CPU time of one step of the job, recorded into the report under ``name``."""

    def __init__(self, report: DemoReport, name: str) -> None:
        self.report, self.name = report, name
        self.wall, self.cpu = time.perf_counter(), _cpu_time()

    def stop(self) -> float:
        wall = time.perf_counter() - self.wall
        self.report.timings_s[self.name] = wall
        self.report.cpu_s[self.name] = _cpu_time() - self.cpu
        return wall


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
    from compressai_vlic_lightning import CSVLogger  # keeps metrics.csv rows on a resume
    from pytorch_lightning.callbacks import ModelCheckpoint

    tty = sys.stderr.isatty()
    trainer_args = {k: config["trainer"][k] for k in _TRAINER_KEYS if k in config["trainer"]}
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
    threads: int = 1
    cpu_start: float = 0.0
    data: Any = None
    stage1_ckpt: Path | None = None
    stage2_ckpt: Path | None = None
    exported: dict[str, Path] = field(default_factory=dict)  # "before" / "after" -> .pth.tar
    images: list[Path] = field(default_factory=list)
    comparison: Any = None


def _quiet() -> None:
    warnings.filterwarnings("ignore", message=".*torch.jit.script.*")
    warnings.filterwarnings("ignore", message=".*treespec.*")
    warnings.filterwarnings(
        "ignore", message=".*module\\(s\\) in eval mode.*"
    )  # the frozen reference
    warnings.filterwarnings("ignore", message=".*does not have many workers.*")
    # Lightning's start-up tips and device banners would bury the demo's own progress lines.
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
        machine=_machine(),
        judge={
            "judge_type": judge_spec.backend,
            "judge_kwargs": judge_spec.backend_kwargs(),
            "judge_compose": judge_spec.compose.changed() or None,
        },
    )
    return DemoRun(
        args, plan, configs, judge_spec, out, report, time.perf_counter(), threads, _cpu_time()
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
        f"[demo] stage 1: {what} the {model_args.get('quality', 'test')!r} codec from {start} "
        f"for {plan.stage1_steps} steps on bundled photos (held out: {', '.join(EVAL_PHOTOS)})",
        flush=True,
    )
    clock = _Clock(report, "stage1")
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
        "last_logged": _last_metrics(out / "stage1" / "metrics.csv"),
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
    clock = _Clock(report, "stage2")
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
        "last_logged": _last_metrics(out / "stage2" / "metrics.csv"),
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

    from compressai_vlic.recipes.selection import Candidate, select_checkpoint

    plan, out, report = run.plan, run.out, run.report
    clock = _Clock(report, "selection")
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
    name = run.configs.stage1["model"]["init_args"].get("quality", "test")
    after = out / "checkpoints" / f"vlic-{name}-after.pth.tar"
    before = export_checkpoint(
        run.stage1_ckpt, out / "checkpoints" / f"vlic-{name}-before.pth.tar"
    ).path
    frozen = run.configs.stage2["model"]["init_args"].get("freeze_type") == "encoder"
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
    clock = _Clock(report, "prior_refit")
    pl.seed_everything(run.args.seed + 2, workers=True, verbose=False)
    args = cfg["model"]["init_args"]
    module = PriorRefitModule(
        **{
            **args,
            "checkpoint": str(run.stage2_ckpt),
            "lr": plan.refit_lr,
            "warmup_steps": min(args.get("warmup_steps", 0), plan.refit_steps // 10),
            "export_path": str(after),
        }
    )
    data_args = cfg["data"]["init_args"]
    data = PhotosDataModule(
        **{
            **data_args,
            "samples_per_epoch": plan.refit_samples,
            "batch_size": min(data_args.get("batch_size", 32), plan.refit_samples),
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
    _, bits = _series(metrics, "train/bits_per_token")
    report.prior_refit = {
        "steps": trainer.global_step,
        "bits_per_token_first": bits[0] if bits else None,
        "bits_per_token_last": bits[-1] if bits else None,
        "last_logged": _last_metrics(metrics),
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
    clock = _Clock(run.report, "compressai_eval")
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
        codec.description = f"VLIC {_LABELS[label]} ({path.name})"
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

    clock = _Clock(run.report, "compare")
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


def _side_by_side(panels: list[tuple[str, Any]], path: Path) -> Path:
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


def side_by_side(run: DemoRun) -> None:
    """Per held-out photo: original | before | after | JPEG | WebP at the codec's rate."""
    from compressai_vlic.image_io import load_image

    result, report = run.comparison, run.report
    rows = {(r.codec, r.image): r for r in result.rows}
    order = [("vlic-before", _LABELS["before"]), ("vlic-after", _LABELS["after"])]
    order += [(f"{name}-at-rate", _LABELS[name]) for name in AT_RATE_CODECS]
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
            _side_by_side(panels, run.out / "side_by_side" / f"{path.stem}.png")
        )
        report.per_image.append(entry)
    for key in ("before", "after", *AT_RATE_CODECS):
        for name in ["bpp", *metrics]:
            report.summary[f"{key}_{name}"] = _mean(
                [r.get(f"{key}_{name}") for r in report.per_image]
            )


def _crop_duel(models: dict[str, Any], judge: Any, plan: DemoPlan, seed: int) -> dict[str, Any]:
    """The judge's 2AFC verdicts, after vs before post-training, on held-out training-size crops.

    Both models decode with the same seeds; every crop and seed is one question. Many crops give
    a far less noisy read of what post-training changed than two full images. The win rate's
    95% interval is a bootstrap over crops (a crop's seeds stay together).
    """
    import numpy as np
    import torch
    from compressai_vlic_lightning.common import psnr
    from compressai_vlic_lightning.data import PhotosDataModule
    from tqdm.auto import tqdm

    from compressai_vlic.judges.audit.statistics import bootstrap_ratio
    from compressai_vlic.judges.types import Choice, JudgeRequest
    from compressai_vlic.metrics import get_metric

    size = models["before"].config.image_size
    data = PhotosDataModule(
        crop_size=size, val_photos=list(EVAL_PHOTOS), val_crops_per_photo=plan.duel_crops_per_photo
    )
    data.setup("validate")
    crops = torch.stack([data.val_set[i] for i in range(len(data.val_set))])
    seeds = (0, 1)
    decoded: dict[str, list[Any]] = {}
    bar = tqdm(total=len(models) * len(seeds), desc="[demo] duel decodes", unit="decode")
    for label, model in models.items():
        with torch.no_grad():
            indices = model.encode(crops).indices
            decoded[label] = []
            for s in seeds:
                decoded[label].append(model.decode_codes(indices, seed=s).clamp(0, 1))
                bar.update(1)
    bar.close()
    requests = [
        JudgeRequest(crops[i], decoded["after"][s][i], decoded["before"][s][i])
        for s in range(len(seeds))
        for i in range(crops.shape[0])
    ]
    verdicts = []
    chunk = 16
    bar = tqdm(total=len(requests), desc="[demo] judge questions", unit="pair")
    for start in range(0, len(requests), chunk):
        verdicts += judge.compare_batch(requests[start : start + chunk])
        bar.update(min(chunk, len(requests) - start))
    bar.close()
    n = crops.shape[0]
    wins, decided = np.zeros(n), np.zeros(n)
    counts = {"after": 0, "before": 0, "abstain": 0, "failed": 0}
    for q, v in enumerate(verdicts):
        i = q % n
        if getattr(v, "failed", False):
            counts["failed"] += 1
        elif v.choice is Choice.A:
            counts["after"] += 1
            wins[i] += 1
            decided[i] += 1
        elif v.choice is Choice.B:
            counts["before"] += 1
            decided[i] += 1
        else:
            counts["abstain"] += 1
    est = bootstrap_ratio(wins, decided, plan.bootstrap_samples, np.random.default_rng(seed))
    out: dict[str, Any] = {
        **counts,
        "crops": n,
        "crop_size": size,
        "seeds": len(seeds),
        "questions": len(requests),
        "after_win_rate": None if np.isnan(est.value) else est.value,
        "after_win_rate_ci95": None if np.isnan(est.value) else [est.low, est.high],
        "ci_method": f"percentile bootstrap over crops, {plan.bootstrap_samples} resamples",
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
    """The judge, after vs before post-training: full held-out photos and many crops."""
    from compressai_vlic.checkpoints import load_vlic
    from compressai_vlic.image_io import load_image

    clock = _Clock(run.report, "judge_duel")
    print("[demo] judge duel: after vs before post-training on held-out crops", flush=True)
    models = {label: load_vlic(path).eval() for label, path in run.exported.items()}
    judge = run.judge_spec.build()
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
    run.report.summary["judge_2afc_crops"] = _crop_duel(models, judge, run.plan, run.args.seed)
    close = getattr(judge, "close", None)
    if callable(close):
        close()
    clock.stop()


def lpips_check(report: DemoReport) -> dict[str, Any]:
    """LPIPS before and after post-training (full photos, and crops): the delta, flagged when
    post-training made it worse (what LPIPS unanimity is there to prevent)."""
    s, duel = report.summary, report.summary.get("judge_2afc_crops", {})
    check: dict[str, Any] = {}
    for scope, before, after in (
        ("photos", s.get("before_lpips"), s.get("after_lpips")),
        ("crops", duel.get("before_crop_lpips"), duel.get("after_crop_lpips")),
    ):
        if before is None or after is None:
            continue
        check[scope] = {
            "before": before,
            "after": after,
            "delta": after - before,
            "worsened": after > before,
        }
    check["worsened"] = any(v["worsened"] for v in check.values() if isinstance(v, dict))
    s["lpips_check"] = check
    return check


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
                    label=f"VLIC {_LABELS[codec.removeprefix('vlic-')]}",
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
            steps, values = _series(csv_path, key)
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
    lp = s.get("lpips_check", {})
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
            ("before", _LABELS["before"]),
            ("after", _LABELS["after"]),
            *((c, _LABELS[c]) for c in AT_RATE_CODECS),
        ):
            cells = [label, entry.get(f"{key}_setting", ""), _fmt(entry.get(f"{key}_bpp"), 4)]
            cells += [_fmt(entry.get(f"{key}_{m}"), 4) for m in metrics]
            lines.append("| " + " | ".join(cells) + " |")
        lines.append("")
    lines += ["## Rate-quality", "", "![rate-quality](rate_quality.png)", ""]
    table = Path(report.compare.get("table_md", ""))
    if table.is_file():
        lines += [table.read_text().strip(), ""]
    rate, ci = duel.get("after_win_rate"), duel.get("after_win_rate_ci95")
    lines += [
        "## The judge: after vs before post-training",
        "",
        f"{duel.get('questions', 0)} questions ({duel.get('crops', 0)} held-out "
        f"{duel.get('crop_size')}-px crops x {duel.get('seeds', 0)} "
        f"decode seeds): after wins {duel.get('after', 0)}, before wins {duel.get('before', 0)}, "
        f"abstains {duel.get('abstain', 0)}.",
        "",
        (
            f"**After-vs-before win rate: {rate:.1%} (95% CI {ci[0]:.1%} to {ci[1]:.1%}; "
            f"{duel.get('ci_method')}).**"
            if rate is not None
            else "**After-vs-before win rate: none (the judge abstained on every question).**"
        ),
        "",
        "## LPIPS before and after post-training",
        "",
        "| images | before | after | delta | |",
        "|---|---|---|---|---|",
    ]
    for scope in ("photos", "crops"):
        if scope in lp:
            v = lp[scope]
            flag = "**worse after post-training**" if v["worsened"] else "not worse"
            lines.append(
                f"| held-out {scope} | {v['before']:.4f} | {v['after']:.4f} | "
                f"{v['delta']:+.4f} | {flag} |"
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
        lines.append(f"| {_LABELS[label]} | " + " | ".join(_fmt(v, 4) for v in row) + " |")
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
    lpips_check(report)
    report.timings_s["total"] = time.perf_counter() - run.t_start
    report.cpu_s["total"] = _cpu_time() - run.cpu_start
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


def _print_summary(report: DemoReport) -> None:
    s = report.summary
    res = report.compressai_eval.get("results", {})
    print("[demo] CompressAI eval_model (real bitstreams, held-out photos):")
    print(f"         {'model':<24}{'bpp':>8}{'PSNR':>9}{'MS-SSIM':>10}")
    for i, label in enumerate(("before", "after")):
        row = [res.get(k, [None, None])[i] for k in ("bpp", "psnr-rgb", "ms-ssim-rgb")]
        print(
            f"         {_LABELS[label]:<24}"
            + "".join(f"{v:>9.4f}" if v is not None else f"{'-':>9}" for v in row)
        )
    metrics = [m for m in ("psnr", "ssimulacra2", "lpips") if f"after_{m}" in s]
    print("[demo] compare on held-out photos (JPEG/WebP: lowest quality reaching the codec's bpp):")
    print(f"         {'codec':<24}{'bpp':>8}" + "".join(f"{m:>13}" for m in metrics))
    for key in ("before", "after", *AT_RATE_CODECS):
        label = _LABELS[key]
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
    rate, ci = duel["after_win_rate"], duel["after_win_rate_ci95"]
    print(
        f"[demo] judge on {duel['questions']} held-out crops x seeds, after vs before: after wins "
        f"{duel['after']}, before wins {duel['before']}, abstain {duel['abstain']}"
        + (f": win rate {rate:.1%} (95% CI {ci[0]:.1%}-{ci[1]:.1%})" if rate is not None else "")
    )
    for scope, v in s["lpips_check"].items():
        if isinstance(v, dict):
            print(
                f"[demo] LPIPS on held-out {scope}: before {v['before']:.4f} -> after "
                f"{v['after']:.4f} (delta {v['delta']:+.4f})"
                + (" WARNING: post-training made LPIPS worse" if v["worsened"] else "")
            )
    print("[demo] timings (s): " + ", ".join(f"{k} {v:.0f}" for k, v in report.timings_s.items()))
    print("[demo] CPU time (s): " + ", ".join(f"{k} {v:.0f}" for k, v in report.cpu_s.items()))
