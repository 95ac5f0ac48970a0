"""validate's data checks: images per class and split, imbalance, and one image in two splits."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from autocnn.cli.app import app
from autocnn.data.checks import NEAR_BITS, find_duplicates
from autocnn.data.folders import index_imagefolder
from tests.conftest import digits_spec_dict, write_spec


def write_distinct_images(folder: Path, n: int, *, seed: int, size: int = 32) -> list[Path]:
    """n images that look different to a person (and to a perceptual hash): random smooth blobs."""
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    paths = []
    for i in range(n):
        coarse = rng.integers(0, 256, size=(4, 4, 3), dtype=np.uint8)
        img = Image.fromarray(coarse).resize((size, size), Image.Resampling.BICUBIC)
        path = folder / f"img_{i:03d}.png"
        img.save(path)
        paths.append(path)
    return paths


@pytest.fixture
def presplit(tmp_path: Path) -> Path:
    root = tmp_path / "data"
    for s, split in enumerate(["train", "val", "test"]):
        for c, name in enumerate(["ant", "bee"]):
            write_distinct_images(root / split / name, 10 if split == "train" else 4, seed=100 * s + c)
    return root


def _validate(tmp_path: Path, root: Path, **spec: object) -> str:
    data = {"source": "imagefolder", "root": str(root), "image_size": 16}
    path = write_spec(tmp_path / "spec", digits_spec_dict(data=data, **spec))
    result = CliRunner().invoke(app, ["validate", str(path), "--no-probe"], terminal_width=200)
    assert result.exit_code == 0, result.output
    return result.output


def test_distinct_images_are_not_reported(presplit: Path) -> None:
    index = index_imagefolder(presplit, val=0.2, test=0.2, seed=0)
    assert find_duplicates(index) == []


def test_validate_names_both_files_of_a_planted_duplicate(tmp_path: Path, presplit: Path) -> None:
    from PIL import Image

    shutil.copy(presplit / "train" / "ant" / "img_002.png", presplit / "test" / "ant" / "copy.png")
    with Image.open(presplit / "train" / "bee" / "img_001.png") as img:  # re-encoded and resized
        img.resize((40, 40)).convert("RGB").save(presplit / "val" / "bee" / "near.jpg", quality=90)

    out = _validate(tmp_path, presplit)
    assert (
        "warning: same image in train and test: train/ant/img_002.png and test/ant/copy.png (identical files)" in out
    ), out
    near = [line for line in out.splitlines() if "train/bee/img_001.png and val/bee/near.jpg" in line]
    assert near and "near-duplicates: perceptual hashes" in near[0]
    assert int(near[0].split("hashes ")[1].split(" ")[0]) <= NEAR_BITS
    assert "2 image(s) appear in two splits" in out


def test_a_duplicate_with_two_labels_says_both(tmp_path: Path, presplit: Path) -> None:
    shutil.copy(presplit / "train" / "ant" / "img_004.png", presplit / "val" / "bee" / "mislabelled.png")
    out = _validate(tmp_path, presplit)
    assert "train/ant/img_004.png and val/bee/mislabelled.png (identical files; labelled ant and bee)" in out


def test_counts_per_class_and_split_and_imbalance(tmp_path: Path) -> None:
    root = tmp_path / "data"
    write_distinct_images(root / "many", 40, seed=1)
    write_distinct_images(root / "few", 10, seed=2)
    out = _validate(tmp_path, root)
    assert "images per class" in out
    row = next(line for line in out.splitlines() if "│ many" in line)
    assert [int(n) for n in row.replace("│", " ").split()[1:]] == [24, 8, 8]
    assert "warning: train: classes are imbalanced 4.0x (largest 'many' 24 images, smallest 'few' 6)" in out
    assert "study.metric: val_macro_f1" in out
