"""Predict with an exported model folder: top-k labels for image files and folders.

The folder written by `autocnn finalize` is self-describing (labels.json, preprocess.json,
model.json), so prediction needs neither the spec nor the study. Images go through the same
`decode_image` as training data and the same uint8 -> (x/255 - mean)/std arithmetic as
training's batches, so a file predicts exactly as it would have scored inside the study.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from autocnn.data.decode import decode_image
from autocnn.data.folders import IMAGE_SUFFIXES
from autocnn.errors import ExportError
from autocnn.models.folder import (
    LABELS_FILE,
    MODEL_FILE,
    ONNX_FILE,
    PREPROCESS_FILE,
    WEIGHTS_FILE,
    Preprocessing,
    normalize,
)

if TYPE_CHECKING:
    from torch import nn

BATCH = 64


def softmax(logits: np.ndarray) -> np.ndarray:
    z = logits - logits.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def _read_json(folder: Path, name: str) -> Any:
    path = folder / name
    if not path.is_file():
        raise ExportError(f"{path}: missing; is {folder} a folder written by `autocnn finalize`?")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ExportError(f"{path}: unreadable ({exc.__class__.__name__}: {exc})") from None


class Predictor:
    """Logits for normalised batches, from ONNX Runtime (default) or PyTorch (`--torch`).

    Example:
        >>> predictor = autocnn.Predictor("models/digits")
        >>> result = autocnn.predict_files(predictor, ["digit.png", "more_digits/"], top=3)
        >>> [(p.path, p.top[0]) for p in result.predictions]
    """

    def __init__(self, folder: str | Path, *, backend: str = "onnx") -> None:
        folder = Path(folder)
        if not folder.is_dir():
            raise ExportError(f"{folder}: model folder not found (write one with `autocnn finalize SPEC`)")
        self.folder = folder
        self.backend = backend
        self.labels: list[str] = [str(x) for x in _read_json(folder, LABELS_FILE)]
        pre = _read_json(folder, PREPROCESS_FILE)
        try:
            self.pre = Preprocessing(int(pre["image_size"]), tuple(pre["mean"]), tuple(pre["std"]))
        except (KeyError, TypeError, ValueError) as exc:
            raise ExportError(f"{folder / PREPROCESS_FILE}: expected image_size, mean and std ({exc})") from None
        self._model: nn.Module | None = None
        self._run = self._load_torch() if backend == "torch" else self._load_onnx()

    def _load_onnx(self) -> Any:
        import onnxruntime as ort

        path = self.folder / ONNX_FILE
        if not path.is_file():
            raise ExportError(f"{path}: missing; run `autocnn finalize` again or predict with --torch")
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        name = session.get_inputs()[0].name
        return lambda x: session.run(None, {name: x})[0]

    def torch_model(self) -> nn.Module:
        """The PyTorch model in eval mode: the one predicting with backend "torch", else rebuilt
        from weights.pt (Grad-CAM needs its gradients; ONNX Runtime has none)."""
        if self._model is None:
            self._model = self._build_torch()
        return self._model

    def _load_torch(self) -> Any:
        import torch

        model = self.torch_model()

        def run(x: np.ndarray) -> np.ndarray:
            with torch.no_grad():
                return model(torch.from_numpy(x)).float().numpy()

        return run

    def _build_torch(self) -> nn.Module:
        import torch

        from autocnn.models.build import build_model
        from autocnn.models.ensemble import ENSEMBLE, build_ensemble

        info = _read_json(self.folder, MODEL_FILE)
        weights = self.folder / WEIGHTS_FILE
        if not weights.is_file():
            raise ExportError(f"{weights}: missing; run `autocnn finalize` again")
        if info.get("model") == ENSEMBLE:
            model = build_ensemble(info, len(self.labels))
        else:
            model = build_model(
                info["model"],
                info["model_params"],
                num_classes=len(self.labels),
                image_size=self.pre.image_size,
                load_weights=False,  # the exported weights follow; never reach for a hub or a file
            )
        model.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
        if info.get("tta"):  # the views the ONNX graph averages over, around the same weights
            from autocnn.models.tta import TestTimeAugmented

            views = info["tta"]
            model = TestTimeAugmented(
                model, flip=bool(views["flip"]), crops=bool(views["crops"]), image_size=self.pre.image_size
            )
        return model.eval()

    def logits(self, images: np.ndarray) -> np.ndarray:
        """(N, H, W, 3) uint8 at `image_size` -> (N, classes) logits, in batches."""
        out = [
            self._run(normalize(images[i : i + BATCH], self.pre.mean, self.pre.std))
            for i in range(0, len(images), BATCH)
        ]
        return np.concatenate(out) if out else np.zeros((0, len(self.labels)), dtype=np.float32)


@dataclass(frozen=True)
class Prediction:
    path: str
    top: list[tuple[str, float]]
    explanation: str | None = None  # the Grad-CAM picture written for it, with `explain_dir`

    def as_dict(self) -> dict[str, Any]:
        found = {"file": self.path, "top": [{"label": lab, "probability": p} for lab, p in self.top]}
        return found | ({"explanation": self.explanation} if self.explanation else {})


@dataclass
class PredictResult:
    predictions: list[Prediction] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {
            "predictions": [p.as_dict() for p in self.predictions],
            "skipped": [{"file": f, "reason": r} for f, r in self.skipped],
        }


def expand_inputs(inputs: Iterable[Path]) -> Iterator[tuple[Path, str | None]]:
    """Files as given; folders walked recursively for image files. (path, why it is skipped)."""
    for item in inputs:
        if item.is_dir():
            found = sorted(p for p in item.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
            if not found:
                yield item, "folder holds no image files"
            for path in found:
                yield path, None
        elif item.is_file():
            yield item, None
        else:
            yield item, "no such file or folder"


def predict_files(
    predictor: Predictor, inputs: Sequence[str | Path], *, top: int = 3, explain_dir: str | Path | None = None
) -> PredictResult:
    """Decode every readable image like training did, predict in batches, keep the top-k.

    With `explain_dir`, also write one PNG per image there: the image as the model saw it beside
    its Grad-CAM heat map for the top label (autocnn.outputs.explain); each prediction names its file.
    """
    result = PredictResult()
    paths: list[Path] = []
    images: list[np.ndarray] = []
    for path, problem in expand_inputs(Path(p) for p in inputs):
        if problem is None:
            try:
                images.append(decode_image(path, predictor.pre.image_size))
                paths.append(path)
                continue
            except Exception as exc:  # noqa: BLE001 - any undecodable file is reported, not fatal
                problem = f"unreadable image ({exc.__class__.__name__}: {exc})"
        result.skipped.append((str(path), problem))
    if not images:
        return result
    probs = softmax(predictor.logits(np.stack(images)).astype(np.float64))
    k = max(1, min(top, len(predictor.labels)))
    pictures = (
        explanation_files(predictor, paths, np.stack(images), probs.argmax(axis=1), Path(explain_dir))
        if explain_dir is not None
        else [None] * len(paths)
    )
    for path, row, picture in zip(paths, probs, pictures, strict=True):
        best = np.argsort(-row, kind="stable")[:k]
        top_k = [(predictor.labels[i], float(row[i])) for i in best]
        result.predictions.append(Prediction(str(path), top_k, None if picture is None else str(picture)))
    return result


def explanation_files(
    predictor: Predictor, paths: Sequence[Path], images: np.ndarray, classes: np.ndarray, folder: Path
) -> list[Path]:
    """<folder>/<image name>.gradcam.png per image (numbered when two images share a name)."""
    from autocnn.outputs.explain import heat_maps, side_by_side, write_png

    if folder.exists() and not folder.is_dir():
        raise ExportError(f"{folder}: not a folder; name a folder for the explanations")
    inputs = normalize(images, predictor.pre.mean, predictor.pre.std)
    maps = heat_maps(predictor.torch_model(), inputs, [int(c) for c in classes])
    written: list[Path] = []
    for path, image, heat in zip(paths, images, maps, strict=True):
        target = folder / f"{path.stem}.gradcam.png"
        n = 2
        while target in written:
            target = folder / f"{path.stem}-{n}.gradcam.png"
            n += 1
        try:
            written.append(write_png(side_by_side(image, heat), target))
        except OSError as exc:
            raise ExportError(f"{target}: cannot write the explanation ({exc.strerror or exc})") from None
    return written
