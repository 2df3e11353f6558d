"""Training data: recursive folders, clear errors, corrupt files skipped and counted, fixed val."""

from __future__ import annotations

import logging

import pytest
import torch
from compressai_vlic_lightning.data import (
    ImageFolderDataModule,
    ImageFolderDataset,
    PhotosDataModule,
    crop_image,
)
from PIL import Image

from compressai_vlic.errors import DatasetError


@pytest.fixture
def mixed_folder(tmp_path, photos):
    """PNG/JPEG/WebP in nested folders, one corrupt PNG, one non-image file."""
    (tmp_path / "a" / "b").mkdir(parents=True)
    Image.fromarray(photos["astronaut"]).save(tmp_path / "astronaut.png")
    Image.fromarray(photos["coffee"]).save(tmp_path / "a" / "coffee.jpg", quality=90)
    Image.fromarray(photos["rocket"]).save(tmp_path / "a" / "b" / "rocket.webp")
    (tmp_path / "a" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really a png")
    (tmp_path / "notes.txt").write_text("not an image")
    return tmp_path


def test_recursive_folder_skips_and_counts_corrupt_file(mixed_folder, caplog):
    ds = ImageFolderDataset(mixed_folder, crop_size=32, crop_type="random")
    names = sorted(p.name for p in ds.files)
    assert names == ["astronaut.png", "broken.png", "coffee.jpg", "rocket.webp"]
    with caplog.at_level(logging.WARNING):
        crops = [ds[i] for i in range(len(ds))]
    assert all(c.shape == (3, 32, 32) and 0 <= c.min() and c.max() <= 1 for c in crops)
    assert list(ds.skipped) == [str(mixed_folder / "a" / "broken.png")]
    assert "skipping unreadable training image" in caplog.text
    dm = ImageFolderDataModule(str(mixed_folder), crop_size=32, batch_size=2)
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    assert batch.shape == (2, 3, 32, 32)
    for _ in range(2):
        list(dm.val_dataloader())
    assert dm.skipped_count >= 1


def test_missing_and_empty_folders_are_clear_errors(tmp_path):
    with pytest.raises(DatasetError, match="does not exist"):
        ImageFolderDataModule(str(tmp_path / "nope"))
    (tmp_path / "empty" / "sub").mkdir(parents=True)
    (tmp_path / "empty" / "sub" / "readme.txt").write_text("x")
    with pytest.raises(DatasetError, match="no images found under"):
        ImageFolderDataModule(str(tmp_path / "empty"))
    only_bad = tmp_path / "bad"
    only_bad.mkdir()
    (only_bad / "x.png").write_bytes(b"garbage")
    ds = ImageFolderDataset(only_bad, crop_size=16)
    with pytest.raises(DatasetError, match="could be read"):
        ds[0]


def test_validation_is_deterministic_and_training_random(photo_folder):
    dm = ImageFolderDataModule(str(photo_folder), crop_size=48, batch_size=4, val_samples=3)
    dm.setup("fit")
    first = torch.cat(list(dm.val_dataloader()))
    second = torch.cat(list(dm.val_dataloader()))
    assert first.shape == (3, 3, 48, 48)
    assert torch.equal(first, second)
    n = len(dm.train_set)
    a, b = dm.train_set[0], dm.train_set[n]  # the same file in two epochs (sampler keys)
    assert not torch.equal(a, b)  # random crops of the same file
    assert torch.equal(a, dm.train_set[0])  # a function of the key: the same after a resume


def test_training_order_resumes_mid_epoch_and_changes_with_the_epoch():
    from compressai_vlic_lightning.data import ResumableSampler

    sampler = ResumableSampler(10, seed=3)
    sampler.set_epoch(1)
    epoch1 = list(sampler)
    assert sorted(k - 10 for k in epoch1) == list(range(10))  # keys epoch * length + index
    sampler.set_epoch(2)
    assert [k - 20 for k in sampler] != [k - 10 for k in epoch1]
    resumed = ResumableSampler(10, seed=3, skip=4)
    resumed.set_epoch(1)
    assert list(resumed) == epoch1[4:]
    assert list(resumed) == epoch1  # the skip applies to the first pass only
    shares = [ResumableSampler(10, seed=3, num_replicas=3, rank=r) for r in range(3)]
    for share in shares:
        share.set_epoch(1)
    parts = [list(share) for share in shares]
    assert [len(p) for p in parts] == [4, 4, 4]  # padded to equal shares
    assert set().union(*parts) == set(epoch1)


def test_small_images_are_upscaled_and_crop_type_checked():
    img = torch.rand(3, 10, 20)
    out = crop_image(img, 16, "center")
    assert out.shape == (3, 16, 16)
    with pytest.raises(DatasetError, match="crop_type"):
        crop_image(img, 8, "diagonal")


def test_bundled_photos_datamodule_holds_out_validation_photos():
    dm = PhotosDataModule(crop_size=32, batch_size=4, samples_per_epoch=8, val_crops_per_photo=2)
    assert "chelsea" in dm.val_photos and "chelsea" not in dm.train_photos
    dm.setup("fit")
    assert len(dm.train_set) == 8 and len(dm.val_set) == 4
    batch = next(iter(dm.train_dataloader()))
    assert batch.shape == (4, 3, 32, 32)
    v1 = torch.cat(list(dm.val_dataloader()))
    v2 = torch.cat(list(dm.val_dataloader()))
    assert torch.equal(v1, v2)
    with pytest.raises(DatasetError, match="unknown bundled photo"):
        PhotosDataModule(train_photos=["lena"])
