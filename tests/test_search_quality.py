"""benchmarks/search_quality.py's parts on tiny inputs: the synthetic regimes, the methods each
regime runs, the specs it hands autocnn, its baselines, its verdicts and its results.md section."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest

from benchmarks import datasets as ds
from benchmarks import search_quality as sq

TINY_SHAPES = {"train": 2, "val": 1, "test": 2}


def rows(images: np.ndarray) -> set[bytes]:
    return {image.tobytes() for image in images}


# --------------------------------------------------------------------------- digits-small


def test_digits_small_has_the_per_class_counts_at_64_px_in_three_channels() -> None:
    regime = ds.digits_small(0)
    assert regime.classes == [str(d) for d in range(10)]
    for split, n in ds.DIGITS_COUNTS.items():
        images = regime.splits[split]
        assert images.images.shape == (10 * n, 64, 64, 3) and images.images.dtype == np.uint8
        assert np.bincount(images.labels, minlength=10).tolist() == [n] * 10
    grey = regime.splits["train"].images
    assert (grey[..., 0] == grey[..., 2]).all() and grey.max() > 200  # ink upscaled, not left at 0..16


def test_digits_small_test_images_are_never_training_or_validation_images() -> None:
    splits = ds.digits_small(1).splits
    seen = rows(splits["train"].images) | rows(splits["val"].images)
    assert not seen & rows(splits["test"].images)
    assert len(rows(splits["test"].images)) == len(splits["test"])  # and no image twice within test


def test_draw_per_class_cuts_disjoint_runs_and_refuses_too_small_a_class() -> None:
    labels = np.repeat(np.arange(3), 10)
    parts = ds.draw_per_class(labels, {"train": 4, "val": 2, "test": 3}, np.random.default_rng(0))
    assert [len(parts[s]) for s in ("train", "val", "test")] == [12, 6, 9]
    assert len(np.unique(np.concatenate(list(parts.values())))) == 27
    with pytest.raises(ValueError, match="class 0 has 10 images, 11 requested"):
        ds.draw_per_class(labels, {"train": 9, "test": 2}, np.random.default_rng(0))


def test_digits_small_is_reproducible_per_seed_and_differs_between_seeds() -> None:
    a, b, c = ds.digits_small(2), ds.digits_small(2), ds.digits_small(3)
    assert np.array_equal(a.splits["test"].images, b.splits["test"].images)
    assert not np.array_equal(a.splits["train"].images, c.splits["train"].images)


# --------------------------------------------------------------------------- shapes20


def test_digits_shifted_trains_on_clean_digits_and_scores_on_a_shifted_source() -> None:
    shifted, clean = ds.digits_shifted(0), ds.digits_small(0, ds.DIGITS_SHIFTED_COUNTS)
    assert {split: len(images) for split, images in shifted.splits.items()} == {"train": 200, "val": 100, "test": 500}
    assert np.array_equal(shifted.splits["train"].images, clean.splits["train"].images)
    for split in ("val", "test"):
        assert np.array_equal(shifted.splits[split].labels, clean.splits[split].labels)
        gap = np.abs(shifted.splits[split].images.astype(int) - clean.splits[split].images).mean()
        assert gap > 20, f"{split} is not shifted: mean difference {gap:.1f} grey levels"
    assert np.array_equal(ds.digits_shifted(0).splits["test"].images, shifted.splits["test"].images)


def test_shapes20_has_twenty_classes_in_the_requested_counts() -> None:
    regime = ds.shapes20(0, TINY_SHAPES)
    assert len(regime.classes) == len(set(regime.classes)) == 20
    for split, n in TINY_SHAPES.items():
        images = regime.splits[split]
        assert images.images.shape == (20 * n, 64, 64, 3) and images.images.dtype == np.uint8
        assert np.bincount(images.labels, minlength=20).tolist() == [n] * 20


def test_shapes20_is_reproducible_per_seed_and_differs_between_seeds() -> None:
    a, b, c = ds.shapes20(5, TINY_SHAPES), ds.shapes20(5, TINY_SHAPES), ds.shapes20(6, TINY_SHAPES)
    for split in TINY_SHAPES:
        assert np.array_equal(a.splits[split].images, b.splits[split].images)
        assert not np.array_equal(a.splits[split].images, c.splits[split].images)


def test_shapes20_test_split_has_its_own_stream_and_a_shifted_style() -> None:
    more_training = ds.shapes20(0, {**TINY_SHAPES, "train": 3})
    base = ds.shapes20(0, TINY_SHAPES)
    # Drawing more training images moves val along the shared stream, but not test.
    assert not np.array_equal(base.splits["val"].images, more_training.splits["val"].images)
    assert np.array_equal(base.splits["test"].images, more_training.splits["test"].images)
    train, test = ds.TRAIN_STYLE, ds.TEST_STYLE
    assert train.background != test.background and train.clutter != test.clutter
    assert train.saturation != test.saturation and train.value != test.value


def test_only_the_test_split_is_rendered_in_the_shifted_style(monkeypatch: pytest.MonkeyPatch) -> None:
    styles: list[ds.Style] = []
    render = ds.render_split

    def recording(n: int, style: ds.Style, rng: np.random.Generator) -> ds.ImageSet:
        styles.append(style)
        return render(n, style, rng)

    monkeypatch.setattr(ds, "render_split", recording)
    ds.shapes20(0, {"train": 1, "val": 1, "test": 1})
    assert styles == [ds.TRAIN_STYLE, ds.TRAIN_STYLE, ds.TEST_STYLE]


def test_the_same_draw_in_the_test_style_gives_another_image() -> None:
    as_train = ds.render_shape("star", "dots", ds.TRAIN_STYLE, np.random.default_rng(9))
    as_test = ds.render_shape("star", "dots", ds.TEST_STYLE, np.random.default_rng(9))
    assert np.abs(as_train.astype(int) - as_test.astype(int)).mean() > 10


def test_an_imagefolder_written_for_a_regime_reads_back_through_autocnn(tmp_path: Path) -> None:
    from autocnn.data.cache import DataCache

    regime = ds.shapes20(0, TINY_SHAPES)
    root = ds.write_imagefolder(tmp_path / "data", regime)
    spec = sq.data_only_spec(root, 64)
    data = DataCache(spec.data, seed=spec.seed).get(64)
    assert data.classes == sorted(regime.classes)
    assert data.test is not None and len(data.train) == 40 and len(data.val) == 20 and len(data.test) == 40
    assert rows(data.test.images) == rows(regime.splits["test"].images)  # PNG is lossless, no resize at 64 px


# --------------------------------------------------------------------------- methods and specs


def flat(raw: dict, prefix: str = "") -> dict[str, object]:
    """A nested spec as dotted keys, so two specs can be compared key by key."""
    out: dict[str, object] = {}
    for key, value in raw.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and not ({"low", "high"} & value.keys() or "choices" in value):
            out |= flat(value, f"{name}.")
        else:
            out[name] = value
    return out


def differing(a: dict, b: dict) -> set[str]:
    fa, fb = flat(a), flat(b)
    return {key for key in fa.keys() | fb.keys() if fa.get(key, "absent") != fb.get(key, "absent")}


@pytest.mark.parametrize("regime", ["fmnist-50-scratch", "fmnist-200-pretrained", "digits-small"])
def test_search_specs_differ_only_in_name_sampler_pruner_and_the_default_only_trial_count(regime: str) -> None:
    bench = sq.ALL_REGIMES[regime]
    specs = {m: sq.search_spec(bench, m, 1, 60.0) for m in sq.SEARCH_SETTINGS}
    ours = specs["autocnn"]
    assert differing(ours, specs["no-pruning"]) == {"name", "study.pruner"}
    assert differing(ours, specs["random-sampler"]) == {"name", "study.sampler"}
    assert differing(ours, specs["random-search"]) == {"name", "study.sampler", "study.pruner"}
    assert differing(ours, specs["default-only"]) == {"name", "study.trials"}
    assert (ours["study"]["sampler"], ours["study"]["pruner"], ours["study"]["defaults"]) == ("tpe", "median", True)
    assert (specs["random-search"]["study"]["sampler"], specs["random-search"]["study"]["pruner"]) == ("random", "none")
    assert ours["study"]["timeout"] == 60.0 and ours["train"]["epochs"] == "auto"
    assert specs["default-only"]["study"]["trials"] == len(ours["models"])


def test_search_specs_validate_and_name_the_backbone_with_its_own_size_only_when_pretrained() -> None:
    from autocnn.spec.load import parse_spec

    for name, bench in sq.REAL_REGIMES.items():
        spec = parse_spec(sq.search_spec(bench, "autocnn", 0, 60.0))
        assert spec.data.image_size == 28 and spec.seed == 0
        if bench.pretrained:
            assert spec.models.backbones() == [sq.BACKBONE]
            space = spec.models.spaces()[sq.BACKBONE]
            assert space.image_size == sq.BACKBONE_SIZE and space.pretrained is True
        else:
            assert spec.models.backbones() == [], name
    assert "hflip" not in sq.search_spec(sq.ALL_REGIMES["digits-small"], "autocnn", 0, 60.0)["augment"]


def test_the_fixed_recipes_augmentation_lies_inside_every_searchs_space() -> None:
    for bench in sq.ALL_REGIMES.values():
        space = sq.search_space(bench)["augment"]
        for key, value in sq.standard_augment(bench).items():
            allowed = space[key]
            if "choices" in allowed:
                assert value in allowed["choices"], (bench.name, key)
            else:
                assert allowed["low"] <= value <= allowed["high"], (bench.name, key)
        assert ("hflip" in sq.standard_augment(bench)) == bench.hflip


def test_scratch_regimes_skip_the_pretrained_baselines_and_ablations_follow_the_plan() -> None:
    scratch, pretrained = sq.REAL_REGIMES["fmnist-50-scratch"], sq.REAL_REGIMES["fmnist-50-pretrained"]
    assert sq.methods_for(scratch, ablations=True) == [
        "fixed-cnn",
        "random-search",
        "autocnn",
        "default-only",
        "no-pruning",
        "random-sampler",
    ]
    assert sq.methods_for(pretrained, ablations=False) == [
        "fixed-cnn",
        "linear-probe",
        "fixed-finetune",
        "random-search",
        "autocnn",
    ]


def test_the_fixed_cnn_runs_once_per_images_and_seed_and_stands_for_both_regimes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[tuple[str, str, int]] = []

    def fake_run(method: str, regime: sq.BenchRegime, seed: int, *_args: object) -> sq.RunRecord:
        calls.append((method, regime.name, seed))
        return sq.RunRecord(regime.name, method, seed, test_accuracy=0.5 + seed / 10)

    monkeypatch.setattr(sq, "run_method", fake_run)
    monkeypatch.setattr(sq, "write_imagefolder", lambda root, _images: root.mkdir(parents=True))
    monkeypatch.setattr(sq, "make_images", lambda *_args: None)
    plan = sq.Plan(("fmnist-50-scratch", "fmnist-50-pretrained"), (0, 1), (), 60.0, None, tmp_path, None)
    written: list[int] = []
    records = sq.run_all(plan, lambda _text: None, seed_done=lambda so_far: written.append(len(so_far)))
    assert written == [len(records) // 2, len(records)]  # results written after each seed
    assert [c for c in calls if c[0] == "fixed-cnn"] == [
        ("fixed-cnn", "fmnist-50-scratch", 0),
        ("fixed-cnn", "fmnist-50-scratch", 1),
    ]
    copied = [r for r in records if r.method == "fixed-cnn" and r.regime == "fmnist-50-pretrained"]
    assert [(r.seed, r.test_accuracy) for r in copied] == [(0, 0.5), (1, 0.6)]
    assert ("linear-probe", "fmnist-50-pretrained", 1) in calls and (
        "default-only",
        "fmnist-50-scratch",
        0,
    ) not in calls


# --------------------------------------------------------------------------- targets


def record(method: str, seed: int, accuracy: float | None, regime: str = "fmnist-50-pretrained") -> sq.RunRecord:
    return sq.RunRecord(regime, method, seed, test_accuracy=accuracy, error=None if accuracy is not None else "boom")


def test_targets_compare_autocnns_mean_with_the_best_baselines_mean_plus_two_points() -> None:
    records = [record("autocnn", 0, 0.80), record("autocnn", 1, 0.90)]
    records += [record("fixed-cnn", 0, 0.70), record("fixed-cnn", 1, 0.74)]
    records += [record("linear-probe", 0, 0.82), record("linear-probe", 1, 0.84)]
    records += [record("random-search", 0, 0.86), record("random-search", 1, 0.84)]
    over_baseline, over_random = sq.regime_targets("fmnist-50-pretrained", records)
    assert over_baseline.other_method == "linear-probe" and over_baseline.other == pytest.approx(0.83)
    assert over_baseline.met is True  # 0.85 >= 0.83 + 0.02
    assert over_random.met is True and sq.target_figure(over_random) == "+0.0 pp (0.850 vs 0.850 (random-search))"
    records[5] = record("linear-probe", 1, 0.86)  # probe mean 0.84: 0.85 < 0.86
    assert sq.regime_targets("fmnist-50-pretrained", records)[0].met is False


def test_a_failed_seed_leaves_no_mean_and_no_verdict() -> None:
    records = [record("autocnn", 0, 0.99), record("autocnn", 1, None), record("fixed-cnn", 0, 0.5)]
    assert sq.mean_accuracy(records[:2]) is None
    assert all(t.met is None for t in sq.regime_targets("fmnist-50-pretrained", records))
    failed_baseline = [record("autocnn", 0, 0.9), record("fixed-cnn", 0, None), record("linear-probe", 0, 0.5)]
    assert sq.regime_targets("fmnist-50-pretrained", failed_baseline)[0].met is None


# --------------------------------------------------------------------------- results.md section


SOURCE = {
    "command": "benchmarks/search_quality.py --quick",
    "machine": {
        "date": "today",
        "cpu": "test cpu",
        "cores": 2,
        "device": "cpu (cpu)",
        "torch": "x",
        "commit": "c0ffee",
    },
    "seeds": [0],
    "budget_s": 45.0,
    "test_limit": 200,
    "ablations_on": ["fmnist-50-pretrained"],
    "work": "/tmp/w",
    "total_seconds": 100.0,
}


def test_the_section_shows_every_method_target_choice_and_failure_between_its_markers() -> None:
    searched = record("autocnn", 0, 0.9)
    searched.trials, searched.final_trial, searched.final_is_default = {"COMPLETE": 3, "PRUNED": 5}, 1, True
    searched.shipped = {"model": "efficientnet_lite0", "freeze": "partial", "backbone_lr_mult": 0.1, "image_size": 64}
    searched.study_seconds, searched.finalize_seconds = 45.0, 12.0
    probe = record("linear-probe", 0, 0.8)
    probe.choice, probe.train_seconds = "C 0.1 at 128 px", 20.0
    broken = sq.RunRecord("fmnist-50-pretrained", "random-search", 0, error="StudyError: no complete trial")
    payload = {"source": SOURCE, "regimes": ["fmnist-50-pretrained"]}
    section = sq.render_section(payload, [probe, searched, broken])
    assert section.startswith(sq.SECTION_START) and section.endswith(sq.SECTION_END)
    assert "3/5/0, trial 1 (default): efficientnet_lite0 freeze partial x0.1 lr 64 px | 45 + 12 |" in section
    assert "| linear probe on pretrained features | 0.800 | 0.800 | s0: C 0.1 at 128 px | 20 |" in section
    assert "| autocnn >= best baseline + 2 pp | +10.0 pp (0.900 vs 0.800 (linear-probe)) | met |" in section
    assert "| autocnn >= random search | - | no figure" in section
    assert "- failed: fmnist-50-pretrained seed 0 random-search: StudyError: no complete trial" in section
    assert "commit c0ffee" in section and "a stratified 200-image part of the official test set" in section
    assert "Unfinished" not in section
    stopped = sq.render_section({**payload, "source": SOURCE | {"finished": False}}, [probe, searched, broken])
    assert "**Unfinished: the run stopped before its last seed.**" in stopped


def test_the_figure_draws_one_panel_per_regime(tmp_path: Path) -> None:
    records = [record("autocnn", 0, 0.9), record("fixed-cnn", 0, 0.7, "fmnist-50-scratch")]
    sq.write_figure({"regimes": ["fmnist-50-pretrained", "fmnist-50-scratch"]}, records, tmp_path / "f.png")
    from PIL import Image

    with Image.open(tmp_path / "f.png") as image:
        assert image.size[0] > 1.8 * image.size[1]  # two panels side by side


# --------------------------------------------------------------------------- the baselines


def test_epochs_are_the_plan_cut_to_what_the_rest_of_the_budget_holds() -> None:
    from benchmarks import baselines

    assert baselines.epochs_within(60.0, 0.0, 2.0, 15) == 15
    assert baselines.epochs_within(60.0, 10.0, 10.0, 15) == 5
    assert baselines.epochs_within(60.0, 59.0, 10.0, 15) == 1  # a recipe always trains at least once


def test_the_largest_affordable_size_stops_at_the_first_that_costs_too_much() -> None:
    from benchmarks import baselines

    asked: list[int] = []

    def cost(size: int) -> float:
        asked.append(size)
        return size / 10

    assert baselines.largest_affordable((64, 96, 128, 160), cost, 10.0) == 96
    assert asked == [64, 96, 128]
    assert baselines.largest_affordable((64, 96), cost, 1.0) == 64  # the smallest is the fallback


def test_the_fixed_cnn_trains_on_train_and_val_and_learns_digits(tmp_path: Path) -> None:
    from benchmarks import baselines

    regime = ds.digits_small(0, {"train": 12, "val": 4, "test": 10})
    root = ds.write_imagefolder(tmp_path / "data", regime)
    seen: list[int] = []
    original = baselines.train_fixed_epochs

    def spy(model, batches, settings):  # noqa: ANN001 - the test's own wrapper
        seen.append(batches.order.n)
        original(model, batches, settings)

    reader = sq.data_reader(root, 32)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(baselines, "train_fixed_epochs", spy)
        outcome = baselines.run_fixed_cnn(
            reader, 32, augment={"enabled": True, "shift_scale": 0.1}, seed=0, budget_s=3600.0, log=lambda _t: None
        )
    assert seen == [120 + 40]  # train + val, every image
    # a budget no machine runs out of: the planned epochs, whatever else the machine is doing
    assert outcome.epochs == baselines.FIXED_EPOCHS and outcome.image_size == 32
    assert outcome.test_accuracy > 0.3  # chance is 0.1


# --------------------------------------------------------------------------- autocnn from init (transfer_quality)


def test_from_init_runs_inits_spec_and_scratch_regimes_see_no_weights(tmp_path: Path, hub_cache: Path) -> None:
    """The pretrained regime's spec searches the backbone whose weights are cached; the scratch
    regime's init, pointed at an empty cache, proposes none; each spec is init's own, with the
    seed's name and seed and the budget as its timeout."""
    from autocnn.spec.load import load_spec
    from tests.conftest import write_images
    from tests.test_init import _cache_weights, fast_cpu

    _cache_weights(hub_cache, "test_efficientnet")
    seed_dir = tmp_path / "fmnist-50" / "seed-3"
    for split, n in (("train", 6), ("val", 2), ("test", 2)):
        for label, name in enumerate(["coat", "shirt"]):
            write_images(seed_dir / "data" / split / name, label, n, size=28)
    specs = {}
    for kind in ("pretrained", "scratch"):
        regime = sq.BenchRegime(f"tiny-{kind}", "fmnist-50", kind == "pretrained", 28, hflip=True)
        folder = seed_dir / regime.name / "from-init"
        specs[kind] = load_spec(sq.init_study_spec(regime, 3, seed_dir, folder, 90.0, seconds_per_image=fast_cpu))
    assert specs["pretrained"].models.backbones() == ["test_efficientnet"]
    assert specs["scratch"].models.backbones() == []
    assert (specs["pretrained"].name, specs["pretrained"].seed) == ("tiny-pretrained-from-init-s3", 3)
    assert specs["scratch"].study.timeout == 90.0
    assert "# Written by `autocnn init`" in (seed_dir / "tiny-scratch" / "from-init" / "spec.yaml").read_text()


