"""A small parametric CNN: the from-scratch baseline every backbone is compared against."""

from __future__ import annotations

from torch import nn

from autocnn.errors import AutocnnError
from autocnn.models.catalog import max_depth

ACTIVATIONS: dict[str, type[nn.Module]] = {
    "relu": nn.ReLU,
    "leaky_relu": nn.LeakyReLU,
    "gelu": nn.GELU,
    "silu": nn.SiLU,
}
MAX_CHANNELS = 512


class ModelTooDeepError(AutocnnError):
    """A depth that pools the image away; the trial fails with this reason, the study goes on."""


def block_channels(depth: int, width: int) -> list[int]:
    return [min(width * 2**i, MAX_CHANNELS) for i in range(depth)]


class CustomCNN(nn.Module):
    """`depth` x (conv3x3-BN-activation-maxpool), global average pool, dropout, linear head."""

    def __init__(
        self,
        *,
        num_classes: int,
        image_size: int,
        depth: int = 3,
        width: int = 32,
        dropout: float = 0.2,
        activation: str = "relu",
        in_chans: int = 3,
    ) -> None:
        super().__init__()
        if depth > max_depth(image_size):
            raise ModelTooDeepError(
                f"custom_cnn depth {depth} is too deep for {image_size} px images: each block halves "
                f"the size, so at most {max_depth(image_size)} blocks fit"
            )
        layers: list[nn.Module] = []
        channels_in = in_chans
        for channels in block_channels(depth, width):
            layers += [
                nn.Conv2d(channels_in, channels, kernel_size=3, padding=1, bias=False),
                nn.BatchNorm2d(channels),
                ACTIVATIONS[activation](),
                nn.MaxPool2d(2),
            ]
            channels_in = channels
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(channels_in, num_classes)

    def forward(self, x):  # type: ignore[no-untyped-def]
        x = self.pool(self.features(x)).flatten(1)
        return self.classifier(self.dropout(x))
