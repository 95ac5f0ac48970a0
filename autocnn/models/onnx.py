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

from autocnn.data.arrays import Dataset, Split
from autocnn.errors import ExportError
from autocnn.models.folder import INT8_FILE, ONNX_FILE, Preprocessing, normalize

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


# --------------------------------------------------------------------------- latency as predict runs it

LATENCY_WARMUP = 5  # runs before timing: ORT allocates its arenas and picks kernels on the first ones
LATENCY_RUNS = 50  # timed runs at most ...
LATENCY_BUDGET_S = 0.5  # ... within this many seconds (at least LATENCY_MIN_RUNS)
LATENCY_MIN_RUNS = 5


def latency_providers(device: str) -> list[str]:
    """ONNX Runtime's execution providers for `study.latency_device`: the CPU's, or CUDA's."""
    if device == "cpu":
        return ["CPUExecutionProvider"]
    import onnxruntime as ort

    if "CUDAExecutionProvider" not in ort.get_available_providers():
        raise ExportError(
            f"study.latency_device: {device}: this onnxruntime has no CUDA provider (pip install onnxruntime-gpu)"
        )
    index = device.partition(":")[2] or "0"
    return [("CUDAExecutionProvider", {"device_id": index}), "CPUExecutionProvider"]  # type: ignore[list-item]


def machine_name(device: str) -> str:
    """What a latency was measured on: the CPU's model and cores, or the GPU's name."""
    import os
    import platform

    if device != "cpu":
        import torch

        if torch.cuda.is_available():
            return f"{torch.cuda.get_device_name(torch.device(device))} (ONNX Runtime CUDA)"
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{cpu}, {os.cpu_count()} cores (ONNX Runtime CPU)"


def onnx_latency_ms(model: nn.Module, *, image_size: int, device: str = "cpu") -> float:
    """Median time of one image through ONNX Runtime, batch 1, as `autocnn predict` runs the model.

    TorchScript's exporter writes the graph in a fraction of a second (the dynamo exporter
    `finalize` ships with takes seconds), and ONNX Runtime optimises both into the same kernels.
    """
    import copy
    import tempfile
    import warnings

    import torch

    clone = copy.deepcopy(model).cpu().eval().to(memory_format=torch.contiguous_format)
    x = torch.zeros(1, 3, image_size, image_size)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "latency.onnx"
        names = {"input_names": ["images"], "output_names": ["logits"]}
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                torch.onnx.export(clone, (x,), str(path), dynamo=False, **names)
            except Exception:  # noqa: BLE001 - antialiased resizes (an ensemble's) need the dynamo exporter
                torch.onnx.export(clone, (x,), str(path), dynamo=True, external_data=False, verbose=False, **names)
        return onnx_file_latency_ms(path, image_size=image_size, device=device)


def onnx_file_latency_ms(path: Path, *, image_size: int, device: str = "cpu") -> float:
    """Median time of one image through an ONNX file, batch 1, after a warm-up."""
    import statistics
    import time

    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(str(path), options, providers=latency_providers(device))
    name = session.get_inputs()[0].name
    feed = {name: np.random.default_rng(0).standard_normal((1, 3, image_size, image_size), dtype=np.float32)}
    for _ in range(LATENCY_WARMUP):
        session.run(None, feed)
    times: list[float] = []
    while len(times) < LATENCY_RUNS and (sum(times) < LATENCY_BUDGET_S or len(times) < LATENCY_MIN_RUNS):
        start = time.perf_counter()
        session.run(None, feed)
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1000.0


def int8_val_accuracy(model: nn.Module, data: Dataset, pre: Preprocessing, *, seed: int) -> float:
    """The trial's model quantized as `finalize` ships it (static QDQ int8), scored on val.

    Asked for by the objective `int8_accuracy`: some models lose many points going to int8, and a
    study that only measures float accuracy would never see it.
    """
    import copy
    import tempfile
    import warnings

    import torch

    clone = copy.deepcopy(model).cpu().eval().to(memory_format=torch.contiguous_format)
    inputs = normalize(data.val.images, pre.mean, pre.std)
    with tempfile.TemporaryDirectory() as tmp:
        src, dst = Path(tmp) / "float.onnx", Path(tmp) / "int8.onnx"
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(
                clone,
                (torch.from_numpy(inputs[:1]),),
                str(src),
                dynamo=False,
                input_names=["images"],
                output_names=["logits"],
                dynamic_axes={"images": {0: "batch"}, "logits": {0: "batch"}},
            )
        quantize_int8(src, dst, calibration_images(data.train, pre, seed))
        logits = onnx_logits(dst, inputs)
    return float((logits.argmax(1) == data.val.labels).mean())
