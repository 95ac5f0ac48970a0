"""The custom CNN and the training loop, on tiny generated data."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from autocnn.data.cache import DataCache
from autocnn.models.build import build_model
from autocnn.models.catalog import Preprocess
from autocnn.models.custom_cnn import CustomCNN, ModelTooDeepError
from autocnn.spec.load import load_spec
from autocnn.training.loop import TensorBatches, Trainer, TrainSettings, autocast_dtype
from tests.conftest import digits_spec_dict, write_spec


@pytest.mark.parametrize(("size", "depth"), [(8, 3), (16, 4), (32, 2), (33, 5), (96, 6)])
def test_custom_cnn_fits_any_size_its_depth_allows(size: int, depth: int) -> None:
    model = build_model("custom_cnn", {"depth": depth, "width": 8}, num_classes=5, image_size=size)
    assert model(torch.zeros(2, 3, size, size)).shape == (2, 5)


def test_custom_cnn_channels_double_and_cap() -> None:
    model = CustomCNN(num_classes=2, image_size=256, depth=7, width=16)
    convs = [m.out_channels for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    assert convs == [16, 32, 64, 128, 256, 512, 512]


def test_too_deep_says_so() -> None:
    with pytest.raises(ModelTooDeepError, match="depth 5 is too deep for 16 px images.*at most 4"):
        build_model("custom_cnn", {"depth": 5}, num_classes=2, image_size=16)


def _batches(tmp_path: Path, image_folder: Path, batch_size: int = 8) -> tuple[TensorBatches, TensorBatches]:
    spec = load_spec(write_spec(tmp_path, digits_spec_dict(data={"source": "imagefolder", "root": "images"})))
    data = DataCache(spec.data, seed=spec.seed).get()
    pre = Preprocess(image_size=16)
    train = TensorBatches(data.train, pre, batch_size=batch_size, shuffle=True, seed=0)
    val = TensorBatches(data.val, pre, batch_size=64, shuffle=False)
    return train, val


def _trainer(train: TensorBatches, settings: TrainSettings) -> Trainer:
    torch.manual_seed(0)
    model = build_model("custom_cnn", {"depth": 2, "width": 8, "dropout": 0.0}, num_classes=3, image_size=16)
    return Trainer(model, settings, steps_per_epoch=len(train), device=torch.device("cpu"))


def test_batches_are_normalised_channels_last_and_reproducible(tmp_path: Path, image_folder: Path) -> None:
    train, _ = _batches(tmp_path, image_folder)
    x, y = next(iter(train))
    assert x.shape == (8, 3, 16, 16) and x.dtype == torch.float32 and y.dtype == torch.int64
    assert x.is_contiguous(memory_format=torch.channels_last)
    assert -1.0 <= float(x.min()) and float(x.max()) <= 1.0
    assert len(train) == 21 // 8  # the short tail is dropped when shuffling (BatchNorm)
    again, _ = _batches(tmp_path, image_folder)
    assert torch.equal(next(iter(again))[1], y)


@pytest.mark.parametrize("scheduler", ["cosine", "onecycle", "plateau", "none"])
def test_trainer_learns_and_yields_every_epoch(tmp_path: Path, image_folder: Path, scheduler: str) -> None:
    train, val = _batches(tmp_path, image_folder)
    trainer = _trainer(train, TrainSettings(epochs=8, lr=1e-2, weight_decay=0.0, scheduler=scheduler))
    history = list(trainer.fit(train, val))
    assert [m.epoch for m in history] == list(range(1, 9))
    assert history[-1].train_loss < history[0].train_loss
    assert trainer.best_value == max(m.val_accuracy for m in history) >= 0.8
    assert all(m.train_images_per_s > 0 and m.lr > 0 for m in history)


@pytest.mark.parametrize("native_bf16", [True, False])
def test_precision_autocasts_on_cpus_with_native_bf16_or_when_asked(
    monkeypatch: pytest.MonkeyPatch, native_bf16: bool
) -> None:
    import autocnn.training.loop as train_module

    monkeypatch.setattr(train_module, "cpu_has_native_bf16", lambda: native_bf16)
    cpu = torch.device("cpu")
    assert autocast_dtype(cpu, "auto") == (torch.bfloat16 if native_bf16 else None)
    assert autocast_dtype(cpu, "mixed") == torch.bfloat16
    assert autocast_dtype(cpu, "fp32") is None
    plain = build_model("custom_cnn", {"depth": 2, "width": 8}, num_classes=3, image_size=16)
    depthwise = build_model("mobilenetv2_035", {"pretrained": False}, num_classes=3, image_size=16)
    assert autocast_dtype(cpu, "auto", plain) == (torch.bfloat16 if native_bf16 else None)
    assert autocast_dtype(cpu, "auto", depthwise) is None  # no fast bf16 backward for depthwise convs on a CPU
    assert autocast_dtype(cpu, "mixed", depthwise) == torch.bfloat16  # asked for: given


def test_trainer_learns_in_mixed_precision_with_fp32_weights(tmp_path: Path, image_folder: Path) -> None:
    train, val = _batches(tmp_path, image_folder)
    trainer = _trainer(train, TrainSettings(epochs=8, lr=1e-2, weight_decay=0.0, precision="mixed"))
    history = list(trainer.fit(train, val))
    assert trainer.amp_dtype == torch.bfloat16
    assert all(p.dtype == torch.float32 for p in trainer.model.parameters())
    assert history[-1].train_loss < history[0].train_loss
    assert trainer.best_value >= 0.8


def test_early_stopping_stops_after_patience(tmp_path: Path, image_folder: Path) -> None:
    train, val = _batches(tmp_path, image_folder)
    # lr 0: nothing improves after epoch 1, so patience 2 stops at epoch 3
    trainer = _trainer(train, TrainSettings(epochs=10, lr=1e-12, weight_decay=0.0, scheduler="none", early_stopping=2))
    assert [m.epoch for m in trainer.fit(train, val)] == [1, 2, 3]


def test_early_stopping_waits_for_the_judge_floor(tmp_path: Path, image_folder: Path) -> None:
    train, val = _batches(tmp_path, image_folder)
    assert len(train) == 2  # steps an epoch
    # lr 0: no progress after epoch 1; patience 1 alone would stop at epoch 2, the 8-step floor at 4
    settings = TrainSettings(epochs=10, lr=1e-12, weight_decay=0.0, scheduler="none", early_stopping=1, min_steps=8)
    assert [m.epoch for m in _trainer(train, settings).fit(train, val)] == [1, 2, 3, 4]


def test_progress_must_beat_the_sampling_error() -> None:
    """On 100 validation images, one image better is no progress; a steady climb still is."""
    model = build_model("custom_cnn", {"depth": 1, "width": 4}, num_classes=2, image_size=8)
    settings = TrainSettings(epochs=10, lr=1e-3, weight_decay=0.0, early_stopping=3, noise_n=100)
    trainer = Trainer(model, settings, steps_per_epoch=1, device=torch.device("cpu"))
    trainer.progress_value = 0.50
    assert not trainer.is_progress(0.51)  # one image in 100: within one standard error (0.05)
    assert trainer.is_progress(0.56)
    plain = Trainer(
        model, TrainSettings(epochs=10, lr=1e-3, weight_decay=0.0), steps_per_epoch=1, device=torch.device("cpu")
    )
    plain.progress_value = 0.50
    assert plain.is_progress(0.51)  # without a validation size, any gain counts


def test_train_accuracy_is_measured_on_the_trained_batches(tmp_path: Path, image_folder: Path) -> None:
    train, val = _batches(tmp_path, image_folder)
    trainer = _trainer(train, TrainSettings(epochs=6, lr=5e-3, weight_decay=0.0))
    history = list(trainer.fit(train, val))
    assert all(0.0 <= m.train_accuracy <= 1.0 for m in history)
    assert history[-1].train_accuracy > history[0].train_accuracy
    assert "train_accuracy" in history[-1].as_dict()


def test_state_dict_resumes_the_same_run(tmp_path: Path, image_folder: Path) -> None:
    train, val = _batches(tmp_path, image_folder)
    settings = TrainSettings(epochs=4, lr=5e-3, weight_decay=1e-4)
    straight = _trainer(train, settings)
    full = [m.val_loss for m in straight.fit(train, val)]

    train2, val2 = _batches(tmp_path, image_folder)
    first = _trainer(train2, settings)
    part = [m.val_loss for _, m in zip(range(2), first.fit(train2, val2), strict=False)]
    saved = first.state_dict()
    train3, val3 = _batches(tmp_path, image_folder)  # a new process: fresh batch sources
    resumed = _trainer(train3, settings)
    resumed.load_state_dict(saved)
    rest = [m.val_loss for m in resumed.fit(train3, val3)]
    assert resumed.epoch == 4
    assert part + rest == pytest.approx(full, rel=1e-4)


# In a fresh process: where a 48 MiB buffer (above glibc's 32 MiB cap on its sliding mmap
# threshold, so mmap'd per allocation by default) lives once a CPU Trainer exists, and the page
# faults of a real training step in steady state. Prints mmap'd bytes while the buffer is held,
# free bytes the heap keeps after it is freed, and the median faults of the last eight steps.
REFAULT_PROBE = """
import ctypes, resource, statistics, torch
from autocnn.training.loop import Trainer, TrainSettings
from autocnn.models.build import build_model

class MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in
                "arena ordblks smblks hblks hblkhd usmblks fsmblks uordblks fordblks keepcost".split()]

libc = ctypes.CDLL("libc.so.6")
libc.mallinfo2.restype = MallInfo2
torch.manual_seed(0)
model = build_model("custom_cnn", {"depth": 2, "width": 32}, num_classes=10, image_size=32)
Trainer(model, TrainSettings(epochs=1, lr=1e-3, weight_decay=0.0), steps_per_epoch=1, device=torch.device("cpu"))

buffer = torch.empty(12 << 20)
mmapped = libc.mallinfo2().hblkhd
del buffer
kept_free = libc.mallinfo2().fordblks

optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
x, y = torch.randn(128, 3, 32, 32), torch.randint(0, 10, (128,))
faults = []
for _ in range(12):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    optimizer.zero_grad(set_to_none=True)
    torch.nn.functional.cross_entropy(model(x), y).backward()
    optimizer.step()
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
print(mmapped, kept_free, statistics.median(faults[4:]))
"""


def test_cpu_trainer_reuses_freed_memory_instead_of_refaulting_it() -> None:
    import ctypes
    import os
    import subprocess
    import sys

    if not os.confstr("CS_GNU_LIBC_VERSION") or not hasattr(ctypes.CDLL("libc.so.6"), "mallinfo2"):
        pytest.skip("the allocator setting is glibc's (mallinfo2 from 2.33); nothing changes elsewhere")
    out = subprocess.run([sys.executable, "-c", REFAULT_PROBE], capture_output=True, text=True, check=True)
    mmapped, kept_free, steady_faults = (float(x) for x in out.stdout.split())
    assert mmapped < 32 << 20  # served from the heap, not mmap'd for this one allocation
    assert kept_free >= 48 << 20  # and kept there once freed, not trimmed back to the kernel
    # Glibc's defaults fault a few thousand to 30,000 pages in again at a typical step of this loop.
    assert steady_faults < 100


def test_each_optimizer_groups_learning_rate_is_logged_as_it_decays(tmp_path: Path, image_folder: Path) -> None:
    from autocnn.training.assembly import parameter_groups

    train, val = _batches(tmp_path, image_folder)
    torch.manual_seed(0)
    model = build_model("resnet18", {"pretrained": False}, num_classes=3, image_size=16)
    groups = parameter_groups(model, lr=1e-2, backbone_lr_mult=0.1)
    settings = TrainSettings(epochs=2, lr=1e-2, weight_decay=0.0, scheduler="cosine")
    trainer = Trainer(model, settings, steps_per_epoch=len(train), device=torch.device("cpu"), param_groups=groups)
    first, second = (m.as_dict() for m in trainer.fit(train, val))
    assert first["lr.backbone"] == pytest.approx(1e-3) and first["lr.head"] == pytest.approx(1e-2) == first["lr"]
    assert second["lr.backbone"] < first["lr.backbone"] and second["lr.head"] < first["lr.head"]
    single = _trainer(train, settings)
    assert not any(key.startswith("lr.") for key in next(iter(single.fit(train, val))).as_dict())
