"""A controlled ablation of stage 2: arms that differ only where the arm says.

From one stage-2 config the runner derives, per (arm, training seed), a resolved config:

- ``dpo``: the config as given;
- ``control``: ``dpo_weight: 0`` (only the regulariser trains; pairs are still drawn and scored);
- ``shuffled``: the same pairs with their verdicts permuted across pairs by a seeded permutation
  (tests that a gain comes from the judge's information, not from training on more decodes).

Every arm trains on one pair set judged once from the stage-1 model (an online config becomes
offline for all arms alike), with the same data order, steps and seeds. Each run lives in its own
folder ``runs/<arm>/seed<k>`` with its resolved config and checkpoints; rerunning the command
resumes each unfinished run from its ``last.ckpt``; ``manifest.json`` records what is done.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import logging
import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Literal

from compressai_vlic.atomic import atomic_write_text
from compressai_vlic.errors import ConfigError
from compressai_vlic.options import check_option
from compressai_vlic.threads import THREADS_ENV, available_cores, set_default_threads

log = logging.getLogger(__name__)

ArmType = Literal["dpo", "control", "shuffled"]
ARMS: tuple[str, ...] = ("dpo", "control", "shuffled")

#: Keys of a resolved config that name where a run lives (they differ between runs by design).
LOCATION_KEYS = frozenset(
    {
        "trainer.default_root_dir",
        "trainer.logger.init_args.save_dir",
        "trainer.callbacks.ModelCheckpoint.init_args.dirpath",
        "model.init_args.buffer_dir",
    }
)
#: Keys the training seed sets (they differ between seeds, never between arms of one seed).
SEED_KEYS = frozenset({"seed_everything", "model.init_args.seed"})
#: The only keys each arm changes relative to ``dpo``.
ARM_KEYS: dict[str, frozenset[str]] = {
    "dpo": frozenset(),
    "control": frozenset({"model.init_args.dpo_weight"}),
    "shuffled": frozenset({"model.init_args.preference_dataset"}),
}


def flatten(config: Any, prefix: str = "") -> dict[str, Any]:
    """A nested config as ``{"a.b.c": value}``; callbacks are keyed by their class name."""
    out: dict[str, Any] = {}
    if isinstance(config, dict):
        for k, v in config.items():
            out.update(flatten(v, f"{prefix}{k}."))
    elif isinstance(config, list) and prefix.endswith("callbacks."):
        for item in config:
            name = (
                str(item.get("class_path", "")).rpartition(".")[2] if isinstance(item, dict) else ""
            )
            out.update(flatten(item, f"{prefix}{name}."))
    else:
        out[prefix[:-1]] = config
    return out


def config_diff(a: dict[str, Any], b: dict[str, Any]) -> set[str]:
    """The flattened keys whose values differ between two configs."""
    fa, fb = flatten(a), flatten(b)
    return {k for k in set(fa) | set(fb) if fa.get(k, object()) != fb.get(k, object())}


def _checkpoint_callback(trainer: dict[str, Any]) -> dict[str, Any]:
    callbacks = trainer.setdefault("callbacks", [])
    for cb in callbacks:
        if isinstance(cb, dict) and str(cb.get("class_path", "")).endswith("ModelCheckpoint"):
            return cb
    cb = {"class_path": "pytorch_lightning.callbacks.ModelCheckpoint", "init_args": {}}
    callbacks.append(cb)
    return cb


def resolve_arm_config(
    base: dict[str, Any],
    arm: str,
    seed: int,
    run_dir: str | Path,
    pairs: str | Path,
    shuffled_pairs: str | Path,
    steps: int | None = None,
    checkpoint_every: int | None = None,
) -> dict[str, Any]:
    """The config one (arm, training seed) run trains with.

    Changes common to every run: offline preferences from ``pairs`` (the shared, judged pair set),
    the training seed, the run's folder, ``steps`` and the checkpoint cadence. Then only what
    :data:`ARM_KEYS` names for ``arm``.
    """
    check_option("arm", arm, ArmType)
    cfg = copy.deepcopy(base)
    if "model" not in cfg or "init_args" not in cfg["model"]:
        raise ConfigError("an ablation needs a stage-2 config with model.init_args")
    if not str(cfg["model"].get("class_path", "")).endswith("Stage2Module"):
        raise ConfigError(
            f"an ablation needs a Stage2Module config, got {cfg['model'].get('class_path')}"
        )
    model = cfg["model"]["init_args"]
    trainer = cfg.setdefault("trainer", {})
    run_dir = Path(run_dir)
    cfg["seed_everything"] = int(seed)
    model["seed"] = int(seed)
    model["preference_type"] = "offline"
    model["preference_dataset"] = str(pairs)
    model.pop("buffer_dir", None)
    trainer["default_root_dir"] = str(run_dir)
    logger = trainer.get("logger")
    if isinstance(logger, dict):
        logger.setdefault("init_args", {})["save_dir"] = str(run_dir)
    else:
        trainer["logger"] = {
            "class_path": "compressai_vlic_lightning.CSVLogger",
            "init_args": {"save_dir": str(run_dir), "name": "", "version": ""},
        }
    ckpt = _checkpoint_callback(trainer).setdefault("init_args", {})
    ckpt["dirpath"] = str(run_dir / "checkpoints")
    ckpt["save_last"] = True
    ckpt["save_top_k"] = 0
    if checkpoint_every is not None:
        ckpt["every_n_train_steps"] = int(checkpoint_every)
    if steps is not None:
        trainer["max_steps"] = int(steps)
    if arm == "control":
        model["dpo_weight"] = 0.0
    elif arm == "shuffled":
        model["preference_dataset"] = str(shuffled_pairs)
    return cfg


# ----------------------------------------------------------------------------- pair sets


def shuffle_verdicts(source: str | Path, output: str | Path, seed: int) -> int:
    """Write ``source``'s pairs to ``output`` with verdicts permuted across the decided pairs.

    Images, codes and pair ids stay; pair ``i`` takes the label and judgment of pair ``perm[i]``,
    so the share of A and B winners is kept and the judge's information is gone. Abstentions stay
    where they are. Returns how many rows changed their label.
    """
    import numpy as np

    from compressai_vlic.judges.dataset import PreferenceWriter, read_preference_dataset
    from compressai_vlic.judges.types import Choice

    output = Path(output)
    if output.exists():
        raise ConfigError(f"{output} exists already; remove it to rebuild the shuffled pair set")
    if Path(source).resolve().parent != output.resolve().parent:
        raise ConfigError("the shuffled pair set must sit beside its source (relative image paths)")
    rows = read_preference_dataset(source)
    decided = [i for i, r in enumerate(rows) if r.label is not Choice.ABSTAIN]
    perm = np.random.default_rng(seed).permutation(len(decided))
    out = list(rows)
    for k, i in enumerate(decided):
        donor = rows[decided[int(perm[k])]]
        out[i] = dataclasses.replace(rows[i], label=donor.label, judgment=donor.judgment)
    config = {**rows[0].judge_config, "shuffled_seed": int(seed)} if rows else {}
    tmp = output.with_name(f".tmp-{output.name}")
    tmp.unlink(missing_ok=True)
    with PreferenceWriter(tmp, config) as writer:
        for row in out:
            writer.append(dataclasses.replace(row, judge_config=config))
    os.replace(tmp, output)
    Path(str(tmp) + ".lock").unlink(missing_ok=True)
    return sum(1 for a, b in zip(rows, out, strict=True) if a.label != b.label)


def cut_crops(images: list[Path], out_dir: Path, count: int, size: int, seed: int) -> list[Path]:
    """``count`` seeded random ``size`` x ``size`` crops of ``images`` as PNGs (kept if present)."""
    import torch

    from compressai_vlic.image_io import load_image, save_png

    out_dir.mkdir(parents=True, exist_ok=True)
    gen = torch.Generator().manual_seed(seed)
    written = []
    cache: dict[Path, torch.Tensor] = {}
    for k in range(count):
        src = images[int(torch.randint(0, len(images), (), generator=gen))]
        if src not in cache:
            cache[src] = load_image(src).tensor
        x = cache[src]
        h, w = x.shape[-2:]
        if min(h, w) < size:
            raise ConfigError(f"{src}: {h}x{w} is smaller than the {size}-px pair crop")
        top = int(torch.randint(0, h - size + 1, (), generator=gen))
        left = int(torch.randint(0, w - size + 1, (), generator=gen))
        path = out_dir / f"{k:04d}-{src.stem}-y{top}x{left}.png"
        if not path.exists():
            save_png(x[:, top : top + size, left : left + size], path)
        written.append(path)
    return written


def judge_config_of(model_args: dict[str, Any]) -> dict[str, Any]:
    """The stage-2 module's judge (its ``judge:`` block or the older keys) as a spec dict."""
    from compressai_vlic.judges.spec import JudgeSpec

    return JudgeSpec.from_module_args(model_args).to_config()


