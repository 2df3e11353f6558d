"""`compressai-vlic-train`: LightningCLI (fit / validate / test) plus `export`.

    compressai-vlic-train fit --config configs/train/tiny_stage1.yaml
    compressai-vlic-train fit --config configs/train/tiny_stage2.yaml \\
        --model.weights runs/tiny_stage1/checkpoints/last.ckpt
    compressai-vlic-train fit --config CONFIG --ckpt_path runs/X/checkpoints/last.ckpt   # resume
    compressai-vlic-train export runs/X/checkpoints/last.ckpt vlic-test.pth.tar
    compressai-vlic-train plan --config configs/train/paper_q1_stage1.yaml --gpu-memory 80
    compressai-vlic-train ablate --config configs/train/ablation_tiny_stage2.yaml --out runs/abl
"""

from __future__ import annotations

import argparse
import os
import sys

EXPORT = "export"
PLAN = "plan"
ABLATE = "ablate"


def _ablate(argv: list[str]) -> int:
    from compressai_vlic.errors import VLICError
    from compressai_vlic_lightning.ablation import ARMS, run_ablation

    parser = argparse.ArgumentParser(
        prog="compressai-vlic-train ablate",
        description="Controlled stage-2 ablation: arms dpo / control (DPO weight 0) / shuffled "
        "(verdicts permuted) from one stage-2 config, the same pairs, data order, steps and "
        "seeds, several training seeds; resumes where it stopped; then evaluates every run on "
        "held-out photos through real bitstreams (docs/ablation.md).",
    )
    parser.add_argument(
        "--config", required=True, help="a stage-2 YAML (model.init_args.weights set)"
    )
    parser.add_argument("--out", required=True, help="the ablation folder (rerun to resume)")
    parser.add_argument(
        "--arms", default=",".join(ARMS), help="comma-separated (dpo,control,shuffled)"
    )
    parser.add_argument("--seeds", default="0,1,2", help="training seeds, comma-separated")
    parser.add_argument(
        "--steps", type=int, default=None, help="steps per run (default: the config's)"
    )
    parser.add_argument(
        "--checkpoint-every", type=int, default=None, help="steps between checkpoints"
    )
    parser.add_argument(
        "--pair-originals",
        default=None,
        help="training photos the pairs are cut from (default: data.init_args.train_dir)",
    )
    parser.add_argument(
        "--pairs", type=int, default=96, help="judged pairs (crops) in the shared set"
    )
    parser.add_argument(
        "--pair-crop", type=int, default=128, help="side of each pair crop (the judge sees it)"
    )
    parser.add_argument(
        "--shuffle-seed", type=int, default=0, help="seed of the crops and the verdict permutation"
    )
    parser.add_argument(
        "--heldout", default=None, help="held-out photos to evaluate on (none: train only)"
    )
    parser.add_argument(
        "--heldout-pairs", type=int, default=48, help="judged held-out pairs for the diagnostics"
    )
    parser.add_argument("--decode-seeds", default="0,1", help="decode seeds of the evaluation")
    parser.add_argument("--metrics", default="psnr,ms_ssim,lpips,lpips_vgg,dists,ssimulacra2")
    parser.add_argument("--n-boot", type=int, default=2000, help="bootstrap resamples")
    parser.add_argument(
        "--evaluate-only", action="store_true", help="skip training (evaluate what is done)"
    )
    parser.add_argument(
        "--workers",
        type=int,
        default=1,
        help="runs trained at once, and processes evaluating (each gets cores / workers threads)",
    )
    parser.add_argument(
        "--eval-shard",
        default=None,
        metavar="K/N",
        help="evaluate held-out photos K, K+N, ... only and write no report (one of N processes "
        "or machines sharing OUT; --report-only then writes the report)",
    )
    parser.add_argument(
        "--report-only",
        action="store_true",
        help="write the report from the rows evaluated so far (another process may still evaluate)",
    )
    args = parser.parse_args(argv)
    try:
        return run_ablation(args)
    except VLICError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


def _plan(argv: list[str]) -> int:
    from compressai_vlic.errors import VLICError
    from compressai_vlic_lightning.configs import list_configs, resolve_config

    parser = argparse.ArgumentParser(
        prog="compressai-vlic-train plan",
        description="Estimate the memory one GPU needs for a training config: activations are "
        "measured on the CPU at the config's width (two blocks, extrapolated to its depth).",
    )
    parser.add_argument(
        "--config",
        action="append",
        help="YAML file, or the name of a shipped config (e.g. paper_q1_stage1; see --list); "
        "repeatable",
    )
    parser.add_argument("--list", action="store_true", help="list the shipped configs and exit")
    parser.add_argument("--gpu-memory", type=float, default=80.0, help="GiB per GPU (80)")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    args = parser.parse_args(argv)
    if args.list:
        print("\n".join(list_configs()))
        return 0
    if not args.config:
        parser.error(f"give --config CONFIG; the shipped configs are: {', '.join(list_configs())}")
    if args.gpu_memory <= 0:
        parser.error("--gpu-memory must be positive")
    try:
        paths = [str(resolve_config(c)) for c in args.config]
        return _plan_paths(paths, args.gpu_memory, args.json)
    except VLICError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


