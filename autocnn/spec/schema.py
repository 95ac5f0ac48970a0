"""The spec's schema: one pydantic model per section (data, study, train, models, augment, mlflow),
validated before anything is written, and the JSON Schema editors read.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    ConfigDict,
    Field,
    PrivateAttr,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

from autocnn.spec.fields import (
    COSTS,
    MAX_MODELS,
    MAX_OBJECTIVES,
    MAX_TIMEOUT_S,
    MAX_VIEWS,
    METRICS,
    BatchSize,
    CostBound,
    Epochs,
    LayerDecay,
    LearningRate,
    LocalPath,
    LrMultiplier,
    Patience,
    Probability,
    Seed,
    StorageUrl,
    StrictModel,
    TrackingUri,
    TrialCount,
    UnfreezeCount,
    WeightDecay,
    _sub_error,
    _validated_by,
    choosable,
    path_problem,
    searchable,
    text_problem,
)


class SplitSpec(StrictModel):
    val: Annotated[float, Field(gt=0, lt=1)] = 0.2
    test: Annotated[float, Field(ge=0, lt=1)] = 0.2

    @model_validator(mode="after")
    def _leaves_training_data(self) -> SplitSpec:
        if self.val + self.test >= 0.9:
            raise _sub_error("test", f"val + test must leave >= 10% to train, got {self.val + self.test:.2f}")
        return self


NAMED_SOURCES = ("cifar10", "cifar100")  # datasets by name: autocnn.data.named downloads them once


class DataSpec(StrictModel):
    source: Literal["digits", "imagefolder", "cifar10", "cifar100"]
    root: LocalPath | None = None
    labels: Literal["fine", "coarse"] | None = None
    image_size: Annotated[int, Field(ge=8, le=1024)] = 32
    split: SplitSpec = SplitSpec()

    @model_validator(mode="after")
    def _root_matches_source(self) -> DataSpec:
        if self.source == "imagefolder" and not self.root:
            raise _sub_error("root", "required when source is imagefolder")
        if self.source != "imagefolder" and self.root:
            raise _sub_error("root", f"not used with source: {self.source} (autocnn provides the data); remove it")
        if self.labels == "coarse" and self.source != "cifar100":
            raise _sub_error("labels", f"coarse labels exist for cifar100 only, not {self.source}")
        if self.labels is not None and self.source not in NAMED_SOURCES:
            raise _sub_error("labels", f"only for a dataset by name ({', '.join(NAMED_SOURCES)}); remove it")
        return self


# ASCII digits only: the same pattern, anchored, is the JSON Schema's, and ECMA regex `\d` is ASCII.
DURATION_PATTERN = r"\s*([0-9]+(?:\.[0-9]+)?)\s*([smh]?)\s*"
Duration = Annotated[str, Field(pattern=f"^{DURATION_PATTERN}$")]


def parse_duration(value: Any) -> Any:
    """`90`, `90s`, `45m`, `3h` -> seconds; anything else is left for pydantic to reject."""
    if isinstance(value, str):
        match = re.fullmatch(DURATION_PATTERN, value)
        if not match:
            raise PydanticCustomError(
                "spec", "expected seconds or a duration like 90s, 45m, 3h, got {value}", {"value": repr(value)}
            )
        return float(match.group(1)) * {"": 1, "s": 1, "m": 60, "h": 3600}[match.group(2)]
    if isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    return value


DEFAULT_TRIALS = 20


class StudySpec(StrictModel):
    # None: DEFAULT_TRIALS, or with a timeout and no trials, as many as the time allows.
    trials: TrialCount | None = None
    timeout: Annotated[float, Field(gt=0, le=MAX_TIMEOUT_S)] | None = None
    metric: Literal["val_accuracy", "val_macro_f1", "val_balanced_accuracy", "val_loss"] = "val_accuracy"
    sampler: Literal["tpe", "random", "gp", "cmaes"] = "tpe"
    pruner: Literal["none", "median", "hyperband", "successive_halving"] = "median"
    storage: StorageUrl | None = None
    defaults: bool = True  # start a new study with one known-good configuration per model family
    # Frozen backbones: compute pooled features once and train only the head on them (autocnn.training.features)
    feature_cache: bool = True
    # Several objectives make a multi-objective study; constraints are upper bounds on costs.
    objectives: (
        Annotated[
            list[
                Literal[
                    "val_accuracy",
                    "val_macro_f1",
                    "val_balanced_accuracy",
                    "val_loss",
                    "int8_accuracy",
                    "latency_ms",
                    "params",
                    "size_mb",
                ]
            ],
            Field(min_length=1, max_length=MAX_OBJECTIVES),
        ]
        | None
    ) = None
    constraints: dict[Literal["latency_ms", "params", "size_mb"], CostBound] | None = None
    latency_device: Annotated[str, Field(pattern=r"^(cpu|cuda(:[0-9]{1,2})?)$")] = "cpu"

    @model_validator(mode="after")
    def _objectives_make_sense(self) -> StudySpec:
        objectives = self.objectives
        if objectives is None:
            return self
        repeated = sorted({name for name in objectives if objectives.count(name) > 1})
        if repeated:
            raise _sub_error("objectives", f"each objective at most once, got {', '.join(repeated)} twice")
        if not any(name not in COSTS for name in objectives):
            raise _sub_error(
                "objectives",
                "needs a quality objective (val_accuracy, val_macro_f1, val_balanced_accuracy, val_loss or int8_accuracy)",
            )
        if "metric" in self.model_fields_set:
            raise _sub_error(
                "metric", "give study.metric or study.objectives, not both (objectives' first val_* trains)"
            )
        if len(objectives) > 1 and self.sampler == "cmaes":
            raise _sub_error("sampler", "cmaes cannot search several objectives; use tpe, random or gp")
        if len(objectives) > 1 and self.pruner in ("hyperband", "successive_halving"):
            raise _sub_error(
                "pruner",
                f"{self.pruner} ranks one value; with several objectives use median (the dominated-curve rule) or none",
            )
        return self

    @property
    def objective_names(self) -> list[str]:
        """What the study optimises, in order: `objectives`, or the one `metric`."""
        return list(self.objectives) if self.objectives else [self.metric]

    @property
    def training_metric(self) -> str:
        """The validation metric trials stop on, keep their best epoch by and are pruned on."""
        return next((name for name in self.objective_names if name in METRICS), self.metric)

    _parse_timeout = field_validator(
        "timeout",
        mode="before",
        json_schema_input_type=Annotated[float, Field(gt=0, le=MAX_TIMEOUT_S)] | Duration | None,
    )(parse_duration)

    @property
    def target_trials(self) -> int | None:
        """Trials to reach; None: keep starting trials until `timeout` is spent."""
        if self.trials is None and self.timeout is not None:
            return None
        return self.trials or DEFAULT_TRIALS


class TrainSpec(StrictModel):
    epochs: Epochs = 10
    batch_size: searchable(BatchSize) = 64
    lr: searchable(LearningRate) = 1e-3
    weight_decay: searchable(WeightDecay) = 1e-4
    scheduler: choosable(Literal["cosine", "onecycle", "plateau", "none"]) = "cosine"
    early_stopping: searchable(Patience) = 0
    label_smoothing: searchable(Probability) = 0.0
    # auto: mixed precision on CUDA and on CPUs with native bf16; not `on`/`off`, which YAML reads as booleans
    precision: choosable(Literal["auto", "mixed", "fp32"]) = "auto"
    # Imbalanced classes: the training loss weighs each class by n / (classes x its count) ...
    class_weights: choosable(Literal["none", "balanced"]) = "none"
    # ... and/or each batch draws classes evenly (with replacement), the epoch keeping its length.
    sampler: choosable(Literal["shuffle", "balanced"]) = "shuffle"


class CustomCNNSpace(StrictModel):
    """conv-BN-act-pool blocks; channels start at `width` and double per block."""

    depth: searchable(Annotated[int, Field(ge=1, le=10)]) = 3
    width: searchable(Annotated[int, Field(ge=4, le=512)]) = 32
    dropout: searchable(Probability) = 0.2
    activation: choosable(Literal["relu", "leaky_relu", "gelu", "silu"]) = "relu"


class HeadSpace(StrictModel):
    """A new head on a backbone's pooled features: [Linear(hidden) + activation + dropout] + Linear."""

    hidden: searchable(Annotated[int, Field(ge=0, le=8192)]) = 0  # 0: no hidden layer
    activation: choosable(Literal["relu", "leaky_relu", "gelu", "silu"]) = "relu"
    dropout: searchable(Probability) = 0.0


