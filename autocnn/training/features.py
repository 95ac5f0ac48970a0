"""Frozen backbones at head-only speed: pooled features computed once, the head trained on them.

A trial whose whole backbone is frozen (`freeze: backbone`, or `backbone_lr_mult: 0`) pushes
the same images through the same fixed network every epoch: on a CPU that forward pass is nearly
all of the epoch, while the head trains in milliseconds. Here the backbone's pooled features
(timm's `forward_features` + `forward_head(pre_logits=True)`, in eval mode, as a frozen body runs
in training too, and in the trial's precision, as the full path runs it) are computed once per (backbone, weights, input size, preprocessing, split) and
kept: in memory up to a budget, and always in a file under the study's folder, so later trials,
a resumed study, other workers on the machine and `finalize` reuse them.

The cache key holds everything that changes the features: the backbone's name, a digest of its
weight file's bytes (a local file or the hub cache's; for random weights, the seed that drew
them), the input size, mean and std, how images were resized, a digest of the split's decoded
pixels, augmented views if any, the compute precision, and the timm and torch versions. A changed weight file or image
size therefore never meets stale features. Files are written whole or not at all (a temporary
file renamed into place).

Augmented images change the features every epoch, so an augmenting trial keeps the full path,
unless the spec asks for `augment.cached_views: K`: K augmented views per training image,
computed once from seeds that depend on the spec's seed and the view only, and each epoch trains
on one view per image.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import time
import weakref
from collections import OrderedDict
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np
import torch

from autocnn.data.arrays import Split
from autocnn.models.catalog import CUSTOM_CNN, Preprocess
from autocnn.training.sampling import epoch_order

if TYPE_CHECKING:
    from torch import nn

    from autocnn.training.config import TrialConfig

# Features kept in memory per process; larger sets are read from their file for each trial and
# let go after it. resnet50's 2,048 floats per image make 2,000 images 16 MB: a budget of 1 GiB
# holds about 130,000 such images, or 16 views of 8,000.
MEMORY_BUDGET_BYTES = 1 << 30
FEATURE_BATCH = 128  # images per backbone forward pass while computing features
# How `autocnn.data.decode_image` sizes images: part of the key, so a change there is a new key.
RESIZE = "PIL bilinear to a square, no crop"
PATH_TAG = "autocnn.feature_path"
REASON_TAG = "autocnn.feature_path_reason"
CACHED, FULL = "cached", "full"


# --------------------------------------------------------------------------- which path


@dataclass(frozen=True)
class FeaturePath:
    """Whether a trial trains its head on cached features, why, and where the features came from."""

    cached: bool
    reason: str
    views: int = 0  # augmented views per training image; 0: the images as they are
    source: str = ""  # "computed in 3.1 s", "from memory", "from disk"

    @property
    def name(self) -> str:
        return CACHED if self.cached else FULL

    def tags(self) -> dict[str, str]:
        """The MLflow tags that say which path the trial took and why."""
        reason = f"{self.reason}; features {self.source}" if self.source else self.reason
        return {PATH_TAG: self.name, REASON_TAG: reason}


def choose_path(config: TrialConfig, *, augmenting: bool, feature_cache: bool) -> FeaturePath:
    """The cached path when the backbone is frozen whole and its input is the same every epoch."""
    from autocnn.models.backbones import effective_freeze

    if config.model == CUSTOM_CNN:
        return FeaturePath(False, "custom_cnn trains every layer")
    freeze = effective_freeze(config.model_params)
    if freeze != "backbone":
        return FeaturePath(False, f"the backbone trains (freeze: {freeze})")
    if not feature_cache:
        return FeaturePath(False, "study.feature_cache is false")
    views = config.augment.cached_views if augmenting else 0
    if augmenting and not views:
        return FeaturePath(
            False,
            "frozen backbone, but augmentation changes its input every epoch "
            "(augment.cached_views: K would train on K cached views per image)",
        )
    if views:
        return FeaturePath(True, f"frozen backbone: {views} augmented views per image (augment.cached_views)", views)
    return FeaturePath(True, "frozen backbone, no augmentation: pooled features computed once")


# --------------------------------------------------------------------------- the key


@dataclass(frozen=True)
class FeatureKey:
    """Everything that changes a split's features; its digest names the file."""

    backbone: str
    weights: str
    image_size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    resize: str
    split: str
    views: str
    timm: str
    torch: str
    precision: str = "float32"  # the backbone's compute precision; the features are stored as float32

    def digest(self) -> str:
        text = json.dumps(asdict(self), sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:32]