def test_transfer_targets_hold_autocnn_from_init_to_the_probe_the_fine_tune_and_scratch() -> None:
    from benchmarks import transfer_quality as tq

    def run(regime: str, method: str, seed: int, accuracy: float) -> sq.RunRecord:
        return sq.RunRecord(regime, method, seed, test_accuracy=accuracy)

    records = [run("fmnist-50-pretrained", "from-init", s, a) for s, a in ((0, 0.80), (1, 0.84))]
    records += [run("fmnist-50-pretrained", "linear-probe", s, a) for s, a in ((0, 0.78), (1, 0.78))]
    records += [run("fmnist-50-pretrained", "fixed-finetune", s, a) for s, a in ((0, 0.80), (1, 0.81))]
    records += [run("fmnist-50-scratch", "from-init", s, a) for s, a in ((0, 0.75), (1, 0.77))]
    regimes = ["fmnist-50-scratch", "fmnist-50-pretrained"]
    over_probe, over_finetune, over_scratch = tq.targets(regimes, records)
    assert over_probe.met is True  # 0.82 >= 0.78 + 0.03
    assert over_finetune.met is False and over_finetune.other == pytest.approx(0.805)  # 0.82 < 0.825
    assert (
        over_scratch.met is True and over_scratch.other_method == "fmnist-50-scratch from init"
    )  # 0.82 >= 0.76 + 0.05
    assert len(tq.targets(["fmnist-50-pretrained"], records)) == 2  # no scratch twin run: no such target
    text = tq.render({"source": SOURCE, "regimes": regimes}, records)
    assert "autocnn from init >= linear-probe + 3 pp" in text and "**not met**" in text


