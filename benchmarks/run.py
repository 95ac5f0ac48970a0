"""Does the search waste compute? Five measurements, side by side on this machine (issue 6).

Run: .venv/bin/python benchmarks/run.py [--quick] [--items 1 3] [--out benchmarks/results.md]

Writes a readable results.md (one table per item: target, figure, met / not met) and a
results.json beside it with every raw number and the machine it ran on. Targets are ratios
measured in the same process, alternating A/B, so they survive a noisy machine better than
absolute images/s. Nothing here is asserted in tests: performance is reported, never tested.
The code is device-agnostic: on a CUDA machine the same script measures the GPU.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")  # no network check on import
os.environ.setdefault("HF_HUB_OFFLINE", "1")  # timm never waits on an unreachable hub

import numpy as np  # noqa: E402
import yaml  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:  # run as a script from anywhere: import this checkout's autocnn
    sys.path.insert(0, str(REPO))

from autocnn.study import SilentReporter  # noqa: E402 - after the path set-up above

HEAVY_MODULES = ("torch", "mlflow", "optuna", "timm", "albumentations", "sklearn", "cv2", "matplotlib")

# The augment block of issue 4 (studies/20classes.yaml), used when the spec does not carry one yet.
ISSUE_AUGMENT = {
    "enabled": {"choices": [True, False]},
    "hflip": 0.5,
    "vflip": 0.0,
    "rotate": {"low": 0, "high": 30},
    "shift_scale": {"low": 0.0, "high": 0.2},
    "random_resized_crop": {"low": 0.5, "high": 1.0},
    "color_jitter": {"low": 0.0, "high": 0.4},
    "gamma": {"low": 0.0, "high": 0.5},
    "blur": 0.0,
    "noise": 0.0,
    "cutout": {"low": 0.0, "high": 0.5},
}


# --------------------------------------------------------------------------- settings


@dataclass(frozen=True)
class LoopCase:
    """One model of item 1: trained by autocnn's trial and by the bare loop on the same tensors."""

    label: str
    model: str
    params: dict[str, Any]
    image_size: int
    batch_size: int = 64
    variants: tuple[str, ...] = ("same",)  # bare-loop variants (BARE_VARIANTS)
    epochs: int = 4  # per trial, the first untimed (warm-up); --quick runs 2
    repeats: int = 5  # trials, each a round of per-epoch A/B; --quick runs 1


@dataclass(frozen=True)
class Settings:
    """How much each item measures: the full run for results.md, or a smoke run (--quick)."""

    quick: bool
    loop_repeats: int | None  # None: each case's own
    loop_epochs: int | None  # per run, the first untimed; None: each case's own
    loop_cases: tuple[LoopCase, ...]
    aug_images: int
    aug_repeats: int
    prune_trials: int
    prune_epochs: int  # more than the quickstart's 10, so pruning has room after the judge floor
    startup_repeats: int
    mem_images: int
    mem_epochs: int


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

# What each bare-loop variant sets. The plain ones run in a fresh child process: autocnn's
# allocator setting is process-wide and one-way, so once a trial has run, no loop in this
# process is plain any more.
BARE_VARIANTS = {
    "same": "autocnn's settings: channels_last, its precision, freed memory kept for reuse",
    "eager": "plain PyTorch: fp32, contiguous NCHW, glibc's allocator defaults (fresh process)",
    "channels_last": "channels_last only, glibc's allocator defaults (fresh process)",
    "other_precision": "autocnn's settings in the other precision: fp32 where autocnn autocasts, bf16 where it does not",
}
PLAIN_VARIANTS = ("eager", "channels_last")


CASES = {"custom_cnn": CNN_32, "resnet18": RESNET18_64}


def settings_for(quick: bool, models: Sequence[str] = tuple(CASES)) -> Settings:
    cases = tuple(CASES[m] for m in CASES if m in models)
    if quick:
        return Settings(True, 1, 2, cases, 256, 1, 3, 2, 2, 300, 1)
    return Settings(False, None, None, cases, 1024, 3, 20, 12, 7, 2000, 2)


# --------------------------------------------------------------------------- results


@dataclass
class Row:
    """One line of an item's table."""

    what: str
    figure: str
    target: str = ""
    met: bool | None = None  # None: information only


@dataclass
class Item:
    number: int
    title: str
    rows: list[Row] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    raw: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0


def verdict(met: bool | None) -> str:
    return "" if met is None else ("met" if met else "**not met**")


def render_markdown(info: dict[str, Any], items: Sequence[Item], *, command: str) -> str:
    """results.md: machine, then one table per item; a reader sees every target and its figure."""
    lines = ["# Benchmark results", "", f"Produced by `{command}` on {info['date']}.", ""]
    lines += ["| machine | |", "|---|---|"]
    for key in (
        "cpu",
        "cores",
        "device",
        "torch",
        "cpu_capability",
        "cpu_native_bf16",
        "python",
        "threads",
        "load_before",
        "quiet",
    ):
        if key in info:
            lines.append(f"| {key} | {info[key]} |")
    lines.append("")
    for note in info.get("notes", []):
        lines += [f"> {note}", ""]
    for item in items:
        lines += [f"## {item.number}. {item.title}", "", "| measurement | figure | target | |", "|---|---|---|---|"]
        lines += [f"| {r.what} | {r.figure} | {r.target} | {verdict(r.met)} |" for r in item.rows]
        lines.append("")
        lines += [f"- {note}" for note in item.notes]
        lines += ["", f"_({item.seconds:.0f} s)_", ""]
    return "\n".join(lines).rstrip() + "\n"


def write_results(out: Path, info: dict[str, Any], items: Sequence[Item], *, command: str) -> None:
    from benchmarks.search_quality import keep_marked_section

    out.parent.mkdir(parents=True, exist_ok=True)
    text = render_markdown(info, items, command=command)
    out.write_text(keep_marked_section(out.read_text(), text) if out.exists() else text)
    payload = {"machine": info, "items": [asdict(item) for item in items]}
    out.with_suffix(".json").write_text(json.dumps(payload, indent=2, default=str) + "\n")


# --------------------------------------------------------------------------- small pure helpers


def median(values: Sequence[float]) -> float:
    return float(statistics.median(values)) if values else float("nan")


def ratio(a: float, b: float) -> float:
    return a / b if b else float("nan")


def alternated(seq: Sequence[Any], repeat: int) -> list[Any]:
    """Forward on even repeats, backward on odd ones: neither side always runs first, and
    neighbours stay neighbours (their per-repeat ratio compares runs made back to back)."""
    return list(seq) if repeat % 2 == 0 else list(reversed(seq))