def make_pair_set(
    reference: str,
    originals: Path,
    output: Path,
    judge_settings: dict[str, Any],
    base_seed: int = 0,
    progress: bool = False,
    num_steps: int | None = None,
) -> dict[str, Any]:
    """Judge two decodes of each original by the reference model (resumable; whole-image pairs),
    each decoded with ``num_steps`` sampler steps (None: the model's own; the stage-2 config's
    ``decode_num_steps``).

    Returns counts: pairs, decided, abstained.
    """
    from compressai_vlic.evaluation.codec_pairs import CodecPairMaker
    from compressai_vlic.judges.compose import describe_judge, public_kwargs
    from compressai_vlic.judges.dataset import build_preference_dataset, read_preference_dataset
    from compressai_vlic.judges.spec import JudgeSpec
    from compressai_vlic.judges.types import Choice
    from compressai_vlic_lightning.common import load_codec

    codec = load_codec(reference, "ema")
    maker = CodecPairMaker(
        codec,
        output.with_name(output.name + ".decodes"),
        1,
        base_seed,
        {"reference": str(reference), **({"num_steps": num_steps} if num_steps else {})},
        crop_type="image",
        num_steps=num_steps,
    )
    spec = JudgeSpec.from_config(judge_settings)
    judge = spec.build()
    config = {
        "judge": describe_judge(judge),
        "judge_type": spec.backend,
        "judge_args": public_kwargs(spec.backend_kwargs()),
        "codec": {
            "reference": str(reference),
            "base_seed": base_seed,
            "crop_type": "image",
            "num_steps": num_steps,
        },
    }
    summary = build_preference_dataset(
        maker.plan(originals),
        judge,
        output,
        config,
        concurrency=1,
        progress=progress,
        prepare=maker.prepare,
    )
    if not summary.ok:
        raise ConfigError("\n".join([f"{output}: {summary.line()}", *summary.problems(3)]))
    closer = getattr(judge, "close", None)
    if callable(closer):
        closer()
    rows = read_preference_dataset(output)
    abstained = sum(1 for r in rows if r.label is Choice.ABSTAIN)
    return {"pairs": len(rows), "decided": len(rows) - abstained, "abstained": abstained}


