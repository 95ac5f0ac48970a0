"""Model name + sampled params -> nn.Module, and the facts logged about it (parameters, size,
latency).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from autocnn.models.catalog import CUSTOM_CNN, Preprocess

if TYPE_CHECKING:
    from torch import nn


def build_model(
    name: str,
    params: dict[str, Any],
    *,
    num_classes: int,
    image_size: int,
    load_weights: bool = True,
) -> nn.Module:
    """Build the trial's model; keyword-only so a swapped count and size cannot slip through.

    Any name but custom_cnn is a timm backbone; `load_weights=False` skips pretrained weights when
    a trained state dict follows.
    """
    if name == CUSTOM_CNN:
        from autocnn.models.custom_cnn import CustomCNN

        return CustomCNN(num_classes=num_classes, image_size=image_size, **params)
    from autocnn.models.backbones import build_backbone

    return build_backbone(name, params, num_classes=num_classes, load_weights=load_weights)


def preprocess_for(name: str, params: dict[str, Any], *, image_size: int, native_size: bool = False) -> Preprocess:
    """The custom CNN keeps the spec's size and a symmetric [-1, 1] scaling; backbones follow timm.

    A backbone's size is its own `image_size` key, else the spec's `image_size`, else (with
    `native_size`, when the spec does not set data.image_size) timm's pretrained input size.
    """
    if name == CUSTOM_CNN:
        return Preprocess(image_size=image_size)
    from autocnn.models.backbones import backbone_preprocess

    return backbone_preprocess(name, params, image_size=None if native_size else image_size)


def freeze_mode(model: nn.Module) -> str:
    """What trains: none (everything), backbone (the head only) or partial."""
    return str(getattr(model, "freeze", "none"))


def model_facts(
    model: nn.Module, *, image_size: int, device: Any, latencies: dict[tuple, float] | None = None
) -> dict[str, float]:
    """Parameter counts, weight file size and batch-1 forward latency, logged once per trial.

    The size is the state dict's tensor bytes: the saved file's size to within its few KB of
    metadata, without serialising the weights (0.1-0.3 s a trial for a ResNet).
    `latencies` keeps the latency of each architecture already measured in this study: trials
    that differ only in training settings, dropout or freezing run the same forward pass, and
    measuring it again was a quarter of a resnet18 trial's fixed cost.
    """
    params = list(model.parameters())
    total = sum(p.numel() for p in params)
    key = (type(model).__name__, total, image_size, str(device))
    latency = (latencies or {}).get(key)
    if latency is None:
        latency = forward_latency_ms(model, image_size=image_size, device=device)
        if latencies is not None:
            latencies[key] = latency
    return {
        "params_total": total,
        "params_trainable": sum(p.numel() for p in params if p.requires_grad),
        "weights_mb": sum(t.numel() * t.element_size() for t in model.state_dict().values()) / 1e6,
        "latency_ms": latency,
    }


def forward_latency_ms(model: nn.Module, *, image_size: int, device: Any, budget_s: float = 0.25) -> float:
    """Median eval-mode forward time of one image on `device`, after two warm-up passes.

    Up to 20 timed passes within `budget_s` (at least 3): it is paid once per trial, and the
    fixed per-trial cost must stay under a second.
    """
    import statistics
    import time

    import torch

    device = torch.device(device)
    x = torch.zeros(1, 3, image_size, image_size, device=device).contiguous(memory_format=torch.channels_last)
    was_training = model.training
    model.eval()
    times: list[float] = []
    try:
        with torch.inference_mode():
            for i in range(22):
                start = time.perf_counter()
                model(x)
                if device.type == "cuda":
                    torch.cuda.synchronize(device)
                if i >= 2:
                    times.append(time.perf_counter() - start)
                    if sum(times) > budget_s and len(times) >= 3:
                        break
    finally:
        model.train(was_training)
    return statistics.median(times) * 1000.0
