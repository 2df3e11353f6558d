"""What one demo run is: its settings (the training configs and the plan of steps), the state
it hands from step to step, and the report it fills in."""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal, get_args

from compressai_vlic.errors import ConfigError
from compressai_vlic.judges.spec import JudgeSpec

PresetType = Literal["full", "smoke"]

PRESETS: tuple[str, ...] = get_args(PresetType)

#: Where stage 1 starts: the shipped ``"tiny"`` weights (a short fine-tune) or random weights.
InitType = Literal["shipped", "scratch"]

INIT_TYPES: tuple[str, ...] = get_args(InitType)

#: The trainer's configs the demo runs (``configs/train/``): model, data and trainer settings.
STAGE1_CONFIGS = {"shipped": "tiny_stage1", "scratch": "tiny_stage1_scratch"}

STAGE2_CONFIG = "tiny_stage2"

REFIT_CONFIG = "tiny_prior_refit"

#: The held-out photos the report measures on: never trained on by the demo or by the shipped
#: model (two colour photos and four grayscale ones read as RGB, all inside scikit-image and
#: scikit-learn).
EVAL_PHOTOS = ("chelsea", "flower", "camera", "moon", "grass", "gravel")

#: The judge of the duel that took no part in training: a 2AFC on DISTS, which no loss term,
#: label filter or checkpoint choice of the demo uses.
INDEPENDENT_JUDGE = "dists"

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
    "duel_crops_per_photo": 1,
    "grid_points": 2,
    "compare_metrics": ("psnr", "ssimulacra2", "lpips"),
    "selection_photos": 1,
    "selection_checkpoints": 2,
}

LABELS = {
    "before": "before post-training",
    "after": "after post-training",
    "jpeg": "JPEG",
    "webp": "WebP",
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of `compressai-vlic demo`."""
    parser.add_argument(
        "-o",
        "--output",
        default="reports/vlic-demo",
        help="report folder (default: reports/vlic-demo)",
    )
    parser.add_argument(
        "--preset",
        choices=PRESETS,
        default="full",
        help="full (about 25 min on 2 cores) or smoke (a few minutes)",
    )
    start = parser.add_mutually_exclusive_group()
    start.add_argument(
        "--init-type",
        choices=INIT_TYPES,
        default="shipped",
        help="stage 1 starts from the shipped 'tiny' weights (default: a short fine-tune) or "
        "from scratch (random weights: all of stage 1, configs/train/tiny_stage1_scratch.yaml)",
    )
    start.add_argument(
        "--from-scratch",
        dest="init_type",
        action="store_const",
        const="scratch",
        help="same as --init-type scratch",
    )
    parser.add_argument("--stage1-steps", type=int, help="override the stage-1 steps")
    parser.add_argument("--stage2-steps", type=int, help="override the post-training steps")
    parser.add_argument("--refit-steps", type=int, help="override the prior-refit steps")
    parser.add_argument(
        "--refit-type",
        choices=("auto", "always"),
        default=None,
        help="prior refit after stage 2: auto (default: only when stage 2 trained the encoder) "
        "or always",
    )
    # the judge: tiny_stage2.yaml's, or the VLM at --judge-base-url named by --judge-model
    JudgeSpec.add_arguments(parser)
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch threads (default 1); stage 2 uses one fewer, keeping a core for the judge",
    )
    parser.add_argument(
        "--posttrain-selection",
        choices=("val_lpips", "last"),
        default=None,
        help="which post-trained codec the report compares: last (default: the last "
        "checkpoint, chosen by no metric) or val_lpips (the checkpoint, stage 1 included, with "
        "the lowest LPIPS on the training photos; LPIPS is then marked as the choice's metric)",
    )
    parser.add_argument("--seed", type=int, default=0)


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
    duel_crops_per_photo: int = 4
    duel_crop_size: int = 128
    grid_points: int = 6
    compare_metrics: tuple[str, ...] = COMPARE_METRICS
    bootstrap_samples: int = 2000
    selection_type: str = "last"
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
            stage1_warmup=m1["warmup_steps"],
            stage2_lr=m2["lr"],
            refit_lr=refit["model"]["init_args"]["lr"],
            refit_samples=refit["data"]["init_args"]["samples_per_epoch"],
            buffer_size=m2["buffer_size"],
            refresh_every=m2["refresh_every"],
            warmup_pairs=m2["warmup_pairs"],
            dpo_batch_size=m2["dpo_batch_size"],
            beta=m2["beta"],
            # photos trained on at full size are evaluated at 256 px
            eval_max_side=stage1["data"]["init_args"]["max_side"] or 256,
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
    """The stage-1, stage-2 and prior-refit training configs, as ``compressai-vlic-train fit``
    parses them (:func:`compressai_vlic_lightning.configs.parse_config`: every option a file
    leaves out at its class's default)."""

    init_type: str
    stage1: dict[str, Any]
    stage2: dict[str, Any]
    refit: dict[str, Any]

    @classmethod
    def load(cls, init_type: str = "shipped") -> DemoConfigs:
        if init_type not in INIT_TYPES:
            raise ConfigError(f"unknown init_type {init_type!r}; choose {', '.join(INIT_TYPES)}")
        from compressai_vlic_lightning.configs import parse_config

        return cls(
            init_type,
            parse_config(STAGE1_CONFIGS[init_type]),
            parse_config(STAGE2_CONFIG),
            parse_config(REFIT_CONFIG),
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


def cpu_time() -> float:
    """CPU seconds of this process (all threads) and its finished children (eval_model)."""
    import resource

    own, kids = (
        resource.getrusage(resource.RUSAGE_SELF),
        resource.getrusage(resource.RUSAGE_CHILDREN),
    )
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


class Clock:
    """Wall and CPU time of one step of the job, recorded into the report under ``name``."""

    def __init__(self, report: DemoReport, name: str) -> None:
        self.report, self.name = report, name
        self.wall, self.cpu = time.perf_counter(), cpu_time()

    def stop(self) -> float:
        wall = time.perf_counter() - self.wall
        self.report.timings_s[self.name] = wall
        self.report.cpu_s[self.name] = cpu_time() - self.cpu
        return wall