# ----------------------------------------------------------------------------- runs


@dataclasses.dataclass
class RunSpec:
    """One (arm, training seed) run."""

    arm: str
    seed: int
    folder: Path

    @property
    def key(self) -> str:
        return f"{self.arm}/seed{self.seed}"

    @property
    def config_path(self) -> Path:
        return self.folder / "config.yaml"

    @property
    def last_ckpt(self) -> Path:
        return self.folder / "checkpoints" / "last.ckpt"


def checkpoint_step(path: Path) -> int | None:
    """The global step a Lightning checkpoint was saved at (None: no checkpoint)."""
    if not path.is_file():
        return None
    from compressai_vlic.checkpoints import load_checkpoint

    ckpt = load_checkpoint(path)
    return int(ckpt.get("global_step", 0))


class Manifest:
    """``manifest.json`` of an ablation folder: its settings and the state of every run."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.data: dict[str, Any] = json.loads(path.read_text()) if path.is_file() else {}
        self.data.setdefault("runs", {})
        self._lock = threading.Lock()

    def save(self) -> None:
        with self._lock:  # runs trained in parallel threads update it
            text = json.dumps(self.data, indent=2, sort_keys=True) + "\n"
            atomic_write_text(self.path, text)

    def run(self, key: str) -> dict[str, Any]:
        return self.data["runs"].setdefault(key, {})


def fit_command(spec: RunSpec) -> list[str]:
    """The ``compressai-vlic-train fit`` command of a run, resuming from its last checkpoint."""
    cmd = [
        sys.executable,
        "-m",
        "compressai_vlic_lightning.cli",
        "fit",
        "--config",
        str(spec.config_path),
    ]
    if spec.last_ckpt.is_file():
        cmd += ["--ckpt_path", str(spec.last_ckpt)]
    return cmd


def keep_log(spec: RunSpec, step: int | None) -> Path | None:
    """Move a run's ``metrics.csv`` aside before a resume (the CSV logger starts it afresh)."""
    log_file = spec.folder / "metrics.csv"
    if step is None or not log_file.is_file():
        return None
    k = 0
    while (target := spec.folder / f"metrics.until{step}.{k}.csv").exists():
        k += 1
    os.replace(log_file, target)
    return target


