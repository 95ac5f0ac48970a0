"""`autocnn validate --labels`: the training and validation images whose label is most likely wrong.

A folder assembled by hand holds some images in the wrong class folder, and a model trained on
them learns the mistake while its validation score measures agreement with it. Confident
learning (cleanlab) finds them from out-of-sample predicted probabilities: every image is scored
by a classifier that never saw it (stratified K-fold cross-validation of a logistic regression),
and the images whose given label that classifier finds least likely, beyond what the classes'
overall confusion explains, are flagged, the least likely first.

The classifier is cheap on purpose and reads features this machine has without training
anything: the raw pixels, downscaled, and a pretrained backbone's pooled features when the spec
names a backbone whose weights are here (the same features, and the same feature cache, a
study's frozen-backbone trials use). Whichever agrees better with the given labels out of sample
is used, and the result says which.

What is written (reports/<name>-labels.csv, .png and .json) is written whole or not at all; the
JSON is what `autocnn report` reads back.
"""

from __future__ import annotations

import csv
import io
import json
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from autocnn.data.cache import DataCache
from autocnn.errors import DataError
from autocnn.spec.schema import Spec

if TYPE_CHECKING:
    from autocnn.data.arrays import Dataset

FOLDS = 5  # cross-validation folds: each image is scored by a model fitted on the other 80%
PIXEL_SIDE = 16  # the raw-pixel fallback's side: enough for shapes, few enough features to fit in seconds
LOGREG_C = 0.01  # strong L2 regularisation on standardised features: calibrated probabilities, fast fits
SHEET_IMAGES = 30  # thumbnails on the contact sheet, the most likely errors first
SHEET_COLUMNS = 6
SPLITS_CHECKED = ("train", "val")  # test labels are never looked at before finalize scores them once

Say = Callable[[str], None]


@dataclass(frozen=True)
class LabelIssue:
    """One image whose given label the out-of-sample classifier finds unlikely."""

    split: str
    item: str  # the file (relative to the data root), or `train #12` for a dataset without files
    index: int  # its position in its split, as decoded
    given: str
    suggested: str  # the class the classifier finds most likely
    p_given: float  # the out-of-sample probability of the given label
    p_suggested: float


@dataclass
class LabelIssues:
    """What the label check found and how; the paths are set once the files are written."""

    study: str
    features: str  # which features the classifier read, in words
    n_images: int
    folds: int
    accuracy: float  # out-of-sample agreement with the given labels
    issues: list[LabelIssue]
    generated: str = ""
    csv_path: str | None = None
    png_path: str | None = None
    json_path: str | None = None
    notes: list[str] = field(default_factory=list)

    @classmethod
    def from_json(cls, text: str) -> LabelIssues:
        raw = json.loads(text)
        raw["issues"] = [LabelIssue(**issue) for issue in raw.get("issues", [])]
        return cls(**raw)


# --------------------------------------------------------------------------- the check


def find_label_issues(
    spec: Spec, cache: DataCache | None = None, *, out_dir: Path | None = None, say: Say | None = None
) -> LabelIssues:
    """Flag the train and val images most likely mislabelled; write reports/<name>-labels.{csv,png,json}.

    Example:
        >>> found = autocnn.find_label_issues(spec)
        >>> [(i.item, i.given, i.suggested) for i in found.issues[:5]]
    """
    cache = cache or DataCache(spec.data, seed=spec.seed)
    data = cache.get()
    labels = np.concatenate([split.labels for split in _checked_splits(data)])
    check_enough_per_class(labels, data.classes, folds=FOLDS)
    probs, description = best_probabilities(feature_candidates(spec, cache), labels, seed=spec.seed, say=say)
    ranked = ranked_label_issues(labels, probs)
    found = LabelIssues(
        study=spec.name,
        features=description,
        n_images=len(labels),
        folds=FOLDS,
        accuracy=float(np.mean(probs.argmax(axis=1) == labels)),
        issues=describe_issues(ranked, labels, probs, items_of(cache, data), data.classes),
        generated=time.strftime("%Y-%m-%d %H:%M:%S"),
    )
    thumbnails = np.concatenate([split.images for split in _checked_splits(data)])[ranked[:SHEET_IMAGES]]
    write_label_files(found, thumbnails, labels_folder(out_dir), stem=f"{spec.name}-labels")
    return found


def _checked_splits(data: Dataset) -> list[Any]:
    return [data.train, data.val]


