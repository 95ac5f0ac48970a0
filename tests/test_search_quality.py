"""benchmarks/search_quality.py's parts on tiny inputs: the regimes it generates, the fixed recipe's
model, the specs it hands autocnn, its verdicts and its results.md section. No study is run here."""

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
    from autocnn.data import DataCache

    regime = ds.shapes20(0, TINY_SHAPES)
    root = ds.write_imagefolder(tmp_path / "data", regime)
    data = DataCache(sq.data_only_spec(root)).get(64)
    assert data.classes == sorted(regime.classes)
    assert data.test is not None and len(data.train) == 40 and len(data.val) == 20 and len(data.test) == 40
    assert rows(data.test.images) == rows(regime.splits["test"].images)  # PNG is lossless, no resize at 64 px


# --------------------------------------------------------------------------- the fixed recipe


def test_pooling_stops_while_the_map_still_has_two_pixels() -> None:
    assert sq.pooled_blocks(64, 6) == [True] * 5 + [False]
    assert sq.pooled_blocks(32, 6) == [True] * 4 + [False] * 2


def test_fixed_recipe_model_maps_64_px_images_to_class_logits() -> None:
    import torch

    model = sq.fixed_recipe_model(num_classes=20).eval()
    x = torch.zeros(2, 3, 64, 64)
    with torch.no_grad():
        assert model(x).shape == (2, 20)
        convs = [m for m in model if isinstance(m, torch.nn.Conv2d)]
        assert [c.out_channels for c in convs] == list(sq.FIXED_CHANNELS)
        pool_at = [i for i, m in enumerate(model) if isinstance(m, torch.nn.AdaptiveAvgPool2d)][0]
        assert model[:pool_at](x).shape == (2, 128, 2, 2)


# --------------------------------------------------------------------------- specs and verdicts


@pytest.mark.parametrize("regime", ["digits-small", "shapes20"])
def test_search_specs_differ_only_in_sampler_pruner_and_epochs(regime: str) -> None:
    from autocnn.spec import parse_spec

    settings = sq.SearchSettings(budget_s=45.0)
    ours, plain = (sq.search_spec(regime, m, 0, settings) for m in ("autocnn", "random"))
    assert "trials" not in ours["study"] and ours["study"]["timeout"] == plain["study"]["timeout"] == 45.0
    assert (ours["study"]["sampler"], ours["study"]["pruner"], ours["train"]["epochs"]) == ("tpe", "hyperband", "auto")
    assert (plain["study"]["sampler"], plain["study"]["pruner"], plain["train"]["epochs"]) == ("random", "none", 20)
    assert ours["models"] == plain["models"] and ours["augment"] == plain["augment"]
    assert ("hflip" in ours["augment"]) == (regime == "shapes20")
    stand_in = sq.search_spec(regime, "autocnn", 1, sq.SearchSettings(45.0, autocnn_epochs=15, trials=4))
    assert parse_spec(stand_in).study.trials == 4 and parse_spec(plain).seed == 0


def record(method: str, seed: int, accuracy: float | None) -> sq.RunRecord:
    return sq.RunRecord("r", method, seed, test_accuracy=accuracy, error=None if accuracy is not None else "boom")


def test_targets_compare_means_over_seeds() -> None:
    records = [record("autocnn", 0, 0.80), record("autocnn", 1, 0.90), record("fixed", 0, 0.70)]
    records += [record("fixed", 1, 0.82), record("random", 0, 0.86), record("random", 1, 0.86)]
    over_fixed, over_random = sq.regime_targets("r", records)
    assert over_fixed.met is True and over_fixed.autocnn == pytest.approx(0.85)  # 0.85 >= 0.76 + 0.05
    assert over_random.met is False and sq.target_figure(over_random) == "-1.0 pp (0.850 vs 0.860)"
    records[3] = record("fixed", 1, 0.88)
    assert sq.regime_targets("r", records)[0].met is True  # 6 pp over the fixed mean of 0.79
    records[2] = record("fixed", 0, 0.76)
    assert sq.regime_targets("r", records)[0].met is False  # 3 pp over the fixed mean of 0.82


def test_a_failed_seed_leaves_no_mean_and_no_verdict() -> None:
    records = [record("autocnn", 0, 0.99), record("autocnn", 1, None), record("fixed", 0, 0.5)]
    assert sq.mean_accuracy(records[:2]) is None
    assert all(t.met is None for t in sq.regime_targets("r", records))


# --------------------------------------------------------------------------- results.md section


SOURCE = {
    "regimes": ["r"],
    "command": "benchmarks/search_quality.py --quick",
    "machine": {"date": "today", "cpu": "test cpu", "cores": 2, "device": "cpu (cpu)", "torch": "x"},
    "search": {"budget_s": 45.0, "autocnn_epochs": "auto", "trials": None},
    "seeds": [0],
    "work": "/tmp/w",
    "total_seconds": 100.0,
}