@cache
def _file_digest(path: str, size: int, mtime_ns: int) -> str:
    """sha256 of a file's bytes, once per process per (path, size, modification time)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def file_digest(path: Path) -> str:
    resolved = path.resolve()  # the hub cache's snapshot links point at its blobs
    stat = resolved.stat()
    return _file_digest(str(resolved), stat.st_size, stat.st_mtime_ns)


def weights_identity(name: str, pretrained: bool | str, *, torch_seed: int) -> str:
    """What the backbone's weights are: the digest of the file they load from, or for random
    weights the seed that drew them (each trial draws its own, so those are reused only by the
    same trial, resumed)."""
    if pretrained is False:
        return f"random-init seed {torch_seed}"
    if isinstance(pretrained, str):
        file = Path(pretrained).expanduser()
        return "sha256:" + file_digest(file)
    from autocnn.models.hub import cached_weights

    found = cached_weights(name)
    if found is None:  # weights from somewhere timm found them but the hub cache does not say
        return f"timm pretrained {name}"
    return "sha256:" + file_digest(found)


_split_digests: dict[int, tuple[weakref.ref, str]] = {}


def split_digest(split: Split) -> str:
    """A digest of a split's decoded pixels and labels, once per array per process: exactly what
    enters the backbone, whatever files, decoding or split produced it."""
    known = _split_digests.get(id(split.images))
    if known is not None and known[0]() is split.images:
        return known[1]
    digest = hashlib.blake2b(digest_size=16)
    digest.update(str(split.images.shape).encode())
    digest.update(np.ascontiguousarray(split.images).data)
    digest.update(np.ascontiguousarray(split.labels).data)
    value = digest.hexdigest()
    _split_digests[id(split.images)] = (weakref.ref(split.images), value)
    return value


def feature_key(
    config: TrialConfig,
    pre: Preprocess,
    split: Split,
    *,
    weights: str,
    views: str = "none",
    autocast: torch.dtype | None = None,
) -> FeatureKey:
    import timm

    return FeatureKey(
        backbone=config.model,
        weights=weights,
        image_size=pre.image_size,
        mean=tuple(pre.mean),
        std=tuple(pre.std),
        resize=RESIZE,
        split=split_digest(split),
        views=views,
        timm=timm.__version__,
        torch=torch.__version__.split("+")[0],
        precision=f"{str(autocast).removeprefix('torch.')} autocast" if autocast is not None else "float32",
    )


# --------------------------------------------------------------------------- computing


@torch.no_grad()
def pooled_features(
    model: nn.Module, split: Split, pre: Preprocess, *, device: torch.device, autocast: torch.dtype | None = None
) -> torch.Tensor:
    """(N, D) float32 on the CPU: a TimmClassifier's pooled pre-logits features of every image,
    in eval mode (a frozen backbone's BatchNorm runs in eval mode in training too), normalised
    exactly as training batches are, and computed in the precision the full path would use
    (`autocast`: the trial's autocast dtype, None for float32): as fast, and the same numbers."""
    from autocnn.training.loop import TensorBatches

    body = model.body
    was_training = model.training
    model.eval()
    out = []
    mixed = torch.autocast(device.type, dtype=autocast or torch.float32, enabled=autocast is not None)
    try:
        for x, _ in TensorBatches(split, pre, batch_size=FEATURE_BATCH, shuffle=False, device=device):
            x = x.contiguous(memory_format=torch.channels_last)
            with mixed:
                pooled = body.forward_head(body.forward_features(x), pre_logits=True)
            out.append(pooled.float().cpu())
    finally:
        model.train(was_training)  # the classifier's own train(): frozen BatchNorm stays in eval
    return torch.cat(out)


def augmented_views(
    model: nn.Module,
    split: Split,
    pre: Preprocess,
    pipeline: Any,
    *,
    views: int,
    seed: int,
    device: torch.device,
    autocast: torch.dtype | None = None,
) -> torch.Tensor:
    """(views, N, D): the features of `views` augmented copies of every image, each chunk of
    images augmented from a seed of (seed, view, chunk) so the same spec gives the same views."""
    from autocnn.training.augment import augment_batch, batch_seed

    out = []
    for view in range(views):
        chunks = []
        for chunk, start in enumerate(range(0, len(split), FEATURE_BATCH)):
            images = split.images[start : start + FEATURE_BATCH]
            chunks.append(augment_batch(pipeline, images, seed=batch_seed(seed, view, chunk)))
        augmented = Split(np.concatenate(chunks), split.labels)
        out.append(pooled_features(model, augmented, pre, device=device, autocast=autocast))
    return torch.stack(out)


def views_identity(pipeline: Any, *, views: int, seed: int) -> str:
    """The views' part of the key: the pipeline's exact operations and parameters, K, the seed."""
    from autocnn.training.augment import describe

    ops = hashlib.sha256(json.dumps(describe(pipeline), sort_keys=True, default=str).encode()).hexdigest()[:16]
    return f"{views} views of pipeline {ops} seed {seed}"


# --------------------------------------------------------------------------- the cache


@dataclass(frozen=True)
class Found:
    """Where a request's features came from: computed (and how long that took), memory or disk."""

    kind: str  # "computed" | "memory" | "disk"
    seconds: float = 0.0


def describe_sources(*found: Found) -> str:
    """`computed in 3.1 s`, `from memory`, `from disk`, or each split's when they differ."""
    kinds = {f.kind for f in found}
    if kinds == {"computed"}:
        return f"computed in {sum(f.seconds for f in found):.1f} s"
    if len(kinds) == 1:
        return f"from {kinds.pop()}"
    return ", ".join("computed" if f.kind == "computed" else f"from {f.kind}" for f in found)


T = TypeVar("T")


class FeatureCache:
    """Features by key: in memory (least recently used first out) within `memory_budget` bytes,
    and in one safetensors file per key under `folder` (None: memory only).

    `sources` counts where each request was answered from: computed, memory or disk.
    """

    def __init__(self, folder: Path | None, *, memory_budget: int = MEMORY_BUDGET_BYTES) -> None:
        self.folder = folder
        self.memory_budget = memory_budget
        self._memory: OrderedDict[str, torch.Tensor] = OrderedDict()
        self._fitted: dict[str, Any] = {}
        self.sources: dict[str, int] = {"computed": 0, "memory": 0, "disk": 0}
        self.warnings: list[str] = []

    def fitted(self, key: str, fit: Callable[[], T]) -> T:
        """What `fit` makes of features already cached (a probe on them), fitted once per process."""
        if key not in self._fitted:
            self._fitted[key] = fit()
        return self._fitted[key]

    def get(self, key: FeatureKey, compute: Callable[[], torch.Tensor]) -> tuple[torch.Tensor, Found]:
        """The features for `key`, and where they came from."""
        digest = key.digest()
        if digest in self._memory:
            self._memory.move_to_end(digest)
            self.sources["memory"] += 1
            return self._memory[digest], Found("memory")
        features = self._read(digest, key)
        if features is not None:
            self.sources["disk"] += 1
            self._keep(digest, features)
            return features, Found("disk")
        start = time.perf_counter()
        features = compute().contiguous()
        seconds = time.perf_counter() - start
        self.sources["computed"] += 1
        self._write(digest, key, features)
        self._keep(digest, features)
        return features, Found("computed", seconds)

    def take_warnings(self) -> list[str]:
        """Warnings since the last call (a folder that could not be written), each said once."""
        warnings, self.warnings = self.warnings, []
        return list(dict.fromkeys(warnings))

    def path(self, digest: str) -> Path | None:
        return None if self.folder is None else self.folder / f"{digest}.safetensors"

    def memory_bytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self._memory.values())

    def _keep(self, digest: str, features: torch.Tensor) -> None:
        """Hold in memory within the budget; a set larger than the whole budget stays on disk."""
        if features.numel() * features.element_size() > self.memory_budget:
            return
        self._memory[digest] = features
        while self.memory_bytes() > self.memory_budget:
            self._memory.popitem(last=False)

    def _read(self, digest: str, key: FeatureKey) -> torch.Tensor | None:
        """A file's features when its recorded key is this one; anything unreadable is computed again."""
        from safetensors import safe_open

        path = self.path(digest)
        if path is None or not path.is_file():
            return None
        try:
            with safe_open(str(path), framework="pt") as handle:
                if (handle.metadata() or {}).get("key") != json.dumps(asdict(key), sort_keys=True):
                    return None
                return handle.get_tensor("features")
        except Exception:  # noqa: BLE001 - a damaged or foreign file is only a cache miss
            return None

    def _write(self, digest: str, key: FeatureKey, features: torch.Tensor) -> None:
        """Whole or not at all: a temporary file beside the target, renamed over it. A folder that
        cannot be written costs only the reuse by later processes, never the trial."""
        from safetensors.torch import save_file

        path = self.path(digest)
        if path is None:
            return
        tmp: str | None = None
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{digest}.", suffix=".tmp")
            os.close(fd)
            save_file({"features": features}, tmp, metadata={"key": json.dumps(asdict(key), sort_keys=True)})
            os.replace(tmp, path)
            tmp = None
        except OSError as exc:
            self.warnings.append(f"features not written to {path.parent}: {exc.strerror or exc}")
        finally:
            if tmp is not None and os.path.exists(tmp):
                os.unlink(tmp)


_caches: dict[Path, FeatureCache] = {}


def process_cache(folder: Path) -> FeatureCache:
    """One cache per study folder per process: every trial of a study, and finalize's re-training,
    share its memory; the memory budget holds for the process."""
    if folder not in _caches:
        _caches[folder] = FeatureCache(folder)
    return _caches[folder]


# --------------------------------------------------------------------------- batches


class FeatureBatches:
    """Batches of cached features in the order `TensorBatches` draws images.

    The same seed, epoch and batch size give the same permutation as the full path, so the head
    sees the same images in the same batches. With views (a (V, N, D) tensor) each epoch takes one
    view per image, drawn from the epoch's generator after the permutation.
    """

    def __init__(
        self,
        features: torch.Tensor,
        labels: np.ndarray,
        *,
        batch_size: int,
        shuffle: bool,
        seed: int = 0,
        device: torch.device | None = None,
        balanced: bool = False,
        targets: np.ndarray | None = None,
    ) -> None:
        self.device = device or torch.device("cpu")
        self.features = features.to(self.device)
        self.labels = torch.from_numpy(labels).to(self.device)
        # What the batches carry to the loss: soft targets when distilling, else the labels.
        self.targets = self.labels if targets is None else torch.from_numpy(targets).to(self.device)
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.balanced = balanced  # as TensorBatches: the same class-even draw
        self.seed = seed
        self.epoch = 0
        self.drop_last = shuffle and len(self.labels) > batch_size  # as TensorBatches: no batch of 1

    def __len__(self) -> int:
        n = len(self.labels)
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        n = len(self.labels)
        gen = torch.Generator().manual_seed(self.seed * 1000 + self.epoch)
        order = epoch_order(self.labels, gen, balanced=self.balanced) if self.shuffle else torch.arange(n)
        if self.features.dim() == 3:
            view = torch.randint(self.features.shape[0], (n,), generator=gen).to(self.device)
            pick = lambda idx: self.features[view[idx], idx]  # noqa: E731
        else:
            pick = lambda idx: self.features[idx]  # noqa: E731
        order = order.to(self.device)
        for i in range(len(self)):
            idx = order[i * self.batch_size : (i + 1) * self.batch_size]
            yield pick(idx), self.targets[idx]
