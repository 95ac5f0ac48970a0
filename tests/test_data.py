"""Both data sources on small images the tests make: discovery, splits, decoding, failures."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from autocnn.data.cache import DataCache, load_digits_dataset
from autocnn.data.decode import BACKGROUND, decode_image, stretch_to_8bit
from autocnn.data.folders import NOT_AN_IMAGE, index_imagefolder
from autocnn.errors import DataError
from autocnn.spec.load import load_spec
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
    data = DataCache(spec.data, seed=spec.seed).get()
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
    import autocnn.data.decode as data_module

    calls: list[int] = []
    real = data_module.decode_image

    def counting(path: Path, size: int) -> np.ndarray:
        calls.append(size)
        return real(path, size)

    monkeypatch.setattr(data_module, "decode_image", counting)
    spec = load_spec(write_spec(tmp_path, digits_spec_dict(data={"source": "imagefolder", "root": "images"})))
    cache = DataCache(spec.data, seed=spec.seed)
    assert cache.get() is cache.get(16)
    cache.get(8)
    assert calls.count(16) == 36 and calls.count(8) == 36


# --------------------------------------------------------------------------- awkward images


def test_16_bit_grayscale_keeps_its_contrast(tmp_path: Path) -> None:
    # Three bands, 1000 / 2000 / 3000: PIL's own conversion clips all three to white.
    pixels = np.full((30, 30), 1000, dtype=np.uint16)
    pixels[:, 10:20] = 2000
    pixels[:, 20:] = 3000
    path = tmp_path / "deep.png"
    Image.fromarray(pixels).save(path)
    with Image.open(path) as img:
        assert img.mode.startswith("I")  # stored as 16-bit, not 8
    out = decode_image(path, 30)
    assert out.shape == (30, 30, 3)
    dark, mid, bright = out[:, 2:8].mean(), out[:, 12:18].mean(), out[:, 22:28].mean()
    assert dark < 5 and 120 < mid < 135 and bright > 250
    assert (out[..., 0] == out[..., 1]).all() and (out[..., 1] == out[..., 2]).all()


def test_stretch_uses_the_image_range_and_survives_flat_and_nan() -> None:
    assert stretch_to_8bit(np.array([[1000, 3000]], dtype=np.uint16)).tolist() == [[0, 255]]
    assert stretch_to_8bit(np.array([[7, 7]], dtype=np.int32)).tolist() == [[0, 0]]
    assert stretch_to_8bit(np.array([[np.nan, 0.5, 1.0]], dtype=np.float32)).tolist() == [[0, 0, 255]]


def test_transparency_is_composited_on_the_documented_background(tmp_path: Path) -> None:
    # Left half: fully transparent, red underneath. Right half: opaque blue. Middle rows: half-transparent green.
    pixels = np.zeros((24, 24, 4), dtype=np.uint8)
    pixels[:, :12] = (255, 0, 0, 0)
    pixels[:, 12:] = (0, 0, 255, 255)
    pixels[10:14, :] = (0, 255, 0, 128)
    path = tmp_path / "alpha.png"
    Image.fromarray(pixels, mode="RGBA").save(path)
    out = decode_image(path, 24).astype(int)
    assert BACKGROUND == (255, 255, 255)
    assert (np.abs(out[:6, 2:10] - BACKGROUND) <= 1).all()  # not the red stored under transparency
    assert (np.abs(out[:6, 14:22] - (0, 0, 255)) <= 1).all()
    assert (np.abs(out[11:13, 2:10] - (127, 255, 127)) <= 2).all()


def test_palette_and_gray_transparency_are_composited_too(tmp_path: Path) -> None:
    palette = Image.new("P", (16, 16), 0)
    palette.putpalette([255, 0, 0] + [0, 0, 0] * 255)  # index 0: red, marked transparent below
    palette.save(tmp_path / "p.png", transparency=0)
    gray = Image.fromarray(np.zeros((16, 16, 2), dtype=np.uint8), mode="LA")  # black, fully transparent
    gray.save(tmp_path / "la.png")
    for name in ("p.png", "la.png"):
        assert (decode_image(tmp_path / name, 16) == BACKGROUND).all(), name


# --------------------------------------------------------------------------- files not loaded, named


@pytest.fixture
def untidy_folder(tmp_path: Path) -> Path:
    """Two classes of real images, and beside them everything a real folder collects."""
    root = tmp_path / "images"
    write_images(root / "a", 0, 8)
    write_images(root / "b", 1, 8)
    write_images(root / "a" / "extra", 0, 3)  # a nested folder: loaded as class a
    (root / "a" / "notes.txt").write_text("not an image")
    (root / "b" / ".DS_Store").write_bytes(b"\0")
    (root / "b" / "._img_000.png").write_bytes(b"AppleDouble")  # a hidden image-named file
    (root / ".cache").mkdir()
    (root / "labels.csv").write_text("file,label\n")
    (root / "b" / "gone.png").symlink_to(tmp_path / "nowhere.png")
    return root


def test_nested_folders_load_as_their_class_and_every_other_file_is_named(untidy_folder: Path) -> None:
    index = index_imagefolder(untidy_folder, val=0.25, test=0.25, seed=0)
    assert index.classes == ["a", "b"]
    loaded = sorted(str(p.relative_to(untidy_folder)) for files in index.files.values() for p, _ in files)
    assert len(loaded) == 19 and "a/extra/img_000.png" in loaded
    labels = {str(p.relative_to(untidy_folder)): label for files in index.files.values() for p, label in files}
    assert labels["a/extra/img_002.png"] == 0
    assert index.notes() == [
        f"skipped b/gone.png (dangling symlink to {untidy_folder.parent / 'nowhere.png'})",
        "ignored (hidden): .cache/, b/.DS_Store, b/._img_000.png",
        "ignored (not inside a class folder): labels.csv",
        f"ignored ({NOT_AN_IMAGE}): a/notes.txt",
        "loaded images in sub-folders as their class folder's class: a/extra/ (3)",
    ]


def test_symlinked_sub_folders_are_not_followed(tmp_path: Path) -> None:
    """A link back up (or to `/`) would loop or walk the disk; a linked class folder is fine."""
    root = tmp_path / "images"
    write_images(root / "a", 0, 4)
    write_images(tmp_path / "elsewhere" / "b", 1, 4)
    (root / "b").symlink_to(tmp_path / "elsewhere" / "b", target_is_directory=True)
    (root / "a" / "up").symlink_to(root, target_is_directory=True)
    index = index_imagefolder(root, val=0.25, test=0.25, seed=0)
    assert index.classes == ["a", "b"] and sum(index.counts().values()) == 8
    assert index.notes() == ["ignored (symlinked sub-folder, not followed): a/up/"]


def test_presplit_roots_name_what_they_leave_out(tmp_path: Path) -> None:
    root = tmp_path / "ds"
    for split, n in (("train", 6), ("val", 2)):
        for label, name in enumerate(["a", "b"]):
            write_images(root / split / name, label, n)
    (root / "extra").mkdir()
    (root / "README.md").write_text("about")
    (root / "val" / "b" / "dead.png").symlink_to(tmp_path / "missing.png")
    index = index_imagefolder(root, val=0.2, test=0.2, seed=0)
    assert index.counts() == {"train": 12, "val": 4}
    assert index.notes() == [
        f"skipped val/b/dead.png (dangling symlink to {tmp_path / 'missing.png'})",
        "ignored (not inside a class folder): README.md",
        "ignored (not train/, val/ or test/): extra/",
    ]


def test_long_lists_of_ignored_files_are_cut_short(tmp_path: Path) -> None:
    root = tmp_path / "images"
    for label, name in enumerate(["a", "b"]):
        write_images(root / name, label, 4)
    for i in range(30):
        (root / "a" / f"meta_{i:02d}.json").write_text("{}")
    (line,) = index_imagefolder(root, val=0.25, test=0.25, seed=0).notes()
    assert line.startswith(f"ignored ({NOT_AN_IMAGE}): a/meta_00.json, a/meta_01.json, ")
    assert line.endswith("a/meta_19.json and 10 more")


def test_validate_names_the_files_it_leaves_out(untidy_folder: Path) -> None:
    from typer.testing import CliRunner

    from autocnn.cli.app import app

    spec = write_spec(untidy_folder.parent, digits_spec_dict(data={"source": "imagefolder", "root": "images"}))
    result = CliRunner().invoke(app, ["validate", "--no-probe", str(spec)])
    assert result.exit_code == 0, result.output
    text = " ".join(result.output.split())  # rich may wrap long lines
    for name in ("b/gone.png (dangling symlink", "a/notes.txt", "b/.DS_Store", "a/extra/ (3)", "labels.csv"):
        assert name in text
    assert "1 skipped, 5 ignored" in text


def test_the_study_names_the_files_it_leaves_out(untidy_folder: Path) -> None:
    from autocnn.search.session import checked_data

    class Heard:
        def __init__(self) -> None:
            self.lines: list[str] = []

        def message(self, text: str) -> None:
            self.lines.append(text)

    spec = load_spec(
        write_spec(untidy_folder.parent, digits_spec_dict(data={"source": "imagefolder", "root": "images"}))
    )
    heard = Heard()
    data = checked_data(spec, DataCache(spec.data, seed=spec.seed), heard)  # type: ignore[arg-type]
    assert len(data.train) + len(data.val) + len(data.test) == 19
    said = "\n".join(heard.lines)
    assert said.count("gone.png") == 1 and said.count("notes.txt") == 1 and "a/extra/ (3)" in said
