"""Memory planner: what one GPU holds while a training config runs, measured on the CPU.

Activations are measured, not guessed: the codec is built at the config's real width with two
encoder and two decoder blocks, on fake tensors (``FakeTensorMode``: real shapes, dtypes and
autograd graph, no arithmetic and no memory), one forward pass per component runs under the config's precision
(e.g. bf16 autocast) with :func:`torch.autograd.graph.saved_tensors_hooks` counting the bytes
autograd keeps for backward (each storage once; weights excluded), at batch 1 and 2. The
difference is the per-sample cost, the rest is per-step (autocast's low-precision weight copies).
Bytes are attributed to the block that saved them, so the totals extrapolate linearly to the
config's depth (every block but the last is identical; the last is "context pre-only").

With gradient checkpointing a block keeps only its inputs (saved by the checkpoint for the
recomputation; counted as the previous block's outputs); backward then recomputes one block at a time, whose full activations are added
as a transient term. Weights, gradients, AdamW state, EMA, the frozen stage-2 reference and DDP
buckets are counted from the parameter numbers of the full-depth model.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from compressai_vlic.errors import ConfigError

GIB = 2**30
MIB = 2**20
# CUDA context, cuBLAS/NCCL workspaces and allocator slack, on top of what tensors hold.
RESERVE_BYTES = 3 * GIB
FRAGMENTATION = 0.10  # fraction of the activations added for allocator fragmentation
COMPONENTS = ("encoder", "decoder", "prior", "perceptual")

# precision -> (autocast dtype or None, bytes per weight)
_PRECISIONS: dict[str, tuple[torch.dtype | None, int]] = {
    "32": (None, 4),
    "32-true": (None, 4),
    "bf16-mixed": (torch.bfloat16, 4),
    "16-mixed": (torch.float16, 4),
    "bf16-true": (None, 2),
    "bf16": (None, 2),
}


def precision_spec(precision: str | int) -> tuple[torch.dtype | None, int]:
    """(autocast dtype, bytes per weight) of a Lightning precision string."""
    key = str(precision)
    if key not in _PRECISIONS:
        raise ConfigError(f"precision {key!r} is not planned; use one of {', '.join(_PRECISIONS)}")
    return _PRECISIONS[key]


# ------------------------------------------------------------------ counting saved tensors
class SavedTensorCounter:
    """Bytes of the tensors autograd saves for backward, each storage once, by region."""

    def __init__(self, exclude: nn.Module | None = None) -> None:
        self._exclude = set()
        if exclude is not None:
            for t in (*exclude.parameters(), *exclude.buffers()):
                self._exclude.add(t.untyped_storage()._cdata)
        self._seen: dict[int, Any] = {}
        self.by_region: dict[str, int] = {}
        self.region = "other"

    @property
    def total(self) -> int:
        return sum(self.by_region.values())

    def add(self, tensor: Tensor) -> None:
        if not isinstance(tensor, Tensor) or tensor.device.type == "meta":
            return
        storage = tensor.untyped_storage()
        key = storage._cdata  # the storage's identity, for real and fake tensors alike
        if key in self._exclude or storage.nbytes() == 0:
            return
        if key in self._seen:
            return
        self._seen[key] = storage  # keeps the identity from being reused while counting
        self.by_region[self.region] = self.by_region.get(self.region, 0) + storage.nbytes()

    def release(self) -> None:
        """Drop the references that kept counted storages alive (they can be GiBs)."""
        self._seen.clear()

    @contextlib.contextmanager
    def counting(self) -> Iterator[SavedTensorCounter]:
        def pack(t: Tensor) -> Tensor:
            self.add(t)
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            yield self


@contextlib.contextmanager
def _block_regions(
    counter: SavedTensorCounter, blocks: Mapping[str, nn.Module], checkpointing: bool
) -> Iterator[None]:
    """Attribute saved bytes to named blocks; with checkpointing, count the inputs they keep."""
    handles = []
    for name, block in blocks.items():

        def pre(module: nn.Module, args: Any, name: str = name) -> None:
            counter.region = name

        def post(module: nn.Module, args: Any, output: Any) -> None:
            if checkpointing:
                # The next checkpoint keeps these outputs for its recomputation: they are this
                # block's cost (the first block's inputs are the embeddings', i.e. "other").
                for value in output if isinstance(output, tuple) else (output,):
                    counter.add(value)
            counter.region = "other"

        handles.append(block.register_forward_pre_hook(pre))
        handles.append(block.register_forward_hook(post))
    try:
        yield
    finally:
        for h in handles:
            h.remove()


# ------------------------------------------------------------------ measurement
@dataclass(frozen=True)
class ComponentBytes:
    """Saved bytes of one component: per sample and per step, each split by region."""

    per_sample: dict[str, int]
    per_step: dict[str, int]


def _run_component(model: Any, component: str, batch: int, perceptual: nn.Module | None) -> None:
    cfg = model.config
    gen = torch.Generator().manual_seed(0)
    size = (batch, cfg.in_channels, cfg.image_size, cfg.image_size)
    x = torch.rand(size, generator=gen)
    if component == "encoder":
        model.encode(x)
    elif component == "decoder":
        codes = torch.rand(batch, cfg.num_tokens, cfg.code_dim, generator=gen) * 2 - 1
        codes.requires_grad_(True)  # in training the codes come from the (trained) encoder
        model.flow_matching(x, codes, drop_mask=torch.zeros(batch, dtype=torch.bool))
    elif component == "prior":
        levels = torch.tensor(cfg.fsq_levels)
        idx = (torch.rand(batch, cfg.num_tokens, cfg.code_dim, generator=gen) * levels).long()
        model.token_nll_bits(idx)
    elif component == "perceptual":
        assert perceptual is not None
        x0 = torch.rand(size, generator=gen).requires_grad_(True)
        perceptual(x0, x)
    else:
        raise ConfigError(f"unknown component {component!r}")


def measure_component(
    model: Any,
    component: str,
    precision: str | int,
    checkpointing: bool,
    perceptual: nn.Module | None = None,
) -> ComponentBytes:
    """Saved-for-backward bytes of one component (batch 1 and 2 -> per sample and per step)."""
    autocast_dtype, _ = precision_spec(precision)
    if checkpointing:
        model.enable_gradient_checkpointing()
    else:
        model.disable_gradient_checkpointing()
    blocks = {f"encoder.{i}": b for i, b in enumerate(model.encoder.blocks)}
    blocks.update(
        {f"decoder.{i}": b for i, b in enumerate(model.decoder.transformer.transformer_blocks)}
    )
    counts = []
    for batch in (1, 2):
        counter = SavedTensorCounter(exclude=nn.ModuleList([model, perceptual or nn.Identity()]))
        autocast = torch.autocast("cpu", dtype=autocast_dtype, enabled=autocast_dtype is not None)
        with (
            torch.enable_grad(),
            autocast,
            counter.counting(),
            _block_regions(counter, blocks, checkpointing),
        ):
            _run_component(model, component, batch, perceptual)
        counts.append(dict(counter.by_region))
        counter.release()
    regions = set(counts[0]) | set(counts[1])
    per_sample = {r: max(0, counts[1].get(r, 0) - counts[0].get(r, 0)) for r in regions}
    per_step = {r: max(0, counts[0].get(r, 0) - per_sample[r]) for r in regions}
    return ComponentBytes(per_sample, per_step)


@dataclass(frozen=True)
class Measurement:
    """Measured activation bytes extrapolated to the full depth, for one architecture."""

    # component -> {"per_sample", "per_step", "block_per_sample"} with and without checkpointing
    kept: dict[bool, dict[str, dict[str, float]]]
    encoder_block_per_sample: dict[bool, float]
    decoder_block_per_sample: dict[bool, float]


def _extrapolate(regions: Mapping[str, int], prefix: str, depth: int) -> float:
    """other + (depth - 1) * block 0 + last block (blocks measured at depth 2)."""
    normal = regions.get(f"{prefix}.0", 0)
    last = regions.get(f"{prefix}.1", 0)
    other = sum(v for k, v in regions.items() if not k.startswith(f"{prefix}."))
    return float(other + (depth - 1) * normal + last)


def measure(
    config: Any,
    precision: str | int,
    perceptual_type: str = "none",
    lpips_net_type: str = "alex",
    fake: bool = True,
) -> Measurement:
    """Measure every component at the config's width (two blocks each), both checkpoint modes.

    Args:
        fake: run on fake tensors (``FakeTensorMode``, default): shapes, dtypes and autograd's
            saved tensors are exactly those of a real run, but nothing is computed or
            allocated, so a paper-width plan takes seconds and about 1 GB of host memory.
            ``False`` runs the passes for real (the tests compare the two).
    """
    from torch._subclasses.fake_tensor import FakeTensorMode

    with FakeTensorMode() if fake else contextlib.nullcontext():
        return _measure(config, precision, perceptual_type, lpips_net_type)


def _measure(
    config: Any, precision: str | int, perceptual_type: str, lpips_net_type: str
) -> Measurement:
    from compressai_vlic.models import VLIC

    torch.manual_seed(0)
    small = config.replace(encoder_depth=2, decoder_depth=2)
    _, weight_bytes = precision_spec(precision)
    model = VLIC(small).train()
    # the prior's range check reads values (no value exists on a fake tensor); the indices
    # below are in range by construction
    model.prior.check_indices = lambda indices: None
    if weight_bytes == 2:
        model = model.to(torch.bfloat16)
    perceptual = _perceptual_net(perceptual_type, lpips_net_type)
    kept: dict[bool, dict[str, dict[str, float]]] = {}
    enc_block: dict[bool, float] = {}
    dec_block: dict[bool, float] = {}
    for checkpointing in (False, True):
        out: dict[str, dict[str, float]] = {}
        for component in COMPONENTS:
            if component == "perceptual" and perceptual is None:
                out[component] = {"per_sample": 0.0, "per_step": 0.0}
                continue
            got = measure_component(model, component, precision, checkpointing, perceptual)
            prefix, depth = {
                "encoder": ("encoder", config.encoder_depth),
                "decoder": ("decoder", config.decoder_depth),
            }.get(component, ("none", 0))
            out[component] = {
                "per_sample": _extrapolate(got.per_sample, prefix, depth),
                "per_step": _extrapolate(got.per_step, prefix, depth),
            }
            if component == "encoder":
                enc_block[checkpointing] = float(got.per_sample.get("encoder.0", 0))
            if component == "decoder":
                dec_block[checkpointing] = float(got.per_sample.get("decoder.0", 0))
        kept[checkpointing] = out
    model.disable_gradient_checkpointing()
    return Measurement(kept, enc_block, dec_block)


def _perceptual_net(perceptual_type: str, net_type: str) -> nn.Module | None:
    """The stage-1 perceptual network's architecture (random weights: activations only)."""
    if perceptual_type == "none":
        return None
    if perceptual_type == "ms_ssim":
        from compressai_vlic_lightning.perceptual import MSSSIMLoss

        return MSSSIMLoss()
    return _LPIPSArchitecture(net_type)


