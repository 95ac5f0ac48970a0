"""Both data sources on small images the tests make: discovery, splits, decoding, failures."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from autocnn.data import DataCache, decode_image, index_imagefolder, load_digits_dataset
from autocnn.errors import DataError
from autocnn.spec import load_spec
from tests.conftest import digits_spec_dict, write_images, write_spec


def test_digits_are_resized_rgb_and_split_stratified() -> None:
    data = load_digits_dataset(24, val=0.2, test=0.2, seed=0)
    assert data.train.images.shape[1:] == (24, 24, 3) and data.train.images.dtype == np.uint8
    assert len(data.train) + len(data.val) + len(data.test) == 1797
    assert len(data.val) == len(data.test) == 360
    # stratified: every class in every split, in about the same proportion
    for split in (data.train, data.val, data.test):
        counts = np.bincount(split.labels, minlength=10)
        assert counts.min() >= 0.8 * counts.mean()
    # same seed, same split; another seed, another split
    again = load_digits_dataset(24, val=0.2, test=0.2, seed=0)
    assert np.array_equal(again.val.labels, data.val.labels) and np.array_equal(again.val.images, data.val.images)
    other = load_digits_dataset(24, val=0.2, test=0.2, seed=1)
    assert not np.array_equal(other.val.images, data.val.images)


def test_class_folders_are_split_once_and_deterministically(image_folder: Path) -> None:
    first = index_imagefolder(image_folder, val=0.25, test=0.25, seed=3)
    second = index_imagefolder(image_folder, val=0.25, test=0.25, seed=3)
    assert first.classes == ["cat", "dog", "fox"]
    assert first.counts() == {"train": 18, "val": 9, "test": 9}
    assert first.files == second.files
    every = [p for files in first.files.values() for p, _ in files]
    assert len(every) == len(set(every)) == 36


def test_presplit_folders_are_used_as_given(tmp_path: Path) -> None:
    root = tmp_path / "ds"
    for split, n in (("train", 6), ("val", 2)):
        for label, name in enumerate(["a", "b"]):
            write_images(root / split / name, label, n)
    index = index_imagefolder(root, val=0.2, test=0.2, seed=0)
    assert index.presplit and index.counts() == {"train": 12, "val": 4}


def test_exif_orientation_is_honoured(tmp_path: Path) -> None:
    # A 40x20 landscape image whose EXIF says "rotate 90": upright it is portrait,
    # with the red top half ending up on the right.
    pixels = np.zeros((20, 40, 3), dtype=np.uint8)
    pixels[:10] = (255, 0, 0)
    img = Image.fromarray(pixels)
    exif = img.getexif()
    exif[0x0112] = 6
    path = tmp_path / "rotated.jpg"
    img.save(path, exif=exif, quality=95)
    out = decode_image(path, 16)
    assert out.shape == (16, 16, 3)
    right, left = out[:, 12:, 0].mean(), out[:, :4, 0].mean()
    assert right > 200 and left < 60


def test_unreadable_files_are_skipped_and_named(tmp_path: Path) -> None:
    root = tmp_path / "images"
    for label, name in enumerate(["a", "b"]):
        write_images(root / name, label, 8)
    broken = root / "a" / "broken.png"
    broken.write_bytes(b"not an image")
    spec = load_spec(write_spec(tmp_path, digits_spec_dict(data={"source": "imagefolder", "root": "images"})))
    data = DataCache(spec).get()
    assert [path for path, _ in data.skipped] == [str(broken)]
    assert len(data.train) + len(data.val) + len(data.test) == 16
    assert data.train.images.shape[1:] == (16, 16, 3)


def test_missing_root_and_empty_class_are_errors(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="data root not found"):
        index_imagefolder(tmp_path / "nope", val=0.2, test=0.2, seed=0)
    write_images(tmp_path / "ds" / "a", 0, 4)
    (tmp_path / "ds" / "empty").mkdir()
    with pytest.raises(DataError, match=r"empty: class folder holds no images"):
        index_imagefolder(tmp_path / "ds", val=0.2, test=0.2, seed=0)


def test_too_few_images_for_the_split(tmp_path: Path) -> None:
    write_images(tmp_path / "ds" / "a", 0, 6)
    write_images(tmp_path / "ds" / "b", 1, 2)
    with pytest.raises(DataError, match="class 'b' has 2 image"):
        index_imagefolder(tmp_path / "ds", val=0.2, test=0.2, seed=0)


def test_cache_decodes_each_size_once(image_folder: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import autocnn.data as data_module

    calls: list[int] = []
    real = data_module.decode_image

    def counting(path: Path, size: int) -> np.ndarray:
        calls.append(size)
        return real(path, size)

    monkeypatch.setattr(data_module, "decode_image", counting)
    spec = load_spec(write_spec(tmp_path, digits_spec_dict(data={"source": "imagefolder", "root": "images"})))
    cache = DataCache(spec)
    assert cache.get() is cache.get(16)
    cache.get(8)
    assert calls.count(16) == 36 and calls.count(8) == 36
