"""The study's plan: how much training each trial gets, when it is first judged, what fits the time.

`autocnn validate` prints it and `autocnn study` prints its warnings before trial 1, because the
amount of training per trial decides a small-data study more than any searched parameter, and
a spec gives no hint of it: "10 epochs at batch 64" is 130 optimizer steps on 800 images.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

from autocnn.search.space import study_settings
from autocnn.spec.fields import Choices, Range
from autocnn.spec.schema import Spec
from autocnn.training.budget import (
    JUDGE_FLOOR_STEPS,
    MIN_TRIAL_STEPS,
    AutoEpochs,
    auto_epochs,
    first_judged_epoch,
    noise_band,
    steps_per_epoch,
)

if TYPE_CHECKING:
    from autocnn.data.arrays import Dataset

PROBE_STEPS = 4  # timed training steps per model family, after one warm-up step


def _int_values(value: Any) -> list[int]:
    if isinstance(value, Range):
        return [int(value.low), int(value.high)]
    if isinstance(value, Choices):
        return sorted(int(v) for v in value.choices)
    return [int(value)]


@dataclass(frozen=True)
class Plan:
    """What the spec's trials get, over the batch sizes and epochs it searches."""

    n_train: int
    n_val: int
    num_classes: int
    batch_sizes: list[int]
    epochs: list[int] | None  # None: `auto`
    auto: dict[int, AutoEpochs]  # batch size -> what auto means (empty unless epochs is auto)
    seconds_per_step: dict[str, float] = field(default_factory=dict)  # model family -> probe
    input_sizes: dict[str, int] = field(default_factory=dict)  # model family -> the side it trains at
    timeout: float | None = None
    target_trials: int | None = None
    warnings: list[str] = field(default_factory=list)

    def steps_per_epoch(self, batch_size: int) -> int:
        return steps_per_epoch(self.n_train, batch_size)

    def max_epochs(self, batch_size: int) -> int:
        if self.epochs is None:
            return self.auto[batch_size].cap
        return max(self.epochs)

    def trial_steps(self) -> tuple[int, int]:
        """Fewest and most optimizer steps a trial can get (auto: up to its cap)."""
        lows, highs = [], []
        for b in self.batch_sizes:
            per = self.steps_per_epoch(b)
            lows.append(per * (min(self.epochs) if self.epochs else self.max_epochs(b)))
            highs.append(per * self.max_epochs(b))
        return min(lows), max(highs)

    def first_judgement(self) -> tuple[int, int]:
        """(epoch, optimizer steps) of the earliest pruning or early-stopping decision."""
        options = []
        for b in self.batch_sizes:
            per = self.steps_per_epoch(b)
            epoch = first_judged_epoch(per, self.max_epochs(b))
            options.append((per * epoch, epoch))
        steps, epoch = min(options)
        return epoch, steps

    def largest_cap(self) -> int:
        """The most epochs any trial may train: Hyperband's maximum resource."""
        return max(self.max_epochs(b) for b in self.batch_sizes)

    def seconds_per_trial(self, model: str) -> tuple[float, float] | None:
        """Fewest and most seconds a full-length trial of `model` takes, from the probe."""
        per_step = self.seconds_per_step.get(model)
        if per_step is None:
            return None
        low, high = self.trial_steps()
        # evaluation: a forward pass of the validation images each epoch, about a third of a step per image
        eval_share = 1 + self.n_val / (3 * max(self.n_train, 1))
        return low * per_step * eval_share, high * per_step * eval_share

    @property
    def slowest_step_seconds(self) -> float | None:
        """The slowest family's probed seconds per step: what sizes `epochs: auto` under a timeout."""
        return max(self.seconds_per_step.values()) if self.seconds_per_step else None

    def trial_seconds_range(self) -> tuple[float, float] | None:
        """Shortest and longest full-length trial over all probed model families."""
        spans = [span for model in self.seconds_per_step if (span := self.seconds_per_trial(model)) is not None]
        if not spans:
            return None
        return min(s[0] for s in spans), max(s[1] for s in spans)

    def noise_at_half(self) -> float:
        """The noise band of two accuracies near 0.5 on this validation set: the widest it gets."""
        return noise_band("val_accuracy", 0.5, 0.5, self.n_val)


_SPEC = object()  # "as the spec says", for the timeout and the trial target


