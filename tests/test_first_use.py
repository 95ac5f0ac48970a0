"""Pretrained weights on first use: a study fetches what its spec needs before trial 1 from a hub
(a local server mimicking the hub's resolve endpoint), and fails fast, naming the models, when
the hub cannot be reached."""

from __future__ import annotations

import io
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from autocnn.cli.app import app
from autocnn.models.hub import WeightsError, cached_weights, fetch_weights
from autocnn.search.study import run_study
from autocnn.spec.load import load_spec
from tests.conftest import digits_spec_dict, write_spec
from tests.file_server import Served, closed_port_url, file_server

MODEL = "test_resnet"  # timm's tiny test network; its weights live at timm/test_resnet.r160_in1k
HUB_FILE = "timm/test_resnet.r160_in1k/model.safetensors"


@pytest.fixture
def empty_hub(hub_cache: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty hub cache on a machine that may go online (the tests' default is HF_HUB_OFFLINE=1)."""
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)  # as autocnn leaves it after a trial
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    return hub_cache


def _weights_bytes() -> bytes:
    import timm
    from safetensors.torch import save

    model = timm.create_model(MODEL, num_classes=1000)
    return save({k: v.contiguous() for k, v in model.state_dict().items()})


def _spec(tmp_path: Path) -> Path:
    spec = digits_spec_dict(
        name="first-use",
        study={"trials": 1, "pruner": "none", "defaults": False},
        train={"epochs": 1, "batch_size": 64},
        models={MODEL: {"pretrained": True, "freeze": "backbone"}},
    )
    return write_spec(tmp_path / "spec", spec)


@pytest.mark.slow
def test_a_study_fetches_missing_weights_before_trial_1(
    in_tmp: Path, empty_hub: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with file_server(Served(hub_files={HUB_FILE: _weights_bytes()})) as served:
        monkeypatch.setenv("HF_ENDPOINT", served.url)
        result = CliRunner().invoke(app, ["study", str(_spec(in_tmp))])
        asked = list(served.requests)
    assert result.exit_code == 0, result.output
    out = result.output
    fetching = out.index(f"fetching pretrained weights for {MODEL} from {served.url}")
    assert fetching < out.index("trial 0"), out
    assert f"weights {MODEL}:" in out  # the download's progress, as a line without a terminal
    assert ("GET", f"/{HUB_FILE.replace('/model', '/resolve/main/model', 1)}") in asked
    assert cached_weights(MODEL) is not None
    assert "COMPLETE" in out

    # A second study finds them in the cache: the hub is not asked again.
    with file_server() as silent:
        monkeypatch.setenv("HF_ENDPOINT", silent.url)
        again = CliRunner().invoke(app, ["study", str(_spec(in_tmp)), "--trials", "2"])
        assert silent.requests == []
    assert again.exit_code == 0, again.output


@pytest.mark.parametrize("how", ["unreachable", "HF_HUB_OFFLINE"])
def test_without_a_hub_the_study_fails_before_trial_1_naming_the_models(
    in_tmp: Path, empty_hub: Path, monkeypatch: pytest.MonkeyPatch, how: str
) -> None:
    monkeypatch.setenv("HF_ENDPOINT", closed_port_url())
    if how == "HF_HUB_OFFLINE":
        monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    spec = _spec(in_tmp)
    started = time.monotonic()
    with pytest.raises(WeightsError) as caught:
        run_study(load_spec(spec))
    assert time.monotonic() - started < 10
    message = str(caught.value)
    assert message.startswith(f"pretrained weights for {MODEL} are not in the local cache")
    assert ("HF_HUB_OFFLINE=1 is set" if how == "HF_HUB_OFFLINE" else "cannot reach 127.0.0.1") in message
    assert f"autocnn weights fetch {MODEL}" in message
    assert not list(spec.parent.glob("*.optuna.db")) and not (in_tmp / "mlruns").exists()  # nothing written


def test_the_cli_says_it_in_one_line_with_exit_code_2(
    in_tmp: Path, empty_hub: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HF_ENDPOINT", closed_port_url())
    result = CliRunner().invoke(app, ["study", str(_spec(in_tmp))])
    assert result.exit_code == 2
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert lines[-1].startswith(f"error: pretrained weights for {MODEL} are not in the local cache")
    assert "Traceback" not in result.output


def test_weights_fetch_uses_the_same_download_and_cache(empty_hub: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[tuple[str, int, int | None]] = []
    with file_server(Served(hub_files={HUB_FILE: _weights_bytes()})) as served:
        monkeypatch.setenv("HF_ENDPOINT", served.url)
        fetched = fetch_weights([MODEL], progress=lambda what, done, total: seen.append((what, done, total)))
    assert fetched == [(MODEL, cached_weights(MODEL))]
    assert seen and seen[-1][1] == seen[-1][2] and seen[-1][0] == f"weights {MODEL}"
    assert str(empty_hub) in str(fetched[0][1])
    with pytest.raises(WeightsError, match=r"^test_efficientnet: cannot download: cannot reach 127\.0\.0\.1"):
        monkeypatch.setenv("HF_ENDPOINT", closed_port_url())
        fetch_weights(["test_efficientnet"])


def test_without_a_safetensors_file_the_bin_timm_would_load_is_fetched(
    empty_hub: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import io

    import timm
    import torch

    buffer = io.BytesIO()
    torch.save(timm.create_model("test_efficientnet", num_classes=1000).state_dict(), buffer)
    hub_file = "timm/test_efficientnet.r160_in1k/pytorch_model.bin"
    with file_server(Served(hub_files={hub_file: buffer.getvalue()})) as served:
        monkeypatch.setenv("HF_ENDPOINT", served.url)
        [(name, path)] = fetch_weights(["test_efficientnet"])
        asked = [path for _, path in served.requests]
    assert asked[0].endswith("/model.safetensors") and asked[-1].endswith("/pytorch_model.bin")
    assert path.name == "pytorch_model.bin" and cached_weights("test_efficientnet") == path
    model = timm.create_model("test_efficientnet", pretrained=True, num_classes=3)  # timm finds it offline
    assert model.num_classes == 3


def test_downloads_draw_bars_in_a_terminal_and_a_line_without_one() -> None:
    from rich.console import Console

    from autocnn.cli.console import RichReporter

    live = Console(file=io.StringIO(), force_terminal=True, width=100)
    with RichReporter(live) as reporter:
        reporter.download_progress("weights resnet18", 5_000_000, 10_000_000)
        reporter.download_progress("weights resnet18", 10_000_000, 10_000_000)
    assert "weights resnet18" in live.file.getvalue() and "10/10" in live.file.getvalue()

    plain = Console(file=io.StringIO(), force_terminal=False, width=80)
    reporter = RichReporter(plain)
    reporter.download_progress("downloading cifar10", 1_000_000, 2_000_000)
    reporter.download_progress("downloading cifar10", 2_000_000, 2_000_000)
    reporter.count_progress("writing images", 60, 60)
    assert plain.file.getvalue().splitlines() == ["downloading cifar10: 2.0 MB done", "writing images: 60"]
