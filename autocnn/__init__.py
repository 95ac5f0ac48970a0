"""autocnn: search CNN architectures and training settings with Optuna, tracked in MLflow.

The Python API, for notebooks and scripts; the `autocnn` command is a thin layer over it::

    import autocnn

    spec = autocnn.load_spec("studies/digits.yaml")
    result = autocnn.run_study(spec, autocnn.StudyOptions(trials=5))
    print(result.best_number, result.best_value)
    print(autocnn.study_status(spec).counts)
    report = autocnn.build_report(spec)              # reports/<name>.html
    final = autocnn.finalize(spec)                   # models/<name>/: ONNX, int8, labels
    predictor = autocnn.Predictor(final.out_dir)
    print(autocnn.predict_files(predictor, ["digit.png"]).predictions)

User errors (a bad spec, a missing study, unreadable data) raise `autocnn.AutocnnError`, whose
`lines()` name the culprit. The names below import their modules on first use, so `import
autocnn` stays cheap.

What a library call changes beyond its own objects: training on a CPU with glibc raises malloc's
trim and mmap thresholds for the process (autocnn.training.loop.keep_freed_memory_for_reuse: freed
activation buffers are reused instead of returned to the kernel); importing the augmentation
module sets NO_ALBUMENTATIONS_UPDATE=1 (no network check), and building a backbone turns
huggingface_hub's offline switch on (its constant, not the HF_HUB_OFFLINE variable, which stays the
user's say on whether `run_study` may fetch missing weights and datasets); while `run_study` runs in the main thread, SIGINT, SIGTERM
and SIGHUP stop the study gracefully (the running trial is queued to resume, every run closed) and
the previous handlers are restored when it returns. Logging levels, warning filters and MLflow's tracking
URI are left as they were; the command line quiets MLflow and Optuna for itself.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

# Public name -> the module that defines it.
_API = {
    "load_spec": "autocnn.spec.load",
    "Spec": "autocnn.spec.schema",
    "run_study": "autocnn.search.study",
    "StudyOptions": "autocnn.search.options",
    "StudyResult": "autocnn.search.results",
    "study_status": "autocnn.search.results",
    "build_report": "autocnn.outputs.report",
    "finalize": "autocnn.outputs.finalize",
    "FinalizeOptions": "autocnn.outputs.finalize",
    "Predictor": "autocnn.outputs.predict",
    "predict_files": "autocnn.outputs.predict",
    "find_label_issues": "autocnn.outputs.labels",
    "AutocnnError": "autocnn.errors",
}
__all__ = [
    "AutocnnError",
    "FinalizeOptions",
    "Predictor",
    "Spec",
    "StudyOptions",
    "StudyResult",
    "__version__",
    "build_report",
    "finalize",
    "find_label_issues",
    "load_spec",
    "predict_files",
    "run_study",
    "study_status",
]

if TYPE_CHECKING:
    from autocnn.errors import AutocnnError
    from autocnn.outputs.finalize import FinalizeOptions, finalize
    from autocnn.outputs.labels import find_label_issues
    from autocnn.outputs.predict import Predictor, predict_files
    from autocnn.outputs.report import build_report
    from autocnn.search.options import StudyOptions
    from autocnn.search.results import StudyResult, study_status
    from autocnn.search.study import run_study
    from autocnn.spec.load import load_spec
    from autocnn.spec.schema import Spec


def __getattr__(name: str) -> Any:
    module = _API.get(name)
    if module is None:
        raise AttributeError(f"module 'autocnn' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
