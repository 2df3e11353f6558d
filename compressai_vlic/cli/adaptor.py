"""`compressai-vlic adaptor train|eval|apply`: the codec-conditioned vision-encoder adaptor.

compressai-vlic adaptor train --model Qwen/Qwen2.5-VL-3B-Instruct --out qwen-adaptor.safetensors \\
    --codecs jpeg@0.1,0.25,0.5 webp@0.1,0.25,0.5 --crop 448 --heldout-codecs avif@0.1,0.25,0.5
compressai-vlic adaptor eval --model MODEL --adaptor qwen-adaptor.safetensors --codecs avif@0.1,0.25,0.5
compressai-vlic adaptor apply --model MODEL --adaptor qwen-adaptor.safetensors --check
compressai-vlic adaptor apply --model MODEL --adaptor FILE --condition jpeg:1 --out adapted-model/
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from compressai_vlic.errors import ConfigError

DTYPE_CHOICES = ("float32", "bfloat16", "float16")


def _log(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def _add_model(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, help="local folder or hub id of the base VLM")
    p.add_argument("--device", default="cpu", help="torch device (default cpu)")
    p.add_argument("--dtype", choices=DTYPE_CHOICES, default="float32", help="default float32")
    p.add_argument("--local-files-only", action="store_true", help="never contact the model hub")


def _add_photos(p: argparse.ArgumentParser, prefix: str, default: tuple[str, ...]) -> None:
    dash = f"--{prefix}-" if prefix else "--"
    p.add_argument(
        f"{dash}photos",
        default=",".join(default),
        help=f"bundled scikit-image/scikit-learn photos, comma-separated (default {','.join(default)})",
    )
    p.add_argument(
        f"{dash}images", default=None, help="a folder of images instead of bundled photos"
    )


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from compressai_vlic.options import choices
    from compressai_vlic.vlm.options import (
        DEFAULT_HELDOUT_PHOTOS,
        DEFAULT_TRAIN_PHOTOS,
        TrainableType,
    )

    sub = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    train = sub.add_parser("train", help="train an adaptor by feature distillation")
    _add_model(train)
    train.add_argument("--out", required=True, help="adapter file to write (.safetensors)")
    train.add_argument(
        "--codecs",
        nargs="+",
        default=["jpeg@0.25,0.5,1.0", "webp@0.25,0.5,1.0"],
        help="codec specs as in `compare`, rate points low to high (level i = i-th point)",
    )
    _add_photos(train, "", DEFAULT_TRAIN_PHOTOS)
    train.add_argument(
        "--crop", type=int, default=None, help="crop size (default: model input size)"
    )
    train.add_argument("--crops-per-photo", type=int, default=32, help="default 32")
    train.add_argument("--steps", type=int, default=600, help="default 600")
    train.add_argument("--batch-size", type=int, default=16, help="default 16")
    train.add_argument("--lr", type=float, default=1e-3, help="condition table lr (default 1e-3)")
    train.add_argument(
        "--block-lr", type=float, default=3e-4, help="tuned-weights lr (default 3e-4)"
    )
    train.add_argument(
        "--trainable",
        choices=choices(TrainableType),
        default="condition+patch-embedding",
        help="the condition table alone, or with the patch embedding, the last vision blocks or "
        "the whole vision tower (default condition+patch-embedding)",
    )
    train.add_argument("--last-blocks", type=int, default=1, help="default 1")
    train.add_argument("--seed", type=int, default=0, help="crop positions and batch order")
    train.add_argument(
        "--heldout-codecs",
        nargs="*",
        default=[],
        help="extra codecs (unseen in training) for the held-out report, e.g. avif@0.25,0.5,1.0",
    )
    _add_photos(train, "heldout", DEFAULT_HELDOUT_PHOTOS)
    train.add_argument("--heldout-crops-per-photo", type=int, default=16, help="default 16")
    train.add_argument("--no-heldout", action="store_true", help="skip the held-out report")
    train.add_argument("--report", default=None, help="write the held-out figures here (JSON)")
    train.add_argument("--overwrite", action="store_true", help="replace --out/--report")

    ev = sub.add_parser("eval", help="feature distance, base vs adapted, on held-out photos")
    _add_model(ev)
    ev.add_argument("--adaptor", required=True, help="adapter file")
    ev.add_argument("--codecs", nargs="+", required=True, help="codec specs (seen or unseen)")
    _add_photos(ev, "", DEFAULT_HELDOUT_PHOTOS)
    ev.add_argument("--crop", type=int, default=None, help="crop size (default: model input size)")
    ev.add_argument("--crops-per-photo", type=int, default=16, help="default 16")
    ev.add_argument("--seed", type=int, default=1, help="crop positions (default 1)")
    ev.add_argument("--map", action="append", default=[], metavar="UNSEEN=SEEN", help="codec map")
    ev.add_argument("--report", default=None, help="write the figures here (JSON)")
    ev.add_argument("--overwrite", action="store_true", help="replace --report")

    ap = sub.add_parser("apply", help="check an adapter against a base, or write an adapted model")
    _add_model(ap)
    ap.add_argument("--adaptor", required=True, help="adapter file")
    mode = ap.add_mutually_exclusive_group(required=True)
    mode.add_argument("--check", action="store_true", help="only check that it fits the base")
    mode.add_argument("--condition", help="CODEC:LEVEL to fold into the weights (with --out)")
    ap.add_argument("--out", default=None, help="folder for the adapted model (save_pretrained)")


def _load_model(args: argparse.Namespace) -> tuple[Any, Any]:
    from compressai_vlic.judges.hf_judge import load_vlm  # the one local-VLM loader

    processor, model, _ = load_vlm(
        args.model, args.device, args.dtype, local_files_only=args.local_files_only
    )
    return model, processor


def _photos(photos: str, images: str | None) -> dict[str, Any]:
    from compressai_vlic.vlm.adaptor_train import bundled_photos, folder_photos

    if images:
        return folder_photos(images)
    return bundled_photos([n.strip() for n in photos.split(",") if n.strip()])


def _crop_size(processor: Any, crop: int | None) -> int:
    if crop:
        return crop
    ip = getattr(processor, "image_processor", processor)
    for size in (getattr(ip, "crop_size", None), getattr(ip, "size", None)):
        for key in ("height", "shortest_edge", "width"):
            value = size.get(key) if isinstance(size, dict) else getattr(size, key, None)
            if value:
                return int(value)
    raise ConfigError("cannot tell the model's input size from its processor; pass --crop")


def _write_report(path: str | None, payload: dict[str, Any], overwrite: bool) -> None:
    if not path:
        return
    from compressai_vlic.atomic import atomic_write_text, refuse_existing

    refuse_existing(path, overwrite)
    atomic_write_text(path, json.dumps(payload, indent=2) + "\n", overwrite)


def _held_out(
    args: argparse.Namespace,
    processor: Any,
    codecs: list[Any],
    photos: str,
    images: str | None,
    per_photo: int,
    seed: int,
) -> Any:
    from compressai_vlic.vlm.adaptor_train import code_crops, random_crops

    crops = random_crops(_photos(photos, images), _crop_size(processor, args.crop), per_photo, seed)
    return code_crops(crops, codecs, _log)


def run_train(args: argparse.Namespace) -> int:
    from compressai_vlic.atomic import refuse_existing
    from compressai_vlic.evaluation.codecs import make_codec
    from compressai_vlic.vlm.adaptor_train import (
        DistillConfig,
        code_crops,
        feature_distances,
        format_distances,
        random_crops,
        train_adaptor,
    )

    refuse_existing(args.out, args.overwrite)  # before any work
    if args.report:
        refuse_existing(args.report, args.overwrite)
    config = DistillConfig(
        steps=args.steps,
        batch_size=args.batch_size,
        lr=args.lr,
        block_lr=args.block_lr,
        trainable=args.trainable,
        last_blocks=args.last_blocks,
        seed=args.seed,
    )
    codecs = [make_codec(spec, device=args.device) for spec in args.codecs]
    extra = [make_codec(spec, device=args.device) for spec in args.heldout_codecs]
    model, processor = _load_model(args)
    size = _crop_size(processor, args.crop)
    crops = random_crops(_photos(args.photos, args.images), size, args.crops_per_photo, args.seed)
    _log(f"{len(crops)} training crops of {size}px")
    data = code_crops(crops, codecs, _log)
    result = train_adaptor(model, processor, data, config, _log)
    result.handle.training["photos"] = args.images or args.photos
    path = result.handle.save(args.out, overwrite=args.overwrite)
    print(f"wrote {path} (adaptor {result.handle.adaptor_id}, {result.seconds:.1f} s training)")
    if args.no_heldout:
        return 0
    held = _held_out(
        args,
        processor,
        codecs + extra,
        args.heldout_photos,
        args.heldout_images,
        args.heldout_crops_per_photo,
        args.seed + 1,
    )
    rows = feature_distances(model, processor, held, result.handle)
    print(format_distances(rows))
    _write_report(
        args.report,
        {
            "adaptor": str(path),
            "adaptor_id": result.handle.adaptor_id,
            "model": args.model,
            "training": result.handle.training,
            "heldout": rows,
        },
        args.overwrite,
    )
    return 0


def run_eval(args: argparse.Namespace) -> int:
    from compressai_vlic.atomic import refuse_existing
    from compressai_vlic.cli._args import key_value
    from compressai_vlic.evaluation.codecs import make_codec
    from compressai_vlic.vlm.adaptor import load_adaptor
    from compressai_vlic.vlm.adaptor_train import feature_distances, format_distances

    if args.report:
        refuse_existing(args.report, args.overwrite)
    codec_map = dict(key_value(m) for m in args.map)
    codecs = [make_codec(spec, device=args.device) for spec in args.codecs]
    model, processor = _load_model(args)
    handle = load_adaptor(model, args.adaptor, codec_map={k: str(v) for k, v in codec_map.items()})
    held = _held_out(
        args, processor, codecs, args.photos, args.images, args.crops_per_photo, args.seed
    )
    rows = feature_distances(model, processor, held, handle)
    print(format_distances(rows))
    _write_report(
        args.report,
        {
            "adaptor": args.adaptor,
            "adaptor_id": handle.adaptor_id,
            "model": args.model,
            "heldout": rows,
        },
        args.overwrite,
    )
    return 0


def run_apply(args: argparse.Namespace) -> int:
    from compressai_vlic.vlm.adaptor import load_adaptor, save_adapted_model

    if args.condition and not args.out:
        raise ConfigError("--condition needs --out FOLDER for the adapted model")
    if args.out and Path(args.out).exists() and any(Path(args.out).iterdir()):
        raise ConfigError(f"{args.out}: exists and is not empty; choose a new folder")
    model, processor = _load_model(args)
    handle = load_adaptor(model, args.adaptor)
    if args.check:
        print(
            f"{args.adaptor}: fits {args.model} (adaptor {handle.adaptor_id}; {handle.tower.kind} "
            f"tower at {handle.tower.hook_path}; codecs "
            + ", ".join(f"{c} x{len(v)}" for c, v in handle.codecs.items())
            + f"; trains {handle.trainable})"
        )
        handle.remove()
        return 0
    codec, _, level = args.condition.partition(":")
    try:
        level_index = int(level)
    except ValueError as exc:
        raise ConfigError(f"--condition {args.condition!r}: give CODEC:LEVEL, e.g. jpeg:1") from exc
    used = save_adapted_model(model, processor, handle, codec, level_index, args.out)
    print(
        f"wrote {args.out}: {args.model} adapted for {used[0]} level {used[1]} ({handle.adaptor_id})"
    )
    return 0


def run(args: argparse.Namespace) -> int:
    return {"train": run_train, "eval": run_eval, "apply": run_apply}[args.action](args)
