"""benchmarks/ works: each measurement's parts on tiny inputs. No timing is asserted: performance
is reported by the benchmarks, never tested."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import numpy as np
import pytest

from benchmarks import bare_loop, data_pipeline, feature_cache, pruner_replay, pruning_savings, results, run, timing
from benchmarks.memory_use import digits_study_spec, imagefolder_study_spec
from benchmarks.specs import heaviest, heaviest_augment, study_file, write_spec
from benchmarks.startup_cost import twenty_classes_spec
from benchmarks.synthetic import synthetic_images, write_class_folders
from benchmarks.timed_study import EpochStamp, TimingReporter, TrialRunner, trial_timing
from benchmarks.trial_loop import CASES, alternating_rounds, loop_spec
from tests.mlflow_store import seed_store

TINY = bare_loop.LoopCase("tiny", "custom_cnn", {"depth": 2, "width": 4}, 16, batch_size=8)


# --------------------------------------------------------------------------- results.md and results.json


def test_markdown_and_json_show_every_target_and_verdict(tmp_path: Path) -> None:
    item = results.Item(1, "Trial loop", rows=[results.Row("ratio", "0.97", ">= 0.95", True)])
    item.rows += [results.Row("info", "12"), results.Row("speed-up", "1.1x", ">= 1.3", False)]
    info = {"date": "today", "cpu": "test cpu", "cores": 2, "device": "cpu (cpu)", "torch": "x"}
    out = tmp_path / "results.md"
    results.write_results(out, info, [item], command="benchmarks/run.py --quick")
    text = out.read_text()
    assert "## 1. Trial loop" in text and "| ratio | 0.97 | >= 0.95 | met |" in text
    assert "| speed-up | 1.1x | >= 1.3 | **not met** |" in text and "| info | 12 |  |  |" in text
    assert "test cpu" in text and "Produced by `benchmarks/run.py --quick` on today." in text
    data = json.loads(out.with_suffix(".json").read_text())
    assert data["machine"]["cores"] == 2 and data["items"][0]["rows"][0]["met"] is True


def test_rewriting_results_md_keeps_the_search_quality_and_soak_sections_where_they_were(tmp_path: Path) -> None:
    section = f"{results.SECTION_START}\nsearch figures\n{results.SECTION_END}"
    soak = f"{results.SOAK_START}\nsoak figures\n{results.SOAK_END}"
    out = tmp_path / "results.md"
    out.write_text(f"# Benchmark results\n\nstale\n\n{section}\n\n{soak}\n")
    results.write_results(out, {"date": "today"}, [results.Item(2, "Fresh")], command="benchmarks/run.py")
    text = out.read_text()
    assert "stale" not in text and text.count(results.SECTION_START) == 1 and text.count(results.SOAK_START) == 1
    assert text.index("## 2. Fresh") < text.index(section) < text.index(soak)
    newer = f"{results.SOAK_START}\nnewer soak\n{results.SOAK_END}"
    out.write_text(results.splice_section(text, newer, "soak"))  # what soak.py does after its run
    assert out.read_text() == text.replace(soak, newer)


# --------------------------------------------------------------------------- timing


def test_ab_order_alternates_and_ratios_pair_neighbours() -> None:
    assert timing.alternated(["a", "b", "c"], 0) == ["a", "b", "c"]
    assert timing.alternated(["a", "b", "c"], 3) == ["c", "b", "a"]
    assert timing.paired_ratio([10.0, 100.0, 30.0], [10.0, 50.0, 60.0]) == pytest.approx(1.0)


def test_a_cost_paid_every_third_epoch_counts_in_the_per_trial_ratio() -> None:
    ours = [100.0, 100.0, 50.0] * 3  # the third epoch of each trial pays for all three
    bare = [100.0] * 9
    assert timing.paired_ratio(ours, bare) == pytest.approx(1.0)  # the median of epochs hides it
    assert timing.per_trial_ratio(ours, bare, 3) == pytest.approx(0.75)  # 3 epochs in 4 epochs' time


def test_bare_loops_take_turns_after_autocnn_epochs() -> None:
    assert timing.rotated(["a", "b", "c"], 0) == ["a", "b", "c"]
    assert timing.rotated(["a", "b", "c"], 4) == ["b", "c", "a"]
    assert timing.timed_epochs([1.0, 100.0, 300.0]) == pytest.approx(150.0)  # warm-up left out; images over time
    assert all(v in bare_loop.BARE_VARIANTS for case in CASES.values() for v in case.variants)


# --------------------------------------------------------------------------- autocnn's trials, timed


class Metrics:
    def __init__(self, epoch_seconds: float, train_seconds: float) -> None:
        self.epoch_seconds = epoch_seconds
        self.train_images_per_s = 100 / train_seconds


def test_trial_timing_splits_wall_time() -> None:
    # trial starts at 0, training starts at 0.5; epochs end at 2.0, 3.5, 5.0; trial ends at 5.4
    stamps = [EpochStamp(t, Metrics(1.2, 1.0)) for t in (2.0, 3.5, 5.0)]
    t = trial_timing(stamps, 0.5, 0.0, 5.4, seen=100)
    assert t.fixed_s == pytest.approx(0.9) and t.before_s == pytest.approx(0.5) and t.after_s == pytest.approx(0.4)
    assert t.validation_s == pytest.approx(0.2)
    assert t.per_epoch_overhead_s == pytest.approx(0.3)  # 1.5 s intervals minus 1.2 s epochs
    assert t.images_per_s == pytest.approx(200 / 2.6)  # epochs 2-3: 2 x (1.5 - 0.2) s
    assert t.epoch_images_per_s == pytest.approx((100 / 1.3, 100 / 1.3))
    assert t.train_only_images_per_s == pytest.approx(100.0)


def test_reporter_runs_work_after_each_trial_and_keeps_its_time() -> None:
    ran: list[int] = []
    reporter = TimingReporter(lambda number: (ran.append(number), time.sleep(0.05)))
    reporter.trial_started(3, None, 2)
    for _ in (1, 2):
        reporter.epoch_done(3, Metrics(1.0, 1.0), "val_accuracy")
    reporter.trial_finished(3, "COMPLETE", 0.9)
    assert ran == [3] and reporter.after_trial_s[3] >= 0.05
    stamps = reporter.epochs[3]
    assert len(stamps) == 2 and stamps[1].done >= stamps[0].done >= reporter.started[3]


# --------------------------------------------------------------------------- synthetic data and specs


def test_synthetic_images_are_reproducible_and_written_as_class_folders(tmp_path: Path) -> None:
    a, labels = synthetic_images(12, 16, 3, seed=5)
    b, _ = synthetic_images(12, 16, 3, seed=5)
    assert a.shape == (12, 16, 16, 3) and a.dtype == np.uint8 and np.array_equal(a, b)
    assert sorted(set(labels.tolist())) == [0, 1, 2]
    root = write_class_folders(tmp_path / "data", 12, 16, 3)
    assert sorted(p.name for p in root.iterdir()) == ["class_00", "class_01", "class_02"]
    assert len(list(root.rglob("*.png"))) == 12


def test_heaviest_takes_the_expensive_end_of_each_searched_value() -> None:
    space = {"enabled": {"choices": [True, False]}, "rotate": {"low": 0, "high": 30}, "hflip": 0.5, "blur": 0.0}
    space |= {"random_resized_crop": {"low": 0.5, "high": 1.0}, "width": {"choices": [32, 64]}}
    assert heaviest(space) == {
        "enabled": True,
        "rotate": 30,
        "hflip": 0.5,
        "blur": 0.0,
        "random_resized_crop": 0.5,  # any min area below 1 turns the crop on
        "width": 64,
    }
    assert heaviest_augment()["enabled"] is True


def test_generated_specs_validate(tmp_path: Path) -> None:
    from autocnn.spec.load import load_spec

    for case in CASES.values():
        spec = load_spec(write_spec(tmp_path / "loop", loop_spec(case, 2)))
        assert spec.data.image_size == case.image_size
    twenty = load_spec(twenty_classes_spec(tmp_path))
    assert Path(twenty.data.root).is_dir()
    extras = twenty.models.__pydantic_extra__ or {}
    assert all(space.pretrained is False for space in extras.values())
    assert load_spec(digits_study_spec(tmp_path)).study.trials == 2
    assert load_spec(imagefolder_study_spec(tmp_path, 20, 1)).train.epochs == 1


# --------------------------------------------------------------------------- the bare loop


def test_bare_loop_runs_every_variant_on_tiny_inputs_and_reports_a_speed() -> None:
    import torch

    images, labels = synthetic_images(24, 16, 3)
    for variant in bare_loop.BARE_VARIANTS:
        speed = bare_loop.bare_loop(TINY, images, labels, epochs=2, variant=variant, device=torch.device("cpu"))
        assert speed > 0


def test_plain_bare_loops_run_epoch_by_epoch_in_a_fresh_process(tmp_path: Path) -> None:
    import torch

    images, labels = synthetic_images(24, 16, 3)
    np.savez(tmp_path / "train.npz", images=images, labels=labels)
    assert "eager" in bare_loop.PLAIN_VARIANTS and "same" not in bare_loop.PLAIN_VARIANTS
    cpu = torch.device("cpu")
    loop = bare_loop.open_bare_loop(TINY, tmp_path / "train.npz", epochs=2, variant="eager", device=cpu)
    try:
        assert isinstance(loop, bare_loop.ChildBareLoop) and loop.proc.pid != os.getpid()
        assert loop.epoch() > 0 and loop.epoch() > 0
    finally:
        loop.close()
    assert loop.proc.returncode == 0
    with pytest.raises(RuntimeError, match="child process failed"):
        bare_loop.open_bare_loop(TINY, tmp_path / "missing.npz", epochs=2, variant="eager", device=cpu)


@pytest.mark.slow
def test_rounds_pair_each_autocnn_trial_with_a_run_of_each_bare_loop(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import torch

    monkeypatch.setattr(timing, "SETTLE_S", 0.0)
    case = bare_loop.LoopCase("tiny", "custom_cnn", {"depth": 2, "width": 8}, 16, variants=("same", "eager"), epochs=3)
    runner = TrialRunner(loop_spec(case, 3), tmp_path / "loop")
    train = runner.train_split()
    np.savez(tmp_path / "train.npz", images=train.images, labels=train.labels)
    trials, bare = alternating_rounds(
        case, runner, tmp_path / "train.npz", epochs=3, repeats=2, device=torch.device("cpu")
    )
    assert len(trials) == 2 and all(len(t.epoch_images_per_s) == 2 for t in trials)
    assert all(v > 0 for t in trials for v in t.epoch_images_per_s)
    assert sorted(bare) == ["eager", "same"] and all(len(v) == 4 and min(v) > 0 for v in bare.values())
    assert all(0 < t.fixed_s < 60 and t.per_epoch_overhead_s >= 0 for t in trials)


# --------------------------------------------------------------------------- the data pipeline


def test_the_pipeline_measures_the_heaviest_augmentation_and_the_fastest_cnn_as_a_trial_would() -> None:
    from autocnn.search.space import config_from_params

    spec = data_pipeline.pipeline_spec(heaviest_augment())
    config = config_from_params(spec, {"model": "custom_cnn"})
    assert config.model_params == {"depth": 4, "width": 32, "dropout": 0.2, "activation": "relu"}
    assert config.train.batch_size == data_pipeline.BATCH and spec.data.image_size == data_pipeline.SIZE
    assert config.augment.enabled and config.augment.rotate == 30 and config.augment.random_resized_crop == 0.5


def test_both_sides_of_the_pipeline_run_on_a_few_batches(monkeypatch: pytest.MonkeyPatch) -> None:
    import dataclasses

    import torch

    from autocnn.search.space import config_from_params
    from autocnn.training.config import AugmentConfig

    monkeypatch.setattr(data_pipeline, "SIZE", 16)
    spec = data_pipeline.pipeline_spec(heaviest_augment())
    augmented = config_from_params(spec, {"model": "custom_cnn"})
    augmented = dataclasses.replace(augmented, model_config=dataclasses.replace(augmented.model_config, depth=2))
    plain = dataclasses.replace(augmented, augment=AugmentConfig())
    data = data_pipeline.synthetic_dataset(3 * data_pipeline.BATCH + 1)
    assert data.train.images.shape[1:] == (16, 16, 3) and data.num_classes == data_pipeline.CLASSES
    cpu = torch.device("cpu")
    assert data_pipeline.loader_images_per_s(spec, augmented, data, seed=0, device=cpu) > 0
    assert data_pipeline.training_images_per_s(spec, plain, data, seed=0, device=cpu) > 0


# --------------------------------------------------------------------------- pruning


def test_a_replay_counts_the_epochs_each_curve_reaches_before_it_is_pruned() -> None:
    import optuna

    curves = [[0.9, 0.95], [0.1, 0.2], [0.6, 0.7]]
    below_half = optuna.pruners.ThresholdPruner(lower=0.5)
    assert pruner_replay.replay(curves, below_half, name="t", direction="maximize", steps_per_epoch=1) == (5, 0.95)
    none = optuna.pruners.NopPruner()
    assert pruner_replay.replay(curves, none, name="t", direction="minimize", steps_per_epoch=1) == (6, 0.1)


def test_every_pruner_run_trains_the_same_seeded_configs() -> None:
    from autocnn.spec.load import parse_spec

    base = study_file("digits")
    raws = [pruning_savings.pruning_spec(base, p, trials=3, epochs=2) for p in pruning_savings.PRUNERS]
    specs = [parse_spec(raw) for raw in raws]
    assert [s.study.pruner for s in specs] == list(pruning_savings.PRUNERS)
    for raw in raws[1:]:  # the same seed, sampler, space and data: only the pruner (and its name) differ
        assert {k for k in raw if raw[k] != raws[0][k]} <= {"name", "study"}
        assert {k: v for k, v in raw["study"].items() if k != "pruner"} == {
            k: v for k, v in raws[0]["study"].items() if k != "pruner"
        }
    assert all(s.study.trials == 3 and s.train.epochs == 2 and s.study.sampler == "random" for s in specs)
    assert all("timeout" not in raw["study"] and raw["seed"] == base["seed"] for raw in raws)
    assert pruning_savings.gap_pp(0.9, 0.88, "maximize") == pytest.approx(2.0)
    assert pruning_savings.gap_pp(0.1, 0.12, "minimize") == pytest.approx(2.0)


# --------------------------------------------------------------------------- run.py


def test_quick_settings_and_arguments() -> None:
    quick = run.settings_for(True)
    assert quick.quick and quick.loop_repeats == 1 and len(quick.loop_cases) == 2
    args = run.parse_args(["--quick", "--items", "1", "4", "--models", "custom_cnn"])
    assert args.quick and args.items == [1, 4] and args.models == ["custom_cnn"]
    assert run.results_path(args).parent != run.REPO / "benchmarks"  # a smoke run never overwrites results
    assert run.results_path(run.parse_args([])) == run.REPO / "benchmarks" / "results.md"
    assert run.parse_args(["--items", "7", "--merge"]).merge and 7 in run.ITEMS


# --------------------------------------------------------------------------- item 7: the feature cache

TINY_FEATURES = feature_cache.FeatureCacheCase(
    backbone="resnet10t",
    image_size=16,
    images=30,
    classes=3,
    full_epochs=1,
    cached_epochs=2,
    study_backbone="resnet10t",
    study_image_size=16,
    study_images=30,
    study_trials=2,
    study_epochs=1,
)


@pytest.mark.slow
def test_feature_cache_item_times_both_paths_and_both_studies(tmp_path: Path) -> None:
    for key in ("cache", "no_cache"):  # each study's MLflow tables made beforehand (tests/mlflow_store.py)
        seed_store(tmp_path / f"study-{key}")
    item = feature_cache.measure_feature_cache(tmp_path, TINY_FEATURES)
    epochs, studies = item.raw["epochs"], item.raw["studies"]
    assert len(epochs["full"]["epoch_seconds"]) == 1 and len(epochs["cached"]["epoch_seconds"]) == 2
    assert epochs["full"]["source"] == "" and epochs["cached"]["source"].startswith("computed in")
    assert set(studies) == {"cache", "no_cache"} and all(s["trials"] == 2 for s in studies.values())
    assert list((tmp_path / "study-cache" / ".autocnn" / "frozen-cache" / "features").glob("*.safetensors"))
    assert not (tmp_path / "study-no_cache" / ".autocnn" / "frozen-no_cache" / "features").exists()
    assert "epoch speed-up" in item.rows[2].what and item.rows[2].target == ">= 20x"


def test_merging_an_item_keeps_every_other_section(tmp_path: Path) -> None:
    out = tmp_path / "results.md"
    items = [results.Item(1, "One", [results.Row("a", "1")]), results.Item(6, "Six", [results.Row("b", "2")])]
    results.write_results(out, {"date": "before"}, items, command="benchmarks/run.py")
    out.write_text(out.read_text().replace("## 6. Six", "## By hand\n\nkept\n\n## 6. Six"))
    out.write_text(out.read_text() + f"\n{results.SECTION_START}\nsearch\n{results.SECTION_END}\n")
    info = {"date": "after", "cpu": "cpu", "cores": 2, "quiet": "yes"}
    results.merge_items(out, info, [results.Item(7, "Seven", [results.Row("c", "3")])], command="run.py --items 7")
    results.merge_items(out, info, [results.Item(1, "One again", [results.Row("a", "9")])], command="run.py --items 1")
    text = out.read_text()
    order = ["## 1. One again", "## By hand", "kept", "## 6. Six", "## 7. Seven", results.SECTION_START]
    assert [text.index(part) for part in order] == sorted(text.index(part) for part in order)
    assert "## 1. One\n" not in text and "| c | 3 |" in text and "Run on its own: `run.py --items 7` on after" in text
    data = json.loads(out.with_suffix(".json").read_text())
    assert [i["number"] for i in data["items"]] == [1, 6, 7] and data["machine"]["date"] == "before"
    assert data["items"][2]["raw"]["machine"]["date"] == "after"


def test_a_run_of_some_items_keeps_the_others_saying_when_they_were_measured(tmp_path: Path) -> None:
    out = tmp_path / "results.md"
    first = [results.Item(1, "Loop", rows=[results.Row("ratio", "0.97")]), results.Item(6, "Old scale-out")]
    results.write_results(
        out, {"date": "monday", "cpu": "cpu A", "commit": "abc123"}, first, command="benchmarks/run.py"
    )
    items = results.carried_over(out, [results.Item(6, "New scale-out")])
    results.write_results(out, {"date": "tuesday", "cpu": "cpu B"}, items, command="benchmarks/run.py --items 6")
    text = out.read_text()
    assert "## 1. Loop" in text and "| ratio | 0.97 |" in text and "Measured on monday (cpu A, commit abc123)" in text
    assert "## 6. New scale-out" in text and "Old scale-out" not in text
    again = results.carried_over(out, [results.Item(6, "Newer")])  # carried twice: one note, the first date
    (loop,) = [i for i in again if i.number == 1]
    assert [n for n in loop.notes if n.startswith("Measured on")] == [
        "Measured on monday (cpu A, commit abc123), in an earlier run than the items above it."
    ]


def test_scale_out_parts_work_on_a_tiny_workload(tmp_path: Path) -> None:
    from autocnn.spec.load import parse_spec
    from benchmarks import scale_out

    raw = scale_out.scale_out_spec("scale-test", trials=3, epochs=1)
    spec = parse_spec(raw)
    assert spec.augment is None and spec.study.pruner == "none" and spec.study.trials == 3
    rate = scale_out.coordination_rate(tmp_path, workers=2, total=4)
    assert 4 <= rate["trials"] <= 5 and rate["trials_per_s"] > 0  # the target, overshot by one worker at most


# --------------------------------------------------------------------------- item 8: accuracy against latency


def test_pareto_item_specs_validate_and_differ_only_in_objectives(tmp_path: Path) -> None:
    from autocnn.spec.load import load_spec
    from autocnn.spec.objectives import is_multi_objective
    from benchmarks import pareto_front

    base = study_file("digits")
    single_raw = pareto_front.pareto_spec(base, multi=False, trials=3, epochs=2)
    multi_raw = pareto_front.pareto_spec(base, multi=True, trials=3, epochs=2)
    assert {k for k in single_raw.keys() | multi_raw.keys() if single_raw.get(k) != multi_raw.get(k)} == {
        "name",
        "study",
    }
    assert {k: v for k, v in single_raw["study"].items() if k != "objectives"} == {
        k: v for k, v in multi_raw["study"].items() if k != "objectives"
    }
    single = load_spec(write_spec(tmp_path, single_raw))
    multi = load_spec(write_spec(tmp_path, multi_raw))
    assert not is_multi_objective(single) and is_multi_objective(multi)
    assert multi.study.objective_names == ["val_accuracy", "latency_ms"]
    assert single.models == multi.models and multi.data.image_size == 32
    assert multi.models.spaces()[pareto_front.MOBILENET].pretrained is False


def test_pareto_comparison_finds_the_fastest_front_trial_within_noise() -> None:
    from benchmarks.pareto_front import Point, compare

    single = Point(3, "mobilenetv2_050", 0.95, 0.8)
    front = [Point(1, "custom_cnn", 0.94, 0.1), Point(2, "custom_cnn", 0.80, 0.05), Point(4, "x", 0.96, 0.9)]
    rows, fastest = compare(front, single, n_val=360)
    assert fastest == front[0] and rows[-1].met is True and "8.00x" in rows[-1].figure
    rows, fastest = compare([Point(2, "custom_cnn", 0.5, 0.05)], single, n_val=360)
    assert fastest is None and rows[-1].met is False


def test_pareto_latency_of_the_single_objective_best_is_measured_as_the_front_is() -> None:
    from autocnn.models.build import build_model
    from autocnn.models.onnx import onnx_latency_ms

    model = build_model("custom_cnn", {"depth": 2, "width": 4}, num_classes=3, image_size=16)
    assert onnx_latency_ms(model, image_size=16) > 0