WEIGHT_SUFFIXES = (".safetensors", ".pth", ".pt")


class TimmSpace(StrictModel):
    """A timm backbone (the key under `models` is the timm name); names are checked in models.hub."""

    pretrained: bool | str = True
    freeze: choosable(Literal["none", "backbone", "partial"]) = "none"
    unfreeze_last: searchable(UnfreezeCount) = 1
    backbone_lr_mult: searchable(LrMultiplier) = 1.0
    layer_decay: searchable(LayerDecay) = 1.0
    probe_first: choosable(bool) = True  # fine-tuning starts from a head fitted on cached features
    # BatchNorm while the backbone trains: its pretrained running statistics, or each batch's own
    norm_stats: choosable(Literal["pretrained", "batch"]) = "pretrained"
    head: HeadSpace | None = None
    dropout: searchable(Probability) = 0.0
    image_size: Annotated[int, Field(ge=8, le=1024)] | None = None

    @field_validator("head", mode="before")
    @classmethod
    def _bare_head_means_defaults(cls, value: Any) -> Any:
        return {} if value is None else value

    @field_validator("pretrained")
    @classmethod
    def _weight_file(cls, value: bool | str) -> bool | str:
        problem = path_problem(value) if isinstance(value, str) else None
        if problem is not None:
            raise PydanticCustomError("spec", "{problem}", {"problem": problem})
        if isinstance(value, str) and not value.lower().endswith(WEIGHT_SUFFIXES):
            raise PydanticCustomError(
                "spec",
                "expected true, false or a path to a {suffixes} state dict, got {value}",
                {"suffixes": " / ".join(WEIGHT_SUFFIXES), "value": repr(value)},
            )
        return value

    @model_validator(mode="after")
    def _one_dropout(self) -> TimmSpace:
        if self.head is not None and "dropout" in self.model_fields_set:
            raise _sub_error("dropout", "with a head, set head.dropout instead (dropout is for timm's own classifier)")
        return self


