"""Item 1: autocnn's per-trial training loop against a bare PyTorch loop on the same tensors.

All of a case's trials run in one `run_study`, as a user's do; after each trial every bare loop
trains as many epochs, their order rotating, so each autocnn trial pairs with runs made right
after it.
"""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.bare_loop import (
    BARE_VARIANTS,
    BareLoop,
    ChildBareLoop,
    LoopCase,
    bare_loop,
    default_amp_dtype,
    open_bare_loop,
    precision_name,
)
from benchmarks.results import Item, Row
from benchmarks.timed_study import TrialRunner, TrialTiming
from benchmarks.timing import SETTLE_S, median, paired_ratio, per_trial_ratio, rotated, settle, timed

CNN_32 = LoopCase(
    "custom CNN @ 32 px (digits)",
    "custom_cnn",
    {"depth": 4, "width": 32, "dropout": 0.2},
    32,
    variants=("same", "eager", "channels_last", "other_precision"),
    repeats=10,
)
# ~100 img/s here: 5 trials of 4 epochs (3 timed), each with 2 bare loops, take about twelve minutes.
RESNET18_64 = LoopCase(
    "timm resnet18 @ 64 px (digits)", "resnet18", {"pretrained": False}, 64, variants=("same", "eager")
)
CASES = {"custom_cnn": CNN_32, "resnet18": RESNET18_64}
TARGET_VS_BARE = 0.95
TARGET_VS_EAGER = 1.3  # the custom CNN's; resnet18's speed-up is shown for information


def loop_spec(case: LoopCase, epochs: int) -> dict[str, Any]:
    """A digits study whose every value is fixed: each trial trains exactly the case's model."""
    return {
        "name": f"loop-{case.model}",
        "seed": 0,
        "data": {"source": "digits", "image_size": case.image_size, "split": {"val": 0.2, "test": 0.2}},
        "study": {"trials": 1, "metric": "val_accuracy", "sampler": "random", "pruner": "none"},
        "train": {
            "epochs": epochs,
            "batch_size": case.batch_size,
            "lr": 1e-3,
            "weight_decay": 1e-4,
            "scheduler": "cosine",
        },
        "models": {case.model: dict(case.params)},
    }


def measure_trial_loop(
    cases: tuple[LoopCase, ...], work: Path, *, epochs: int | None = None, repeats: int | None = None
) -> tuple[Item, dict[str, list[TrialTiming]]]:
    """Item 1, and the trials' timings (item 4 reports their fixed cost).

    `epochs` and `repeats` override each case's own (a smoke run's smaller sizes).
    """
    from autocnn.training.loop import pick_device

    item = Item(1, "Trial-loop overhead: autocnn's training epoch vs a bare PyTorch loop")
    device = pick_device()
    timings: dict[str, list[TrialTiming]] = {}
    with timed(item):
        for case in cases:
            runs, trials = measure_case(
                case, work, epochs=epochs or case.epochs, repeats=repeats or case.repeats, device=device
            )
            timings[case.label] = trials
            item.raw[case.label] = {"images_per_s": runs, "trials": [asdict(t) for t in trials]}
            item.rows += loop_rows(case, runs, trials, device)
    item.notes += loop_notes(device)
    return item, timings


def measure_case(
    case: LoopCase, work: Path, *, epochs: int, repeats: int, device: Any
) -> tuple[dict[str, list[float]], list[TrialTiming]]:
    """Each side's images/s per timed epoch ("autocnn" and each bare variant), and autocnn's trials."""
    runner = TrialRunner(loop_spec(case, epochs), work / f"loop-{case.model}")
    train = runner.train_split()
    data = work / f"loop-{case.model}" / "train.npz"
    np.savez(data, images=train.images, labels=train.labels)
    trials, bare = alternating_rounds(case, runner, data, epochs=epochs, repeats=repeats, device=device)
    runs = {"autocnn": [speed for trial in trials for speed in trial.epoch_images_per_s], **bare}
    if "other_precision" in case.variants:  # for information; one timed epoch: bf16 crawls without bf16 units
        with np.load(data) as arrays:
            speed = bare_loop(
                case, arrays["images"], arrays["labels"], epochs=2, variant="other_precision", device=device
            )
        runs["other_precision"] = [speed]
    return runs, trials


def alternating_rounds(
    case: LoopCase, runner: TrialRunner, data: Path, *, epochs: int, repeats: int, device: Any
) -> tuple[list[TrialTiming], dict[str, list[float]]]:
    """`repeats` autocnn trials in one study, each followed by `epochs` epochs of every bare loop.

    Returns the trials' timings and each bare loop's images/s in its timed epochs (the first,
    warm-up, left out), so that round k of each side pairs with autocnn's trial k.
    """
    variants = [v for v in case.variants if v != "other_precision"]
    loops: dict[str, BareLoop | ChildBareLoop] = {}
    speeds: dict[str, list[float]] = {v: [] for v in variants}

    def bare_turn(round_: int) -> None:
        for variant in rotated(variants, round_):
            settle()
            run = [loops[variant].epoch() for _ in range(epochs)]
            speeds[variant] += run[1:] if len(run) > 1 else run
        settle()  # autocnn's next trial starts after the same pause

    try:
        for variant in variants:
            loops[variant] = open_bare_loop(case, data, epochs=epochs * repeats, variant=variant, device=device)
        trials = runner.run_all(repeats, bare_turn)
    finally:
        for loop in loops.values():
            loop.close()
    return trials, speeds


