"""Augmentation throughput: data only, and data + a CNN training step, for num_workers 0/1/2.

Run: .venv/bin/python benchmarks/augment_loader.py [--sizes 32 96] [--epochs 3]
Numbers decide `autocnn.training.augment.N_WORKERS`; they are measured here, never in a timed test.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:  # run as a script from anywhere: import this checkout's benchmarks
    sys.path.insert(0, str(REPO))

# ruff: noqa: E402 - the imports below need the path set-up above
from autocnn.data.arrays import Split
from autocnn.models.catalog import Preprocess
from autocnn.models.custom_cnn import CustomCNN
from autocnn.training.augment import AugmentedBatches, build_train_transform
from benchmarks.specs import heaviest_augment


def images_per_s(batches: AugmentedBatches, epochs: int, step: object | None) -> float:
    next(iter(batches))  # start workers outside the clock
    seen, start = 0, time.perf_counter()
    for epoch in range(epochs):
        batches.set_epoch(epoch)
        for x, y in batches:
            if step is not None:
                step(x, y)  # type: ignore[operator]
            seen += len(y)
    return seen / (time.perf_counter() - start)


def make_step(size: int) -> object:
    model = CustomCNN(num_classes=10, image_size=size, depth=4, width=32).to(memory_format=torch.channels_last)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    loss_fn = torch.nn.CrossEntropyLoss()

    def step(x: torch.Tensor, y: torch.Tensor) -> None:
        loss = loss_fn(model(x.contiguous(memory_format=torch.channels_last)), y)
        opt.zero_grad()
        loss.backward()
        opt.step()

    return step


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", type=int, nargs="+", default=[32, 96])
    parser.add_argument("--n", type=int, default=2048)
    parser.add_argument("--epochs", type=int, default=3)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    for size in args.sizes:
        n = args.n if size <= 32 else args.n // 4
        split = Split(rng.integers(0, 255, (n, size, size, 3), dtype=np.uint8), rng.integers(0, 10, n))
        pipeline = build_train_transform(heaviest_augment(), image_size=size, seed=0)
        for train in (False, True):
            row = []
            for workers in (0, 1, 2):
                batches = AugmentedBatches(
                    split, Preprocess(size), pipeline, batch_size=64, seed=0, num_workers=workers
                )
                step = make_step(size) if train else None
                row.append(f"{images_per_s(batches, args.epochs, step):7.0f}")
                del batches
            plain = images_per_s(
                AugmentedBatches(split, Preprocess(size), None, batch_size=64),
                args.epochs,
                make_step(size) if train else None,
            )
            what = "data+train" if train else "data only "
            print(
                f"{size:3d} px {what} img/s  workers 0/1/2: {' / '.join(row)}   (no augmentation: {plain:.0f})",
                flush=True,
            )


if __name__ == "__main__":
    main()