class _LPIPSArchitecture(nn.Module):
    """LPIPS as stage 1 calls it, with random weights (no weight file needed to plan)."""

    def __init__(self, net_type: str) -> None:
        super().__init__()
        from torchmetrics.functional.image.lpips import _LPIPS

        from compressai_vlic.thirdparty import quiet_torchvision_pretrained

        with quiet_torchvision_pretrained():
            self.net = _LPIPS(pretrained=False, net=net_type, pnet_rand=True)
        self.net.eval().requires_grad_(False)

    def forward(self, prediction: Tensor, target: Tensor) -> Tensor:
        return self.net(prediction.float(), target.float(), normalize=True).mean()


# ------------------------------------------------------------------ the plan
@dataclass
class TrainingSetup:
    """What a training config asks one GPU to do (read from its YAML)."""

    path: str
    stage: int
    model_config: Any
    precision: str
    devices: int
    num_nodes: int
    micro_batch: int
    accumulate: int
    gradient_checkpointing: bool
    dpo_batch_size: int = 0
    freeze_encoder: bool = False
    ema: bool = False
    ema_device: str = "model"
    bucket_view: bool = False
    perceptual_type: str = "none"
    lpips_net_type: str = "alex"
    notes: list[str] = field(default_factory=list)
    #: ModeSeekingModule: Euler steps sampled with gradients (0: none).
    chain_steps: int = 0

    @property
    def world_size(self) -> int:
        return self.devices * self.num_nodes

    @property
    def global_batch(self) -> int:
        return self.micro_batch * self.accumulate * self.world_size


