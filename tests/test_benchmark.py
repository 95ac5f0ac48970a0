"""benchmarks/run.py works: its helpers on tiny inputs (no timing is asserted: performance is
reported by the benchmark, never tested)."""

from __future__ import annotations

import importlib.util
import json
import os
import sys
import time
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest

SCRIPT = Path(__file__).resolve().parent.parent / "benchmarks" / "run.py"


@pytest.fixture(scope="module")
def bench() -> ModuleType:
    spec = importlib.util.spec_from_file_location("autocnn_benchmark_run", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses resolve their module by name
    spec.loader.exec_module(module)
    return module


def test_markdown_and_json_show_every_target_and_verdict(bench: ModuleType, tmp_path: Path) -> None:
    item = bench.Item(1, "Trial loop", rows=[bench.Row("ratio", "0.97", ">= 0.95", True), bench.Row("info", "12")])
    item.rows.append(bench.Row("speed-up", "1.1x", ">= 1.3", False))
    info = {"date": "today", "cpu": "test cpu", "cores": 2, "device": "cpu (cpu)", "torch": "x"}
    out = tmp_path / "results.md"
    bench.write_results(out, info, [item], command="benchmarks/run.py --quick")
    text = out.read_text()
    assert "## 1. Trial loop" in text and "| ratio | 0.97 | >= 0.95 | met |" in text
    assert "| speed-up | 1.1x | >= 1.3 | **not met** |" in text and "| info | 12 |  |  |" in text
    assert "test cpu" in text
    data = json.loads(out.with_suffix(".json").read_text())
    assert data["machine"]["cores"] == 2 and data["items"][0]["rows"][0]["met"] is True


def test_heaviest_takes_the_expensive_end_of_each_searched_value(bench: ModuleType) -> None:
    block = bench.heaviest(bench.ISSUE_AUGMENT)
    assert block["enabled"] is True and block["rotate"] == 30 and block["cutout"] == 0.5
    assert block["random_resized_crop"] == 0.5  # any min area below 1 turns the crop on
    assert block["hflip"] == 0.5 and block["blur"] == 0.0


def test_ab_order_alternates_and_ratios_pair_neighbours(bench: ModuleType) -> None:
    assert bench.alternated(["a", "b", "c"], 0) == ["a", "b", "c"]
    assert bench.alternated(["a", "b", "c"], 3) == ["c", "b", "a"]
    assert bench.paired_ratio([10.0, 100.0, 30.0], [10.0, 50.0, 60.0]) == pytest.approx(1.0)


def test_a_cost_paid_every_third_epoch_counts_in_the_per_trial_ratio(bench: ModuleType) -> None:
    ours = [100.0, 100.0, 50.0] * 3  # the third epoch of each trial pays for all three
    bare = [100.0] * 9
    assert bench.paired_ratio(ours, bare) == pytest.approx(1.0)  # the median of epochs hides it
    assert bench.per_trial_ratio(ours, bare, 3) == pytest.approx(0.75)  # 3 epochs in 4 epochs' time


class Metrics:
    def __init__(self, epoch_seconds: float, train_seconds: float) -> None:
        self.epoch_seconds = epoch_seconds
        self.train_images_per_s = 100 / train_seconds


def test_trial_timing_splits_wall_time(bench: ModuleType) -> None:
    # trial starts at 0, training starts at 0.5; epochs end at 2.0, 3.5, 5.0; trial ends at 5.4
    stamps = [bench.EpochStamp(t, Metrics(1.2, 1.0)) for t in (2.0, 3.5, 5.0)]
    t = bench.trial_timing(stamps, 0.5, 0.0, 5.4, seen=100)
    assert t.fixed_s == pytest.approx(0.9) and t.before_s == pytest.approx(0.5) and t.after_s == pytest.approx(0.4)
    assert t.validation_s == pytest.approx(0.2)
    assert t.per_epoch_overhead_s == pytest.approx(0.3)  # 1.5 s intervals minus 1.2 s epochs
    assert t.images_per_s == pytest.approx(200 / 2.6)  # epochs 2-3: 2 x (1.5 - 0.2) s
    assert t.epoch_images_per_s == pytest.approx((100 / 1.3, 100 / 1.3))
    assert t.train_only_images_per_s == pytest.approx(100.0)


def test_reporter_runs_work_after_each_trial_and_keeps_its_time(bench: ModuleType) -> None:
    ran: list[int] = []
    reporter = bench.TimingReporter(lambda number: (ran.append(number), time.sleep(0.05)))
    reporter.trial_started(3, None, 2)
    for epoch in (1, 2):
        metrics = Metrics(1.0, 1.0)
        metrics.epoch = epoch  # type: ignore[attr-defined]
        reporter.epoch_done(3, metrics, "val_accuracy")
    reporter.trial_finished(3, "COMPLETE", 0.9)
    assert ran == [3] and reporter.after_trial_s[3] >= 0.05
    stamps = reporter.epochs[3]
    assert len(stamps) == 2 and stamps[1].done >= stamps[0].done >= reporter.started[3]


def test_synthetic_images_are_reproducible_and_written_as_a_folder(bench: ModuleType, tmp_path: Path) -> None:
    a, labels = bench.synthetic_images(12, 16, 3, seed=5)
    b, _ = bench.synthetic_images(12, 16, 3, seed=5)
    assert a.shape == (12, 16, 16, 3) and a.dtype == np.uint8 and np.array_equal(a, b)
    assert sorted(set(labels.tolist())) == [0, 1, 2]
    root = bench.write_imagefolder(tmp_path / "data", 12, 16, 3)
    assert sorted(p.name for p in root.iterdir()) == ["class_00", "class_01", "class_02"]
    assert len(list(root.rglob("*.png"))) == 12


def test_generated_specs_validate(bench: ModuleType, tmp_path: Path) -> None:
    from autocnn.spec import load_spec

    for case in bench.CASES.values():
        spec = load_spec(bench.write_spec(tmp_path / "loop", bench.loop_spec(case, 2)))
        assert spec.data.image_size == case.image_size
    twenty = load_spec(bench.twenty_classes_spec(tmp_path))
    assert Path(twenty.data.root).is_dir()
    extras = twenty.models.__pydantic_extra__ or {}
    assert all(space.pretrained is False for space in extras.values())


def test_bare_loop_trains_on_tiny_inputs(bench: ModuleType) -> None:
    import torch

    case = bench.LoopCase("tiny", "custom_cnn", {"depth": 2, "width": 4}, 16, batch_size=8)
    images, labels = bench.synthetic_images(24, 16, 3)
    for variant in bench.BARE_VARIANTS:
        speed = bench.bare_loop(case, images, labels, epochs=2, variant=variant, device=torch.device("cpu"))
        assert speed > 0


def test_plain_bare_loops_run_epoch_by_epoch_in_a_fresh_process(bench: ModuleType, tmp_path: Path) -> None:
    import torch

    case = bench.LoopCase("tiny", "custom_cnn", {"depth": 2, "width": 4}, 16, batch_size=8)
    images, labels = bench.synthetic_images(24, 16, 3)
    np.savez(tmp_path / "train.npz", images=images, labels=labels)
    assert "eager" in bench.PLAIN_VARIANTS and "same" not in bench.PLAIN_VARIANTS
    loop = bench.open_bare_loop(case, tmp_path / "train.npz", epochs=2, variant="eager", device=torch.device("cpu"))
    try:
        assert isinstance(loop, bench.ChildBareLoop) and loop.proc.pid != os.getpid()
        assert loop.epoch() > 0 and loop.epoch() > 0
    finally:
        loop.close()
    assert loop.proc.returncode == 0
    with pytest.raises(RuntimeError, match="child process failed"):
        bench.open_bare_loop(case, tmp_path / "missing.npz", epochs=2, variant="eager", device=torch.device("cpu"))


def test_quick_settings_and_arguments(bench: ModuleType) -> None:
    quick = bench.settings_for(True)
    assert quick.quick and quick.loop_repeats == 1 and len(quick.loop_cases) == 2
    args = bench.parse_args(["--quick", "--items", "1", "4", "--models", "custom_cnn"])
    assert args.quick and args.items == [1, 4] and args.models == ["custom_cnn"]


def test_bare_loops_take_turns_after_autocnn_epochs(bench: ModuleType) -> None:
    assert bench.rotated(["a", "b", "c"], 0) == ["a", "b", "c"]
    assert bench.rotated(["a", "b", "c"], 4) == ["b", "c", "a"]
    assert bench.timed_epochs([1.0, 100.0, 300.0]) == pytest.approx(150.0)  # warm-up left out; images over time
    assert all(v in bench.BARE_VARIANTS for case in bench.CASES.values() for v in case.variants)


@pytest.mark.slow
def test_rounds_pair_each_autocnn_trial_with_a_run_of_each_bare_loop(
    bench: ModuleType, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import torch

    from autocnn.data import DataCache

    monkeypatch.setattr(bench, "SETTLE_S", 0.0)
    case = bench.LoopCase("tiny", "custom_cnn", {"depth": 2, "width": 8}, 16, variants=("same", "eager"), epochs=3)
    runner = bench.TrialRunner(case, tmp_path / "loop", 3)
    train = DataCache(runner.spec).get(16).train
    np.savez(tmp_path / "train.npz", images=train.images, labels=train.labels)
    trials, bare = bench.alternating_rounds(
        case, runner, tmp_path / "train.npz", epochs=3, repeats=2, device=torch.device("cpu")
    )
    assert len(trials) == 2 and all(len(t.epoch_images_per_s) == 2 for t in trials)
    assert all(v > 0 for t in trials for v in t.epoch_images_per_s)
    assert sorted(bare) == ["eager", "same"] and all(len(v) == 4 and min(v) > 0 for v in bare.values())
    assert all(0 < t.fixed_s < 60 and t.per_epoch_overhead_s >= 0 for t in trials)
