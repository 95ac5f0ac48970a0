"""Where the model looks: Grad-CAM heat maps (the `grad-cam` library) over the images it classifies.

Grad-CAM weighs a convolutional layer's feature maps by the gradient of one class's logit and
keeps the positive part: the regions that raised that class. It is read at the last feature map
that still has some spatial extent: later maps are sharper in meaning, but a 1x1 map (a backbone
fed small images) says nothing about where. The class explained is the one the model predicted,
so a wrong prediction shows what misled it.

A test-time-augmented model is explained through its plain model (the views are of the same
image), an ensemble through its heaviest member (which resizes and normalises the ensemble's own
input itself). Transformers give token sequences, not feature maps, and are refused in one line.
Heavy imports (torch, grad-cam, OpenCV, PIL) happen inside the functions.
"""

from __future__ import annotations

import io
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from autocnn.errors import ExportError

if TYPE_CHECKING:
    from torch import nn

BATCH = 32  # images per Grad-CAM pass: one backward pass each, memory grows with it
MIN_SIDE = 128  # pictures of small images are enlarged (nearest pixel) to at least this side
GAP = 4  # white pixels between the image and its overlay
IMAGE_WEIGHT = 0.5  # the overlay: half image, half heat map


# --------------------------------------------------------------------------- which layer


def explained_module(model: nn.Module) -> nn.Module:
    """The module whose gradients are read: TTA unwrapped, an ensemble's heaviest member."""
    from autocnn.models.ensemble import Ensemble
    from autocnn.models.tta import TestTimeAugmented

    if isinstance(model, TestTimeAugmented):
        return explained_module(model.model)
    if isinstance(model, Ensemble):
        heaviest = int(model.weights.argmax())
        return model.members[heaviest]  # a Member: its own resize and normalisation, then the model
    return model


def candidate_layers(model: nn.Module) -> list[nn.Module]:
    """Feature-map producing layers, input to output: each custom CNN block's activation (before
    its pooling halves the map), a timm model's feature stages (`feature_info`), else every conv."""
    from torch import nn

    from autocnn.models.backbones import TimmClassifier
    from autocnn.models.custom_cnn import CustomCNN
    from autocnn.models.ensemble import Member

    if isinstance(model, Member):
        return candidate_layers(model.model)
    if isinstance(model, CustomCNN):
        blocks = list(model.features)
        return [
            layer for layer, following in zip(blocks, blocks[1:], strict=False) if isinstance(following, nn.MaxPool2d)
        ]
    body = model.body if isinstance(model, TimmClassifier) else model
    info = getattr(body, "feature_info", None)
    if info:
        try:
            return [body.get_submodule(entry["module"]) for entry in info if entry.get("module")]
        except (AttributeError, KeyError, TypeError):
            pass  # an unusual feature_info: fall back to the convolutions
    return [m for m in body.modules() if isinstance(m, nn.Conv2d)]


def target_layer(model: nn.Module, image_size: int) -> nn.Module:
    """The last candidate whose output is a feature map at least 2x2 (else the last one), found
    by one forward pass of a blank image of the model's input size."""
    import torch

    candidates = candidate_layers(model)
    if not candidates:
        raise ExportError(f"Grad-CAM: {type(model).__name__} has no convolutional layer to explain")
    shapes: dict[int, tuple[int, ...]] = {}
    handles = [
        layer.register_forward_hook(lambda mod, _inp, out: shapes.__setitem__(id(mod), tuple(out.shape)))
        for layer in candidates
    ]
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad():
            model(torch.zeros(1, 3, image_size, image_size))
    finally:
        for handle in handles:
            handle.remove()
        model.train(was_training)
    maps = [layer for layer in candidates if len(shapes.get(id(layer), ())) == 4]
    if not maps:
        raise ExportError(
            f"Grad-CAM: {type(model).__name__}'s layers give token sequences, not feature maps; "
            "heat maps need a convolutional model"
        )
    wide = [layer for layer in maps if min(shapes[id(layer)][2:]) >= 2]
    return (wide or maps)[-1]


# --------------------------------------------------------------------------- heat maps