def make_plan(
    spec: Spec,
    data: Dataset,
    *,
    seconds_per_step: dict[str, float] | None = None,
    input_sizes: dict[str, int] | None = None,
    timeout: Any = _SPEC,
    target_trials: Any = _SPEC,
) -> Plan:
    """The plan for `spec` on `data`; with probe timings, also what fits in the study's time.

    `timeout` and `target_trials` default to the spec's; a command line can override them.
    """
    seconds_per_step = seconds_per_step or {}
    timeout = spec.study.timeout if timeout is _SPEC else timeout
    target_trials = spec.study.target_trials if target_trials is _SPEC else target_trials
    batch_sizes = _int_values(spec.train.batch_size)
    epochs = None if spec.train.epochs == "auto" else _int_values(spec.train.epochs)
    slowest = max(seconds_per_step.values()) if seconds_per_step else None
    auto = {}
    if epochs is None:
        auto = {
            b: auto_epochs(steps_per_epoch(len(data.train), b), seconds_per_step=slowest, timeout=timeout)
            for b in batch_sizes
        }
    plan = Plan(
        n_train=len(data.train),
        n_val=len(data.val),
        num_classes=data.num_classes,
        batch_sizes=batch_sizes,
        epochs=epochs,
        auto=auto,
        seconds_per_step=dict(seconds_per_step),
        input_sizes=dict(input_sizes or {}),
        timeout=timeout,
        target_trials=target_trials,
    )
    return replace(plan, warnings=plan_warnings(spec, plan))


def plan_warnings(spec: Spec, plan: Plan) -> list[str]:
    """Too little training per trial, decisions before the floor, and a budget left unused."""
    out = []
    low, high = plan.trial_steps()
    if low < MIN_TRIAL_STEPS:
        which = "every trial gets" if high < MIN_TRIAL_STEPS else "the shortest trials get"
        out.append(
            f"train.epochs, train.batch_size: {which} {low if high >= MIN_TRIAL_STEPS else high} optimizer steps "
            f"({plan.n_train} training images); models on small data need {MIN_TRIAL_STEPS}+ to leave chance and "
            "converge: raise train.epochs, lower train.batch_size, or set train.epochs: auto"
        )
    epoch, steps = plan.first_judgement()
    if steps < JUDGE_FLOOR_STEPS and (spec.study.pruner != "none" or _early_stopping(spec)):
        out.append(
            f"study.pruner, train.epochs: the shortest trials are judged (pruning, early stopping) after {steps} "
            f"optimizer steps (epoch {epoch}), before the {JUDGE_FLOOR_STEPS} steps models need to leave chance: "
            "give trials more steps (train.epochs, train.batch_size)"
        )
    out.extend(_budget_warnings(spec, plan))
    return out


def _early_stopping(spec: Spec) -> bool:
    value = spec.train.early_stopping
    return spec.train.epochs == "auto" or bool(max(_int_values(value)))


def _budget_warnings(spec: Spec, plan: Plan) -> list[str]:
    span = plan.trial_seconds_range()
    if plan.timeout is None or plan.target_trials is None or span is None:
        return []
    longest = span[1]
    needed = plan.target_trials * longest
    if needed >= 0.5 * plan.timeout:
        return []
    return [
        f"study.trials: {plan.target_trials} trials take at most about {_minutes(needed)} of the "
        f"{_minutes(plan.timeout)} study.timeout; remove study.trials to train until the time is spent"
    ]


def _minutes(seconds: float) -> str:
    return f"{seconds / 60:.0f} min" if seconds >= 120 else f"{seconds:.0f} s"


# --------------------------------------------------------------------------- the timed probe


def probe_seconds_per_step(spec: Spec, data: Dataset) -> dict[str, float]:
    """Seconds per training step of each model family's default configuration, on this machine.

    A handful of steps on the study's own images, at the family's default batch size and input
    size: what the plan needs to say how long trials take, not a benchmark.
    """
    import torch

    from autocnn.search.defaults import default_trials
    from autocnn.search.space import config_from_params
    from autocnn.spec.objectives import primary
    from autocnn.training.assembly import assemble_trial, preprocessing, trial_seeds
    from autocnn.training.loop import TrainSettings

    out: dict[str, float] = {}
    state = torch.get_rng_state()
    try:
        for params in default_trials(spec):
            config = config_from_params(spec, params)
            pre = preprocessing(study_settings(spec), config)
            probed = data if pre.image_size == spec.data.image_size else _random_data(pre.image_size, data)
            batch = min(config.train.batch_size, max(len(probed.train) - 1, 2))
            settings = TrainSettings.from_trial(config.train, primary(spec), epochs=1)
            assembled = assemble_trial(
                study_settings(spec),
                config,
                probed,
                settings,
                seeds=trial_seeds(study_settings(spec), 0),
                pre=pre,
                batch_size=batch,
            )
            out[config.model] = _time_steps(assembled.trainer, assembled.train, batch_size=config.train.batch_size)
    finally:
        torch.set_rng_state(state)
    return out


