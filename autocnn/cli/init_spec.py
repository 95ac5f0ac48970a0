"""`autocnn init DATA_DIR`: a commented study spec written from a folder of images and this machine.

People arrive with a folder, not a search space. What a first study should search follows from
a few facts: how many images per class (small data wants frozen pretrained backbones and strong
augmentation; large data fine-tunes), their typical size (the input size, and with it the custom
CNN's depth), whether the classes are balanced (the metric), and whether a GPU is there (input
size, batch size, how large a backbone). Only backbones whose weights are cached, given as a file or can be
fetched now are proposed, those already on the machine first; each pretrained backbone gets an
input size of its own (its pretrained size on a GPU, the largest the budget allows on a CPU).
Every choice is explained by a comment beside it in the spec.
"""

from __future__ import annotations

import math
import os
import re
import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from autocnn.data.folders import index_imagefolder
from autocnn.errors import AutocnnError
from autocnn.models.catalog import max_depth

SIZES = (32, 48, 64, 96, 128, 160, 192, 224)
MAX_SIZE = {"cpu": 96, "gpu": 224}  # a CPU trains 96 px images ~5x slower than 32 px ones already
CACHE_BYTES = 3e9  # decoded images are kept in memory as uint8: N x size x size x 3
SIZE_SAMPLE = 200  # image headers read to find the typical size
GRAY_MODES = frozenset({"1", "L", "LA", "I", "F", "I;16", "I;16L", "I;16B", "I;16N"})
SMALL_PER_CLASS, LARGE_PER_CLASS = 150, 1500  # images per class: freeze below, fine-tune above
IMBALANCED = 1.5  # largest / smallest class: macro-F1 and balanced class weights
MAX_BACKBONES = 3  # searched side by side; more would leave each too few trials of the budget
# A pretrained backbone's input on a CPU: the largest of these whose trials fit the budget, never
# below the last: ImageNet features computed on upsampled 32 px images are mostly lost (a study that
# trained efficientnet_lite0 at 32 px stayed near chance where a probe on its 160 px features did not).
CPU_BACKBONE_SIZES = (160, 128, 96)
PROBE_SIZE = 96  # the side a backbone's training step is timed at; other sides scale with their area
EPOCHS_PER_TRIAL = 10  # about what `epochs: auto` trains a small-data trial before it stops improving
TRIALS_PER_BACKBONE = 4  # a backbone's size is affordable when this many of its trials fit the budget
# Fewer fine-tuning trials than this at the smallest size leave the search to the default trial:
# such a backbone is searched frozen (whole or its last stages), as for small data.
MIN_FINE_TUNE_TRIALS = 2
# A frozen backbone trains its head on this many augmented views per image, their features computed
# once per trial: augmentation without a backbone pass every epoch.
CACHED_VIEWS = 4

# Two or three backbones per (hardware, data size), lightest first on a CPU: what transfers well
# from ImageNet at that size and trains in a reasonable share of the budget.
BACKBONES: dict[tuple[str, str], list[str]] = {
    ("cpu", "small"): ["resnet18", "mobilenetv3_large_100"],
    ("cpu", "medium"): ["efficientnet_b0", "resnet18"],
    ("cpu", "large"): ["mobilenetv3_large_100", "efficientnet_b0"],
    ("gpu", "small"): ["resnet50", "efficientnet_b0", "convnext_tiny"],
    ("gpu", "medium"): ["convnext_tiny", "efficientnet_b2", "resnet50"],
    ("gpu", "large"): ["convnext_tiny", "efficientnet_b2", "resnet50"],
}


class InitError(AutocnnError):
    """The spec cannot be written where asked."""


@dataclass(frozen=True)
class DataProfile:
    """What the folder holds, found without decoding a pixel."""

    root: Path
    classes: list[str]
    per_class: list[int]  # images per class, all splits
    learn_per_class: list[int]  # per class without a given test split: what the study learns from
    train_images: int  # the given train split; an unsplit folder's is estimated when its split is chosen
    presplit: bool
    typical_size: tuple[int, int]  # median width, height of a sample of headers
    channels: int  # 1 when every sampled image is grayscale

    @property
    def n_images(self) -> int:
        return sum(self.per_class)

    @property
    def imbalance(self) -> float:
        return max(self.per_class) / max(min(self.per_class), 1)

    @property
    def regime(self) -> str:
        """small / medium / large, by the median images per class a study learns from: a large
        test split does not make small training data medium."""
        typical = statistics.median(self.learn_per_class)
        return "small" if typical < SMALL_PER_CLASS else "medium" if typical < LARGE_PER_CLASS else "large"