# --------------------------------------------------------------------------- beyond one model (ensemble_quality)


def test_ensemble_targets_hold_the_ensemble_to_the_best_single_trial_plus_one_point() -> None:
    from benchmarks import ensemble_quality as eq

    def study(regime: str, seed: int, single: float, ensemble: float, error: str | None = None) -> eq.StudyRecord:
        record = eq.StudyRecord(regime, seed, error=error, trials={"COMPLETE": 4})
        record.single = eq.Shipped(single, 0.5, 10.0, "trial 3 (custom_cnn)")
        record.ensemble = eq.Shipped(ensemble, 1.1, 25.0, "3 x0.67 + 5 x0.33")
        record.tta = eq.Shipped(single, 0.5, 12.0, "not kept")
        record.distill = eq.Shipped(ensemble - 0.005, 0.3, 30.0, "trial 1 (custom_cnn) taught by (3, 5)")
        record.alone = eq.Shipped(single - 0.02, 0.3, None, "trial 1")
        return record

    records = [study("fmnist-50-scratch", 0, 0.80, 0.82), study("fmnist-50-scratch", 1, 0.80, 0.80)]
    records += [study("fmnist-200-scratch", 0, 0.85, 0.85), study("fmnist-200-scratch", 1, 0.0, 0.0, "boom")]
    regimes = ["fmnist-50-scratch", "fmnist-200-scratch"]
    fifty, fifty_student, two_hundred, _ = eq.targets(regimes, records)
    assert fifty.met is True and fifty.autocnn == pytest.approx(0.81)  # 0.81 >= 0.80 + 0.01
    assert two_hundred.met is False  # the failed seed leaves one study: 0.85 < 0.85 + 0.01
    assert fifty_student.met is True and fifty_student.autocnn == pytest.approx(0.805)  # within 1 pp
    assert eq.latency_share(records, "fmnist-50-scratch") == pytest.approx(0.3 / 1.1)
    text = eq.render({"source": SOURCE | {"ensemble": 3}, "regimes": regimes}, records)
    assert "| fmnist-50-scratch | 0 | 4 complete | trial 3 (custom_cnn): 0.800, 0.50 ms | 0.820, 1.10 ms |" in text
    assert "failed: boom" in text and "**not met**" in text and "+1.0 pp" in text
    assert "| fmnist-50-scratch | 0.27 | <= 0.33 | met |" in text