def heaviest(space: dict[str, Any]) -> dict[str, Any]:
    """Each searched value at its most expensive end: `high`, the largest choice, enabled on.

    random_resized_crop is the exception: any min area below 1 switches the crop on, at equal cost.
    """
    out: dict[str, Any] = {}
    for key, value in space.items():
        if isinstance(value, dict) and "high" in value:
            out[key] = value["high"] if key != "random_resized_crop" else value["low"]
        elif isinstance(value, dict) and "choices" in value:
            out[key] = True if key == "enabled" else max(value["choices"])
        else:
            out[key] = value
    return out


def synthetic_images(n: int, size: int, classes: int, *, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Learnable class images (a colour, a stripe frequency and angle per class, plus noise).

    Reproducible from the seed; stands in for a user's photo folder in items 2, 4 and 5.
    """
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % classes
    colours = rng.uniform(40, 215, (classes, 3))
    freq = rng.uniform(1.0, 6.0, classes)
    angle = rng.uniform(0, np.pi, classes)
    yy, xx = np.mgrid[0:size, 0:size] / size
    images = np.empty((n, size, size, 3), dtype=np.uint8)
    for i, k in enumerate(labels):
        wave = np.sin(2 * np.pi * freq[k] * (xx * np.cos(angle[k]) + yy * np.sin(angle[k])) + rng.uniform(0, 6.3))
        pixel = colours[k] + 40 * wave[..., None] + rng.normal(0, 12, (size, size, 3))
        images[i] = np.clip(pixel, 0, 255).astype(np.uint8)
    return images, labels.astype(np.int64)


def write_imagefolder(root: Path, n: int, size: int, classes: int, *, seed: int = 0) -> Path:
    """`root/class_XX/NNNNN.png`: a reproducible image folder for the imagefolder studies."""
    from PIL import Image

    images, labels = synthetic_images(n, size, classes, seed=seed)
    for i, (image, label) in enumerate(zip(images, labels, strict=True)):
        folder = root / f"class_{label:02d}"
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image).save(folder / f"{i:05d}.png", compress_level=1)
    return root


def write_spec(folder: Path, spec: dict[str, Any]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{spec['name']}.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


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


def machine_info() -> dict[str, Any]:
    import torch

    from autocnn.train import cpu_has_native_bf16, pick_device

    cpu = platform.processor() or "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    device = pick_device()
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    return {
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "cpu": cpu,
        "cores": os.cpu_count(),
        "device": f"{device.type} ({name})",
        "torch": torch.__version__,
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "cpu_native_bf16": "yes" if cpu_has_native_bf16() else "no",
        "python": platform.python_version(),
        "threads": torch.get_num_threads(),
        "load_before": " / ".join(f"{x:.2f}" for x in os.getloadavg()),
    }


def sync(device: Any) -> None:
    """Wait for queued GPU work, so a clock read after it measures the work itself."""
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


@contextmanager
def timed(item: Item) -> Iterator[None]:
    start = time.perf_counter()
    try:
        yield
    finally:
        item.seconds = time.perf_counter() - start


# --------------------------------------------------------------------------- the bare loop


def default_amp_dtype(device: Any) -> Any:
    """autocnn's own choice (train.precision auto), so 'same settings' holds."""
    from autocnn.train import autocast_dtype

    return autocast_dtype(device, "auto")


def precision_name(dtype: Any) -> str:
    return "fp32" if dtype is None else f"{str(dtype).removeprefix('torch.')} autocast"


class BareLoop:
    """A minimal hand-written PyTorch loop, one epoch per call to `epoch`.

    Tensors are normalised once up front, the model is the same autocnn builds, the optimiser and
    schedule are autocnn's (AdamW, per-batch cosine); nothing else: no logging, no validation.
    variant: one of BARE_VARIANTS.
    """

    def __init__(
        self, case: LoopCase, images: np.ndarray, labels: np.ndarray, *, epochs: int, variant: str, device: Any
    ) -> None:
        import torch
        from torch import nn

        from autocnn.models import build_model, preprocess_for
        from autocnn.train import keep_freed_memory_for_reuse

        torch.manual_seed(0)
        pre = preprocess_for(case.model, case.params, image_size=case.image_size)
        channels_last = variant != "eager"
        self.amp = {
            "same": default_amp_dtype(device),
            "other_precision": None if default_amp_dtype(device) is not None else torch.bfloat16,
        }.get(variant)
        if variant in ("same", "other_precision") and device.type == "cpu":
            keep_freed_memory_for_reuse()  # as autocnn's Trainer does
        fmt = torch.channels_last if channels_last else torch.contiguous_format
        mean = torch.tensor(pre.mean).view(1, 3, 1, 1)
        std = torch.tensor(pre.std).view(1, 3, 1, 1)
        x_all = ((torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255.0 - mean) / std).contiguous(
            memory_format=fmt
        )
        self.x_all, self.y_all = x_all.to(device), torch.from_numpy(labels).to(device)
        model = build_model(case.model, case.params, num_classes=int(labels.max()) + 1, image_size=case.image_size)
        self.model = model.to(device, memory_format=fmt).train()
        self.opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=1e-4)
        self.batch_size, self.steps = case.batch_size, len(labels) // case.batch_size
        self.sched = torch.optim.lr_scheduler.CosineAnnealingLR(self.opt, T_max=epochs * self.steps)
        self.scaler = torch.amp.GradScaler(device.type, enabled=self.amp == torch.float16)
        self.loss_fn = nn.CrossEntropyLoss()
        self.gen = torch.Generator().manual_seed(0)
        self.device = device

    def epoch(self) -> float:
        """Train one epoch; its images/s."""
        import torch

        sync(self.device)
        start = time.perf_counter()
        order = torch.randperm(len(self.y_all), generator=self.gen).to(self.device)
        for i in range(self.steps):
            idx = order[i * self.batch_size : (i + 1) * self.batch_size]
            with torch.autocast(self.device.type, dtype=self.amp or torch.float32, enabled=self.amp is not None):
                loss = self.loss_fn(self.model(self.x_all[idx]), self.y_all[idx])
            self.opt.zero_grad(set_to_none=True)
            self.scaler.scale(loss).backward()
            self.scaler.step(self.opt)
            self.scaler.update()
            self.sched.step()
        sync(self.device)
        return self.steps * self.batch_size / (time.perf_counter() - start)

    def close(self) -> None:
        pass