def check_enough_per_class(labels: np.ndarray, classes: list[str], *, folds: int) -> None:
    """Stratified K-fold needs every class in every fold: K images of each, at the very least."""
    counts = np.bincount(labels, minlength=len(classes))
    short = [f"{classes[i]} ({counts[i]})" for i in np.flatnonzero(counts < folds)]
    if len(classes) < 2:
        raise DataError("label check: needs at least 2 classes")
    if short:
        raise DataError(
            f"label check: {folds}-fold cross-validation needs at least {folds} images per class in "
            f"train + val; too few in {', '.join(short[:5])}{' ...' if len(short) > 5 else ''}"
        )


def items_of(cache: DataCache, data: Dataset) -> list[tuple[str, str, int]]:
    """(split, item, index) of every checked image, in the order the splits were decoded: the
    file relative to the data root (the decoder skips unreadable files, so they are skipped
    here too), or the split and position for a dataset without files."""
    names = [*SPLITS_CHECKED]
    if cache.data.source != "imagefolder":
        return [
            (name, f"{name} #{i}", i)
            for name, split in zip(names, _checked_splits(data), strict=True)
            for i in range(len(split))
        ]
    root = Path(cache.data.root or "")
    skipped = {path for path, _ in data.skipped}
    out = []
    for name in names:
        files = [path for path, _ in cache.index().files[name] if str(path) not in skipped]
        out += [(name, _relative(path, root), i) for i, path in enumerate(files)]
    return out


def _relative(path: Path, root: Path) -> str:
    try:
        return str(path.relative_to(root))
    except ValueError:
        return str(path)


def describe_issues(
    ranked: np.ndarray, labels: np.ndarray, probs: np.ndarray, items: list[tuple[str, str, int]], classes: list[str]
) -> list[LabelIssue]:
    out = []
    for i in ranked:
        split, item, index = items[i]
        best = int(probs[i].argmax())
        out.append(
            LabelIssue(
                split=split,
                item=item,
                index=index,
                given=classes[labels[i]],
                suggested=classes[best],
                p_given=round(float(probs[i, labels[i]]), 4),
                p_suggested=round(float(probs[i, best]), 4),
            )
        )
    return out


# --------------------------------------------------------------------------- features


def feature_candidates(spec: Spec, cache: DataCache) -> list[tuple[Callable[[Say | None], np.ndarray], str]]:
    """(compute, description) of each kind of features worth trying: always the raw pixels, and
    a pretrained backbone's pooled features if the spec has one whose weights are here."""
    images = np.concatenate([split.images for split in _checked_splits(cache.get())])
    side = min(PIXEL_SIDE, images.shape[1])
    found, why_not = backbone_with_weights(spec)
    pixels = (lambda _say: pixel_features(images, side)[0], f"raw pixels downscaled to {side} x {side} px")
    if found is None:
        return [(pixels[0], f"{pixels[1]} ({why_not})")]
    name, space = found
    backbone = backbone_preprocess_of(spec, name, space)
    where = space.pretrained if isinstance(space.pretrained, str) else "its pretrained weights"
    described = f"{name}'s pooled features ({where}, {backbone.image_size} px)"
    return [(lambda say: backbone_features(spec, cache, name, space, say=say), described), pixels]


def best_probabilities(
    candidates: list[tuple[Callable[[Say | None], np.ndarray], str]],
    labels: np.ndarray,
    *,
    seed: int,
    say: Say | None = None,
) -> tuple[np.ndarray, str]:
    """The out-of-sample probabilities of the features that agree best with the given labels.

    A backbone's features are not always the better ones: ImageNet features of 32 px images, or
    of 8 x 8 digits enlarged, separate the classes worse than the pixels do, and a classifier
    that is wrong more often flags more correct labels. Agreement with the given labels, most of
    which are right, picks between them; the description says which won and by how much.
    """
    scored = []
    for compute, description in candidates:
        if say is not None:
            say(f"label check: {FOLDS}-fold logistic regression on {description}")
        probs = out_of_sample_probabilities(compute(say), labels, folds=FOLDS, seed=seed)
        scored.append((float(np.mean(probs.argmax(axis=1) == labels)), probs, description))
    accuracy, probs, description = max(scored, key=lambda item: item[0])
    others = [f"{d}: {a:.3f}" for a, _, d in scored if d != description]
    if others:
        description += f", chosen by out-of-sample accuracy {accuracy:.3f} (against {'; '.join(others)})"
    return probs, description


def backbone_with_weights(spec: Spec) -> tuple[tuple[str, Any] | None, str]:
    """The spec's first timm backbone whose pretrained weights are on this machine, or why there is none."""
    from autocnn.models.catalog import CUSTOM_CNN

    names = [name for name in spec.models.spaces() if name != CUSTOM_CNN]
    if not names:
        return None, "the spec names no pretrained backbone"
    from autocnn.models.hub import cached_weights, is_timm_name, timm_spaces, weight_file_problem

    for name, space in timm_spaces(spec.models).items():
        pretrained = space.pretrained
        if isinstance(pretrained, str) and weight_file_problem(Path(pretrained), path=name) is None:
            return (name, space), ""
        if pretrained is True and is_timm_name(name) and cached_weights(name) is not None:
            return (name, space), ""
    return None, f"no pretrained weights on this machine for {', '.join(names)}"


