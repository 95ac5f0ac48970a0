"""The reference item 1 measures autocnn against: a minimal hand-written PyTorch training loop.

It stays a plain loop on purpose (no autocnn Trainer, batches or trial assembly): only the model
is autocnn's. The plain variants run in a child process of their own, started as
`python -m benchmarks.bare_loop JOB` and driven one epoch per line over a pipe.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.timing import sync, timed_epochs

REPO = Path(__file__).resolve().parent.parent

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


def default_amp_dtype(device: Any) -> Any:
    """autocnn's own choice (train.precision auto), so 'same settings' holds."""
    from autocnn.training.loop import autocast_dtype

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

        from autocnn.models.build import build_model, preprocess_for
        from autocnn.training.loop import keep_freed_memory_for_reuse

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
        """Nothing to release in-process; there for symmetry with ChildBareLoop."""


def bare_loop(
    case: LoopCase, images: np.ndarray, labels: np.ndarray, *, epochs: int, variant: str, device: Any
) -> float:
    """images/s of a BareLoop over epochs 2..N (epoch 1 warms up)."""
    loop = BareLoop(case, images, labels, epochs=epochs, variant=variant, device=device)
    return timed_epochs([loop.epoch() for _ in range(epochs)])


class ChildBareLoop:
    """A BareLoop in a fresh process (the plain variants), one epoch per request over a pipe.

    The child idles between requests, so epochs here interleave with autocnn's like in-process ones.
    """

    def __init__(self, case: LoopCase, data: Path, *, epochs: int, variant: str) -> None:
        job = {"case": asdict(case), "data": str(data), "epochs": epochs, "variant": variant}
        self.variant = variant
        self.log = data.with_name(f"bare-{variant}.log")
        cmd = [sys.executable, "-m", "benchmarks.bare_loop", json.dumps(job)]
        with self.log.open("w") as err:
            self.proc = subprocess.Popen(
                cmd, cwd=REPO, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=err, text=True
            )
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


def serve_epochs(job_json: str) -> None:
    """The child side of ChildBareLoop: "ready", then one epoch's images/s per input line."""
    from autocnn.training.loop import pick_device

    job = json.loads(job_json)
    fields = job["case"]
    case = LoopCase(**{**fields, "variants": tuple(fields["variants"])})
    with np.load(job["data"]) as arrays:
        images, labels = arrays["images"], arrays["labels"]
    loop = BareLoop(case, images, labels, epochs=job["epochs"], variant=job["variant"], device=pick_device())
    print("ready", flush=True)
    for _ in sys.stdin:
        print(loop.epoch(), flush=True)


if __name__ == "__main__":
    serve_epochs(sys.argv[1])