def bare_loop(
    case: LoopCase, images: np.ndarray, labels: np.ndarray, *, epochs: int, variant: str, device: Any
) -> float:
    """images/s of a BareLoop over epochs 2..N (epoch 1 warms up)."""
    loop = BareLoop(case, images, labels, epochs=epochs, variant=variant, device=device)
    return timed_epochs([loop.epoch() for _ in range(epochs)])


def timed_epochs(speeds: Sequence[float]) -> float:
    """images/s over equal epochs after the first (warm-up): all images over all their time."""
    timed = speeds[1:] or speeds
    return float(statistics.harmonic_mean(timed))


class ChildBareLoop:
    """A BareLoop in a fresh process (the plain variants), one epoch per request over a pipe.

    The child idles between requests, so epochs here interleave with autocnn's like in-process ones.
    """

    def __init__(self, case: LoopCase, data: Path, *, epochs: int, variant: str) -> None:
        job = {"case": asdict(case), "data": str(data), "epochs": epochs, "variant": variant}
        self.variant = variant
        self.log = data.with_name(f"bare-{variant}.log")
        cmd = [sys.executable, str(Path(__file__).resolve()), "--bare-loop-child", json.dumps(job)]
        with self.log.open("w") as err:
            self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=err, text=True)
        self._answer()  # "ready": imports and set-up are done before any clock starts

    def _answer(self) -> str:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline().strip()
        if not line:
            self.proc.wait()
            raise RuntimeError(f"bare loop ({self.variant}) in a child process failed: {self.log.read_text()[-2000:]}")
        return line

    def epoch(self) -> float:
        assert self.proc.stdin is not None
        self.proc.stdin.write("epoch\n")
        self.proc.stdin.flush()
        return float(self._answer())

    def close(self) -> None:
        if self.proc.stdin is not None:
            self.proc.stdin.close()
        self.proc.wait()


def open_bare_loop(case: LoopCase, data: Path, *, epochs: int, variant: str, device: Any) -> BareLoop | ChildBareLoop:
    """A bare loop on the images saved in `data` (.npz): here, or in a fresh process when plain."""
    if variant in PLAIN_VARIANTS:
        return ChildBareLoop(case, data, epochs=epochs, variant=variant)
    with np.load(data) as arrays:
        return BareLoop(case, arrays["images"], arrays["labels"], epochs=epochs, variant=variant, device=device)


def bare_loop_child(job_json: str) -> None:
    """The child side of ChildBareLoop: "ready", then one epoch's images/s per input line."""
    from autocnn.train import pick_device

    job = json.loads(job_json)
    fields = job["case"]
    case = LoopCase(**{**fields, "variants": tuple(fields["variants"])})
    with np.load(job["data"]) as arrays:
        images, labels = arrays["images"], arrays["labels"]
    loop = BareLoop(case, images, labels, epochs=job["epochs"], variant=job["variant"], device=pick_device())
    print("ready", flush=True)
    for _ in sys.stdin:
        print(loop.epoch(), flush=True)


# --------------------------------------------------------------------------- autocnn's trial, timed


# Every run, autocnn's trial or a bare loop's epochs, starts after this pause: an epoch right
# after a pause ran up to a few % slower than one right after another (same loop, A/A).
SETTLE_S = 0.3


@dataclass(frozen=True)
class EpochStamp:
    """When an epoch of autocnn's trial was reported, with the Trainer's metrics for it."""

    done: float  # wall clock when the study reported the epoch
    metrics: Any


class TimingReporter(SilentReporter):
    """The study's Reporter, stamping each trial's start and epochs; runs `after_trial` after each.

    Epochs follow one another as in any study, autocnn's writer threads (checkpoint, MLflow
    metrics) overlapping the next epoch's training, so their cost shows in its wall time. The
    time spent in `after_trial` (the bare loops' turn) is kept, to be taken off the trial's.
    """

    def __init__(self, after_trial: Callable[[int], None] | None = None) -> None:
        self.after_trial = after_trial
        self.started: dict[int, float] = {}
        self.epochs: dict[int, list[EpochStamp]] = {}
        self.after_trial_s: dict[int, float] = {}

    def trial_started(self, number: int, config: Any, epochs: int) -> None:
        self.started[number] = time.time()
        self.epochs[number] = []

    def epoch_done(self, number: int, metrics: Any, metric: str) -> None:
        self.epochs[number].append(EpochStamp(time.time(), metrics))

    def trial_finished(self, number: int, state: str, value: float | None) -> None:
        if self.after_trial is not None:
            start = time.time()
            self.after_trial(number)
            self.after_trial_s[number] = time.time() - start


@dataclass(frozen=True)
class TrialTiming:
    images_per_s: float  # training images / (epoch wall time minus validation), epochs 2..N
    train_only_images_per_s: float  # the Trainer's own train-loop clock, same epochs
    per_epoch_overhead_s: float  # median wall time per epoch outside train and validation
    fixed_s: float  # trial wall time outside all epochs (model build, runs, artifacts)
    before_s: float
    after_s: float
    validation_s: float  # median per epoch
    epoch_images_per_s: tuple[float, ...] = ()  # each timed epoch's, as images_per_s counts them


def trial_timing(
    stamps: Sequence[EpochStamp], started: float, trial_start: float, trial_end: float, seen: int
) -> TrialTiming:
    """Split a trial's wall time into training, validation, per-epoch bookkeeping and fixed cost.

    Epoch e's interval runs from epoch e-1's report to epoch e's: it holds every per-epoch cost
    (pruning check, batching, training, validation, metrics, checkpoint, Optuna report, and the
    writer threads' work overlapping it) exactly once. Validation (validation pass + metrics)
    comes from the Trainer's own clocks.
    """
    reported = [started] + [st.done for st in stamps]
    intervals = [b - a for a, b in zip(reported, reported[1:], strict=False)]
    train_s = [seen / st.metrics.train_images_per_s for st in stamps]
    val_s = [st.metrics.epoch_seconds - tr for st, tr in zip(stamps, train_s, strict=True)]
    timed = slice(1, None) if len(stamps) > 1 else slice(0, None)
    work = [iv - v for iv, v in zip(intervals[timed], val_s[timed], strict=True)]
    overhead = [iv - st.metrics.epoch_seconds for iv, st in zip(intervals[timed], stamps[timed], strict=True)]
    before, after = started - trial_start, trial_end - reported[-1]
    return TrialTiming(
        images_per_s=seen * len(work) / sum(work),
        train_only_images_per_s=seen * len(work) / sum(train_s[timed]),
        per_epoch_overhead_s=median(overhead),
        fixed_s=before + after,
        before_s=before,
        after_s=after,
        validation_s=median(val_s[timed]),
        epoch_images_per_s=tuple(seen / w for w in work),
    )