def read_metrics(folder: Path) -> list[dict[str, float]]:
    """Every logged row of a run, over its resumes; a step logged twice keeps its latest row."""
    import csv

    parts = sorted(folder.glob("metrics.until*.csv"), key=lambda p: p.stat().st_mtime)
    if (folder / "metrics.csv").is_file():
        parts.append(folder / "metrics.csv")
    by_step: dict[int, dict[str, float]] = {}
    for part in parts:
        with open(part, newline="") as fh:
            for row in csv.DictReader(fh):
                values = {k: float(v) for k, v in row.items() if v not in (None, "")}
                if "step" in values:
                    by_step.setdefault(int(values["step"]), {}).update(values)
    return [by_step[k] for k in sorted(by_step)]


def train_runs(
    specs: list[RunSpec],
    manifest: Manifest,
    steps: int,
    runner: Any = None,
    workers: int = 1,
) -> list[str]:
    """Train every run that is not done (resuming each from its ``last.ckpt``); returns failures.

    Args:
        runner: ``runner(spec, command)`` -> return code (default: a subprocess); tests pass an
            in-process one.
        workers: runs trained at once, each its own process (default 1). Give each run
            ``cores / workers`` threads (``COMPRESSAI_VLIC_THREADS``) or one GPU.
    """
    if workers < 1:
        raise ConfigError(f"workers must be >= 1, got {workers}")

    def train(spec: RunSpec) -> bool:
        entry = manifest.run(spec.key)
        at = checkpoint_step(spec.last_ckpt)
        if entry.get("status") == "done" and at is not None and at >= steps:
            return True
        cmd = fit_command(spec)
        keep_log(spec, at)
        entry.update(
            {
                "status": "running",
                "config": str(spec.config_path),
                "resumed_from_step": at,
                "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            }
        )
        manifest.save()
        log.info("%s: %s", spec.key, " ".join(cmd))
        if runner is None:
            with open(spec.folder / "train.log", "ab") as fh:
                rc = subprocess.call(cmd, stdout=fh, stderr=subprocess.STDOUT)
        else:
            rc = runner(spec, cmd)
        at = checkpoint_step(spec.last_ckpt)
        entry.update(
            {
                "status": "done" if rc == 0 and at is not None and at >= steps else "failed",
                "returncode": rc,
                "steps": at,
                "finished": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            }
        )
        manifest.save()
        return entry["status"] == "done"

    if workers == 1:
        done = [train(spec) for spec in specs]
    else:
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(max_workers=workers) as pool:
            done = list(pool.map(train, specs))
    return [spec.key for spec, ok in zip(specs, done) if not ok]


def prepare_runs(
    config_path: str | Path,
    out: str | Path,
    arms: list[str],
    seeds: list[int],
    steps: int | None = None,
    checkpoint_every: int | None = None,
    pair_originals: str | Path | None = None,
    pair_count: int = 96,
    pair_crop: int = 128,
    shuffle_seed: int = 0,
) -> tuple[list[RunSpec], Manifest]:
    """Make the shared pair set (once), its shuffled copy and every run's resolved config."""
    import yaml

    for arm in arms:
        check_option("arm", arm, ArmType)
    if not seeds:
        raise ConfigError("give at least one training seed")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    from compressai_vlic_lightning.configs import parse_config

    base = parse_config(config_path)  # as `fit` reads it: overlays, defaults from signatures
    model = (base.get("model") or {}).get("init_args") or {}
    from compressai_vlic_lightning.common import NOT_GIVEN, weights_spec

    reference = weights_spec(model.get("weights"), model.get("init_from", NOT_GIVEN))
    if not reference:
        raise ConfigError(
            "the stage-2 config needs model.init_args.weights (the stage-1 checkpoint)"
        )
    steps = int(steps if steps is not None else base.get("trainer", {}).get("max_steps", 0))
    if steps < 1:
        raise ConfigError("give --steps or a config with trainer.max_steps")
    manifest = Manifest(out / "manifest.json")
    settings = {
        "config": str(config_path),
        "arms": arms,
        "seeds": seeds,
        "steps": steps,
        "reference": reference,
        "pair_count": pair_count,
        "pair_crop": pair_crop,
        "shuffle_seed": shuffle_seed,
    }
    old = manifest.data.get("settings")
    if old and {
        k: old.get(k)
        for k in ("config", "steps", "reference", "pair_count", "pair_crop", "shuffle_seed")
    } != {
        k: settings[k]
        for k in ("config", "steps", "reference", "pair_count", "pair_crop", "shuffle_seed")
    }:
        raise ConfigError(f"{out} holds an ablation with other settings ({old}); use another --out")
    manifest.data["settings"] = settings
    pairs_dir = out / "pairs"
    if model.get("preference_type") == "offline" and model.get("preference_dataset"):
        pairs = Path(model["preference_dataset"]).resolve()
        shuffled = pairs.with_name(f"{pairs.stem}.shuffled{shuffle_seed}.jsonl")
    else:
        pairs = pairs_dir / "pairs.jsonl"
        shuffled = pairs_dir / f"pairs.shuffled{shuffle_seed}.jsonl"
        if not manifest.data.get("pairs", {}).get("complete"):
            originals = pair_originals or ((base.get("data") or {}).get("init_args") or {}).get(
                "train_dir"
            )
            if not originals:
                raise ConfigError(
                    "give --pair-originals (the training photos the pairs are cut from)"
                )
            from compressai_vlic.image_io import find_images

            cut_crops(
                sorted(find_images(Path(originals))),
                pairs_dir / "originals",
                pair_count,
                pair_crop,
                shuffle_seed,
            )
            counts = make_pair_set(
                reference,
                pairs_dir / "originals",
                pairs,
                judge_config_of(model),
                num_steps=model.get("decode_num_steps"),
            )
            manifest.data["pairs"] = {"path": str(pairs), "complete": True, **counts}
            manifest.save()
    if not shuffled.exists():
        changed = shuffle_verdicts(pairs, shuffled, shuffle_seed)
        manifest.data.setdefault("pairs", {})["shuffled"] = {
            "path": str(shuffled),
            "labels_changed": changed,
        }
        manifest.save()
    specs = []
    for seed in seeds:
        for arm in arms:
            spec = RunSpec(arm, seed, out / "runs" / arm / f"seed{seed}")
            cfg = resolve_arm_config(
                base, arm, seed, spec.folder, pairs, shuffled, steps, checkpoint_every
            )
            spec.folder.mkdir(parents=True, exist_ok=True)
            text = yaml.safe_dump(cfg, sort_keys=False)
            if not spec.config_path.is_file() or spec.config_path.read_text() != text:
                atomic_write_text(spec.config_path, text)
            specs.append(spec)
    manifest.save()
    return specs, manifest


def _ints(text: str) -> list[int]:
    try:
        return [int(v) for v in text.split(",") if v.strip()]
    except ValueError as exc:
        raise ConfigError(f"expected comma-separated integers, got {text!r}") from exc


def run_ablation(args: Any) -> int:
    """``compressai-vlic-train ablate``: prepare, train (resuming), then evaluate if asked."""
    logging.basicConfig(level=logging.INFO, format="[ablate] %(message)s")
    arms = [a.strip() for a in args.arms.split(",") if a.strip()]
    seeds = _ints(args.seeds)
    specs, manifest = prepare_runs(
        args.config,
        args.out,
        arms,
        seeds,
        steps=args.steps,
        checkpoint_every=args.checkpoint_every,
        pair_originals=args.pair_originals,
        pair_count=args.pairs,
        pair_crop=args.pair_crop,
        shuffle_seed=args.shuffle_seed,
    )
    steps = int(manifest.data["settings"]["steps"])
    workers = int(getattr(args, "workers", 1) or 1)
    if workers < 1:
        raise ConfigError(f"--workers must be >= 1, got {workers}")
    shard = _shard(args.eval_shard) if getattr(args, "eval_shard", None) else None
    if workers > 1 and THREADS_ENV not in os.environ:  # the workers' processes share the cores
        os.environ[THREADS_ENV] = str(max(1, available_cores() // workers))
    if os.environ.get(THREADS_ENV):
        set_default_threads()
    if not (args.evaluate_only or args.report_only or shard):
        failed = train_runs(specs, manifest, steps, workers=workers)
        if failed:
            print(
                f"error: runs failed: {', '.join(failed)} (see their train.log); rerun to resume",
                file=sys.stderr,
            )
            return 1
    if args.heldout:
        from compressai_vlic_lightning.ablation_eval import evaluate_ablation

        evaluate_ablation(
            Path(args.out),
            specs,
            manifest,
            Path(args.heldout),
            decode_seeds=_ints(args.decode_seeds),
            metrics=[m.strip() for m in args.metrics.split(",") if m.strip()],
            heldout_pairs=args.heldout_pairs,
            pair_crop=args.pair_crop,
            n_boot=args.n_boot,
            report_only=args.report_only,
            shard=shard,
            helpers=[_shard_command(args, k, workers) for k in range(1, workers)],
        )
    return 0


def _shard(text: str) -> tuple[int, int]:
    """``"K/N"`` -> (K, N) with 0 <= K < N."""
    try:
        k, n = (int(v) for v in text.split("/"))
    except ValueError:
        raise ConfigError(f"--eval-shard takes K/N (e.g. 1/4), got {text!r}") from None
    if not 0 <= k < n:
        raise ConfigError(f"--eval-shard K/N needs 0 <= K < N, got {text!r}")
    return k, n


def _shard_command(args: Any, k: int, n: int) -> list[str]:
    """The ``ablate`` command that evaluates shard k of n of the same ablation."""
    cmd = [sys.executable, "-m", "compressai_vlic_lightning.cli", "ablate"]
    cmd += ["--config", str(args.config), "--out", str(args.out), "--arms", args.arms]
    cmd += ["--seeds", args.seeds, "--pairs", str(args.pairs), "--pair-crop", str(args.pair_crop)]
    cmd += ["--shuffle-seed", str(args.shuffle_seed), "--heldout", str(args.heldout)]
    cmd += ["--decode-seeds", args.decode_seeds, "--metrics", args.metrics]
    if args.steps is not None:
        cmd += ["--steps", str(args.steps)]
    if args.pair_originals:
        cmd += ["--pair-originals", str(args.pair_originals)]
    return [*cmd, "--evaluate-only", "--eval-shard", f"{k}/{n}"]