def _devices(value: Any) -> int:
    if isinstance(value, int):
        return value
    if isinstance(value, list):
        return len(value)
    if isinstance(value, str) and value.isdigit():
        return int(value)
    return 1


def _default_lpips_net() -> str:
    """The LPIPS network of a module without an ``lpips_net_type`` option (stage 2)."""
    import inspect

    from compressai_vlic_lightning.perceptual import make_perceptual_loss

    return inspect.signature(make_perceptual_loss).parameters["lpips_net_type"].default


def read_setup(path: str | Path) -> TrainingSetup:
    """A `compressai-vlic-train` config as a :class:`TrainingSetup` (parsed as ``fit`` parses
    it: what the file leaves out is its class's default)."""
    from compressai_vlic.zoo import quality_config
    from compressai_vlic_lightning.configs import parse_config

    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config {path} does not exist")
    cfg = parse_config(path)
    trainer, model = cfg["trainer"], cfg["model"]
    data, args = cfg["data"]["init_args"], model["init_args"]
    class_path = str(model["class_path"])
    if class_path.endswith("Stage1Module"):
        stage = 1
    elif class_path.endswith("Stage2Module"):
        stage = 2
    elif class_path.endswith("ModeSeekingModule"):
        stage = 1  # stage 1's losses plus a differentiable sampling chain (chain_steps)
    else:
        raise ConfigError(f"{path}: model.class_path {class_path!r} is not a VLIC stage")
    mode_seeking = class_path.endswith("ModeSeekingModule")
    notes: list[str] = []
    model_config = None
    from compressai_vlic_lightning.common import NOT_GIVEN, weights_spec

    init_from = weights_spec(args.get("weights"), args.get("init_from", NOT_GIVEN))
    if stage == 2 and init_from and Path(init_from.partition("#")[0]).is_file():
        from compressai_vlic_lightning.common import load_codec

        model_config = load_codec(init_from).config
    if model_config is None:
        if stage == 2 and init_from:
            notes.append(f"{init_from} not found: planned for quality {args['quality']}")
        model_config = quality_config(args["quality"], **(args["model_overrides"] or {}))
    strategy = trainer["strategy"]
    bucket_view = False
    if isinstance(strategy, Mapping):
        bucket_view = bool(strategy["init_args"].get("gradient_as_bucket_view"))
    ema, ema_device = False, "model"
    for cb in trainer["callbacks"] or []:
        if str(cb["class_path"]).endswith("EMA"):
            ema, ema_device = True, str(cb["init_args"]["ema_device"])
    perceptual = "none"
    if args["perceptual_weight"] > 0:
        perceptual = str(args["perceptual_type"])
    return TrainingSetup(
        path=str(path),
        stage=stage,
        model_config=model_config,
        precision=str(trainer["precision"] or "32-true"),  # Lightning's None: full precision
        devices=_devices(trainer["devices"]),
        num_nodes=int(trainer["num_nodes"]),
        micro_batch=int(data["batch_size"]),
        accumulate=int(trainer["accumulate_grad_batches"]),
        gradient_checkpointing=bool(args["gradient_checkpointing"]),
        dpo_batch_size=int(args["dpo_batch_size"]) if stage == 2 else 0,
        freeze_encoder=args.get("freeze_type") == "encoder"
        or (mode_seeking and args["freeze_encoder_after"] == 0),
        chain_steps=int(args["sample_steps"]) if mode_seeking else 0,
        ema=ema,
        ema_device=ema_device,
        bucket_view=bucket_view,
        perceptual_type=perceptual,
        lpips_net_type=str(args.get("lpips_net_type", _default_lpips_net())),
        notes=notes,
    )


