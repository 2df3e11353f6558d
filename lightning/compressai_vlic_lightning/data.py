"""Training data: image folders and the photos bundled with scikit-image/scikit-learn.

Training draws random crops at the model's resolution; validation takes centre crops so every
run sees the same pixels. The training order and every crop are functions of the seed, the epoch
and the position alone (:class:`ResumableSampler`), and the data modules store how far into the
epoch a checkpoint was written, so a resumed run sees exactly the batches the uninterrupted one
would have seen. A corrupt file is skipped (and counted) instead of killing a long run;
an empty or missing folder fails at once with the path in the message.
"""

from __future__ import annotations

import hashlib
import logging
import math
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, Literal

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from compressai_vlic.errors import DatasetError, ImageReadError
from compressai_vlic.extras import require
from compressai_vlic.image_io import load_image
from compressai_vlic.options import check_option

log = logging.getLogger(__name__)

TRAIN_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")
CropType = Literal["random", "center"]
CacheType = Literal["none", "memory"]

# Photos that ship inside scikit-image / scikit-learn (no download). Scientific images left out.
BUNDLED_PHOTOS = (
    "astronaut",
    "chelsea",
    "coffee",
    "rocket",
    "motorcycle_left",
    "motorcycle_right",
    "china",
    "flower",
)
DEFAULT_VAL_PHOTOS = ("chelsea", "flower")
# Grayscale photos that also ship inside scikit-image, read as RGB (three equal channels): never
# in a default training set, they widen the demo's held-out set.
GRAY_PHOTOS = ("camera", "moon", "grass", "gravel")


def crop_image(
    image: Tensor, size: int, crop_type: CropType, generator: torch.Generator | None = None
) -> Tensor:
    """A (3, size, size) crop; images smaller than ``size`` are first upscaled (shorter side).

    Args:
        image: (3, H, W) in [0, 1].
        size: crop side.
        crop_type: "random" or "center".
        generator: random source of the crop position (default: torch's global one).
    """
    check_option("crop_type", crop_type, CropType, DatasetError)
    _, h, w = image.shape
    if min(h, w) < size:
        scale = size / min(h, w)
        new = (max(size, round(h * scale)), max(size, round(w * scale)))
        image = F.interpolate(
            image[None], size=new, mode="bilinear", antialias=True, align_corners=False
        )[0]
        image = image.clamp(0, 1)
        _, h, w = image.shape
    if crop_type == "random":
        top = int(torch.randint(0, h - size + 1, (), generator=generator).item())
        left = int(torch.randint(0, w - size + 1, (), generator=generator).item())
    else:  # "center"
        top, left = (h - size) // 2, (w - size) // 2
    return image[:, top : top + size, left : left + size].contiguous()


def find_training_images(root: str | Path, suffixes: Sequence[str] = TRAIN_SUFFIXES) -> list[Path]:
    """All images under ``root`` (recursive, sorted); a clear error when there are none."""
    root = Path(root)
    if not root.exists():
        raise DatasetError(f"image folder {root} does not exist")
    if not root.is_dir():
        raise DatasetError(f"{root} is not a folder of images")
    allowed = {s.lower() for s in suffixes}
    files = sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in allowed)
    if not files:
        raise DatasetError(
            f"no images found under {root} (searched recursively for {', '.join(sorted(allowed))})"
        )
    return files


def check_readable(files: Sequence[Path], root: str | Path) -> Path:
    """The first file of ``files`` that decodes; :class:`DatasetError` when none does (a folder of
    corrupt or foreign files), naming the folder, the count and the first reason."""
    first: str | None = None
    for path in files:
        try:
            load_image(path)
        except ImageReadError as exc:
            first = first or str(exc)
            continue
        return path
    raise DatasetError(
        f"none of the {len(files)} images under {root} could be read (first: {first}); "
        "point train_dir/val_dir at a folder of PNG/JPEG/WebP images"
    )