def _plan_paths(paths: list[str], gpu_memory: float, as_json: bool) -> int:
    import json

    from compressai_vlic_lightning.memory import GIB, format_plan, measure, plan, read_setup

    measured: dict[tuple[str, ...], object] = {}
    reports = []
    for path in paths:
        setup = read_setup(path)
        c = setup.model_config
        key = (
            str(c.encoder_width), str(c.encoder_heads), str(c.decoder_width), str(c.decoder_heads),
            str(c.image_size), str(c.patch_size), str(c.num_tokens), str(c.code_dim),
            str(c.encoder_depth), str(c.decoder_depth), str(c.prior_width), str(c.prior_depth),
            setup.precision, setup.perceptual_type, setup.lpips_net_type,
        )  # fmt: skip
        if key not in measured:
            measured[key] = measure(c, setup.precision, setup.perceptual_type, setup.lpips_net_type)
        result = plan(setup, measured[key])  # type: ignore[arg-type]
        if as_json:
            reports.append(
                {
                    "config": path,
                    "peak_gib": result.peak / GIB,
                    "fits": result.peak <= gpu_memory * GIB,
                    "largest_micro_batch": result.largest_micro_batch(gpu_memory * GIB),
                    "micro_batch": setup.micro_batch,
                    "global_batch": setup.global_batch,
                    "rows_gib": {k: v / GIB for k, v in result.rows.items()},
                }
            )
        else:
            print(format_plan(result, gpu_memory), flush=True)
    if as_json:
        print(json.dumps(reports, indent=2))
    return 0


def _export(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="compressai-vlic-train export",
        description="Write a Lightning checkpoint's codec as a CompressAI checkpoint (bare state dict).",
    )
    parser.add_argument("checkpoint", help="Lightning .ckpt (or a CompressAI state dict)")
    parser.add_argument("output", help="output .pth.tar")
    parser.add_argument(
        "--weights-type",
        default="ema",
        metavar="{ema,raw}",
        help="EMA (default) or raw weights",
    )
    parser.add_argument(
        "--overwrite", action="store_true", help="replace OUTPUT if it exists already"
    )
    args = parser.parse_args(argv)  # before any heavy import: `export --help` is quick
    from compressai_vlic.atomic import refuse_existing
    from compressai_vlic.errors import VLICError
    from compressai_vlic.options import check_option
    from compressai_vlic_lightning.common import WeightsType
    from compressai_vlic_lightning.export import export_checkpoint

    try:
        check_option("weights_type", args.weights_type, WeightsType)
    except VLICError as exc:
        parser.error(str(exc))
    try:
        refuse_existing(args.output, args.overwrite)
        result = export_checkpoint(
            args.checkpoint, args.output, args.weights_type, overwrite=args.overwrite
        )
    except VLICError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(
        f"wrote {result.path} ({result.config_name}, {result.weights_type} weights, "
        f"{result.num_parameters:,} parameters); evaluate with:\n"
        f"  python -m compressai.utils.eval_model checkpoint IMAGES -a vlic -p {result.path}"
    )
    return 0


LIGHTNING_COMMANDS = ("fit", "validate", "test", "predict")

HELP = """usage: compressai-vlic-train [-h] {fit,validate,test,predict,export,plan,ablate} ...

Train VLIC with LightningCLI (stage 1 / stage 2 / prior refit configs; `plan --list` names the
configs that ship with the package).

commands:
  fit        train a model from a config (--config CONFIG; a shipped config's name works too)
  validate   run one evaluation epoch of a config on its validation set
  test       run the test loop of a config
  predict    run the predict loop of a config
  export     write a Lightning checkpoint's codec as a CompressAI checkpoint (bare state dict)
  plan       estimate the memory one GPU needs for a training config
  ablate     post-train dpo/control/shuffled arms from one stage-2 config and compare them

`compressai-vlic-train COMMAND --help` shows a command's options (fit/validate/test/predict load
Lightning first, which takes a while).
"""


def _config_names(argv: list[str]) -> list[str]:
    """``--config NAME`` -> ``--config PATH`` where a shipped config is named instead of a file."""
    from compressai_vlic.errors import ConfigError
    from compressai_vlic_lightning.configs import resolve_config

    out = list(argv)
    for i, arg in enumerate(out):
        if arg == "--config" and i + 1 < len(out):
            index, value, prefix = i + 1, out[i + 1], ""
        elif arg.startswith("--config="):
            index, value, prefix = i, arg.split("=", 1)[1], "--config="
        else:
            continue
        try:
            out[index] = prefix + str(resolve_config(value))
        except ConfigError:
            pass  # not a config file: LightningCLI reports it (a config may also be inline YAML)
    return out