@dataclass
class MemoryPlan:
    """Bytes per GPU of one setup; ``rows`` in the order they are printed."""

    setup: TrainingSetup
    measurement: Measurement
    num_parameters: int
    trainable_parameters: int
    rows: dict[str, float]
    activations_per_micro_batch: float
    fixed: float
    per_sample: float
    peak: float

    def largest_micro_batch(self, gpu_bytes: float) -> int:
        """The largest data micro-batch that fits (stage 2: DPO pairs scale with it)."""
        if self.per_sample <= 0:
            return 0
        return max(0, math.floor((gpu_bytes - self.fixed) / self.per_sample))


def _param_counts(setup: TrainingSetup) -> tuple[int, int, int]:
    """(all parameters, trainable, floating-point tensor elements) of the full-depth codec."""
    from compressai_vlic.models import VLIC

    with torch.device("meta"):
        model = VLIC(setup.model_config)
    total = sum(p.numel() for p in model.parameters())
    frozen = sum(p.numel() for p in model.encoder.parameters()) if setup.freeze_encoder else 0
    floats = sum(v.numel() for v in model.state_dict().values() if v.is_floating_point())
    return total, total - frozen, floats


def plan(setup: TrainingSetup, measurement: Measurement | None = None) -> MemoryPlan:
    """Peak bytes per GPU of a setup (measures the activations unless given)."""
    if measurement is None:
        measurement = measure(
            setup.model_config, setup.precision, setup.perceptual_type, setup.lpips_net_type
        )
    _, weight_bytes = precision_spec(setup.precision)
    total, trainable, floats = _param_counts(setup)
    rows: dict[str, float] = {
        "weights": total * weight_bytes,
        "gradients": trainable * weight_bytes,
        "AdamW state": trainable * 2 * weight_bytes,
    }
    rows["EMA"] = floats * 4.0 if setup.ema and setup.ema_device == "model" else 0.0
    rows["frozen reference"] = total * weight_bytes if setup.stage == 2 else 0.0
    ddp = setup.world_size > 1
    rows["DDP buckets"] = trainable * weight_bytes if ddp and not setup.bucket_view else 0.0
    if setup.perceptual_type == "lpips":
        rows["perceptual network"] = 2.5e6 * 4  # AlexNet features + LPIPS heads
    kept = measurement.kept[setup.gradient_checkpointing]
    enc, dec = kept["encoder"], kept["decoder"]
    prior, perc = kept["prior"], kept["perceptual"]
    b = setup.micro_batch
    # (component, samples per micro-batch) that keep activations for backward
    work = [(enc, 1.0), (dec, 1.0), (prior, 1.0)]
    ratio = 0.0
    if setup.stage == 1 or setup.perceptual_type != "none":
        work.append((perc, 1.0))  # on the originals' one-step estimate
    if setup.stage == 2:
        ratio = setup.dpo_batch_size / max(1, b)
        work.append((dec, 2 * ratio))  # policy on winners and losers
        if not setup.freeze_encoder:
            work.append((enc, ratio))  # policy encoder on the pairs' originals
    chain_per_sample = 0.0
    if setup.chain_steps:
        # backward recomputes one chain step at a time: one more decoder pass's kept activations,
        # plus the chain's intermediate images (float32)
        work.append((dec, 1.0))
        chain_per_sample = setup.chain_steps * 3 * setup.model_config.image_size**2 * 4.0
    if setup.freeze_encoder:
        work = [(c, k) for c, k in work if c is not enc]
    per_sample_kept = sum(c["per_sample"] * k for c, k in work) + chain_per_sample
    per_step = sum(c["per_step"] for c, _ in {id(c): (c, k) for c, k in work}.values())
    # transient: backward recomputes one checkpointed block at a time with all its activations
    recompute_per_sample = 0.0
    if setup.gradient_checkpointing:
        enc_full = measurement.encoder_block_per_sample[False]
        dec_full = measurement.decoder_block_per_sample[False]
        dec_samples = 2 * ratio if setup.stage == 2 else 1.0
        recompute_per_sample = max(enc_full * max(1.0, ratio), dec_full * max(1.0, dec_samples))
    per_sample = (per_sample_kept + recompute_per_sample) * (1 + FRAGMENTATION)
    rows["activations (kept)"] = per_sample_kept * b + per_step
    rows["recomputed block (transient)"] = recompute_per_sample * b
    rows["fragmentation"] = FRAGMENTATION * (per_sample_kept + recompute_per_sample) * b
    rows["CUDA context and workspaces"] = float(RESERVE_BYTES)
    peak = sum(rows.values())
    fixed = peak - per_sample * b
    return MemoryPlan(
        setup=setup,
        measurement=measurement,
        num_parameters=total,
        trainable_parameters=trainable,
        rows=rows,
        activations_per_micro_batch=rows["activations (kept)"],
        fixed=fixed,
        per_sample=per_sample,
        peak=peak,
    )