@dataclass(frozen=True)
class _Model:
    """What the feature key reads of a trial's config: the model's name."""

    model: str


def backbone_features(spec: Spec, cache: DataCache, name: str, space: Any, *, say: Say | None = None) -> np.ndarray:
    """Pooled features of train and val, through the study's own feature cache: computed here
    they serve the study's frozen-backbone trials later, and a study's serve this check."""
    import torch

    from autocnn.models.backbones import build_backbone
    from autocnn.search.space import study_settings
    from autocnn.training.features import FeatureCache, feature_key, pooled_features, process_cache, weights_identity
    from autocnn.training.loop import pick_device

    settings = study_settings(spec)
    params = _backbone_params(space)
    pre = backbone_preprocess_of(spec, name, space)
    data = cache.get(pre.image_size)
    store = process_cache(settings.feature_folder) if spec.study.feature_cache else FeatureCache(None)
    weights = weights_identity(name, space.pretrained, torch_seed=spec.seed)
    device = pick_device()
    model: list[torch.nn.Module] = []  # built on the first cache miss only

    def compute(split: Any) -> torch.Tensor:
        if not model:
            if say is not None:
                say(f"label check: computing {name}'s pooled features at {pre.image_size} px")
            built = build_backbone(name, params, num_classes=data.num_classes)
            model.append(built.to(device, memory_format=torch.channels_last))
        return pooled_features(model[0], split, pre, device=device)

    parts = []
    for split in _checked_splits(data):
        key = feature_key(_Model(name), pre, split, weights=weights)  # type: ignore[arg-type]
        tensor, _ = store.get(key, lambda split=split: compute(split))
        parts.append(tensor.numpy())
    return np.concatenate(parts)


def _backbone_params(space: Any) -> dict[str, Any]:
    """A frozen backbone with the spec's weights, at the spec's size for it if it names one."""
    params: dict[str, Any] = {"pretrained": space.pretrained, "freeze": "backbone"}
    if space.image_size:
        params["image_size"] = space.image_size
    return params


def backbone_preprocess_of(spec: Spec, name: str, space: Any) -> Any:
    """The size, mean and std the study's trials feed this backbone: the same features, the same cache keys."""
    from autocnn.models.build import preprocess_for
    from autocnn.search.space import study_settings

    settings = study_settings(spec)
    return preprocess_for(
        name, _backbone_params(space), image_size=settings.image_size, native_size=settings.native_size
    )


def pixel_features(images: np.ndarray, side: int = PIXEL_SIDE) -> tuple[np.ndarray, int]:
    """(N, side*side*channels) floats in 0..1; one channel when the images are grey."""
    from autocnn.data.decode import resized

    side = min(side, images.shape[1])
    small = resized(images, side)
    grey = bool(np.all(small[..., :1] == small))
    pixels = small[..., :1] if grey else small
    return pixels.reshape(len(images), -1).astype(np.float32) / 255.0, side


# --------------------------------------------------------------------------- confident learning