class TrialRunner:
    """Runs more trials of a fixed-config study per call, through `run_study` itself."""

    def __init__(self, case: LoopCase, folder: Path, epochs: int) -> None:
        from autocnn.spec import load_spec

        self.case = case
        self.spec = load_spec(write_spec(folder, loop_spec(case, epochs)))
        self.tracking = f"sqlite:///{folder / 'mlruns' / 'mlflow.db'}"
        self.trials = 0

    def run_all(self, trials: int, after_trial: Callable[[int], None] | None = None) -> list[TrialTiming]:
        """`trials` trials in one study run, as a user's study runs them; `after_trial(k)` after the k-th."""
        from autocnn.data import DataCache
        from autocnn.storage import open_study
        from autocnn.study import StudyOptions, run_study

        first = self.trials
        reporter = TimingReporter(None if after_trial is None else lambda number: after_trial(number - first))
        self.trials += trials
        time.sleep(SETTLE_S)
        result = run_study(self.spec, StudyOptions(trials=self.trials, tracking_uri=self.tracking), reporter)
        study = open_study(self.spec, result.storage)
        n_train = len(DataCache(self.spec).get(self.case.image_size).train)
        seen = (n_train // self.case.batch_size) * self.case.batch_size
        timings = []
        for trial in study.trials[first:]:
            if trial.state.name != "COMPLETE":
                raise RuntimeError(f"benchmark trial ended {trial.state.name}: {trial.user_attrs}")
            start = trial.datetime_start.replace(tzinfo=UTC).timestamp()  # naive UTC (Optuna 5)
            end = trial.datetime_complete.replace(tzinfo=UTC).timestamp() - reporter.after_trial_s.get(trial.number, 0)
            stamps = reporter.epochs[trial.number]
            timings.append(trial_timing(stamps, reporter.started[trial.number], start, end, seen))
        return timings


# --------------------------------------------------------------------------- item 1 (+ item 4's per-trial cost)


def item_trial_loop(settings: Settings, work: Path) -> tuple[Item, dict[str, list[TrialTiming]]]:
    """autocnn's trial epoch vs the bare loop, same tensors/model/batch, alternating, median."""
    from autocnn.data import DataCache
    from autocnn.train import pick_device

    item = Item(1, "Trial-loop overhead: autocnn's training epoch vs a bare PyTorch loop")
    device = pick_device()
    timings: dict[str, list[TrialTiming]] = {}
    with timed(item):
        for case in settings.loop_cases:
            epochs, repeats = settings.loop_epochs or case.epochs, settings.loop_repeats or case.repeats
            runner = TrialRunner(case, work / f"loop-{case.model}", epochs)
            train = DataCache(runner.spec).get(case.image_size).train
            data = work / f"loop-{case.model}" / "train.npz"
            np.savez(data, images=train.images, labels=train.labels)
            runs: dict[str, list[float]] = {"autocnn": [], **{v: [] for v in case.variants}}  # per timed epoch
            trials, bare = alternating_rounds(case, runner, data, epochs=epochs, repeats=repeats, device=device)
            runs["autocnn"] += [speed for trial in trials for speed in trial.epoch_images_per_s]
            for variant, speeds in bare.items():
                runs[variant] += speeds
            if "other_precision" in case.variants:  # for information; one timed epoch: bf16 crawls without bf16 units
                with np.load(data) as arrays:
                    runs["other_precision"].append(
                        bare_loop(
                            case, arrays["images"], arrays["labels"], epochs=2, variant="other_precision", device=device
                        )
                    )
            timings[case.label] = trials
            item.raw[case.label] = {"images_per_s": runs, "trials": [asdict(t) for t in trials]}
            add_loop_rows(item, case, runs, trials, device)
    item.notes += [
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
    return item, timings


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
            time.sleep(SETTLE_S)
            run = [loops[variant].epoch() for _ in range(epochs)]
            speeds[variant] += run[1:] if len(run) > 1 else run
        time.sleep(SETTLE_S)  # autocnn's next trial starts after the same pause

    try:
        for variant in variants:
            loops[variant] = open_bare_loop(case, data, epochs=epochs * repeats, variant=variant, device=device)
        trials = runner.run_all(repeats, bare_turn)
    finally:
        for loop in loops.values():
            loop.close()
    return trials, speeds


def rotated(seq: Sequence[Any], k: int) -> list[Any]:
    """`seq` started at position k: each bare loop takes its turn right after autocnn's trial."""
    k %= max(len(seq), 1)
    return [*seq[k:], *seq[:k]]


def paired_ratio(a: Sequence[float], b: Sequence[float]) -> float:
    """Median of per-epoch (per-repeat) ratios: each pair ran back to back, so a busy spell hits both."""
    return median([ratio(x, y) for x, y in zip(a, b, strict=False)])


def per_trial_ratio(a: Sequence[float], b: Sequence[float], per_trial: int) -> float:
    """Median over trials of each trial's ratio over all its timed epochs together.

    autocnn pays some costs every few epochs (metrics to MLflow, checkpoints to disk): a median of
    per-epoch ratios would leave them out, a trial's epochs taken together count them in full.
    """
    starts = range(0, min(len(a), len(b)), max(per_trial, 1))
    hmean = statistics.harmonic_mean  # all a trial's images over all their time
    return median([ratio(hmean(a[k : k + per_trial]), hmean(b[k : k + per_trial])) for k in starts])


def add_loop_rows(
    item: Item, case: LoopCase, runs: dict[str, list[float]], trials: list[TrialTiming], device: Any
) -> None:
    ours, same = runs["autocnn"], runs["same"]
    per_trial = len(trials[0].epoch_images_per_s)
    vs_same = per_trial_ratio(ours, same, per_trial)
    item.rows.append(Row(f"{case.label}: autocnn trial img/s", f"{median(ours):,.0f}"))
    item.rows.append(Row(f"{case.label}: bare loop, same settings, img/s", f"{median(same):,.0f}"))
    item.rows.append(Row(f"{case.label}: **autocnn / bare loop**", f"{vs_same:.3f}", ">= 0.95", vs_same >= 0.95))
    item.rows.append(
        Row(
            f"{case.label}: per-epoch bookkeeping in the loop (report, prune check, metrics, checkpoint snapshot)",
            f"{median([t.per_epoch_overhead_s for t in trials]) * 1000:.0f} ms/epoch; validation "
            f"{median([t.validation_s for t in trials]) * 1000:.0f} ms/epoch",
        )
    )
    if "eager" in runs:
        speedup = per_trial_ratio(ours, runs["eager"], per_trial)
        target = ">= 1.3" if case.model == "custom_cnn" else ""
        met = speedup >= 1.3 if target else None
        item.rows.append(
            Row(f"{case.label}: bare loop, plain eager (fresh process), img/s", f"{median(runs['eager']):,.0f}")
        )
        if "channels_last" in runs:
            item.rows.append(
                Row(
                    f"{case.label}: bare loop, channels_last only (fresh process), img/s (vs plain eager)",
                    f"{median(runs['channels_last']):,.0f} ({paired_ratio(runs['channels_last'], runs['eager']):.2f}x)",
                )
            )
        item.rows.append(
            Row(f"{case.label}: **autocnn defaults / plain eager bare loop**", f"{speedup:.2f}x", target, met)
        )
    if "other_precision" in runs:
        default = default_amp_dtype(device)
        other = "fp32" if default is not None else "bf16 autocast"
        item.rows.append(
            Row(
                f"{case.label}: bare loop in {other} instead of {precision_name(default)}, img/s (vs same settings)",
                f"{median(runs['other_precision']):,.0f} ({paired_ratio(runs['other_precision'], same):.2f}x)",
            )
        )


# --------------------------------------------------------------------------- item 2


def augment_block() -> dict[str, Any]:
    raw = yaml.safe_load((REPO / "studies" / "20classes.yaml").read_text())
    return raw.get("augment") or ISSUE_AUGMENT


def item_data_pipeline(settings: Settings) -> Item:
    """Augmenting loader (heaviest 20classes block, 96 px) vs custom CNN training at 96 px."""
    import torch

    from autocnn import augment
    from autocnn.data import Split
    from autocnn.models import Preprocess, build_model
    from autocnn.train import TensorBatches, Trainer, TrainSettings, pick_device

    item = Item(2, "Data pipeline: augmenting loader vs what training consumes (96 px)")
    device = pick_device()
    size, batch = 96, 32
    block = heaviest(augment_block())
    workers_for = getattr(augment, "num_workers_for", None)
    workers = int(workers_for(size)) if callable(workers_for) else 0
    images, labels = synthetic_images(settings.aug_images, size, 20)
    split = Split(images, labels)
    pre = Preprocess(size)
    loader_runs: list[float] = []
    train_runs: list[float] = []
    with timed(item):
        for r in range(settings.aug_repeats):
            for side in alternated(["loader", "train"], r):
                if side == "loader":
                    pipeline = augment.build_train_transform(block, image_size=size, seed=r)
                    batches = augment.AugmentedBatches(
                        split, pre, pipeline, batch_size=batch, seed=r, num_workers=workers, device=device
                    )
                    loader_runs.append(loader_images_per_s(batches, device))
                    del batches
                else:
                    torch.manual_seed(r)
                    model = build_model("custom_cnn", {"depth": 4, "width": 32}, num_classes=20, image_size=size)
                    trainer = Trainer(
                        model,
                        TrainSettings(epochs=2, lr=1e-3, weight_decay=1e-4),
                        steps_per_epoch=len(labels) // batch,
                        device=device,
                    )
                    tb = TensorBatches(split, pre, batch_size=batch, shuffle=True, seed=r, device=device)
                    trainer.train_one_epoch(_head(tb, 2))  # warm-up
                    start = time.perf_counter()
                    _, seen = trainer.train_one_epoch(tb)
                    sync(device)
                    train_runs.append(seen / (time.perf_counter() - start))
    loader, train, times = median(loader_runs), median(train_runs), paired_ratio(loader_runs, train_runs)
    item.raw = {
        "loader_images_per_s": loader_runs,
        "train_images_per_s": train_runs,
        "augment": block,
        "num_workers": workers,
    }
    item.rows += [
        Row(f"augmenting loader img/s ({workers} workers, batch {batch})", f"{loader:,.0f}"),
        Row("custom CNN training img/s (depth 4, width 32: the fastest 20classes CNN)", f"{train:,.0f}"),
        Row("**loader / training**", f"{times:.1f}x", ">= 3x", times >= 3),
    ]
    item.notes += [
        "Augment values: each searched value of the 20classes block at its most expensive end "
        f"({', '.join(f'{k}={v}' for k, v in block.items() if k != 'enabled')}).",
        f"Loader: `autocnn.augment.AugmentedBatches` over {len(labels)} cached uint8 images, normalised batches as training "
        "receives them. Training: `Trainer` with autocnn defaults over `TensorBatches` (no augmentation). "
        f"{settings.aug_repeats} alternating repeats; the ratio is the median of per-repeat ratios.",
    ]
    return item


def _head(batches: Any, n: int) -> Iterator[Any]:
    for i, batch in enumerate(batches):
        if i >= n:
            return
        yield batch


def loader_images_per_s(batches: Any, device: Any) -> float:
    it = iter(batches)
    next(it)  # workers start outside the clock
    seen, start = 0, time.perf_counter()
    for _, y in it:
        seen += len(y)
    sync(device)
    return seen / (time.perf_counter() - start)


# --------------------------------------------------------------------------- item 3


def pruning_spec(base: dict[str, Any], pruner: str, settings: Settings) -> dict[str, Any]:
    raw = json.loads(json.dumps(base))
    raw["name"] = f"prune-{pruner}"
    raw["study"].update({"trials": settings.prune_trials, "sampler": "random", "pruner": pruner, "defaults": False})
    raw["study"].pop("timeout", None)
    raw["train"]["epochs"] = settings.prune_epochs
    return raw


def replay(
    curves: Sequence[Sequence[float]], pruner: Any, *, name: str, direction: str, steps_per_epoch: int
) -> tuple[int, float]:
    """(epochs, best value) had these learning curves met `pruner`: an in-memory Optuna study.

    Exact for autocnn's trials, whose curves do not depend on the pruner (each trial's seed is
    fixed by its number), so other pruner settings can be judged without training again. Each
    trial carries the budget autocnn records, so the judge floor applies as in a real study.
    """
    import optuna

    from autocnn.budget import BUDGET_ATTR

    optuna.logging.set_verbosity(optuna.logging.ERROR)
    study = optuna.create_study(study_name=name, direction=direction, pruner=pruner)
    pick = max if direction == "maximize" else min
    epochs, best = 0, None
    for curve in curves:
        trial = study.ask()
        trial.set_user_attr(BUDGET_ATTR, {"steps_per_epoch": steps_per_epoch, "epochs": len(curve)})
        for step, value in enumerate(curve, start=1):
            trial.report(value, step)
            epochs += 1
            if trial.should_prune():
                study.tell(trial, state=optuna.trial.TrialState.PRUNED)
                break
        else:
            study.tell(trial, pick(curve))
            best = pick(curve) if best is None else pick(best, pick(curve))
    return epochs, float("nan") if best is None else float(best)


def replay_candidates(spec: Any, n_val: int) -> dict[str, tuple[str, Any]]:
    """autocnn's own settings (checked against the real runs) and a few of Optuna's bare ones."""
    import optuna

    from autocnn.study import build_pruner

    pruners = optuna.pruners
    epochs = int(spec.train.epochs)
    with_pruner = {
        name: spec.model_copy(update={"study": spec.study.model_copy(update={"pruner": name})})
        for name in ("median", "hyperband")
    }
    return {
        "median, autocnn's settings": ("median", build_pruner(with_pruner["median"], max_resource=epochs, n_val=n_val)),
        "hyperband, autocnn's settings": (
            "hyperband",
            build_pruner(with_pruner["hyperband"], max_resource=epochs, n_val=n_val),
        ),
        "median, 3 startup trials, warm-up 1": ("median", pruners.MedianPruner(n_startup_trials=3, n_warmup_steps=1)),
        "median, 2 startup trials, warm-up 1": ("median", pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=1)),
        "hyperband, reduction factor 2": (
            "hyperband",
            pruners.HyperbandPruner(min_resource=1, max_resource=epochs, reduction_factor=2),
        ),
        "hyperband, reduction factor 4": (
            "hyperband",
            pruners.HyperbandPruner(min_resource=1, max_resource=epochs, reduction_factor=4),
        ),
        "successive halving, min 1, factor 3": (
            "successive_halving",
            pruners.SuccessiveHalvingPruner(min_resource=1, reduction_factor=3),
        ),
        "successive halving, min 1, factor 4": (
            "successive_halving",
            pruners.SuccessiveHalvingPruner(min_resource=1, reduction_factor=4),
        ),
    }


def hyperband_spread(
    curves: Sequence[Sequence[float]], spec: Any, *, direction: str, n_val: int, steps_per_epoch: int, names: int = 8
) -> list[tuple[int, float]]:
    """Hyperband's replay under other study names: Optuna assigns trials to brackets by a hash of
    the study name and trial number, so one name's saving is one draw among several."""
    from autocnn.study import build_pruner

    hyperband = spec.model_copy(update={"study": spec.study.model_copy(update={"pruner": "hyperband"})})
    epochs = int(spec.train.epochs)
    return [
        replay(
            curves,
            build_pruner(hyperband, max_resource=epochs, n_val=n_val),
            name=f"digits-{i}",
            direction=direction,
            steps_per_epoch=steps_per_epoch,
        )
        for i in range(names)
    ]


def replay_shape(spec: Any) -> dict[str, int]:
    """Validation images and steps per epoch of the pruning study: what the noise band and floor need."""
    from autocnn.budget import steps_per_epoch
    from autocnn.data import DataCache

    data = DataCache(spec).get()
    return {"n_val": len(data.val), "steps_per_epoch": steps_per_epoch(len(data.train), int(spec.train.batch_size))}


def item_pruning(settings: Settings, work: Path) -> Item:
    """The same seeded configs on digits under pruner none / median / hyperband, then a replay."""
    from autocnn.spec import load_spec
    from autocnn.storage import open_study
    from autocnn.study import StudyOptions, run_study

    item = Item(
        3, f"Pruning savings on digits ({settings.prune_trials} identical trials, {settings.prune_epochs} epochs)"
    )
    base = yaml.safe_load((REPO / "studies" / "digits.yaml").read_text())
    out: dict[str, dict[str, Any]] = {}
    params: dict[str, list[dict[str, Any]]] = {}
    curves: list[list[float]] = []
    spec = None
    with timed(item):
        for pruner in ("none", "median", "hyperband"):
            spec = load_spec(write_spec(work / f"prune-{pruner}", pruning_spec(base, pruner, settings)))
            start = time.perf_counter()
            tracking = f"sqlite:///{work / f'prune-{pruner}' / 'mlruns' / 'mlflow.db'}"
            result = run_study(spec, StudyOptions(tracking_uri=tracking))
            seconds = time.perf_counter() - start
            trials = open_study(spec, result.storage).trials
            params[pruner] = [t.params for t in trials]
            if pruner == "none":
                curves = [[t.intermediate_values[k] for k in sorted(t.intermediate_values)] for t in trials]
            out[pruner] = {
                "epochs": sum(len(t.intermediate_values) for t in trials),
                "best": result.best_value,
                "pruned": result.counts.get("PRUNED", 0),
                "seconds": seconds,
            }
    direction = spec.study.direction if spec is not None else "maximize"
    none = out["none"]
    shape = replay_shape(spec) if spec is not None else {"n_val": 0, "steps_per_epoch": 1}
    for pruner, row in out.items():
        share = ratio(row["epochs"], none["epochs"])
        gap_pp = (none["best"] - row["best"]) * 100 * (1 if direction == "maximize" else -1)
        figure = f"{row['epochs']} epochs ({share:.0%}), best {spec.study.metric if spec else ''} {row['best']:.4f}, {row['pruned']} pruned, {row['seconds']:.0f} s"
        if pruner == "none":
            item.rows.append(Row("pruner none (reference)", figure))
        else:
            met = share <= 0.5 and gap_pp <= 0.5
            item.rows.append(
                Row(f"**pruner {pruner}**", f"{figure}; {gap_pp:.2f} pp below none", "<= 50% epochs, <= 0.5 pp", met)
            )
    replays = {}
    if spec is not None:
        for label, (kind, pruner_obj) in replay_candidates(spec, shape["n_val"]).items():
            epochs, best = replay(
                curves, pruner_obj, name=f"prune-{kind}", direction=direction, steps_per_epoch=shape["steps_per_epoch"]
            )
            gap_pp = (none["best"] - best) * 100 * (1 if direction == "maximize" else -1)
            replays[label] = {"epochs": epochs, "best": best}
            item.rows.append(
                Row(
                    f"replay: {label}",
                    f"{epochs} epochs ({ratio(epochs, none['epochs']):.0%}), {gap_pp:.2f} pp below none",
                )
            )
        spread = hyperband_spread(curves, spec, direction=direction, **shape)
        shares = sorted(ratio(e, none["epochs"]) for e, _ in spread)
        gaps = [(none["best"] - best) * 100 * (1 if direction == "maximize" else -1) for _, best in spread]
        replays["hyperband, other study names"] = [{"epochs": e, "best": best} for e, best in spread]
        item.rows.append(
            Row(
                f"replay: hyperband, autocnn's settings, {len(spread)} other study names",
                f"{shares[0]:.0%} / {median(shares):.0%} / {shares[-1]:.0%} of the epochs (min / median / max), "
                f"at most {max(gaps):.2f} pp below none",
            )
        )
    same = all(p == params["none"] for p in params.values())
    item.notes += [
        f"Spec: studies/digits.yaml with study.trials={settings.prune_trials}, train.epochs={settings.prune_epochs}, sampler "
        f"random (seed {base.get('seed', 0)}), study.defaults off; every pruner waits for the 60-step judge floor and "
        "cuts only beyond the validation noise band: "
        f"all three runs trained identical configs: {'yes' if same else 'NO'}. Target: median or hyperband meets both bounds.",
        "Replay rows: the none run's learning curves fed to other pruner settings in an in-memory Optuna study (no training); "
        "the first two replay autocnn's own settings and must match the real runs above.",
    ]
    item.raw = {"runs": out, "identical_configs": same, "curves": curves, "replays": replays}
    return item


# --------------------------------------------------------------------------- item 4


def autocnn_command() -> list[str]:
    script = Path(sys.executable).with_name("autocnn")
    return [str(script)] if script.exists() else [sys.executable, "-m", "autocnn"]


def run_seconds(cmd: Sequence[str], *, cwd: Path, repeats: int) -> tuple[float, list[float]]:
    """Median wall time of a command (after one untimed run that warms the disk cache)."""
    subprocess.run(cmd, cwd=cwd, capture_output=True, check=False)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, check=False)
        times.append(time.perf_counter() - start)
        if proc.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)} exited {proc.returncode}: {proc.stderr[-2000:]}")
    return median(times), times