def _mix(*parts: object) -> int:
    """A stable 63-bit seed from labels (the same in every process and after a resume)."""
    digest = hashlib.sha256(repr(parts).encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


def item_generator(seed: int, key: int) -> torch.Generator:
    """The random source of training item ``key`` (see :class:`ResumableSampler`)."""
    return torch.Generator().manual_seed(_mix("crop", seed, key))


def run_seed() -> int:
    """The run's seed: ``seed_everything``'s (``PL_GLOBAL_SEED``), else 0."""
    try:
        return int(os.environ.get("PL_GLOBAL_SEED", "0"))
    except ValueError:
        return 0


class ResumableSampler(DistributedSampler):
    """Shuffled order of a dataset that depends only on (seed, epoch): resumable mid-epoch.

    It yields keys ``epoch * length + index``: the dataset takes ``key % length`` as the item and
    seeds the item's random crop with the key, so the data of every step is fixed by the seed,
    the epoch and the position. Lightning calls :meth:`set_epoch`; ``skip`` items of this rank
    are left out at the start of the next pass (the batches a resumed run already trained on).
    With several processes each rank takes every ``num_replicas``-th item of the shared order
    (padded to equal shares, as ``DistributedSampler``), so Lightning does not replace it.

    Args:
        length: items per epoch.
        seed: the run's seed.
        skip: items of this rank to leave out at the start of the first pass.
        num_replicas: number of processes (default 1).
        rank: this process's rank (default 0).
    """

    def __init__(
        self, length: int, seed: int, skip: int = 0, num_replicas: int = 1, rank: int = 0
    ) -> None:
        # DistributedSampler's own __init__ wants a process group; only its type is used here
        self.length = length
        self.seed = seed
        self.epoch = 0
        self.skip = skip
        self.num_replicas = num_replicas
        self.rank = rank
        self.num_samples = math.ceil(length / num_replicas)
        self.shuffle, self.drop_last = True, False  # what Lightning reads of a DistributedSampler

    def set_epoch(self, epoch: int) -> None:
        """Called by Lightning at the start of each epoch."""
        self.epoch = epoch

    def __len__(self) -> int:
        return self.num_samples

    def __iter__(self) -> Iterator[int]:
        gen = torch.Generator().manual_seed(_mix("order", self.seed, self.epoch))
        order = torch.randperm(self.length, generator=gen).tolist()
        order += order[: self.num_samples * self.num_replicas - self.length]  # equal shares
        mine = order[self.rank :: self.num_replicas]
        start, self.skip = self.skip, 0
        base = self.epoch * self.length
        for index in mine[start:]:
            yield base + index


class _ResumableLoader(DataLoader):
    """A DataLoader Lightning counts as resumable: its position is restored by the data module
    (see :meth:`_CropDataModule.state_dict`), so its own state is empty."""

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        pass


class ImageFolderDataset(Dataset):
    """Crops of the images in a folder tree.

    ``length`` > number of files repeats the files (useful for tiny sets); a file that cannot be
    decoded is recorded in ``skipped`` and replaced by the next readable one. An index past
    ``length`` is a :class:`ResumableSampler` key: item ``key % length``, its crop seeded by the key.
    """

    def __init__(
        self,
        root: str | Path,
        crop_size: int,
        crop_type: CropType = "random",
        length: int | None = None,
        suffixes: Sequence[str] = TRAIN_SUFFIXES,
        cache_type: CacheType = "none",
        seed: int = 0,
    ) -> None:
        check_option("crop_type", crop_type, CropType, DatasetError)
        check_option("cache_type", cache_type, CacheType, DatasetError)
        if crop_size <= 0:
            raise DatasetError(f"crop_size must be positive, got {crop_size}")
        self.root = Path(root)
        self.files = find_training_images(root, suffixes)
        self.crop_size = crop_size
        self.crop_type = crop_type
        self.length = max(len(self.files), length or 0)
        self.skipped: dict[str, str] = {}
        self.cache_type = cache_type
        self.seed = seed
        self._cache: dict[Path, Tensor] = {}

    def __len__(self) -> int:
        return self.length

    def _load(self, path: Path) -> Tensor:
        if self.cache_type == "none":
            return load_image(path).tensor
        if path not in self._cache:  # small sets: decode each file once, not once per crop
            self._cache[path] = load_image(path).tensor
        return self._cache[path]

    def __getitem__(self, index: int) -> Tensor:
        key, index = index, index % self.length
        n = len(self.files)
        for offset in range(n):
            path = self.files[(index + offset) % n]
            if str(path) in self.skipped:
                continue
            try:
                image = self._load(path)
            except ImageReadError as exc:
                self.skipped[str(path)] = str(exc)
                log.warning(
                    "skipping unreadable training image (%d skipped so far): %s",
                    len(self.skipped),
                    exc,
                )
                continue
            gen = item_generator(self.seed, key) if self.crop_type == "random" else None
            return crop_image(image, self.crop_size, self.crop_type, gen)
        raise DatasetError(f"none of the {n} images under {self.root} could be read")


def bundled_photos(names: Sequence[str] = BUNDLED_PHOTOS) -> dict[str, Tensor]:
    """Real photos from scikit-image and scikit-learn as (3, H, W) float tensors in [0, 1]."""
    import numpy as np

    photos: dict[str, Tensor] = {}
    sklearn_images: dict[str, np.ndarray] | None = None
    for name in names:
        if name in ("china", "flower"):
            if sklearn_images is None:
                datasets = require("sklearn.datasets", "demo", "The china/flower photos")
                data = datasets.load_sample_images()
                sklearn_images = {
                    Path(f).stem: img for f, img in zip(data.filenames, data.images, strict=True)
                }
            array = sklearn_images[name]
        elif name in ("motorcycle_left", "motorcycle_right"):
            skimage_data = require("skimage.data", "demo", "The motorcycle photos")
            left, right, _ = skimage_data.stereo_motorcycle()
            array = left if name.endswith("left") else right
        elif name in BUNDLED_PHOTOS or name in GRAY_PHOTOS:
            skimage_data = require("skimage.data", "demo", "The scikit-image photos")
            array = getattr(skimage_data, name)()
            if array.ndim == 2:
                array = np.repeat(array[..., None], 3, axis=-1)
        else:
            raise DatasetError(
                f"unknown bundled photo {name!r}; choose from "
                f"{', '.join(BUNDLED_PHOTOS + GRAY_PHOTOS)}"
            )
        tensor = (
            torch.from_numpy(np.array(array[..., :3], copy=True)).permute(2, 0, 1).float() / 255.0
        )
        photos[name] = tensor
    return photos


class PhotoDataset(Dataset):
    """Crops of in-memory photos (the bundled set), repeated to ``length`` items."""

    def __init__(
        self,
        photos: Sequence[Tensor],
        crop_size: int,
        crop_type: CropType = "random",
        length: int | None = None,
        seed: int = 0,
    ):
        if not photos:
            raise DatasetError("PhotoDataset needs at least one photo")
        check_option("crop_type", crop_type, CropType, DatasetError)
        self.photos = list(photos)
        self.crop_size = crop_size
        self.crop_type = crop_type
        self.length = max(len(self.photos), length or 0)
        self.seed = seed
        self.skipped: dict[str, str] = {}

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> Tensor:
        """Item ``index % length``; its random crop is seeded by ``index`` (a sampler key)."""
        gen = item_generator(self.seed, index) if self.crop_type == "random" else None
        photo = self.photos[(index % self.length) % len(self.photos)]
        return crop_image(photo, self.crop_size, self.crop_type, gen)


class _CropDataModule(pl.LightningDataModule):
    """Shared loaders: shuffled random crops for training, fixed centre crops for val/test."""

    train_set: Dataset
    val_set: Dataset

    def __init__(
        self,
        crop_size: int,
        batch_size: int,
        val_batch_size: int | None,
        num_workers: int,
        seed: int | None = None,
    ):
        super().__init__()
        if batch_size <= 0:
            raise DatasetError(f"batch_size must be positive, got {batch_size}")
        self.crop_size = crop_size
        self.batch_size = batch_size
        self.val_batch_size = val_batch_size or batch_size
        self.num_workers = num_workers
        self._seed = seed
        self._resume_batches = 0

    @property
    def seed(self) -> int:
        """Seed of the training order and crops: the given one, else the run's (seed_everything)."""
        return self._seed if self._seed is not None else run_seed()

    def state_dict(self) -> dict[str, Any]:
        """How many batches of the current epoch were trained when the checkpoint was written."""
        trainer = getattr(self, "trainer", None)
        if trainer is None:
            return {}
        done = int(trainer.fit_loop.epoch_loop.batch_progress.current.processed)
        total = trainer.num_training_batches
        if isinstance(total, (int, float)) and done >= total:
            done = 0  # the epoch is over: the resumed run starts the next one
        return {"epoch_batches_done": done, "seed": self.seed}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Resume the training order where the checkpoint left it."""
        self._resume_batches = int(state_dict.get("epoch_batches_done", 0))
        if self._seed is None and "seed" in state_dict:
            self._seed = int(state_dict["seed"])

    @property
    def skipped_count(self) -> int:
        """Unreadable files skipped so far (in this process; workers count their own)."""
        return sum(
            len(getattr(ds, "skipped", {}))
            for ds in (getattr(self, "train_set", None), getattr(self, "val_set", None))
            if ds is not None
        )

    def train_dataloader(self) -> DataLoader:
        seed = self.seed
        if hasattr(self.train_set, "seed"):
            self.train_set.seed = seed  # crops seeded per item: no global random state
        skip, self._resume_batches = self._resume_batches * self.batch_size, 0
        trainer = getattr(self, "trainer", None)
        world, rank = (trainer.world_size, trainer.global_rank) if trainer else (1, 0)
        return _ResumableLoader(
            self.train_set,
            batch_size=self.batch_size,
            sampler=ResumableSampler(len(self.train_set), seed, skip, world, rank),
            drop_last=len(self.train_set) >= self.batch_size,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
            # worker seeds from their own stream: loading never draws from torch's global one
            generator=torch.Generator().manual_seed(_mix("loader", seed)),
        )

    def val_dataloader(self) -> DataLoader:
        return DataLoader(
            self.val_set,
            batch_size=self.val_batch_size,
            shuffle=False,
            num_workers=self.num_workers,
        )

    def test_dataloader(self) -> DataLoader:
        return self.val_dataloader()


class ImageFolderDataModule(_CropDataModule):
    """Recursive image folders (PNG/JPEG/WebP). Without ``val_dir`` validation uses centre crops
    of the first ``val_samples`` training files. ``cache_type="memory"`` keeps decoded images in
    memory (for small photo sets, where decoding would cost more than the training step).
    ``seed`` fixes the training order and crops (default: the run's ``seed_everything``)."""

    def __init__(
        self,
        train_dir: str,
        val_dir: str | None = None,
        crop_size: int = 256,
        batch_size: int = 8,
        val_batch_size: int | None = None,
        num_workers: int = 0,
        samples_per_epoch: int | None = None,
        val_samples: int = 8,
        cache_type: CacheType = "none",
        seed: int | None = None,
    ) -> None:
        super().__init__(crop_size, batch_size, val_batch_size, num_workers, seed)
        self.train_dir = train_dir
        self.val_dir = val_dir
        self.samples_per_epoch = samples_per_epoch
        self.val_samples = val_samples
        self.cache_type = cache_type
        # fail at construction, not after model set-up or in a DataLoader worker
        check_readable(find_training_images(train_dir), train_dir)
        if val_dir is not None:
            check_readable(find_training_images(val_dir), val_dir)

    def setup(self, stage: str | None = None) -> None:
        self.train_set = ImageFolderDataset(
            self.train_dir,
            self.crop_size,
            "random",
            self.samples_per_epoch,
            cache_type=self.cache_type,
        )
        if self.val_dir is not None:
            self.val_set = ImageFolderDataset(self.val_dir, self.crop_size, "center")
        else:
            val = ImageFolderDataset(self.train_dir, self.crop_size, "center")
            val.files = val.files[: self.val_samples]
            val.length = len(val.files)
            self.val_set = val


class PhotosDataModule(_CropDataModule):
    """The real photos bundled with scikit-image/scikit-learn: the CPU demo's data, no download.

    ``val_photos`` are held out of training so validation measures generalisation; ``seed``
    fixes the training order and crops (default: the run's ``seed_everything``).
    """

    def __init__(
        self,
        crop_size: int = 32,
        batch_size: int = 8,
        val_batch_size: int | None = None,
        num_workers: int = 0,
        samples_per_epoch: int = 64,
        train_photos: list[str] | None = None,
        val_photos: list[str] | None = None,
        val_crops_per_photo: int = 4,
        max_side: int | None = 256,
        seed: int | None = None,
    ) -> None:
        super().__init__(crop_size, batch_size, val_batch_size, num_workers, seed)
        self.val_photos = list(val_photos if val_photos is not None else DEFAULT_VAL_PHOTOS)
        self.train_photos = list(
            train_photos
            if train_photos is not None
            else [p for p in BUNDLED_PHOTOS if p not in self.val_photos]
        )
        for name in (*self.train_photos, *self.val_photos):
            if name not in BUNDLED_PHOTOS + GRAY_PHOTOS:
                raise DatasetError(
                    f"unknown bundled photo {name!r}; choose from "
                    f"{', '.join(BUNDLED_PHOTOS + GRAY_PHOTOS)}"
                )
        if not self.train_photos:
            raise DatasetError("train_photos is empty")
        self.samples_per_epoch = samples_per_epoch
        self.val_crops_per_photo = val_crops_per_photo
        self.max_side = max_side

    def _load(self, names: Sequence[str]) -> list[Tensor]:
        photos = list(bundled_photos(names).values())
        if self.max_side is None:
            return photos
        # Downscaling makes a small crop hold a whole object instead of a flat patch of texture.
        out = []
        for img in photos:
            scale = self.max_side / max(img.shape[-2:])
            if scale < 1:
                size = (round(img.shape[-2] * scale), round(img.shape[-1] * scale))
                img = F.interpolate(img[None], size=size, mode="bilinear", antialias=True)[0].clamp(
                    0, 1
                )
            out.append(img)
        return out

    def setup(self, stage: str | None = None) -> None:
        self.train_set = PhotoDataset(
            self._load(self.train_photos), self.crop_size, "random", self.samples_per_epoch
        )
        val_images = (
            self._load(self.val_photos) if self.val_photos else self._load(self.train_photos[:2])
        )
        crops = []
        for img in val_images:
            crops.extend(_grid_crops(img, self.crop_size, self.val_crops_per_photo))
        self.val_set = PhotoDataset(crops, self.crop_size, "center")


def _grid_crops(image: Tensor, size: int, count: int) -> list[Tensor]:
    """``count`` deterministic crops spread along the image diagonal (centre first)."""
    _, h, w = image.shape
    if min(h, w) < size:
        return [crop_image(image, size, "center")]
    crops = [crop_image(image, size, "center")]
    for i in range(1, count):
        frac = i / count
        top = round((h - size) * frac)
        left = round((w - size) * (1 - frac))
        crops.append(image[:, top : top + size, left : left + size].contiguous())
    return crops