# --------------------------------------------------------------------------- the table


def loop_rows(case: LoopCase, runs: dict[str, list[float]], trials: list[TrialTiming], device: Any) -> list[Row]:
    ours, same = runs["autocnn"], runs["same"]
    per_trial = len(trials[0].epoch_images_per_s)
    vs_same = per_trial_ratio(ours, same, per_trial)
    rows = [
        Row(f"{case.label}: autocnn trial img/s", f"{median(ours):,.0f}"),
        Row(f"{case.label}: bare loop, same settings, img/s", f"{median(same):,.0f}"),
        Row(
            f"{case.label}: **autocnn / bare loop**",
            f"{vs_same:.3f}",
            f">= {TARGET_VS_BARE}",
            vs_same >= TARGET_VS_BARE,
        ),
        Row(
            f"{case.label}: per-epoch bookkeeping in the loop (report, prune check, metrics, checkpoint snapshot)",
            f"{median([t.per_epoch_overhead_s for t in trials]) * 1000:.0f} ms/epoch; validation "
            f"{median([t.validation_s for t in trials]) * 1000:.0f} ms/epoch",
        ),
    ]
    if "eager" in runs:
        rows += eager_rows(case, runs, per_trial)
    if "other_precision" in runs:
        rows.append(other_precision_row(case, runs, device))
    return rows


def eager_rows(case: LoopCase, runs: dict[str, list[float]], per_trial: int) -> list[Row]:
    """autocnn's defaults against plain PyTorch, and what channels_last alone gives."""
    speedup = per_trial_ratio(runs["autocnn"], runs["eager"], per_trial)
    target = f">= {TARGET_VS_EAGER}" if case.model == "custom_cnn" else ""
    met = speedup >= TARGET_VS_EAGER if target else None
    rows = [Row(f"{case.label}: bare loop, plain eager (fresh process), img/s", f"{median(runs['eager']):,.0f}")]
    if "channels_last" in runs:
        rows.append(
            Row(
                f"{case.label}: bare loop, channels_last only (fresh process), img/s (vs plain eager)",
                f"{median(runs['channels_last']):,.0f} ({paired_ratio(runs['channels_last'], runs['eager']):.2f}x)",
            )
        )
    rows.append(Row(f"{case.label}: **autocnn defaults / plain eager bare loop**", f"{speedup:.2f}x", target, met))
    return rows


def other_precision_row(case: LoopCase, runs: dict[str, list[float]], device: Any) -> Row:
    default = default_amp_dtype(device)
    other = "fp32" if default is not None else "bf16 autocast"
    return Row(
        f"{case.label}: bare loop in {other} instead of {precision_name(default)}, img/s (vs same settings)",
        f"{median(runs['other_precision']):,.0f} ({paired_ratio(runs['other_precision'], runs['same']):.2f}x)",
    )


def loop_notes(device: Any) -> list[str]:
    return [
        "autocnn side: one `run_study` of a fixed-config digits spec running all the trials (each one's first epoch untimed), "
        "MLflow on sqlite, per-epoch checkpoint, Optuna report and pruning check all on. Its images/s divide the training "
        "images by each epoch's wall time minus the validation pass (the bare loop validates nothing); the checkpoint and "
        "MLflow writer threads run while the next epoch trains, so their cost is in that epoch's time.",
        "bare side: the same model (autocnn.models.build_model), cached digits tensors normalised once, AdamW + per-batch cosine, "
        "batch 64, no logging. A/B alternates per trial: all trials run in one study, as a user's do, and after each one "
        "every bare loop trains as many epochs (their order rotating), each run after a "
        f"{SETTLE_S} s pause; within a run, epochs follow each other, autocnn's writer threads overlapping its training. Figures are medians over "
        f"all timed epochs (custom CNN {CNN_32.repeats} trials x {CNN_32.epochs - 1} timed epochs, resnet18 "
        f"{RESNET18_64.repeats} x {RESNET18_64.epochs - 1}). Ratios to autocnn: medians over trials of each trial's ratio, "
        "its timed epochs taken together (metrics reach MLflow and checkpoints the disk every few seconds, not every epoch, so those costs count in "
        "full); ratios between bare loops: medians of per-epoch ratios.",
        "bare-loop variants: " + "; ".join(f"{name}: {what}" for name, what in BARE_VARIANTS.items()) + ". "
        "autocnn's train.precision auto autocasts to bf16 on CUDA and on CPUs with native bf16 (AVX512-BF16, AMX); "
        f"here: {precision_name(default_amp_dtype(device))}.",
    ]