def _models_json_schema(schema: dict[str, Any]) -> None:
    """What the before-validator allows: a bare backbone name (null), and at least one model."""
    schema["additionalProperties"] = {"anyOf": [schema["additionalProperties"], {"type": "null"}]}
    schema["minProperties"] = 1
    schema["maxProperties"] = MAX_MODELS


class ModelsSpec(StrictModel):
    """`custom_cnn` and any number of timm backbones, each key a timm model name."""

    model_config = ConfigDict(extra="allow", json_schema_extra=_models_json_schema)

    custom_cnn: CustomCNNSpace | None = None
    __pydantic_extra__: dict[str, TimmSpace] = Field(init=False)  # type: ignore[assignment]

    @model_validator(mode="before")
    @classmethod
    def _bare_name_means_defaults(cls, value: Any) -> Any:
        """`custom_cnn:` with nothing under it searches nothing and uses the defaults."""
        if isinstance(value, dict) and len(value) > MAX_MODELS:
            raise PydanticCustomError("spec", "at most {limit} models, got {n}", {"limit": MAX_MODELS, "n": len(value)})
        if isinstance(value, dict):
            return {name: ({} if space is None else space) for name, space in value.items()}
        return value

    def spaces(self) -> dict[str, StrictModel]:
        """Model name -> its sub-space, in spec order."""
        return {name: space for name, space in self if space is not None}

    def backbones(self) -> list[str]:
        """The timm models named, in spec order: every model but `custom_cnn`."""
        return [name for name in self.spaces() if name != "custom_cnn"]

    @model_validator(mode="after")
    def _at_least_one(self) -> ModelsSpec:
        if not self.spaces():
            raise PydanticCustomError("spec", "name at least one model, for example custom_cnn")
        return self


class MlflowSpec(StrictModel):
    tracking_uri: TrackingUri | None = None
    experiment: Annotated[str, Field(max_length=256), _validated_by(text_problem)] | None = None


Chance = Annotated[float, Field(ge=0, le=1)]


class AugmentSpace(StrictModel):
    """Training-time augmentation, searched like any other key; each op's default turns it off.

    Probability keys (flips, gamma, blur, noise, cutout) apply a fixed-strength op with that
    probability; magnitude keys (rotate, shift_scale, random_resized_crop, color_jitter) apply to
    every image with a random amount up to the magnitude, so a range that starts at "off" lets the
    search choose none. The names are the contract with `autocnn.training.augment.AUGMENTS`.
    """

    enabled: choosable(bool) = True
    hflip: searchable(Chance) = 0.0
    vflip: searchable(Chance) = 0.0
    rotate: searchable(Annotated[float, Field(ge=0, le=180)]) = 0.0  # max degrees either way
    shift_scale: searchable(Annotated[float, Field(ge=0, le=0.5)]) = 0.0  # shift fraction, zoom 1 +/- it
    random_resized_crop: searchable(Annotated[float, Field(gt=0, le=1)]) = 1.0  # min area kept
    color_jitter: searchable(Annotated[float, Field(ge=0, le=1)]) = 0.0  # brightness/contrast/saturation
    gamma: searchable(Chance) = 0.0
    blur: searchable(Chance) = 0.0
    noise: searchable(Chance) = 0.0
    cutout: searchable(Chance) = 0.0
    # A frozen backbone's trial trains on this many fixed augmented views per training image,
    # computed once, instead of augmenting every epoch; 0 keeps augmenting every epoch.
    cached_views: searchable(Annotated[int, Field(ge=0, le=MAX_VIEWS)]) = 0


