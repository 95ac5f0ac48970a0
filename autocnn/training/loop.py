"""The training loop: knows nothing of Optuna or MLflow, it yields one EpochMetrics per epoch.

The caller reports, logs and prunes; the loop only trains, evaluates and keeps the best weights.
"""

from __future__ import annotations

import ctypes
import math
import os
import time
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from autocnn.data.arrays import Split
from autocnn.models.catalog import Preprocess
from autocnn.training.sampling import epoch_order

if TYPE_CHECKING:
    from autocnn.spec.objectives import Objective
    from autocnn.training.config import TrainConfig


NO_DECAY = ".no_decay"  # the suffix of an optimizer group's twin without weight decay (norm scales, biases)


class NonFiniteLossError(RuntimeError):
    """The loss became NaN or infinite: training has diverged (usually a too-high learning rate)."""


@dataclass(frozen=True)
class TrainSettings:
    epochs: int
    lr: float
    weight_decay: float
    scheduler: str = "cosine"
    early_stopping: int = 0
    label_smoothing: float = 0.0
    precision: str = "auto"
    monitor: str = "val_accuracy"
    mode: str = "max"
    # Early stopping never acts before this many optimizer steps (autocnn.training.budget's judge floor) ...
    min_steps: int = 0
    # ... and, with n validation images, counts an epoch as progress only when it beats the last
    # progress by more than the sampling error; 0 counts any improvement.
    noise_n: int = 0

    @classmethod
    def from_trial(cls, train: TrainConfig, objective: Objective, **resolved: Any) -> TrainSettings:
        """`resolved` overrides what the caller has worked out: `epochs: auto` as a number, the
        budget's patience and judge floor. The batch size is the batches' business, not the loop's."""
        sampled = {
            "epochs": train.epochs,
            "lr": train.lr,
            "weight_decay": train.weight_decay,
            "scheduler": train.scheduler,
            "early_stopping": train.early_stopping,
            "label_smoothing": train.label_smoothing,
            "precision": train.precision,
        }
        return cls(**(sampled | resolved), monitor=objective.metric, mode="max" if objective.maximize else "min")


@dataclass(frozen=True)
class EpochMetrics:
    epoch: int  # 1-based; the Optuna step and the MLflow step
    train_loss: float
    train_accuracy: float  # on the training batches as trained (augmented, dropout on): memorisation shows here
    val_loss: float
    val_accuracy: float
    val_macro_f1: float
    val_balanced_accuracy: float
    lr: float  # the last optimizer group's: the head's, or the whole model's
    epoch_seconds: float
    train_images_per_s: float
    group_lrs: dict[str, float] = field(default_factory=dict)  # every named group's, when there are several

    def as_dict(self) -> dict[str, float]:
        """MLflow's metrics: each group's learning rate as `lr.<group>` beside the plain ones."""
        plain = {k: float(v) for k, v in asdict(self).items() if k not in ("epoch", "group_lrs")}
        return plain | {f"lr.{name}": float(lr) for name, lr in self.group_lrs.items()}


@dataclass(frozen=True)
class Evaluation:
    loss: float
    labels: np.ndarray
    preds: np.ndarray
    probs: np.ndarray


def pick_device() -> torch.device:
    return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")


# glibc's mallopt parameters (malloc.h) and how much freed memory a training process keeps.
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
KEEP_FREED_BYTES = 256 << 20


