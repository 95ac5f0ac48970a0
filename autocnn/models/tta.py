"""Test-time augmentation as part of the model: several views of each image, probabilities averaged.

Built into the module, so the exported ONNX graph does it too and `autocnn predict` needs no
extra step. The views keep the label: the image itself, its mirror image (only where the spec
allows flips), and the four corner crops of CROP_FRACTION of its side scaled back up (a mild zoom
and shift). Whether they help this model is judged on val before they are shipped. Flips and crops act on the
normalised input, which is the same as acting on the image: normalisation is per channel.
The output is the log of the mean probability, like an ensemble's.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F  # noqa: N812 - torch's own convention

CROP_FRACTION = 0.9
MIN_PROB = 1e-12


class TestTimeAugmented(nn.Module):
    """`model` applied to each view of the batch; the views' probabilities averaged."""

    __test__ = False  # not a pytest test class, whatever its name says

    def __init__(self, model: nn.Module, *, flip: bool, crops: bool, image_size: int) -> None:
        super().__init__()
        if not (flip or crops):
            raise ValueError("test-time augmentation needs flips, crops or both")
        self.model = model
        self.flip = flip
        self.crops = crops
        self.image_size = image_size
        self.crop_side = max(1, round(image_size * CROP_FRACTION))

    @property
    def n_views(self) -> int:
        return 1 + int(self.flip) + 4 * int(self.crops)

    def views(self, x: torch.Tensor) -> list[torch.Tensor]:
        out = [x]
        if self.flip:
            out.append(torch.flip(x, dims=[3]))
        if self.crops:
            side, full = self.crop_side, self.image_size
            for top, left in ((0, 0), (0, full - side), (full - side, 0), (full - side, full - side)):
                crop = x[:, :, top : top + side, left : left + side]
                out.append(F.interpolate(crop, size=(full, full), mode="bilinear", align_corners=False))
        return out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        views = self.views(x)
        probs = self.model(torch.cat(views)).float().softmax(dim=1)
        mean = probs.reshape(len(views), x.shape[0], -1).mean(dim=0)
        return torch.log(torch.clamp(mean, min=MIN_PROB))