def test_the_section_shows_every_method_target_and_failure_between_its_markers() -> None:
    searched = sq.RunRecord("r", "autocnn", 0, test_accuracy=0.9, trials={"COMPLETE": 3, "PRUNED": 5})
    searched.final_trial, searched.final_is_default = 0, True
    fixed = sq.RunRecord("r", "fixed", 0, test_accuracy=0.8, best_val_epoch_test_accuracy=0.82, train_seconds=30.0)
    broken = sq.RunRecord("r", "random", 0, error="StudyError: no complete trial")
    payload = {"sources": [SOURCE], "regimes": ["r"], "methods": list(sq.METHODS)}
    section = sq.render_section(payload, [fixed, searched, broken])
    assert section.startswith(sq.SECTION_START) and section.endswith(sq.SECTION_END)
    assert "| 0.900 | 0.900 | 3 / 5 / 0, shipped 0 (default) | - / - |" in section
    assert "| 0.800 | 0.800 (0.820) | - | 30 / - |" in section
    assert "| r | autocnn >= fixed recipe + 5 pp | +10.0 pp (0.900 vs 0.800) | met |" in section
    assert "| r | autocnn >= random search | - | no figure" in section
    assert "- failed: r seed 0 random: StudyError: no complete trial" in section
    assert "- r: produced by `benchmarks/search_quality.py --quick` on today (100 s)" in section


def test_rerunning_one_regime_keeps_the_other_regimes_runs_and_their_provenance() -> None:
    earlier_source = SOURCE | {"regimes": ["shapes20", "digits-small"], "command": "earlier"}
    earlier = [sq.RunRecord(regime, "fixed", 0, test_accuracy=0.5) for regime in ("digits-small", "shapes20")]
    keys = ("regimes", "command", "machine", "seeds", "search", "work", "total_seconds")
    previous = {key: earlier_source[key] for key in keys} | {
        "methods": ["fixed"],
        "runs": [asdict(r) for r in earlier],
    }
    rerun = sq.RunRecord("digits-small", "fixed", 0, test_accuracy=0.9)
    payload = sq.merged_payload(previous, SOURCE | {"regimes": ["digits-small"]}, ["fixed"], [rerun])
    assert payload["regimes"] == ["digits-small", "shapes20"]
    assert [(r["regime"], r["test_accuracy"]) for r in payload["runs"]] == [("digits-small", 0.9), ("shapes20", 0.5)]
    assert [(s["command"], s["regimes"]) for s in payload["sources"]] == [
        ("earlier", ["shapes20"]),
        ("benchmarks/search_quality.py --quick", ["digits-small"]),
    ]
    again = sq.merged_payload(payload, SOURCE | {"regimes": ["shapes20"]}, ["fixed"], earlier[1:])
    assert [s["command"] for s in again["sources"]] == ["benchmarks/search_quality.py --quick"] * 2


def test_rerunning_one_seed_or_method_keeps_the_other_seeds_and_methods() -> None:
    both = SOURCE | {"regimes": ["shapes20"], "seeds": [0, 1], "command": "both seeds"}
    runs = [
        sq.RunRecord("shapes20", method, seed, test_accuracy=0.5) for seed in (0, 1) for method in ("fixed", "random")
    ]
    previous = {"sources": [both], "methods": ["fixed", "random"], "runs": [asdict(r) for r in runs]}
    redo = sq.RunRecord("shapes20", "fixed", 0, test_accuracy=0.9)
    payload = sq.merged_payload(previous, SOURCE | {"regimes": ["shapes20"], "seeds": [0]}, ["fixed"], [redo])
    cells = [(r["seed"], r["method"], r["test_accuracy"]) for r in payload["runs"]]
    assert cells == [(0, "fixed", 0.9), (0, "random", 0.5), (1, "fixed", 0.5), (1, "random", 0.5)]
    assert [(s["command"], s["seeds"]) for s in payload["sources"]] == [
        ("both seeds", [1]),
        ("benchmarks/search_quality.py --quick", [0]),
    ]


SECTION = f"{sq.SECTION_START}\n## Search quality\nnew figures\n{sq.SECTION_END}"


def test_an_existing_section_is_replaced_and_everything_around_it_kept() -> None:
    old = f"# Benchmark results\n\nitem 1\n\n{sq.SECTION_START}\nold figures\n{sq.SECTION_END}\n\n## 2. after\n"
    new = sq.splice_section(old, SECTION)
    assert new == f"# Benchmark results\n\nitem 1\n\n{SECTION}\n\n## 2. after\n"


def test_a_missing_section_is_appended_once() -> None:
    text = sq.splice_section("# Benchmark results\n\nitem 1\n", SECTION)
    assert text == f"# Benchmark results\n\nitem 1\n\n{SECTION}\n"
    assert sq.splice_section(text, SECTION) == text
    assert sq.splice_section("", SECTION) == SECTION + "\n"