def keep_freed_memory_for_reuse(limit: int = KEEP_FREED_BYTES) -> bool:
    """Let glibc keep up to `limit` bytes of freed memory for reuse; False where it cannot.

    Every CPU training step frees and reallocates the same activation buffers. With glibc's
    defaults the large ones are mmap'd per allocation or trimmed back to the kernel when freed,
    so each step page-faults them in again, zero-filled: a fifth or more of a small CNN's epoch on
    the 2-core machine (benchmarks/results.md). PyTorch's caching allocator spares the GPU this;
    on the CPU, raising both thresholds does the same. Process-wide and one-way, which suits a
    process that trains; elsewhere than glibc (macOS, musl) nothing changes.
    """
    try:
        if not os.confstr("CS_GNU_LIBC_VERSION"):
            return False
        libc = ctypes.CDLL("libc.so.6")
    except (OSError, ValueError, AttributeError):
        return False
    # The mmap threshold first: setting either one turns off glibc's sliding default.
    return bool(libc.mallopt(_M_MMAP_THRESHOLD, limit)) and bool(libc.mallopt(_M_TRIM_THRESHOLD, limit))


class TensorBatches:
    """Normalised NCHW float batches from an in-memory NHWC uint8 split.

    NHWC uint8 viewed as NCHW is already channels_last, so batches need no layout copy; the
    permutation is drawn from a generator seeded per epoch, so a trial is reproducible.
    """

    def __init__(
        self,
        split: Split,
        pre: Preprocess,
        *,
        batch_size: int,
        shuffle: bool,
        seed: int = 0,
        device: torch.device | None = None,
        balanced: bool = False,
    ) -> None:
        self.images = torch.from_numpy(split.images).permute(0, 3, 1, 2)
        self.labels = torch.from_numpy(split.labels)
        self.targets = torch.from_numpy(split.loss_targets)
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.balanced = balanced  # shuffle only: draw classes evenly (autocnn.training.sampling)
        self.seed = seed
        self.device = device or torch.device("cpu")
        self.epoch = 0
        mean = torch.tensor(pre.mean).view(1, 3, 1, 1) * 255.0
        std = torch.tensor(pre.std).view(1, 3, 1, 1) * 255.0
        self.shift, self.scale = mean.to(self.device), (1.0 / std).to(self.device)
        # A last batch of 1 breaks BatchNorm in training; drop a short tail when shuffling.
        self.drop_last = shuffle and len(self.labels) > batch_size

    def __len__(self) -> int:
        n = len(self.labels)
        return n // self.batch_size if self.drop_last else math.ceil(n / self.batch_size)

    def set_epoch(self, epoch: int) -> None:
        """The shuffle order depends on the epoch only, so a resumed trial sees the same batches."""
        self.epoch = epoch

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        n = len(self.labels)
        if self.shuffle:
            gen = torch.Generator().manual_seed(self.seed * 1000 + self.epoch)
            order = epoch_order(self.labels, gen, balanced=self.balanced)
        else:
            order = torch.arange(n)
        for i in range(len(self)):
            idx = order[i * self.batch_size : (i + 1) * self.batch_size]
            x = self.images[idx].to(self.device, non_blocking=True).float()
            yield (x - self.shift) * self.scale, self.targets[idx].to(self.device, non_blocking=True)


