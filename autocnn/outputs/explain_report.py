"""The report's "where the model looks" section: Grad-CAM heat maps of the shipped model (the newest
`autocnn finalize` run), or of the best trial's saved weights while nothing is shipped, on a few
right and wrong images of each class of the test split (val when the spec keeps no test images).

The shipped model is rebuilt from the bundle its final run logged to MLflow (the weights and the
three JSON files, not the ONNX files), so the section shows what `autocnn predict` runs, wherever
the report is built. The images are the study's own split, decoded again through the data cache.
"""

from __future__ import annotations

import base64
import html
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from autocnn.errors import AutocnnError
from autocnn.models.folder import LABELS_FILE, MODEL_FILE, PREPROCESS_FILE, WEIGHTS_FILE, Preprocessing
from autocnn.outputs.html import fmt, table
from autocnn.spec.schema import Spec

if TYPE_CHECKING:
    import optuna
    from torch import nn

    from autocnn.data.cache import DataCache
    from autocnn.outputs.explain import Example
    from autocnn.tracking.tracker import Tracker

PER_CLASS = 2  # right and wrong images shown per class
MAX_CLASSES = 20  # classes shown; the rest are left out (and the page says so)
MAX_SCAN = 1000  # images of the split predicted to find them: the report stays seconds on a CPU
BUNDLE_FILES = (LABELS_FILE, PREPROCESS_FILE, MODEL_FILE, WEIGHTS_FILE)


@dataclass(frozen=True)
class Explained:
    """A model to explain, the input it expects, and which model it is, in words."""

    model: nn.Module
    pre: Preprocessing
    classes: list[str] | None  # the bundle's labels; None for a trial (the data's own)
    about: str


def shipped_model(tracker: Tracker, run: Any) -> Explained:
    """The newest final run's bundle, rebuilt in PyTorch as `autocnn predict --torch` does."""
    from autocnn.outputs.predict import Predictor

    run_id, tags = run.info.run_id, run.data.tags
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "export"
        folder.mkdir()
        for name in BUNDLE_FILES:
            with tempfile.TemporaryDirectory(dir=tmp) as one:
                tracker.download_artifact(run_id, f"export/{name}", Path(one)).rename(folder / name)
        predictor = Predictor(folder, backend="torch")  # the weights are in memory once built
    if tags.get("autocnn.ensemble"):
        about = f"the shipped ensemble of trials {tags['autocnn.ensemble']}; maps of its heaviest member"
    else:
        about = f"the shipped model: trial {tags.get('autocnn.trial', '?')} ({tags.get('autocnn.model', '?')})"
    if tags.get("autocnn.tta", "none") != "none":
        about += ", predicting with its test-time views, mapped without them"
    return Explained(predictor.torch_model(), predictor.pre, predictor.labels, f"{about}, final run {run_id}")


def trial_model(spec: Spec, trial: optuna.trial.FrozenTrial, tracker: Tracker, cache: DataCache) -> Explained:
    """The trial's saved best-epoch weights (nothing is shipped yet)."""
    from autocnn.errors import ExportError
    from autocnn.models.build import build_model
    from autocnn.outputs.finalize import model_preprocessing
    from autocnn.search.space import config_from_params

    config = config_from_params(spec, trial.params)
    pre = model_preprocessing(spec, config)
    num_classes = cache.get(pre.image_size).num_classes
    model = build_model(
        config.model, config.model_params, num_classes=num_classes, image_size=pre.image_size, load_weights=False
    )
    run_id = trial.user_attrs.get("mlflow_run_id")
    try:
        model.load_state_dict(tracker.load_state_dict(run_id))
    except Exception:  # noqa: BLE001 - any missing artifact means: no saved weights for this trial
        raise ExportError(f"trial {trial.number}'s run holds no saved weights to explain") from None
    about = f"the best trial, {trial.number} ({config.model}), with its saved weights (nothing finalized yet)"
    return Explained(model.eval(), pre, None, about)