def format_plan(p: MemoryPlan, gpu_gib: float) -> str:
    """The planner's human-readable report."""
    s, c, m = p.setup, p.setup.model_config, p.measurement
    gpu = gpu_gib * GIB
    tokens = (c.image_size // c.patch_size) ** 2
    ckpt = "on" if s.gradient_checkpointing else "off"
    lines = [
        f"plan: {s.path} (stage {s.stage}, {c.name})",
        f"  model: encoder {c.encoder_depth} x {c.encoder_width}, decoder {c.decoder_depth} x "
        f"{c.decoder_width}, {tokens} patch + {c.num_tokens} code tokens, "
        f"{p.num_parameters / 1e6:,.1f}M parameters ({p.trainable_parameters / 1e6:,.1f}M trained)",
        f"  run: {s.world_size} GPUs x micro-batch {s.micro_batch} x accumulate {s.accumulate} "
        f"= global batch {s.global_batch}"
        + (f"; {s.dpo_batch_size} DPO pairs per micro-batch" if s.stage == 2 else "")
        + f"; {s.precision}, gradient checkpointing {ckpt}",
        "  measured activations kept for backward, per sample (MiB):  no checkpointing / checkpointing",
    ]
    for name, block in (
        ("encoder block", m.encoder_block_per_sample),
        ("decoder block", m.decoder_block_per_sample),
    ):
        lines.append(f"    {name:<22} {block[False] / MIB:10.1f} / {block[True] / MIB:8.1f}")
    for comp in COMPONENTS:
        off, on = m.kept[False][comp]["per_sample"], m.kept[True][comp]["per_sample"]
        if off or on:
            label = {"encoder": "whole encoder", "decoder": "whole decoder"}.get(comp, comp)
            lines.append(f"    {label:<22} {off / MIB:10.1f} / {on / MIB:8.1f}")
    lines.append("  per GPU (GiB):")
    for name, value in p.rows.items():
        if value:
            lines.append(f"    {name:<30} {value / GIB:8.2f}")
    verdict = "fits" if p.peak <= gpu else "DOES NOT FIT"
    lines.append(f"    {'peak':<30} {p.peak / GIB:8.2f}   ({verdict} in {gpu_gib:g} GiB)")
    largest = p.largest_micro_batch(gpu)
    lines.append(f"  largest micro-batch that fits {gpu_gib:g} GiB: {largest}")
    lines.extend(f"  note: {n}" for n in s.notes)
    return "\n".join(lines)