class Trainer:
    """AdamW + scheduler + early stopping over one model; its state can be saved and resumed."""

    def __init__(
        self,
        model: nn.Module,
        settings: TrainSettings,
        *,
        steps_per_epoch: int,
        device: torch.device,
        param_groups: list[dict[str, Any]] | None = None,
        channels_last: bool = True,
        class_weights: torch.Tensor | None = None,
    ) -> None:
        self.settings = settings
        self.device = device
        self.channels_last = channels_last
        if device.type == "cpu":
            keep_freed_memory_for_reuse()
        self.model = model.to(device, memory_format=torch.channels_last if channels_last else torch.preserve_format)
        self.amp_dtype = autocast_dtype(device, settings.precision, model)
        self.scaler = torch.amp.GradScaler(device.type, enabled=self.amp_dtype == torch.float16)
        groups = param_groups or [{"params": [p for p in model.parameters() if p.requires_grad]}]
        self.optimizer = torch.optim.AdamW(groups, lr=settings.lr, weight_decay=settings.weight_decay)
        self.scheduler, self.step_per_batch = _build_scheduler(self.optimizer, settings, steps_per_epoch)
        # Training's loss alone is weighted (train.class_weights); validation judges unweighted.
        weight = class_weights.to(device) if class_weights is not None else None
        self.criterion = nn.CrossEntropyLoss(weight=weight, label_smoothing=settings.label_smoothing)
        self.epoch = 0
        self.best_value: float | None = None
        self.best_epoch = 0
        self.best_state: dict[str, torch.Tensor] | None = None
        self.best_eval: Evaluation | None = None  # the best epoch's validation, kept for the trial's end
        self.stale_epochs = 0
        self.progress_value: float | None = None  # the value at the last epoch that counted as progress
        self.steps = 0  # optimizer steps taken

    # ---------------------------------------------------------------- one epoch each way

    def _autocast(self) -> Any:
        return torch.autocast(
            self.device.type, dtype=self.amp_dtype or torch.float32, enabled=self.amp_dtype is not None
        )

    def train_one_epoch(self, batches: Iterable[tuple[torch.Tensor, torch.Tensor]]) -> tuple[float, float, int]:
        """(mean loss, accuracy, images seen) over the epoch's batches as they were trained."""
        self.model.train()
        total, seen = torch.zeros((), device=self.device), 0
        correct = torch.zeros((), device=self.device, dtype=torch.long)
        for x, y in batches:
            if self.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            with self._autocast():
                logits = self.model(x)
                loss = self.criterion(logits, y)
            self.optimizer.zero_grad(set_to_none=True)
            self.scaler.scale(loss).backward()
            self.scaler.step(self.optimizer)
            self.scaler.update()
            if self.step_per_batch and self.scheduler is not None:
                self.scheduler.step()
            total += loss.detach() * len(y)
            hard = y.argmax(dim=1) if y.dim() == 2 else y  # soft targets: their most likely class
            correct += (logits.detach().argmax(dim=1) == hard).sum()
            seen += len(y)
            self.steps += 1
        mean_loss = float(total) / max(seen, 1)
        if not math.isfinite(mean_loss):
            raise NonFiniteLossError(f"training loss became {mean_loss} at epoch {self.epoch + 1}")
        return mean_loss, int(correct) / max(seen, 1), seen

    @torch.no_grad()
    def evaluate(self, batches: Iterable[tuple[torch.Tensor, torch.Tensor]]) -> Evaluation:
        self.model.eval()
        losses, labels, probs = [], [], []
        for x, y in batches:
            if self.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            with self._autocast():
                logits = self.model(x).float()
            losses.append(nn.functional.cross_entropy(logits, y, reduction="sum"))
            probs.append(logits.softmax(dim=1).cpu())
            labels.append(y.cpu())
        n = sum(len(y) for y in labels)
        prob = torch.cat(probs).numpy()
        return Evaluation(
            loss=float(torch.stack(losses).sum()) / max(n, 1),
            labels=torch.cat(labels).numpy(),
            preds=prob.argmax(axis=1),
            probs=prob,
        )

    # ---------------------------------------------------------------- the loop

    def fit(self, train: Iterable, val: Iterable) -> Iterator[EpochMetrics]:
        """Train from the current epoch to `epochs`, yielding metrics; stops early on a plateau."""
        from sklearn.metrics import accuracy_score, balanced_accuracy_score, f1_score

        while self.epoch < self.settings.epochs:
            start = time.perf_counter()
            lrs = self.group_lrs()
            lr = self.optimizer.param_groups[-1]["lr"]
            if hasattr(train, "set_epoch"):
                train.set_epoch(self.epoch)
            train_loss, train_accuracy, seen = self.train_one_epoch(train)
            train_seconds = time.perf_counter() - start
            ev = self.evaluate(val)
            self.epoch += 1
            metrics = EpochMetrics(
                epoch=self.epoch,
                train_loss=train_loss,
                train_accuracy=train_accuracy,
                val_loss=ev.loss,
                val_accuracy=float(accuracy_score(ev.labels, ev.preds)),
                val_macro_f1=float(f1_score(ev.labels, ev.preds, average="macro", zero_division=0)),
                val_balanced_accuracy=float(balanced_accuracy_score(ev.labels, ev.preds)),
                lr=lr,
                epoch_seconds=time.perf_counter() - start,
                train_images_per_s=seen / max(train_seconds, 1e-9),
                group_lrs=lrs,
            )
            self._end_epoch(metrics)
            if self.best_epoch == self.epoch:
                self.best_eval = ev  # the best weights' evaluation: no second pass at the trial's end
            yield metrics
            if self.should_stop():
                return

    def group_lrs(self) -> dict[str, float]:
        """The learning rate each named group trains this epoch with; empty for a single group.

        A group's twin without weight decay (`<name>.no_decay`) trains at its rate and is not repeated.
        """
        groups = [g for g in self.optimizer.param_groups if not str(g.get("name", "")).endswith(NO_DECAY)]
        if len(groups) < 2:
            return {}
        return {str(g.get("name", i)): float(g["lr"]) for i, g in enumerate(groups)}

    def should_stop(self) -> bool:
        """Early stopping: `early_stopping` epochs without progress, once past the judge floor."""
        patience = self.settings.early_stopping
        return bool(patience) and self.stale_epochs >= patience and self.steps >= self.settings.min_steps

    def _end_epoch(self, metrics: EpochMetrics) -> None:
        value = getattr(metrics, self.settings.monitor)
        if not math.isfinite(metrics.val_loss):
            raise NonFiniteLossError(f"validation loss became {metrics.val_loss} at epoch {metrics.epoch}")
        if self.scheduler is not None and not self.step_per_batch:
            if isinstance(self.scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
                self.scheduler.step(value)
            else:
                self.scheduler.step()
        if self.is_better(value):
            self.best_value, self.best_epoch = value, metrics.epoch
            self.best_state = {k: v.detach().to("cpu", copy=True) for k, v in self.model.state_dict().items()}
        if self.is_progress(value):
            self.progress_value, self.stale_epochs = value, 0
        else:
            self.stale_epochs += 1

    def is_better(self, value: float) -> bool:
        if self.best_value is None:
            return True
        return value > self.best_value if self.settings.mode == "max" else value < self.best_value

    def is_progress(self, value: float) -> bool:
        """Better than the last progress by more than one sampling error of the validation set.

        Without it, a plateau that wobbles by one image resets the patience for ever, and a
        trial on a small validation set never stops; the margin is cumulative, so slow, steady
        learners still count as progressing.
        """
        if self.progress_value is None:
            return True
        margin = 0.0
        if self.settings.noise_n:
            from autocnn.training.budget import improvement_margin

            margin = improvement_margin(self.settings.monitor, self.progress_value, self.settings.noise_n)
        if self.settings.mode == "max":
            return value > self.progress_value + margin
        return value < self.progress_value - margin

    def restore_best(self) -> None:
        """Load the best epoch's weights back, for the final artifacts and the logged model."""
        if self.best_state is not None:
            self.model.load_state_dict(self.best_state)

    # ---------------------------------------------------------------- resumable state

    def state_dict(self) -> dict[str, Any]:
        """Everything a retried trial needs to continue; saved after every epoch.

        When the epoch just ended is the best one, the best weights *are* the model's: they are
        stored once (a quarter less to write each epoch) and copied back on load.
        """
        best_is_model = self.best_state is not None and self.best_epoch == self.epoch
        return {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict() if self.scheduler is not None else None,
            "scaler": self.scaler.state_dict(),
            "epoch": self.epoch,
            "best_value": self.best_value,
            "best_epoch": self.best_epoch,
            "best_state": None if best_is_model else self.best_state,
            "best_is_model": best_is_model,
            "stale_epochs": self.stale_epochs,
            "progress_value": self.progress_value,
            "steps": self.steps,
            "rng": {"torch": torch.get_rng_state(), "numpy": _numpy_rng_state()},
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        if self.scheduler is not None and state["scheduler"] is not None:
            self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        self.epoch = int(state["epoch"])
        self.best_value = state["best_value"]
        self.best_epoch = int(state["best_epoch"])
        self.best_state = state["best_state"]
        if state.get("best_is_model"):
            self.best_state = {k: v.detach().to("cpu", copy=True) for k, v in self.model.state_dict().items()}
        self.stale_epochs = int(state["stale_epochs"])
        self.progress_value = state.get("progress_value", self.best_value)
        self.steps = int(state.get("steps", 0))
        torch.set_rng_state(state["rng"]["torch"])
        np.random.set_state(_numpy_rng_tuple(state["rng"]["numpy"]))


def _numpy_rng_state() -> dict[str, Any]:
    name, keys, pos, has_gauss, cached = np.random.get_state()
    return {"name": name, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": pos, "gauss": [has_gauss, cached]}


def _numpy_rng_tuple(state: dict[str, Any]) -> tuple:
    keys = state["keys"].numpy().astype(np.uint32)
    return (state["name"], keys, int(state["pos"]), int(state["gauss"][0]), float(state["gauss"][1]))


def cpu_has_native_bf16() -> bool:
    """Whether the CPU computes in bf16 natively (AVX512-BF16 or AMX), so autocast pays off.

    There bf16 autocast trained the custom CNN 1.37x faster at the same val accuracy (digits,
    3 seeds) and resnet18 as fast, same accuracy; where bf16 is emulated (AVX2) it ran at 0.1x
    (benchmarks/results.md). torch.cpu's probes are private, so a missing one reads as no.
    """
    probes = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(getattr(torch.cpu, name, lambda: False)() for name in probes)


def autocast_dtype(device: torch.device, precision: str, model: nn.Module | None = None) -> torch.dtype | None:
    """The autocast dtype for `train.precision`; None: plain fp32.

    auto: mixed precision on CUDA (bf16 where supported, else fp16) and on CPUs with native bf16,
    unless `model` (the one about to train) has grouped or depthwise convolutions: their bf16
    backward pass has no fast CPU kernel, and efficientnet_lite0 trained at about half its fp32
    speed under bf16 autocast on an AVX512-BF16 Xeon. mixed: always (bf16, or fp16 on a GPU
    without bf16); fp32: never.
    """
    if precision == "fp32":
        return None
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if precision == "mixed":
        return torch.bfloat16
    if device.type == "cpu" and cpu_has_native_bf16() and not (model is not None and has_grouped_convs(model)):
        return torch.bfloat16
    return None


def has_grouped_convs(model: nn.Module) -> bool:
    """Whether any convolution of `model` splits its channels into groups (depthwise included)."""
    return any(isinstance(m, nn.modules.conv._ConvNd) and m.groups > 1 for m in model.modules())


def _build_scheduler(
    optimizer: torch.optim.Optimizer, settings: TrainSettings, steps_per_epoch: int
) -> tuple[Any, bool]:
    """(scheduler or None, whether it steps per batch)."""
    sched = torch.optim.lr_scheduler
    total = max(settings.epochs * steps_per_epoch, 1)
    if settings.scheduler == "cosine":
        return sched.CosineAnnealingLR(optimizer, T_max=total), True
    if settings.scheduler == "onecycle":
        max_lr = [g["lr"] for g in optimizer.param_groups]
        return sched.OneCycleLR(optimizer, max_lr=max_lr, total_steps=total), True
    if settings.scheduler == "plateau":
        patience = max(1, settings.early_stopping // 2) if settings.early_stopping else 2
        return sched.ReduceLROnPlateau(optimizer, mode=settings.mode, factor=0.3, patience=patience), False
    return None, False