class Spec(StrictModel):
    name: Annotated[str, Field(pattern=r"^[A-Za-z0-9._-]{1,64}$")]
    seed: Seed = 0
    data: DataSpec
    study: StudySpec = StudySpec()
    train: TrainSpec = TrainSpec()
    models: ModelsSpec
    mlflow: MlflowSpec = MlflowSpec()
    augment: AugmentSpace | None = None  # missing (or empty): no augmentation

    _path: Path | None = PrivateAttr(default=None)

    def __reduce__(self) -> tuple[Any, ...]:
        """Pickled as its keys (for worker processes): pydantic's generic range types cannot be."""
        return (rebuild_spec, (self.model_dump(mode="json", exclude_unset=True, by_alias=True), self._path))

    @property
    def path(self) -> Path:
        """Where the spec was read from (the current directory for specs built in code)."""
        return self._path if self._path is not None else Path.cwd() / f"{self.name}.yaml"

    @property
    def base_dir(self) -> Path:
        """The spec file's folder: where a study keeps its default stores and checkpoints."""
        return self.path.parent

    def with_paths_under(self, base_dir: Path) -> Spec:
        """This spec with every file path in it absolute: `data.root`, a backbone's weight file
        and a journal-file storage are relative to the spec's folder, and are resolved once, here,
        so no stage needs to know where the spec came from."""
        raw = self.model_dump(mode="json", exclude_unset=True, by_alias=True)
        if raw["data"].get("root"):
            raw["data"]["root"] = str(absolute_path(raw["data"]["root"], base_dir))
        for space in raw["models"].values():
            if isinstance(space, dict) and isinstance(space.get("pretrained"), str):
                space["pretrained"] = str(absolute_path(space["pretrained"], base_dir))
        storage = raw.get("study", {}).get("storage")
        if storage and "://" not in storage:
            raw["study"]["storage"] = str(absolute_path(storage, base_dir))
        return rebuild_spec(raw, self._path)

    @property
    def experiment_name(self) -> str:
        return self.mlflow.experiment or self.name


# Draft-07: the newest draft yaml-language-server (behind VS Code's YAML extension and others)
# validates with. pydantic writes draft 2020-12 but, for these models, nothing newer than draft-07
# except the name `$defs`, renamed `definitions` below.
JSON_SCHEMA_DIALECT = "http://json-schema.org/draft-07/schema#"


def json_schema() -> dict[str, Any]:
    """The spec's JSON Schema, for editors and other tools; built from the models so it cannot drift.

    It accepts every spec the models accept; checks across keys (`low <= high`, `val + test`,
    `root` with `source`) are left to `autocnn validate`, so the schema is looser there.
    """
    schema = _definitions_by_title(Spec.model_json_schema(mode="validation"))
    return {
        "$schema": JSON_SCHEMA_DIALECT,
        "title": "autocnn study spec",
        "description": "A study spec for `autocnn study`; `autocnn validate SPEC` checks what a schema cannot.",
        **{key: value for key, value in schema.items() if key != "title"},
    }


def _definitions_by_title(schema: dict[str, Any]) -> dict[str, Any]:
    """pydantic's `$defs` as draft-07 `definitions`, keyed by title (`Range_float_gt_0`), not by a type's repr."""
    names = {key: re.sub(r"[^A-Za-z0-9.-]+", "_", sub["title"]).strip("_") for key, sub in schema["$defs"].items()}
    if len(set(names.values())) != len(names):
        raise RuntimeError(f"two spec models share a JSON Schema title: {sorted(names.values())}")
    refs = {f"#/$defs/{old}": f"#/definitions/{new}" for old, new in names.items()}

    def rewrite(node: Any) -> Any:
        if isinstance(node, dict):
            return {key: refs[value] if key == "$ref" else rewrite(value) for key, value in node.items()}
        if isinstance(node, list):
            return [rewrite(item) for item in node]
        return node

    definitions = {names[key]: rewrite(sub) for key, sub in schema["$defs"].items()}
    return {**rewrite({key: value for key, value in schema.items() if key != "$defs"}), "definitions": definitions}


def json_schema_text() -> str:
    """The schema as `autocnn schema` prints it and `studies/autocnn.schema.json` holds it, byte for byte."""
    import json

    return json.dumps(json_schema(), indent=2, ensure_ascii=False) + "\n"


def rebuild_spec(raw: dict[str, Any], path: Path | None) -> Spec:
    """A pickled spec, back: its keys were valid when it was pickled."""
    spec = Spec.model_validate(raw)
    spec._path = path
    return spec


def absolute_path(value: str, base_dir: Path) -> Path:
    """A spec's path: `~` expanded, and a relative one taken from `base_dir`."""
    path = Path(value).expanduser()
    return path if path.is_absolute() else base_dir / path