def _time_steps(trainer: Any, batches: Any, *, batch_size: int) -> float:
    """Seconds per step, scaled to the configured batch size when the data is smaller."""
    loader = list(_take(batches, PROBE_STEPS + 1))
    trainer.train_one_epoch(loader[:1])  # warm-up: first-call allocations and kernel choice
    start = time.perf_counter()
    trainer.train_one_epoch(loader[1:])
    per_step = (time.perf_counter() - start) / max(len(loader) - 1, 1)
    return per_step * batch_size / max(len(loader[0][1]), 1)


def _take(batches: Any, n: int) -> Any:
    while n > 0:
        for item in batches:
            yield item
            n -= 1
            if n == 0:
                return


def _random_data(image_size: int, data: Dataset) -> Dataset:
    """Stand-in images for a backbone whose input size differs from the cached one: timing a step
    needs the right shapes, not the right pixels."""
    import numpy as np

    from autocnn.data.arrays import Dataset, Split

    rng = np.random.default_rng(0)
    n = 64
    images = rng.integers(0, 256, size=(n, image_size, image_size, 3), dtype=np.uint8)
    split = Split(images, (np.arange(n) % data.num_classes).astype(np.int64))
    return Dataset(data.classes, split, split, None)


def input_sizes(spec: Spec) -> dict[str, int]:
    """The side each model family trains at: the spec's data.image_size, or a backbone's own."""
    from autocnn.search.defaults import default_trials
    from autocnn.search.space import config_from_params
    from autocnn.training.assembly import preprocessing

    configs = [config_from_params(spec, params) for params in default_trials(spec)]
    return {config.model: preprocessing(study_settings(spec), config).image_size for config in configs}


def plan_for(spec: Spec, cache: Any, *, probe: bool = True) -> Plan:
    """The plan `autocnn validate` prints: the spec's data decoded, each model family timed."""
    data = cache.get()
    seconds = probe_seconds_per_step(spec, data) if probe else None
    return make_plan(spec, data, seconds_per_step=seconds, input_sizes=input_sizes(spec))


def describe(plan: Plan) -> list[tuple[str, str]]:
    """The plan as rows for `autocnn validate`."""
    low, high = plan.trial_steps()
    rows = [
        ("training images", f"{plan.n_train} ({plan.num_classes} classes); validation {plan.n_val}"),
        (
            "steps per epoch",
            ", ".join(f"{plan.steps_per_epoch(b)} at batch {b}" for b in plan.batch_sizes),
        ),
    ]
    if plan.epochs is None:
        caps = ", ".join(f"batch {b}: cap {a.cap} epochs, patience {a.patience}" for b, a in plan.auto.items())
        rows.append(("epochs", f"auto (noise-aware stop; {caps})"))
    rows.append(("steps per trial", f"{low}" if low == high else f"{low} to {high}"))
    epoch, steps = plan.first_judgement()
    rows.append(
        ("first judgement", f"epoch {epoch} ({steps} optimizer steps): pruning and early stopping wait until then")
    )
    rows.append(
        (
            "noise band",
            f"accuracies within {plan.noise_at_half():.3f} of each other are not told apart ({plan.n_val} images)",
        )
    )
    for model in plan.seconds_per_step:
        span = plan.seconds_per_trial(model)
        if span is not None:
            rows.append(_model_cost_row(plan, model, span))
    span = plan.trial_seconds_range()
    if plan.timeout is not None and span is not None:
        shortest, longest = span
        most, fewest = math.floor(plan.timeout / max(shortest, 1e-9)), math.floor(plan.timeout / longest)
        fit = str(most) if most == fewest else f"{fewest} to {most}"
        target = "until the time is spent" if plan.target_trials is None else f"target {plan.target_trials} trials"
        rows.append(("trials in study.timeout", f"{fit} full-length trials in {_minutes(plan.timeout)} ({target})"))
    return rows


def _model_cost_row(plan: Plan, model: str, span: tuple[float, float]) -> tuple[str, str]:
    """One model family's full-length trial time at its input size, and how many fit the timeout:
    a 224 px fine-tune on a CPU shows here, before the study, that only a few trials fit."""
    low, high = _seconds(span[0]), _seconds(span[1])
    length = low if low == high else f"{low} to {high}"
    size = plan.input_sizes.get(model)
    label = f"{model} trial" + (f" at {size} px" if size else "")
    text = f"{length} at full length (timed probe)"
    if plan.timeout is not None:
        most, fewest = math.floor(plan.timeout / max(span[0], 1e-9)), math.floor(plan.timeout / max(span[1], 1e-9))
        fit = str(most) if most == fewest else f"{fewest} to {most}"
        text += f"; {fit} such trials fit in {_minutes(plan.timeout)}"
    return label, text


def _seconds(value: float) -> str:
    return f"{value / 60:.1f} min" if value >= 120 else f"{value:.0f} s"
