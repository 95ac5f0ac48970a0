"""Test-time augmentation: the views, the paired decision on val, and the exported graph."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from autocnn.models.folder import Preprocessing
from autocnn.models.tta import TestTimeAugmented
from autocnn.outputs.tta import NONE, PolicyScore, choose_tta, flips_allowed, policies_for
from autocnn.spec.fields import Choices, Range

RAW = Preprocessing(16, (0.0, 0.0, 0.0), (1.0, 1.0, 1.0))


class LeftColumn(nn.Module):
    """Bright or dark, read from the leftmost pixel column only: a noisy view of the image."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        level = x[:, :, :, 0].mean(dim=(1, 2))
        return torch.stack([torch.zeros_like(level), 20.0 * (level - 0.5)], dim=1)


def bright_or_dark(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Images whose label is their overall brightness (above or below half), pixels noisy around it."""
    rng = np.random.default_rng(seed)
    level = rng.uniform(0.2, 0.8, n)
    pixels = level[:, None, None, None] + rng.normal(0, 0.3, (n, 16, 16, 3))
    return (np.clip(pixels, 0, 1) * 255).round().astype(np.uint8), (level > 0.5).astype(int)


def test_views_are_the_image_its_mirror_and_four_corner_crops_and_export_as_one_graph(tmp_path: Path) -> None:
    from autocnn.models.onnx import export_onnx, onnx_logits

    x = torch.rand(3, 3, 16, 16)
    wrapped = TestTimeAugmented(LeftColumn(), flip=True, crops=True, image_size=16).eval()
    views = wrapped.views(x)
    assert len(views) == wrapped.n_views == 6
    assert torch.equal(views[1], x.flip(-1)) and all(v.shape == x.shape for v in views)
    # the top-left crop keeps the image's top-left corner in place
    assert torch.allclose(views[2][:, :, 0, 0], x[:, :, 0, 0], atol=0.1)
    expected = torch.stack([LeftColumn()(v).softmax(1) for v in views]).mean(0)
    with torch.no_grad():
        assert torch.allclose(wrapped(x).softmax(1), expected, atol=1e-6)
        export_onnx(wrapped, tmp_path / "t.onnx", x.numpy())
        assert np.abs(onnx_logits(tmp_path / "t.onnx", x.numpy()) - wrapped(x).numpy()).max() < 1e-5


def test_tta_is_kept_where_the_views_fix_more_than_noise_and_refused_where_they_do_not() -> None:
    images, labels = bright_or_dark(400)
    chosen = choose_tta(LeftColumn(), images, labels, RAW, flips_allowed=True, judged_on="test")
    assert [s.name for s in chosen.scores] == ["flip", "crops", "flip+crops"]
    kept = next(s for s in chosen.scores if s.name == chosen.policy)
    assert kept.significant and kept.accuracy > chosen.plain_accuracy
    assert chosen.flip == ("flip" in chosen.policy) and chosen.crops == ("crops" in chosen.policy)
    assert "kept" in chosen.reason() and f"{kept.fixed}" in chosen.reason()
    # a model that reads the whole image gains nothing from views of it: nothing kept
    whole = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(3, 2))
    with torch.no_grad():
        whole[2].weight.copy_(torch.tensor([[0.0, 0.0, 0.0], [10.0, 10.0, 10.0]]))
        whole[2].bias.copy_(torch.tensor([0.0, -15.0]))
    plain = choose_tta(whole, images, labels, RAW, flips_allowed=False, judged_on="test")
    assert [s.name for s in plain.scores] == ["crops"]  # no mirror image where flips change the label
    assert plain.policy == NONE and "within the noise" in plain.reason()


def test_the_paired_test_and_the_specs_flips() -> None:
    assert PolicyScore("flip", 0.9, fixed=12, broken=2).significant  # 10 > 2 * sqrt(14)
    assert not PolicyScore("flip", 0.9, fixed=8, broken=2).significant  # 6 < 2 * sqrt(10)
    assert not PolicyScore("flip", 0.9, fixed=0, broken=0).significant
    assert policies_for(False) == ["crops"] and policies_for(True) == ["flip", "crops", "flip+crops"]
    assert flips_allowed(0.5) and not flips_allowed(0.0)
    assert flips_allowed(Range[float](low=0.0, high=0.5)) and not flips_allowed(Range[float](low=0.0, high=0.0))
    assert flips_allowed(Choices[float](choices=[0.0, 0.5])) and not flips_allowed(Choices[float](choices=[0.0]))


def test_no_views_is_refused() -> None:
    with pytest.raises(ValueError, match="needs flips, crops or both"):
        TestTimeAugmented(LeftColumn(), flip=False, crops=False, image_size=16)