def explain_html(
    spec: Spec, study: optuna.Study, tracker: Tracker | None, best_number: int | None, finals: Sequence[Any]
) -> str:
    """The section: the shipped model's heat maps, else the best trial's, else why there are none."""
    if tracker is None or (best_number is None and not finals):
        return "<p class=note>No complete trial and no finalized model: nothing to explain yet.</p>"
    try:
        return _gallery_section(spec, study, tracker, best_number, finals)
    except AutocnnError as exc:
        return f"<p class=note>No heat maps: {html.escape(str(exc))}</p>"
    except Exception as exc:  # noqa: BLE001 - one picture the report cannot draw must not cost the rest
        return f"<p class=note>No heat maps: {html.escape(f'{exc.__class__.__name__}: {exc}')}</p>"


def _gallery_section(
    spec: Spec, study: optuna.Study, tracker: Tracker, best_number: int | None, finals: Sequence[Any]
) -> str:
    from autocnn.data.cache import DataCache
    from autocnn.models.folder import normalize
    from autocnn.outputs.bundle import eval_split, torch_logits
    from autocnn.outputs.explain import explain_examples

    cache = DataCache(spec.data, seed=spec.seed)
    if finals:
        explained = shipped_model(tracker, finals[0])
    else:
        trial = next(t for t in study.get_trials(deepcopy=False) if t.number == best_number)
        explained = trial_model(spec, trial, tracker, cache)
    data = cache.get(explained.pre.image_size)
    if explained.classes is not None and explained.classes != list(data.classes):
        raise AutocnnError("the shipped model's labels differ from the spec's data classes")
    split_name, split = eval_split(data)
    images, labels = split.images[:MAX_SCAN], split.labels[:MAX_SCAN]
    pre = explained.pre
    logits = torch_logits(explained.model, images, pre)
    examples = explain_examples(
        explained.model,
        images,
        normalize(images, pre.mean, pre.std),
        labels,
        logits,
        per_class=PER_CLASS,
        max_classes=MAX_CLASSES,
    )
    scanned = f"the first {len(images)} of {len(split)}" if len(images) < len(split) else f"all {len(images)}"
    intro = (
        f"<p>Grad-CAM heat maps of {html.escape(explained.about)}, on {scanned} {split_name} images: "
        f"up to {PER_CLASS} classified right and {PER_CLASS} wrong per class. Each picture is the image "
        "as the model saw it, then the regions that raised the predicted class (red: most).</p>"
    )
    more = len(set(labels.tolist())) - MAX_CLASSES
    tail = f"<p class=note>{more} more classes are left out.</p>" if more > 0 else ""
    return intro + gallery(examples, data.classes, len(images)) + tail


def gallery(examples: Sequence[Example], classes: Sequence[str], n_scanned: int) -> str:
    """One row per true class: its right examples, then its wrong ones, captioned with the prediction."""
    rows: dict[int, tuple[list[str], list[str]]] = {}
    for example in examples:
        right, wrong = rows.setdefault(example.label, ([], []))
        (right if example.correct else wrong).append(figure(example, classes))
    none = f"<span class=note>none among the {n_scanned} scanned</span>"
    body = [
        [html.escape(str(classes[label])), "".join(right) or none, "".join(wrong) or none]
        for label, (right, wrong) in sorted(rows.items())
    ]
    return table(["class", "classified right", "classified wrong"], body, numeric_from=3)


def figure(example: Example, classes: Sequence[str]) -> str:
    from autocnn.outputs.explain import png_bytes, side_by_side

    png = base64.b64encode(png_bytes(side_by_side(example.image, example.heat))).decode()
    predicted = html.escape(str(classes[example.pred]))
    return (
        "<figure style='display:inline-block;margin:0 10px 6px 0'>"
        f"<img alt='Grad-CAM of image {example.index}' src='data:image/png;base64,{png}'>"
        f"<figcaption class=note>#{example.index}: predicted {predicted} ({fmt(example.prob, 3)})</figcaption>"
        "</figure>"
    )