HEAVY_PROBE = """
import runpy, sys
sys.argv = ["autocnn", *sys.argv[1:]]
try:
    runpy.run_module("autocnn", run_name="__main__")
except SystemExit:
    pass
print("HEAVY:" + ",".join(m for m in {mods!r} if m in sys.modules), file=sys.stderr)
"""


def heavy_imports(args: Sequence[str], cwd: Path) -> list[str]:
    probe = HEAVY_PROBE.format(mods=HEAVY_MODULES)
    proc = subprocess.run([sys.executable, "-c", probe, *args], cwd=cwd, capture_output=True, text=True, check=False)
    line = [x for x in proc.stderr.splitlines() if x.startswith("HEAVY:")]
    return [m for m in line[-1].removeprefix("HEAVY:").split(",") if m] if line else ["?"]


def twenty_classes_spec(work: Path) -> Path:
    """studies/20classes.yaml over a generated 20-class folder; timm models without downloads."""
    raw = yaml.safe_load((REPO / "studies" / "20classes.yaml").read_text())
    root = write_imagefolder(work / "data" / "20classes", 20 * 20, 32, 20, seed=1)
    raw["data"]["root"] = str(root)
    for name, space in raw["models"].items():
        if name != "custom_cnn":
            space["pretrained"] = False
    return write_spec(work / "specs", raw)