@dataclass(frozen=True)
class Machine:
    """Where the study will train."""

    device: str  # "gpu" or "cpu"
    name: str
    cores: int


def detect_machine() -> Machine:
    """CUDA GPU or CPU, and the CPU's cores (the study's data loading and a CPU's training use them)."""
    import torch

    from autocnn.search.workers import usable_cores

    cores = usable_cores()
    if torch.cuda.is_available():
        return Machine("gpu", torch.cuda.get_device_name(0), cores)
    return Machine("cpu", "", cores)


def inspect_data(root: Path) -> DataProfile:
    """Classes and their counts (as `autocnn validate` finds them), and a sample's size and channels."""
    index = index_imagefolder(root, val=0.2, test=0.2, seed=0)
    per_class = [0] * len(index.classes)
    learn_per_class = [0] * len(index.classes)
    for split, items in index.files.items():
        for _, label in items:
            per_class[label] += 1
            learn_per_class[label] += split != "test" or not index.presplit  # init's own split is drawn later
    files = sorted(path for items in index.files.values() for path, _ in items)
    step = max(1, len(files) // SIZE_SAMPLE)
    size, channels = _sample_headers(files[::step][:SIZE_SAMPLE])
    train_images = len(index.files.get("train", []))
    return DataProfile(root, index.classes, per_class, learn_per_class, train_images, index.presplit, size, channels)


def _sample_headers(files: list[Path]) -> tuple[tuple[int, int], int]:
    """Median width and height, and 1 channel if every image is grayscale; headers only."""
    from PIL import Image

    widths, heights, modes = [], [], set()
    for path in files:
        try:
            with Image.open(path) as img:
                widths.append(img.width)
                heights.append(img.height)
                modes.add(img.mode)
        except Exception:  # noqa: BLE001 - unreadable files are validate's to name
            continue
    if not widths:
        return (32, 32), 3
    return (int(statistics.median(widths)), int(statistics.median(heights))), 1 if modes <= GRAY_MODES else 3


# --------------------------------------------------------------------------- weights


@dataclass(frozen=True)
class Weights:
    """Which backbones can start from pretrained weights here, and why others cannot."""

    usable: dict[str, str]  # name -> "cached" | "fetched before trial 1" | "given with --weights"
    offline: str | None = None  # why nothing can be fetched now, when that matters
    files: dict[str, str] = field(default_factory=dict)  # name -> weight file, relative to the spec
    first: list[str] = field(default_factory=list)  # named with --weights or cached here: proposed first


def weights_status(names: list[str]) -> Weights:
    """Cached weights are usable; the rest only if the hub answers now (one short connect)."""
    from autocnn.downloads import offline_reason
    from autocnn.models.hub import cached_weights, hub_endpoint

    usable = {name: "cached" for name in names if cached_weights(name) is not None}
    rest = [name for name in names if name not in usable]
    if not rest:
        return Weights(usable)
    reason = offline_reason(hub_endpoint())
    if reason is None:
        usable.update(dict.fromkeys(rest, "fetched before trial 1"))
    return Weights(usable, reason)


def cached_backbones() -> list[str]:
    """timm models whose default pretrained weights are in this machine's cache: what a study can
    start from right now, whatever the table of usual choices says."""
    from autocnn.models.hub import cached_weights, is_timm_name, list_cached_weights

    names: list[str] = []
    for row in list_cached_weights():
        name = row.model.split(".", 1)[0]
        if name not in names and not row.model.startswith("(") and is_timm_name(name) and cached_weights(name):
            names.append(name)
    return names


def given_weights(values: list[str], *, spec_dir: Path) -> dict[str, str | None]:
    """`--weights NAME` or `--weights NAME=FILE`: name -> weight file relative to the spec, or None."""
    from autocnn.errors import SpecError
    from autocnn.models.hub import check_name

    out: dict[str, str | None] = {}
    for value in values:
        name, _, file = value.partition("=")
        name = name.strip()
        try:
            check_name(name, path=f"--weights {value}")
        except SpecError as exc:
            raise InitError(str(exc)) from None
        if not file:
            out[name] = None
            continue
        path = Path(file).expanduser().resolve()
        if not path.is_file():
            raise InitError(f"--weights {value}: weight file not found: {path}")
        out[name] = os.path.relpath(path, spec_dir.resolve())
    return out


def weights_for(wanted: list[str], given: dict[str, str | None], cached: list[str]) -> Weights:
    """Which of the backbones `init` considers can start from pretrained weights: files given on
    the command line, the cache, and (online) the hub."""
    files = {name: file for name, file in given.items() if file}
    by_hub = [name for name in dict.fromkeys([*given, *cached, *wanted]) if name not in files]
    status = weights_status(by_hub)
    usable = {**dict.fromkeys(files, "given with --weights"), **status.usable}
    first = [name for name in dict.fromkeys([*given, *cached]) if name in usable]
    return Weights(usable, status.offline, files, first)


# --------------------------------------------------------------------------- choices


@dataclass
class Choices:
    """Everything the spec says, with a comment for each choice: `render` only lays it out."""

    name: str
    root: str
    image_size: int
    size_note: str
    split: dict[str, float] | None
    metric: str
    metric_note: str
    timeout: str
    pruner: str
    custom_cnn: dict[str, Any]
    batch_size: Any
    backbones: dict[str, dict[str, Any]] = field(default_factory=dict)
    backbone_key_notes: dict[str, dict[str, str]] = field(default_factory=dict)  # name -> key -> comment
    unavailable: dict[str, dict[str, Any]] = field(default_factory=dict)  # written commented out
    backbone_note: list[str] = field(default_factory=list)
    augment: dict[str, Any] = field(default_factory=dict)
    augment_note: str = ""
    header: list[str] = field(default_factory=list)
    class_balance: dict[str, Any] = field(default_factory=dict)  # train.class_weights, if any


def pick_image_size(profile: DataProfile, machine: Machine) -> tuple[int, str]:
    """The largest standard size the images have, the hardware affords and the memory holds."""
    short = min(profile.typical_size)
    memory = math.isqrt(int(CACHE_BYTES / (3 * max(profile.n_images, 1))))
    limit = min(short, MAX_SIZE[machine.device], memory)
    size = max([s for s in SIZES if s <= limit] or [SIZES[0]])
    why = [f"images are typically {profile.typical_size[0]}x{profile.typical_size[1]} px"]
    if MAX_SIZE[machine.device] < short:
        why.append(f"at most {MAX_SIZE[machine.device]} px on a {machine.device.upper()}")
    if memory < min(short, MAX_SIZE[machine.device]):
        why.append(f"{profile.n_images} images decoded at {size} px fit in memory")
    return size, "; ".join(why)


def pick_backbones(
    profile: DataProfile, machine: Machine, weights: Weights
) -> tuple[dict[str, dict], dict[str, dict], list[str]]:
    """Up to MAX_BACKBONES pretrained backbones: those named with --weights or cached here first,
    then the usual ones for this hardware and data size, with freeze choices to match:
    (those that can run, those without weights here, notes)."""
    wanted = BACKBONES[(machine.device, profile.regime)]
    usable_names = [name for name in dict.fromkeys([*weights.first, *wanted]) if name in weights.usable]
    usable = {name: freeze_space(profile.regime) for name in usable_names[:MAX_BACKBONES]}
    for name, file in weights.files.items():
        if name in usable:
            usable[name]["pretrained"] = file
    missing = {name: freeze_space(profile.regime) for name in wanted if name not in weights.usable}
    notes = [f"pretrained backbones for {profile.regime} data on a {machine.device.upper()}: {', '.join(wanted)}"]
    if weights.first:
        here = ", ".join(f"{name} ({weights.usable[name]})" for name in weights.first)
        notes.append(f"weights on this machine: {here}; proposed first")
    if missing:
        notes.append(f"no weights here for {', '.join(missing)}, and none can be fetched now: {weights.offline}")
        notes.append(f"on a connected machine: autocnn weights fetch {' '.join(missing)}; then uncomment them below")
    return usable, missing, notes


def pretrained_size(name: str) -> int:
    """The input side timm's pretrained weights were trained at (224 when timm does not say)."""
    from timm.models import get_pretrained_cfg

    cfg = get_pretrained_cfg(name)
    return int(cfg.input_size[-1]) if cfg is not None and cfg.input_size else 224


SecondsPerImage = Callable[[str, int], float]  # (backbone, side) -> seconds of training per image


def backbone_size(
    name: str,
    machine: Machine,
    *,
    n_train: int,
    budget_s: float,
    seconds_per_image: SecondsPerImage,
    frozen_whole: bool = False,
) -> tuple[int, str]:
    """The side a pretrained backbone trains at, and why: its pretrained size on a GPU; on a CPU the
    largest of CPU_BACKBONE_SIZES at which TRIALS_PER_BACKBONE trials of EPOCHS_PER_TRIAL epochs
    fit the budget, never below the smallest (a pretrained net gains little from 32 px images)."""
    native = pretrained_size(name)
    if machine.device == "gpu":
        return native, f"{native} px: its pretrained input size"
    sizes = [size for size in CPU_BACKBONE_SIZES if size <= native] or [min(CPU_BACKBONE_SIZES)]
    for size in sizes:
        trial_s = EPOCHS_PER_TRIAL * n_train * seconds_per_image(name, size)
        if TRIALS_PER_BACKBONE * trial_s <= budget_s:
            return size, (
                f"{size} px: the largest of {'/'.join(map(str, sizes))} where {TRIALS_PER_BACKBONE} trials fit the "
                f"budget on this CPU (~{_duration_text(round(trial_s))} each; pretrained at {native} px)"
            )
    floor = sizes[-1]
    trial_s = EPOCHS_PER_TRIAL * n_train * seconds_per_image(name, floor)
    return floor, (
        f"{floor} px: the smallest a pretrained net should see; a trial takes ~{_duration_text(round(trial_s))} "
        "on this CPU, so few fit the budget" + (" (freeze: backbone trials take seconds)" if frozen_whole else "")
    )


def timed_seconds_per_image() -> SecondsPerImage:
    """Seconds per training image of each backbone on this machine, timed once per backbone at
    PROBE_SIZE (a few steps, autocnn's own trainer and precision) and scaled by area to other sides."""
    measured: dict[str, float] = {}

    def seconds(name: str, size: int) -> float:
        if name not in measured:
            measured[name] = _time_training_step(name, PROBE_SIZE)
        return measured[name] * (size / PROBE_SIZE) ** 2

    return seconds


def _time_training_step(name: str, size: int, batch: int = 16, steps: int = 2) -> float:
    import time

    import torch

    from autocnn.models.build import build_model
    from autocnn.training.loop import Trainer, TrainSettings, pick_device

    device = pick_device()
    model = build_model(name, {"pretrained": False}, num_classes=10, image_size=size)
    settings = TrainSettings(epochs=1, lr=1e-3, weight_decay=0.0, scheduler="none")
    trainer = Trainer(model, settings, steps_per_epoch=steps + 1, device=device)
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(batch, 3, size, size, generator=gen).to(device)
    y = (torch.arange(batch) % 10).to(device)
    trainer.train_one_epoch([(x, y)])  # warm-up: first-call allocations and kernel choice
    started = time.perf_counter()
    trainer.train_one_epoch([(x, y)] * steps)
    return (time.perf_counter() - started) / (steps * batch)


def fine_tune_trials(
    name: str, side: int, *, n_train: int, budget_s: float, seconds_per_image: SecondsPerImage
) -> float:
    """How many fine-tuning trials of EPOCHS_PER_TRIAL epochs at `side` px the budget holds."""
    trial_s = EPOCHS_PER_TRIAL * n_train * seconds_per_image(name, side)
    return budget_s / trial_s if trial_s > 0 else math.inf


def fit_backbone_to_budget(
    name: str,
    space: dict[str, Any],
    machine: Machine,
    *,
    n_train: int,
    budget_s: float,
    seconds_per_image: SecondsPerImage,
) -> tuple[dict[str, Any], dict[str, str]]:
    """The backbone's space with its input size, frozen when fine-tuning does not fit the budget,
    and a comment per key it changed."""
    side, why = backbone_size(name, machine, n_train=n_train, budget_s=budget_s, seconds_per_image=seconds_per_image)
    trials = fine_tune_trials(name, side, n_train=n_train, budget_s=budget_s, seconds_per_image=seconds_per_image)
    space, freeze_why = frozen_for_budget(space, trials)
    if _can_freeze_whole(space):
        side, why = backbone_size(
            name, machine, n_train=n_train, budget_s=budget_s, seconds_per_image=seconds_per_image, frozen_whole=True
        )
    return space | {"image_size": side}, {"image_size": why} | ({"freeze": freeze_why} if freeze_why else {})


def frozen_for_budget(space: dict[str, Any], trials: float) -> tuple[dict[str, Any], str]:
    """The small-data freeze choices when the budget holds fewer than MIN_FINE_TUNE_TRIALS
    fine-tuning trials (the frozen backbone first, so the default trial is the seconds-long one),
    and why; a space that already freezes whole is returned as it is."""
    if trials >= MIN_FINE_TUNE_TRIALS or _can_freeze_whole(space):
        return space, ""
    frozen = {key: value for key, value in space.items() if key not in ("freeze", "unfreeze_last")}
    frozen |= {key: value for key, value in freeze_space("small").items() if key != "pretrained"}
    return frozen, (
        f"the budget holds {trials:.1f} fine-tuning trials of {EPOCHS_PER_TRIAL} epochs: "
        "frozen whole (seconds per trial) or its last stages, as for small data"
    )


def freeze_space(regime: str) -> dict[str, Any]:
    """Small data: train the head (and the last stages); large data: fine-tune all, gently."""
    if regime == "small":
        return {
            "pretrained": True,
            "freeze": {"choices": ["backbone", "partial"]},
            "unfreeze_last": {"low": 1, "high": 2},
        }
    if regime == "medium":
        return {
            "pretrained": True,
            "freeze": {"choices": ["partial", "none"]},
            "unfreeze_last": {"low": 1, "high": 3},
            "backbone_lr_mult": {"low": 0.05, "high": 1.0, "log": True},
        }
    return {"pretrained": True, "freeze": "none", "backbone_lr_mult": {"low": 0.1, "high": 1.0, "log": True}}


def _can_freeze_whole(space: dict[str, Any]) -> bool:
    freeze = space.get("freeze")
    return freeze == "backbone" or (isinstance(freeze, dict) and "backbone" in freeze.get("choices", []))


def custom_cnn_space(size: int, machine: Machine) -> dict[str, Any]:
    """Deep enough to bring the image down to 2-8 px, as wide as the hardware affords."""
    deepest = max(max_depth(size) - 1, 2)
    widths = [32, 64, 128] if machine.device == "gpu" else [16, 32] if size <= 48 else [32, 64]
    return {
        "depth": {"low": max(2, deepest - 2), "high": deepest},
        "width": {"choices": widths},
        "dropout": {"low": 0.1, "high": 0.5},
    }


def augment_space(profile: DataProfile, size: int, *, flip: bool) -> tuple[dict[str, Any], str]:
    """Always on for small data (it is the cheapest extra data); searched on and off otherwise."""
    space: dict[str, Any] = {"enabled": True if profile.regime == "small" else {"choices": [True, False]}}
    if flip:
        space["hflip"] = 0.5
    space["rotate"] = {"low": 0, "high": 15}
    space["shift_scale"] = {"low": 0.0, "high": 0.1}
    if size >= 64:
        space["random_resized_crop"] = {"low": 0.6, "high": 1.0}
    if profile.channels == 3:
        space["color_jitter"] = {"low": 0.0, "high": 0.3}
    space["cutout"] = {"low": 0.0, "high": 0.3}
    note = "no flips (--no-flip: a mirror image changes these classes)" if not flip else "hflip: --no-flip turns it off"
    return space, note


def choose(
    profile: DataProfile,
    machine: Machine,
    weights: Weights,
    *,
    budget_s: float,
    flip: bool,
    name: str,
    root: str,
    seconds_per_image: SecondsPerImage | None = None,
) -> Choices:
    """Every decision of the spec, from the data, the machine and the budget."""
    size, size_note = pick_image_size(profile, machine)
    backbones, unavailable, backbone_note = pick_backbones(profile, machine, weights)
    split = (
        None
        if profile.presplit
        else ({"val": 0.2, "test": 0.2} if profile.n_images < 2000 else {"val": 0.15, "test": 0.15})
    )
    n_train = round(profile.n_images * (1 - sum(split.values()))) if split else profile.train_images
    timing = seconds_per_image or timed_seconds_per_image()
    key_notes: dict[str, dict[str, str]] = {}
    for backbone, space in list(backbones.items()):
        backbones[backbone], key_notes[backbone] = fit_backbone_to_budget(
            backbone, space, machine, n_train=n_train, budget_s=budget_s, seconds_per_image=timing
        )
    augment, augment_note = augment_space(profile, size, flip=flip)
    if any(_can_freeze_whole(space) for space in backbones.values()):
        augment["cached_views"] = CACHED_VIEWS
        augment_note += f"; cached_views: frozen backbones train on {CACHED_VIEWS} fixed views per image"
    imbalanced = profile.imbalance >= IMBALANCED
    small = profile.regime == "small"
    return Choices(
        name=name,
        root=root,
        image_size=size,
        size_note=size_note,
        split=split,
        metric="val_macro_f1" if imbalanced else "val_accuracy",
        metric_note=f"classes {profile.imbalance:.1f}x imbalanced"
        + (": every class weighs the same" if imbalanced else ""),
        timeout=_duration_text(budget_s),
        pruner="hyperband" if budget_s >= 2 * 3600 else "median",
        custom_cnn=custom_cnn_space(size, machine),
        batch_size={"choices": [16, 32]}
        if small
        else {"choices": [64, 128]}
        if machine.device == "gpu"
        else {"choices": [32, 64]},
        backbones=backbones,
        backbone_key_notes=key_notes,
        unavailable=unavailable,
        backbone_note=backbone_note,
        augment=augment,
        augment_note=augment_note,
        header=_header(profile, machine),
        class_balance=class_balance_space(imbalanced),
    )


def class_balance_space(imbalanced: bool) -> dict[str, Any]:
    """Imbalanced classes: the loss weighted by inverse class frequency, fixed rather than searched.

    A handful of validation images per rare class is too few for the search to tell a weighted trial
    from an unweighted one, so a searched choice ships the unweighted loss about as often as not;
    fixed, every trial lifts the rare classes."""
    if not imbalanced:
        return {}
    return {"class_weights": "balanced"}


def _header(profile: DataProfile, machine: Machine) -> list[str]:
    low, high = min(profile.per_class), max(profile.per_class)
    kind = "grayscale" if profile.channels == 1 else "colour"
    return [
        f"{len(profile.classes)} classes, {profile.n_images} images ({low}-{high} per class, "
        f"{profile.imbalance:.1f}x imbalance), typically {profile.typical_size[0]}x{profile.typical_size[1]} px, {kind}"
        + (", pre-split train/val/test" if profile.presplit else ""),
        f"machine: {machine.device.upper()}{' ' + machine.name if machine.name else ''}, {machine.cores} CPU cores",
    ]


def _duration_text(seconds: float) -> str:
    if seconds % 3600 == 0:
        return f"{int(seconds // 3600)}h"
    if seconds % 60 == 0:
        return f"{int(seconds // 60)}m"
    return f"{int(seconds)}s"


# --------------------------------------------------------------------------- the YAML


def _flow(value: Any) -> str:
    if isinstance(value, dict | list):
        return yaml.safe_dump(value, default_flow_style=True, sort_keys=False, width=1000).strip()
    return yaml.safe_dump(value, default_flow_style=True).strip().removesuffix("\n...").removesuffix("...").strip()


def _line(indent: int, key: str, value: Any = None, note: str = "") -> str:
    text = " " * indent + (f"{key}:" if value is None else f"{key}: {_flow(value)}")
    return f"{text:<44}  # {note}" if note else text


def render(choices: Choices, *, schema: str | None = None) -> str:
    """The spec as YAML, a comment beside each choice."""
    lines = [f"# yaml-language-server: $schema={schema}"] if schema else []
    lines += [f"# Written by `autocnn init`: {h}" if i == 0 else f"# {h}" for i, h in enumerate(choices.header)]
    lines += [
        "# Edit freely; `autocnn validate` checks it, `autocnn study` runs it.",
        f"name: {choices.name}",
        "seed: 0",
        "data:",
    ]
    lines += [_line(2, "source", "imagefolder"), _line(2, "root", choices.root, "relative to this file")]
    lines.append(_line(2, "image_size", choices.image_size, choices.size_note))
    if choices.split:
        lines.append(_line(2, "split", choices.split, "stratified by class"))
    lines += ["study:", _line(2, "timeout", choices.timeout, "the budget: trials keep starting until it is spent")]
    lines += [_line(2, "metric", choices.metric, choices.metric_note), "  sampler: tpe"]
    lines.append(_line(2, "pruner", choices.pruner, "hyperband for long budgets, median for short ones"))
    lines += ["train:", _line(2, "epochs", "auto", "each trial trains until it stops improving, within the budget")]
    lines.append(_line(2, "batch_size", choices.batch_size))
    lines += [
        _line(2, "lr", {"low": 1.0e-4, "high": 3.0e-3, "log": True}),
        _line(2, "weight_decay", {"low": 1.0e-6, "high": 5.0e-2, "log": True}),
    ]
    lines.append(_line(2, "label_smoothing", {"choices": [0.0, 0.1]}))
    for key, value in choices.class_balance.items():
        lines.append(_line(2, key, value, "rare classes weigh as much as common ones"))
    lines.append("models:")
    lines.append(_line(2, "custom_cnn", None, f"depth sized to {choices.image_size} px images"))
    lines += [_line(4, key, value) for key, value in choices.custom_cnn.items()]
    lines += [f"  # {note}" for note in choices.backbone_note]
    if not choices.backbones:
        lines.append("  # no pretrained backbone can run here yet: this spec searches the custom CNN only")
    for name, space in choices.backbones.items():
        lines.append(_line(2, name, None))
        notes = choices.backbone_key_notes.get(name, {})
        lines += [_line(4, key, value, notes.get(key, "")) for key, value in space.items()]
    for name, space in choices.unavailable.items():
        lines.append("  # " + _line(0, name, None))
        lines += ["  # " + _line(2, key, value) for key, value in space.items()]
    lines += [_line(0, "augment", None, choices.augment_note)]
    lines += [_line(2, key, value) for key, value in choices.augment.items()]
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------- the command


@dataclass(frozen=True)
class InitResult:
    path: Path
    profile: DataProfile
    machine: Machine
    choices: Choices


def study_name(root: Path) -> str:
    """The folder's name in the characters a study name allows."""
    name = re.sub(r"[^A-Za-z0-9._-]+", "-", root.resolve().name).strip("-.")[:64]
    return name or "study"


def init_spec(
    root: Path,
    *,
    out: Path | None = None,
    budget_s: float = 1800,
    flip: bool = True,
    force: bool = False,
    weights: Sequence[str] = (),
    seconds_per_image: SecondsPerImage | None = None,
) -> InitResult:
    """Inspect the folder and the machine, write a spec that validates, and return what was chosen.

    `weights` are `--weights` values: backbone names (cached, or fetched before trial 1) or
    NAME=FILE weight files, searched first. `seconds_per_image` replaces the timed probe that
    sizes each backbone's input on a CPU.
    """
    from autocnn.spec.load import parse_spec

    profile = inspect_data(root)
    machine = detect_machine()
    name = study_name(root)
    path = out or Path("studies") / f"{name}.yaml"
    if path.exists() and not force:
        raise InitError(f"{path}: exists; choose another file with -o, or --force to replace it")
    given = given_weights(list(weights), spec_dir=path.parent)
    wanted = BACKBONES[(machine.device, profile.regime)]
    status = weights_for(wanted, given, cached_backbones())
    relative = os.path.relpath(root.resolve(), path.parent.resolve())
    choices = choose(
        profile,
        machine,
        status,
        budget_s=budget_s,
        flip=flip,
        name=name,
        root=relative,
        seconds_per_image=seconds_per_image,
    )
    schema = path.parent / "autocnn.schema.json"
    text = render(choices, schema="./autocnn.schema.json" if schema.exists() else None)
    parse_spec(yaml.safe_load(text), source=str(path))  # what is written validates
    _write(path, text)
    return InitResult(path, profile, machine, choices)


def _write(path: Path, text: str) -> None:
    """Beside the target, then renamed: never half a spec."""
    from autocnn.files import write_text_atomically

    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_text_atomically(path, text)
    except OSError as exc:
        raise InitError(f"{path}: cannot write ({exc.strerror or exc})") from None