def main(argv: list[str] | None = None) -> int:
    given = list(sys.argv[1:] if argv is None else argv)
    if given and given[0] == EXPORT:
        return _export(given[1:])
    if given and given[0] == PLAN:
        return _plan(given[1:])
    if given and given[0] == ABLATE:
        return _ablate(given[1:])
    if not given or given[0] in {"-h", "--help"}:
        print(HELP, end="")  # without loading Lightning (LightningCLI's own help takes ~20 s)
        return 0 if given else 2
    if given[0] in LIGHTNING_COMMANDS:
        argv = [given[0], *_config_names(given[1:])]
    from compressai_vlic.extras import require

    require("jsonargparse", "train", "compressai-vlic-train")
    pl = require("pytorch_lightning", "train", "compressai-vlic-train")
    from pytorch_lightning.cli import LightningCLI

    import compressai_vlic_lightning
    from compressai_vlic.thirdparty import ignore_lightning_leafspec

    compressai_vlic_lightning.load_all()  # the classes the configs name
    ignore_lightning_leafspec()  # Lightning's own use of a torch API it has deprecated
    from compressai_vlic.threads import THREADS_ENV, set_default_threads

    if os.environ.get(THREADS_ENV):  # e.g. set by `ablate --workers` for the runs it starts
        set_default_threads()

    try:
        _cli_class(LightningCLI)(
            pl.LightningModule,
            pl.LightningDataModule,
            subclass_mode_model=True,
            subclass_mode_data=True,
            args=argv,  # None: LightningCLI reads sys.argv itself
            save_config_kwargs={"overwrite": True},
            parser_kwargs={
                "prog": "compressai-vlic-train",
                "description": "Train VLIC (stage 1 / stage 2 configs under configs/train). "
                "Also: `compressai-vlic-train export CKPT OUT.pth.tar` writes a CompressAI "
                "checkpoint; `compressai-vlic-train plan --config CONFIG` estimates the memory "
                "per GPU.",
            },
        )
    except Exception as exc:
        cause = vlic_cause(exc)
        if cause is None:
            raise
        # the config parser wraps errors raised while it builds the classes: show ours alone
        print(f"error: {cause}", file=sys.stderr)
        return 2
    return 0


def _cli_class(base: type) -> type:
    """LightningCLI, except that the ``--ckpt_path`` it reads for hyper-parameters goes through
    the package's checkpoint loader (weights only, one typed line for a refused file)."""

    class VLICLightningCLI(base):  # type: ignore[misc, valid-type]
        def before_instantiate_classes(self) -> None:
            config = self.config.get(self.config.get("subcommand") or "", self.config)
            trainer = config.get("trainer") or {}
            warning = slow_cpu_precision(trainer.get("accelerator"), trainer.get("precision"))
            if warning:
                print(f"warning: {warning}", file=sys.stderr)

        def _parse_ckpt_path(self) -> None:
            from pathlib import Path

            from compressai_vlic.checkpoints import is_url
            from compressai_vlic_lightning.checkpointing import SafeCheckpointIO

            if not self.config.get("subcommand"):
                return
            ckpt_path = self.config[self.config.subcommand].get("ckpt_path")
            if not ckpt_path or is_url(str(ckpt_path)) or not Path(ckpt_path).is_file():
                return  # URLs and "last"/"best": loaded (safely) when the run starts
            hparams = SafeCheckpointIO().load_checkpoint(ckpt_path).get("hyper_parameters", {})
            hparams.pop("_instantiator", None)
            if not hparams:
                return
            if "_class_path" in hparams:
                hparams = {"class_path": hparams.pop("_class_path"), "dict_kwargs": hparams}
            self.config = self.parser.parse_object(
                {self.config.subcommand: {"model": hparams}}, self.config
            )

    return VLICLightningCLI


def cpu_bf16_is_fast() -> bool:
    """Whether this CPU has bf16 instructions (AVX512-BF16 or AMX); without them PyTorch's CPU
    bf16 matrix products and convolutions run 10-25x slower than float32."""
    import torch

    return bool(torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())


def slow_cpu_precision(accelerator: object, precision: object) -> str | None:
    """A one-line hint when a bf16 precision would train on a CPU without bf16 instructions."""
    import torch

    on_cpu = accelerator == "cpu" or (
        accelerator in (None, "auto") and not torch.cuda.is_available()
    )
    if not on_cpu or not str(precision or "").startswith("bf16") or cpu_bf16_is_fast():
        return None
    return (
        f"precision {precision} on a CPU without bf16 instructions (AVX512-BF16/AMX) runs "
        "10-25x slower than float32; pass --trainer.precision 32-true to train on this CPU"
    )


def vlic_cause(exc: BaseException) -> str | None:
    """The message of the package's own error behind ``exc`` (the config parser and DataLoader
    workers wrap them), one line; None when there is none."""
    from compressai_vlic.errors import VLICError

    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, VLICError):
            text = str(current).strip()
            if "Original Traceback" in text:  # re-raised from a DataLoader worker
                last = text.splitlines()[-1]
                text = last.split(": ", 1)[1] if ": " in last else last
            return text.splitlines()[0] if text else type(current).__name__
        current = current.__cause__ or current.__context__
    return None


if __name__ == "__main__":
    sys.exit(main())