# --------------------------------------------------------------------------- faults under load (soak)


def test_the_soak_page_counts_faults_and_shows_every_lost_trial() -> None:
    from benchmarks import soak

    faults = [
        soak.Fault(9.0, "kill", "101"),
        soak.Fault(20.0, "freeze", "102", "7 s"),
        soak.Fault(60.0, "database", "server"),
    ]
    outcome = soak.Outcome(
        states={"COMPLETE": 40, "PRUNED": 12, "FAIL": 2, "WAITING": 1},
        retried=1,
        resumed_and_finished=1,
        waiting=1,
        lost=["trial 7 left RUNNING"],
        crashed=["worker 103 exited with 1: StorageInternalError"],
        faulted_attempt_s=31.0,
        finished_per_minute=10.4,
    )
    source = {"command": "benchmarks/soak.py", "machine": SOURCE["machine"], "workers": 4, "minutes": 5.0, "seed": 0}
    text = soak.render(
        {"source": source | {"total_seconds": 400.0}, "faults": [asdict(f) for f in faults], "outcome": asdict(outcome)}
    )
    assert "| 3 | 1 | 1 | 1 |" in text  # faults: all, kills, freezes, database restarts
    assert "| 10.4 | 40 complete, 2 fail, 12 pruned, 1 waiting | 1 | 1 | 1 | 31 | **1** |" in text
    assert "- lost: trial 7 left RUNNING" in text
    assert "crashed (ended on their own, then replaced): **1**" in text and "worker 103 exited with 1" in text
    assert "| 60 | database | server |" in text  # every fault, with its time
    section = soak.render_section(
        {
            "source": source | {"total_seconds": 400.0},
            "faults": [asdict(f) for f in faults],
            "outcome": asdict(outcome),
            "stops": [2.25, None, 0.5],
        }
    )
    assert "SIGTERM to the 3 live workers at the end; exited after 0.5, 2.2 s (slowest 2.2 s); 1 still" in section
    assert section.startswith(soak.SOAK_START) and section.endswith(soak.SOAK_END)
    assert "| 10.4 | 40 complete" in section and "| 60 | database" not in section
