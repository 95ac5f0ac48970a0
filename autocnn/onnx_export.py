"""ONNX for `autocnn finalize`: one-file export, the check against PyTorch, static int8.

The float model is exported with a dynamic batch dimension and must agree with PyTorch to
ONNX_TOLERANCE on real evaluation images before anything ships; the int8 model is quantized
statically (QDQ, per-channel weights) with activation ranges calibrated on training images, the
form that actually speeds up convolutions on CPUs (dynamic quantization leaves them in float).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from autocnn.data import Dataset, Split
from autocnn.errors import ExportError
from autocnn.predict import INT8_FILE, ONNX_FILE, Preprocessing, normalize

if TYPE_CHECKING:
    from torch import nn

ONNX_TOLERANCE = 1e-4  # max |logit difference| ONNX Runtime vs PyTorch on the evaluation images
N_CHECK = 256  # evaluation images used for the ONNX check
N_CALIBRATION = 256  # training images that calibrate the int8 activation ranges


def export_onnx(model: nn.Module, path: Path, example: np.ndarray) -> None:
    """One self-contained file, dynamic batch dimension (dynamo exporter, legacy fallback)."""
    import warnings

    import torch

    model = model.cpu().eval().to(memory_format=torch.contiguous_format)
    x = torch.from_numpy(np.ascontiguousarray(example[:2] if len(example) >= 2 else np.concatenate([example] * 2)))
    names = {"input_names": ["images"], "output_names": ["logits"]}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            torch.onnx.export(
                model,
                (x,),
                str(path),
                dynamo=True,
                external_data=False,
                verbose=False,
                dynamic_shapes=({0: torch.export.Dim("batch")},),
                **names,
            )
        except Exception:  # noqa: BLE001 - some timm graphs defeat torch.export; TorchScript copes
            torch.onnx.export(
                model,
                (x,),
                str(path),
                dynamo=False,
                dynamic_axes={"images": {0: "batch"}, "logits": {0: "batch"}},
                **names,
            )
    for extra in path.parent.glob(f"{path.name}.data"):
        extra.unlink()  # never ship a stale external-data file beside the single-file model


def onnx_logits(path: Path, inputs: np.ndarray, *, batch: int = 256) -> np.ndarray:
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    return np.concatenate([session.run(None, {name: inputs[i : i + batch]})[0] for i in range(0, len(inputs), batch)])


def quantize_int8(src: Path, dst: Path, calibration: np.ndarray, *, batch: int = 32) -> None:
    """Static QDQ int8, per-channel weights, activation ranges calibrated on training images."""
    import tempfile

    from onnxruntime.quantization import (
        CalibrationDataReader,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.batches = iter([{"images": calibration[i : i + batch]} for i in range(0, len(calibration), batch)])

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self.batches, None)

    with tempfile.TemporaryDirectory() as tmp:
        prepared = Path(tmp) / "prepared.onnx"
        quant_pre_process(str(src), str(prepared))  # shape inference + folding: quantize_* needs it
        quantize_static(
            str(prepared),
            str(dst),
            Reader(),
            quant_format=QuantFormat.QDQ,
            per_channel=True,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            # 7-bit weights: x86 CPUs without VNNI saturate u8*s8 products at full 8 bits
            # (measured on the digits CNN: int8 accuracy 0.76 -> 0.87, float 0.86).
            reduce_range=True,
        )


def calibration_images(split: Split, pre: Preprocessing, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    idx = rng.permutation(len(split))[:N_CALIBRATION]
    return normalize(split.images[np.sort(idx)], pre.mean, pre.std)


def megabytes(path: Path) -> float:
    return path.stat().st_size / 1e6


def export_and_check(
    out: Path,
    model: nn.Module,
    evaluated: Split,
    reference: np.ndarray,
    data: Dataset,
    pre: Preprocessing,
    seed: int,
    warnings: list[str],
) -> dict[str, float]:
    """model.onnx checked against PyTorch, then model.int8.onnx; accuracy and size of each."""
    inputs = normalize(evaluated.images, pre.mean, pre.std)
    onnx_path, int8_path = out / ONNX_FILE, out / INT8_FILE
    export_onnx(model, onnx_path, inputs[:2])
    logits = onnx_logits(onnx_path, inputs)
    diff = float(np.abs(logits[:N_CHECK] - reference[:N_CHECK]).max())
    if not diff <= ONNX_TOLERANCE:
        raise ExportError(f"{onnx_path}: ONNX Runtime differs from PyTorch by {diff:.2e} (> {ONNX_TOLERANCE:g})")
    facts = {
        "onnx_max_abs_diff": diff,
        "onnx_accuracy": float((logits.argmax(1) == evaluated.labels).mean()),
        "onnx_size_mb": megabytes(onnx_path),
    }
    int8_path.unlink(missing_ok=True)
    try:
        quantize_int8(onnx_path, int8_path, calibration_images(data.train, pre, seed))
        int8 = onnx_logits(int8_path, inputs)
    except Exception as exc:  # noqa: BLE001 - the float model still ships; say why int8 did not
        int8_path.unlink(missing_ok=True)
        warnings.append(f"int8 quantization failed ({exc.__class__.__name__}: {exc}); only the float model is exported")
        return facts
    facts["int8_accuracy"] = float((int8.argmax(1) == evaluated.labels).mean())
    facts["int8_size_mb"] = megabytes(int8_path)
    facts["int8_agreement"] = float((int8.argmax(1) == logits.argmax(1)).mean())
    return facts