def item_startup(settings: Settings, work: Path, timings: dict[str, list[TrialTiming]]) -> Item:
    item = Item(4, "Start-up and fixed per-trial cost")
    cmd = autocnn_command()
    with timed(item):
        help_s, help_all = run_seconds([*cmd, "--help"], cwd=work, repeats=settings.startup_repeats)
        spec = twenty_classes_spec(work)
        validate_s, validate_all = run_seconds(
            [*cmd, "validate", str(spec)], cwd=work, repeats=settings.startup_repeats
        )
        heavy_help = heavy_imports(["--help"], work)
        heavy_validate = heavy_imports(["validate", str(spec)], work)
    item.rows += [
        Row("`autocnn --help`", f"{help_s:.2f} s", "<= 0.5 s", help_s <= 0.5),
        Row("`autocnn validate studies/20classes.yaml` (generated 20-class folder)", f"{validate_s:.2f} s"),
    ]
    item.raw = {
        "help_s": help_all,
        "validate_s": validate_all,
        "heavy_help": heavy_help,
        "heavy_validate": heavy_validate,
    }
    for label, trials in timings.items():
        if not trials:
            continue
        fixed = median([t.fixed_s for t in trials])
        before, after = median([t.before_s for t in trials]), median([t.after_s for t in trials])
        item.rows.append(
            Row(
                f"fixed per-trial overhead, {label}",
                f"{fixed:.2f} s (before epoch 1: {before:.2f} s, after the last: {after:.2f} s; first trial {trials[0].fixed_s:.2f} s)",
                "<= 1 s",
                fixed <= 1.0,
            )
        )
        item.raw[f"fixed_s {label}"] = [asdict(t) for t in trials]
    item.notes += [
        f"Median of {settings.startup_repeats} runs each, after one untimed run. Heavy modules imported by `--help`: "
        f"{', '.join(heavy_help) or 'none'}; by `validate` (a spec naming timm backbones): {', '.join(heavy_validate) or 'none'}.",
        "Fixed per-trial overhead: Optuna's trial start-to-complete wall time minus every epoch interval (item 1's trials): "
        "sampling, MLflow run creation and params, model build, model facts, final evaluation, confusion matrix and per-class "
        "artifacts, best weights, run close. The first trial of a process also pays one-off imports (timm, matplotlib).",
    ]
    return item


