"""Datasets by name: the real torchvision download code against a local server serving tiny
archives in the real CIFAR format; the cache is filled once, reused, and never half-written."""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from autocnn.cli.app import app
from autocnn.data import named as datasets
from autocnn.data.cache import DataCache
from autocnn.errors import DataError
from autocnn.spec.load import parse_spec
from tests.conftest import digits_spec_dict, write_spec
from tests.file_server import Served, closed_port_url, file_server
from tests.tiny_cifar import COARSE, tiny_archive


@pytest.fixture
def data_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty dataset cache on a connected machine (the tests' default is HF_HUB_OFFLINE=1)."""
    home = tmp_path / "data-home"
    monkeypatch.setenv(datasets.DATA_HOME_VARIABLE, str(home))
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    return home


def _serve(monkeypatch: pytest.MonkeyPatch, served: Served, kind: str, **tiny: int) -> str:
    """Put a tiny archive on the server and point autocnn's mirror setting at it."""
    data, archive = tiny_archive(kind, **tiny)
    path = f"/{archive.filename}"
    served.files[path] = data
    monkeypatch.setitem(datasets.ARCHIVES, kind, archive)
    monkeypatch.setenv(datasets.MIRROR_VARIABLE, served.url)
    return path


def _named_spec(source: str, **data: object) -> dict:
    spec = digits_spec_dict(data={"source": source, "image_size": 16, "split": {"val": 0.25, "test": 0.2}, **data})
    return spec


def test_a_dataset_lands_in_the_cache_once_and_is_reused(data_home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with file_server() as served:
        path = _serve(monkeypatch, served, "cifar100")
        lines: list[str] = []
        folder = datasets.fetch_dataset("cifar100", say=lines.append)
        first = [r for r in served.requests if r[1] == path]
        assert first, "the archive was downloaded from the mirror"
        assert datasets.is_cached("cifar100")
        assert lines and "downloading cifar100" in lines[0] and served.url in lines[0]
        assert sorted(p.name for p in data_home.iterdir()) == ["cifar100"]  # no download folder left
        assert sorted(p.name for p in (folder / "cifar-100-python").iterdir()) == ["meta", "test", "train"]

        datasets.fetch_dataset("cifar100")
        spec = parse_spec(_named_spec("cifar100", labels="coarse"))
        cache = DataCache(spec.data, seed=spec.seed)
        data = cache.get()
        assert [r for r in served.requests if r[1] == path] == first  # reused, not fetched again
    assert data.classes == COARSE
    assert data.train.images.shape[1:] == (16, 16, 3) and data.train.images.dtype == np.uint8
    assert len(data.train) + len(data.val) == 4 * 6 and len(data.test) == 4 * 3  # official test split kept
    assert set(np.unique(data.val.labels)) == {0, 1}


def test_cifar10_and_fine_labels_read_through_torchvision(data_home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with file_server() as served:
        _serve(monkeypatch, served, "cifar10", n_classes=3, per_class=10)
        spec = parse_spec(_named_spec("cifar10", image_size=32))
        data = DataCache(spec.data, seed=spec.seed).get()
    assert data.classes == ["class0", "class1", "class2"]
    assert len(data.train) + len(data.val) == 30 and len(data.test) == 15
    # each class's colour channel is bright: the pixels are CIFAR's channel-first rows put upright
    reds = data.train.images[data.train.labels == 0][..., 0].mean()
    greens = data.train.images[data.train.labels == 0][..., 1].mean()
    assert reds > greens + 100


def test_checksum_mismatch_keeps_nothing_and_says_which_file(data_home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with file_server() as served:
        _serve(monkeypatch, served, "cifar10")
        archive = datasets.ARCHIVES["cifar10"]
        monkeypatch.setitem(datasets.ARCHIVES, "cifar10", datasets.replace(archive, md5="0" * 32))
        with pytest.raises(DataError, match=r"checksum mismatch for cifar-10-python\.tar\.gz .*expected 0{32}"):
            datasets.fetch_dataset("cifar10")
    assert not datasets.is_cached("cifar10")
    assert [p.name for p in data_home.iterdir()] == []  # no half-written dataset, no download folder


def test_interrupted_download_keeps_nothing_and_says_so(data_home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with file_server() as served:
        path = _serve(monkeypatch, served, "cifar100")
        served.truncated.add(path)
        with pytest.raises(
            DataError,
            match=r"^data\.source: cifar100: download from http://127\.0\.0\.1:\d+/cifar-100-python\.tar\.gz failed",
        ) as caught:
            datasets.fetch_dataset("cifar100")
        assert "the download stopped after" in str(caught.value) and "nothing was kept" in str(caught.value)
        assert [p.name for p in data_home.iterdir()] == []

        served.truncated.clear()  # the next attempt starts afresh and succeeds
        datasets.fetch_dataset("cifar100")
    assert datasets.is_cached("cifar100")


@pytest.mark.parametrize("how", ["HF_HUB_OFFLINE", "unreachable"])
def test_offline_fails_fast_naming_the_dataset(data_home: Path, monkeypatch: pytest.MonkeyPatch, how: str) -> None:
    _, archive = tiny_archive("cifar10")
    monkeypatch.setitem(datasets.ARCHIVES, "cifar10", archive)
    monkeypatch.setenv(datasets.MIRROR_VARIABLE, closed_port_url())
    if how == "HF_HUB_OFFLINE":
        monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    started = time.monotonic()
    with pytest.raises(DataError) as caught:
        datasets.fetch_dataset("cifar10")
    assert time.monotonic() - started < 10
    message = str(caught.value)
    assert message.startswith("data.source: cifar10 is not in the dataset cache")
    assert ("HF_HUB_OFFLINE=1 is set" if how == "HF_HUB_OFFLINE" else "cannot reach 127.0.0.1") in message
    assert "autocnn data fetch cifar10" in message
    assert not data_home.exists() or [p.name for p in data_home.iterdir()] == []


def test_validate_on_a_named_dataset_downloads_it_and_offline_is_one_line(
    tmp_path: Path, data_home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    spec = write_spec(tmp_path, _named_spec("cifar100", labels="coarse"))
    _, archive = tiny_archive("cifar100")
    monkeypatch.setitem(datasets.ARCHIVES, "cifar100", archive)
    monkeypatch.setenv(datasets.MIRROR_VARIABLE, closed_port_url())
    result = CliRunner().invoke(app, ["validate", str(spec), "--no-probe"])
    assert result.exit_code == 2, result.output
    assert "error: data.source: cifar100 is not in the dataset cache" in result.output
    assert "Traceback" not in result.output

    with file_server() as served:
        _serve(monkeypatch, served, "cifar100")
        result = CliRunner().invoke(app, ["validate", str(spec), "--no-probe"])
    assert result.exit_code == 0, result.output
    assert "downloading cifar100" in result.output
    assert "cifar100 (coarse labels)" in result.output


def test_labels_belong_to_named_datasets() -> None:
    from autocnn.errors import SpecError

    with pytest.raises(SpecError, match=r"data\.labels: coarse labels exist for cifar100 only"):
        parse_spec(_named_spec("cifar10", labels="coarse"))
    with pytest.raises(SpecError, match=r"data\.labels: only for a dataset by name"):
        parse_spec(digits_spec_dict(data={"labels": "fine"}))
    with pytest.raises(SpecError, match=r"data\.root: not used with source: cifar10"):
        parse_spec(_named_spec("cifar10", root="x"))


def test_data_fetch_writes_an_image_folder_a_spec_can_use(
    tmp_path: Path, data_home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "files" / "cifar100-coarse"
    with file_server() as served:
        _serve(monkeypatch, served, "cifar100", per_class=8)
        result = CliRunner().invoke(app, ["data", "fetch", "cifar100", str(out), "--labels", "coarse", "--val", "0.25"])
    assert result.exit_code == 0, result.output
    assert "wrote" in result.output and "train 24, val 8, test 16 images" in result.output
    assert sorted(p.name for p in out.iterdir()) == ["test", "train", "val"]
    assert sorted(p.name for p in (out / "train").iterdir()) == COARSE
    assert [p.name for p in out.parent.iterdir()] == ["cifar100-coarse"]  # no partial folder left

    # The folder holds the same images and splits as the dataset by name with the same seed.
    named = parse_spec(_named_spec("cifar100", labels="coarse", image_size=32, split={"val": 0.25}))
    by_name = DataCache(named.data, seed=named.seed).get()
    spec = digits_spec_dict(data={"source": "imagefolder", "root": str(out), "image_size": 32})
    folder = parse_spec(spec)
    from_files = DataCache(folder.data, seed=folder.seed).get()
    assert from_files.classes == by_name.classes
    for name in ("train", "val", "test"):
        a, b = getattr(from_files, name), getattr(by_name, name)
        assert sorted(map(bytes, a.images.reshape(len(a), -1))) == sorted(map(bytes, b.images.reshape(len(b), -1)))

    again = CliRunner().invoke(app, ["data", "fetch", "cifar100", str(out)])
    assert again.exit_code == 2 and "exists and is not empty" in again.output
    unknown = CliRunner().invoke(app, ["data", "fetch", "imagenet", str(tmp_path / "x")])
    assert unknown.exit_code == 2 and "unknown dataset 'imagenet'; choose one of: cifar10, cifar100" in unknown.output


def test_the_next_fetch_removes_what_a_killed_download_left(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """kill -9 mid-download leaves `.cifar10-download-<pid>-*` beside the cache; the next fetch removes
    it first (here it then stops: offline), and keeps the folder of a download still running."""
    import subprocess
    import sys

    monkeypatch.setenv(datasets.DATA_HOME_VARIABLE, str(tmp_path))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    left = tmp_path / f".cifar10-download-{gone.pid}-k9x"
    (left / "cifar-10-batches-py").mkdir(parents=True)
    running = tmp_path / f".cifar10-download-{os.getpid()}-abc"
    running.mkdir()
    with pytest.raises(DataError, match="cannot be downloaded"):
        datasets.fetch_dataset("cifar10")
    assert not left.exists() and running.exists()