def heat_maps(model: nn.Module, inputs: np.ndarray, classes: Sequence[int], *, batch: int = BATCH) -> np.ndarray:
    """(N, 3, H, W) normalised float32 inputs -> (N, H, W) float32 maps in [0, 1], one per image,
    for the class given for it (usually the predicted one).

    The input asks for gradients, so a frozen backbone (parameters without gradients) is
    explained too: the library hooks only tensors that require them.
    """
    import torch
    from pytorch_grad_cam import GradCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    if len(inputs) != len(classes):
        raise ValueError(f"{len(inputs)} images but {len(classes)} classes to explain")
    if not len(inputs):
        return np.zeros((0, *inputs.shape[2:]), dtype=np.float32)
    module = explained_module(model)
    layer = target_layer(module, int(inputs.shape[-1]))
    was_training = module.training
    cam = GradCAM(module, [layer])  # puts the module in eval mode
    out = []
    try:
        with torch.enable_grad():
            for i in range(0, len(inputs), batch):
                x = torch.from_numpy(np.ascontiguousarray(inputs[i : i + batch], dtype=np.float32))
                targets = [ClassifierOutputTarget(int(c)) for c in classes[i : i + batch]]
                out.append(cam(x.requires_grad_(True), targets))
    finally:
        cam.activations_and_grads.release()  # the hooks; not the context manager, which swallows IndexError
        module.zero_grad(set_to_none=True)
        module.train(was_training)
    return np.clip(np.concatenate(out).astype(np.float32), 0.0, 1.0)


def overlay(image: np.ndarray, heat: np.ndarray) -> np.ndarray:
    """(H, W, 3) uint8 image and (H, W) map in [0, 1] -> the map in colour (jet) over the image."""
    from pytorch_grad_cam.utils.image import show_cam_on_image

    return show_cam_on_image(image.astype(np.float32) / 255.0, heat, use_rgb=True, image_weight=IMAGE_WEIGHT)


def side_by_side(image: np.ndarray, heat: np.ndarray) -> np.ndarray:
    """The image as the model saw it, then its overlay; small images enlarged to MIN_SIDE."""
    scale = max(1, math.ceil(MIN_SIDE / max(1, image.shape[0])))
    pair = [image, overlay(image, heat)]
    big = [np.repeat(np.repeat(p, scale, axis=0), scale, axis=1) for p in pair]
    gap = np.full((big[0].shape[0], GAP, 3), 255, dtype=np.uint8)
    return np.concatenate([big[0], gap, big[1]], axis=1)


def png_bytes(picture: np.ndarray) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(picture).save(buffer, format="PNG")
    return buffer.getvalue()


def write_png(picture: np.ndarray, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(png_bytes(picture))
    return path


# --------------------------------------------------------------------------- examples


@dataclass(frozen=True)
class Example:
    """One explained image: what it is, what the model said, and where it looked."""

    index: int  # in the split
    label: int
    pred: int
    prob: float
    image: np.ndarray  # (H, W, 3) uint8, as the model saw it
    heat: np.ndarray  # (H, W) float32 in [0, 1]

    @property
    def correct(self) -> bool:
        return self.label == self.pred


def pick_examples(labels: np.ndarray, preds: np.ndarray, *, per_class: int, max_classes: int) -> list[int]:
    """Up to `per_class` right and `per_class` wrong images of each true class (the first
    `max_classes` classes present), in split order: deterministic, and the split is shuffled."""
    chosen: list[int] = []
    for label in np.unique(labels)[:max_classes]:
        of_class = np.flatnonzero(labels == label)
        right = of_class[preds[of_class] == label][:per_class]
        wrong = of_class[preds[of_class] != label][:per_class]
        chosen += [int(i) for i in np.concatenate([right, wrong])]
    return chosen


def explain_examples(
    model: nn.Module,
    images: np.ndarray,
    inputs: np.ndarray,
    labels: np.ndarray,
    logits: np.ndarray,
    *,
    per_class: int = 2,
    max_classes: int = 20,
) -> list[Example]:
    """Right and wrong examples per class with their heat maps, for the predicted class.

    `images` are the uint8 (N, H, W, 3) pictures, `inputs` the same normalised for the model and
    `logits` the model's outputs for them (already computed: the caller scores them anyway).
    """
    preds = logits.argmax(axis=1)
    z = logits - logits.max(axis=1, keepdims=True)
    probs = np.exp(z) / np.exp(z).sum(axis=1, keepdims=True)
    chosen = pick_examples(labels, preds, per_class=per_class, max_classes=max_classes)
    maps = heat_maps(model, inputs[chosen], preds[chosen]) if chosen else []
    return [
        Example(i, int(labels[i]), int(preds[i]), float(probs[i, preds[i]]), images[i], heat)
        for i, heat in zip(chosen, maps, strict=True)
    ]