# --------------------------------------------------------------------------- item 5


PEAK_WRAPPER = (
    "import resource, subprocess, sys\n"
    "rc = subprocess.run(sys.argv[1:], stdout=subprocess.DEVNULL).returncode\n"
    "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)\n"
    "sys.exit(rc)\n"
)

CACHE_PROBE = """
import json, sys
from pathlib import Path
import numpy, PIL.Image, sklearn.model_selection
from autocnn.data import DataCache
from autocnn.spec import load_spec

def mem():
    out = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            out[key] = int(value.split()[0]) * 1024
    return out

spec = load_spec(sys.argv[1])
try:
    Path("/proc/self/clear_refs").write_text("5")  # reset the peak to the current RSS
except OSError:
    pass
before = mem()
data = DataCache(spec).get()
after = mem()
n = sum(len(s) for s in (data.train, data.val, data.test) if s is not None)
print(json.dumps({"before": before, "after": after, "nbytes": data.nbytes, "n": n, "size": spec.data.image_size}))
"""


def peak_rss_mb(cmd: Sequence[str], *, cwd: Path) -> float:
    """Peak RSS of a command run in its own child (ru_maxrss of the waited-for child, KiB)."""
    proc = subprocess.run(
        [sys.executable, "-c", PEAK_WRAPPER, *cmd], cwd=cwd, capture_output=True, text=True, check=False
    )
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} exited {proc.returncode}: {proc.stderr[-2000:]}")
    return int(proc.stdout.strip().splitlines()[-1]) / 1024