def out_of_sample_probabilities(features: np.ndarray, labels: np.ndarray, *, folds: int, seed: int) -> np.ndarray:
    """(N, K) probabilities, each row from a logistic regression that did not see that image."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_val_predict
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    from threadpoolctl import threadpool_limits

    classifier = make_pipeline(StandardScaler(), LogisticRegression(C=LOGREG_C, max_iter=1000))
    splitter = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
    # One BLAS thread: these fits are small, and on a machine whose cores are busy (a study next
    # door) BLAS threads that spin-wait for each other made them a hundred times slower.
    with threadpool_limits(limits=1, user_api="blas"):
        return cross_val_predict(classifier, features, labels, cv=splitter, method="predict_proba")


def ranked_label_issues(labels: np.ndarray, probs: np.ndarray) -> np.ndarray:
    """Indices of the images confident learning flags, the least likely given label first."""
    from cleanlab.filter import find_label_issues as cleanlab_issues

    return np.asarray(cleanlab_issues(labels, probs, return_indices_ranked_by="self_confidence", n_jobs=1), dtype=int)


# --------------------------------------------------------------------------- files


def labels_folder(out_dir: Path | None = None) -> Path:
    """Where the label check writes and `autocnn report` looks: ./reports unless told otherwise."""
    return out_dir if out_dir is not None else Path.cwd() / "reports"


def saved_label_issues(name: str, out_dir: Path | None = None) -> LabelIssues | None:
    """What the last `validate --labels` wrote for this study, or None (never run, or unreadable)."""
    path = labels_folder(out_dir) / f"{name}-labels.json"
    try:
        return LabelIssues.from_json(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, TypeError, KeyError):
        return None


def write_label_files(found: LabelIssues, thumbnails: np.ndarray, folder: Path, *, stem: str) -> None:
    """CSV, contact sheet and JSON, each written beside its target and renamed into place, the
    JSON last: what reads it finds the other two whole."""
    folder.mkdir(parents=True, exist_ok=True)
    csv_path, png_path, json_path = (folder / f"{stem}.{ext}" for ext in ("csv", "png", "json"))
    _replace_with(csv_path, issues_csv(found.issues).encode("utf-8"))
    _replace_with(png_path, contact_sheet_png(found, thumbnails))
    found.csv_path, found.png_path, found.json_path = str(csv_path), str(png_path), str(json_path)
    _replace_with(json_path, (json.dumps(asdict(found), indent=2) + "\n").encode("utf-8"))


def _replace_with(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_bytes(data)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def issues_csv(issues: list[LabelIssue]) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["rank", "split", "item", "given", "suggested", "p_given", "p_suggested"])
    for rank, issue in enumerate(issues, start=1):
        writer.writerow([rank, issue.split, issue.item, issue.given, issue.suggested, issue.p_given, issue.p_suggested])
    return out.getvalue()


def contact_sheet_png(found: LabelIssues, thumbnails: np.ndarray) -> bytes:
    """Thumbnails of the most likely errors, each titled `given -> suggested` and the given label's probability."""
    from autocnn.figures import label_fonts, quiet_figure_class

    shown = found.issues[: len(thumbnails)]
    columns = max(1, min(SHEET_COLUMNS, len(shown)))
    rows = max(1, -(-len(shown) // columns))
    fig = quiet_figure_class()(figsize=(2.0 * columns, 2.25 * rows + 0.5), dpi=100)
    fonts = label_fonts([name for issue in shown for name in (issue.given, issue.suggested)])
    for i, (issue, image) in enumerate(zip(shown, thumbnails, strict=True)):
        ax = fig.add_subplot(rows, columns, i + 1)
        ax.imshow(image, interpolation="nearest")
        ax.set_axis_off()
        title = ax.set_title(
            f"{issue.given} -> {issue.suggested}\np={issue.p_given:.2f} {_short(issue.item)}", fontsize=7
        )
        if fonts is not None:
            title.set_fontfamily(fonts)
    heading = f"{found.study}: {len(found.issues)} of {found.n_images} labels flagged"
    fig.suptitle(heading if shown else f"{heading}: nothing to show", fontsize=10)
    fig.subplots_adjust(left=0.02, right=0.98, bottom=0.02, top=1 - 0.5 / (2.25 * rows + 0.5), hspace=0.6)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    return buffer.getvalue()


def _short(item: str, limit: int = 24) -> str:
    """A thumbnail's caption fits its width: the end of a long path, which names the file."""
    return item if len(item) <= limit else "..." + item[-(limit - 3) :]


# --------------------------------------------------------------------------- the report's section


def labels_html(name: str, out_dir: Path | None = None, *, limit: int = 20) -> str:
    """The report's section: what the last `validate --labels` saved, or how to produce it."""
    import base64
    import html

    from autocnn.outputs.html import fmt, table

    found = saved_label_issues(name, out_dir)
    if found is None:
        return (
            "<p class=note>Labels not checked yet: <code>autocnn validate SPEC --labels</code> lists the train and "
            "val images most likely mislabelled (and the report then shows them here).</p>"
        )
    parts = [
        f"<p>{len(found.issues)} of {found.n_images} train + val images flagged by confident learning on "
        f"{found.folds}-fold out-of-sample probabilities of a logistic regression on {html.escape(found.features)} "
        f"(accuracy on the given labels {fmt(found.accuracy, 3)}); checked {html.escape(found.generated)} by "
        "<code>autocnn validate --labels</code>, which refreshes it.</p>"
    ]
    rows = [
        [html.escape(i.item), html.escape(i.given), html.escape(i.suggested), fmt(i.p_given, 3)]
        for i in found.issues[:limit]
    ]
    parts.append(table(["file", "given", "suggested", "p(given)"], rows, numeric_from=3))
    if len(found.issues) > limit:
        parts.append(
            f"<p class=note>The other {len(found.issues) - limit} are in {html.escape(str(found.csv_path))}.</p>"
        )
    try:
        png = Path(found.png_path or "").read_bytes()
    except OSError:
        return "".join(parts)
    parts.append(f"<img alt='most likely label errors' src='data:image/png;base64,{base64.b64encode(png).decode()}'>")
    return "".join(parts)