def imagefolder_study_spec(work: Path, n: int, epochs: int) -> Path:
    root = write_imagefolder(work / "data" / "mem", n, 96, 10, seed=2)
    raw = {
        "name": "mem-imagefolder",
        "seed": 0,
        "data": {"source": "imagefolder", "root": str(root), "split": {"val": 0.15, "test": 0.15}, "image_size": 96},
        "study": {"trials": 1, "metric": "val_accuracy", "pruner": "none"},
        "train": {"epochs": epochs, "batch_size": 32, "lr": 1e-3, "weight_decay": 1e-4},
        "models": {"custom_cnn": {"depth": 4, "width": 32, "dropout": 0.2}},
    }
    return write_spec(work / "mem", raw)


def item_memory(settings: Settings, work: Path) -> Item:
    item = Item(5, "Memory")
    cmd = autocnn_command()
    with timed(item):
        digits = yaml.safe_load((REPO / "studies" / "digits.yaml").read_text())
        digits["study"]["trials"] = 2
        digits_spec = write_spec(work / "mem-digits", digits)
        digits_mb = peak_rss_mb([*cmd, "study", str(digits_spec), "--trials", "2"], cwd=digits_spec.parent)
        folder_spec = imagefolder_study_spec(work, settings.mem_images, settings.mem_epochs)
        folder_mb = peak_rss_mb([*cmd, "study", str(folder_spec)], cwd=folder_spec.parent)
        probe = subprocess.run(
            [sys.executable, "-c", CACHE_PROBE, str(folder_spec)], capture_output=True, text=True, check=True, cwd=work
        )
        cache = json.loads(probe.stdout.strip().splitlines()[-1])
    raw_bytes = cache["n"] * cache["size"] ** 2 * 3
    steady = (cache["after"]["VmRSS"] - cache["before"]["VmRSS"]) / raw_bytes
    peak = (cache["after"]["VmHWM"] - cache["before"]["VmRSS"]) / raw_bytes
    item.rows += [
        Row("peak RSS, digits study (2 trials, `autocnn study`)", f"{digits_mb:,.0f} MB"),
        Row(
            f"peak RSS, {cache['n']:,}-image 96 px imagefolder study (1 trial, {settings.mem_epochs} epochs)",
            f"{folder_mb:,.0f} MB",
        ),
        Row("raw uint8 size of those images", f"{raw_bytes / 1e6:.1f} MB"),
        Row("**image cache RSS / raw size** (after loading)", f"{steady:.2f}x", "<= 1.5x", steady <= 1.5),
        Row("peak RSS growth while decoding / raw size", f"{peak:.2f}x", "<= 1.5x", peak <= 1.5),
    ]
    item.raw = {
        "digits_peak_mb": digits_mb,
        "imagefolder_peak_mb": folder_mb,
        "cache_probe": cache,
        "raw_bytes": raw_bytes,
    }
    item.notes.append(
        "Peak RSS: `ru_maxrss` of the `autocnn study` child process. Cache: a fresh process imports everything first, "
        "then loads the DataCache; growth of VmRSS (and of VmHWM, reset before loading) over the raw N x 96 x 96 x 3 bytes."
    )
    return item


# --------------------------------------------------------------------------- main


def quiet_machine(max_load: float = 1.3) -> bool:
    return os.getloadavg()[0] < max_load


ITEMS = (1, 2, 3, 4, 5)


def run_items(settings: Settings, wanted: Sequence[int], work: Path, log: Callable[[str], None]) -> list[Item]:
    items: list[Item] = []
    timings: dict[str, list[TrialTiming]] = {}
    if 1 in wanted or 4 in wanted:
        log("item 1: trial loop vs bare loop")
        loop_item, timings = item_trial_loop(settings, work)
        if 1 in wanted:
            items.append(loop_item)
    steps: list[tuple[int, str, Callable[[], Item]]] = [
        (2, "data pipeline", lambda: item_data_pipeline(settings)),
        (3, "pruning", lambda: item_pruning(settings, work)),
        (4, "start-up", lambda: item_startup(settings, work, timings)),
        (5, "memory", lambda: item_memory(settings, work)),
    ]
    for number, name, fn in steps:
        if number in wanted:
            log(f"item {number}: {name}")
            items.append(fn())
    return sorted(items, key=lambda i: i.number)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smoke run: tiny sizes, one repeat (minutes)")
    parser.add_argument("--items", type=int, nargs="+", default=list(ITEMS), choices=ITEMS)
    parser.add_argument(
        "--out", type=Path, default=None, help="results markdown (default benchmarks/results.md; --quick: a temp dir)"
    )
    parser.add_argument("--keep", action="store_true", help="keep the temp working folder")
    parser.add_argument("--models", nargs="+", choices=sorted(CASES), default=sorted(CASES), help="item 1 models")
    parser.add_argument("--bare-loop-child", metavar="JOB", help=argparse.SUPPRESS)  # a plain bare loop's own process
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.bare_loop_child:
        bare_loop_child(args.bare_loop_child)
        return 0
    settings = settings_for(args.quick, args.models)
    quiet = quiet_machine()
    info = machine_info()
    info["quiet"] = "yes" if quiet else f"no (load {info['load_before']} when starting)"
    info["notes"] = (
        []
        if quiet
        else [
            "The machine was busy when this run started: absolute images/s are low; the side-by-side ratios still hold."
        ]
    )
    work = Path(tempfile.mkdtemp(prefix="autocnn-bench-"))
    quick_out = Path(tempfile.gettempdir()) / "autocnn-bench-quick" / "results.md"
    out = args.out or (quick_out if args.quick else REPO / "benchmarks" / "results.md")
    started = time.perf_counter()

    def log(text: str) -> None:
        print(f"[{time.perf_counter() - started:6.0f} s] {text}", flush=True)

    try:
        items = run_items(settings, sorted(set(args.items)), work, log)
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    info["total_seconds"] = round(time.perf_counter() - started)
    command = "benchmarks/run.py" + (" --quick" if args.quick else "")
    write_results(out, info, items, command=command)
    print(render_markdown(info, items, command=command))
    print(f"wrote {out} and {out.with_suffix('.json')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
