"""The study spec: the YAML contract, validated with pydantic before anything is written.

Any value under `train`, `models.<name>` and `augment` is a *searchable*: a plain value (fixed),
`{low, high[, log][, step]}` (uniform) or `{choices: [...]}` (categorical). The key's own type
(int, float in a range, one of a few words) applies to the fixed value, to both bounds and to every
choice, so `train.lr.low: -1` fails with the key path, not deep inside a trial.

This module imports only pydantic and yaml: checks that need torch, timm or the data live beside
the code that owns them (`autocnn.checks`).
"""

from __future__ import annotations

import difflib
import math
import re
import stat
from pathlib import Path
from typing import Annotated, Any, Generic, Literal, TypeVar, get_args, get_origin
from urllib.parse import unquote

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    PlainValidator,
    PrivateAttr,
    Tag,
    ValidationError,
    WithJsonSchema,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

from autocnn.errors import SpecError

T = TypeVar("T")

METRICS: dict[str, str] = {
    "val_accuracy": "maximize",
    "val_macro_f1": "maximize",
    "val_loss": "minimize",
}
# What a study can optimise beside the validation metrics: costs, known before the first epoch
# (so the pruner can compare like with like), and the int8 model's accuracy, known at the end.
COSTS: dict[str, str] = {
    "latency_ms": "minimize",
    "params": "minimize",
    "size_mb": "minimize",
}
OBJECTIVES: dict[str, str] = {**METRICS, "int8_accuracy": "maximize", **COSTS}
MAX_OBJECTIVES = 4
SCHEDULERS = ("cosine", "onecycle", "plateau", "none")
ACTIVATIONS = ("relu", "leaky_relu", "gelu", "silu")

# Upper bounds: far above any real study, low enough that a typo (or a hostile spec) fails in
# validate instead of allocating, looping or overflowing a seed deep inside a trial.
MAX_EPOCHS = 10_000
MAX_BATCH_SIZE = 65_536
MAX_TRIALS = 100_000
MAX_TIMEOUT_S = 366 * 24 * 3600
MAX_UNFREEZE = 1_000
MAX_CHOICES = 256
MAX_MODELS = 64
MAX_VIEWS = 64  # augment.cached_views: each view is one more pass of the backbone over the training set
MAX_SEED = 2**31 - 1  # NumPy's legacy seeds stop at 2**32; the sampler adds the trial count
MAX_TEXT = 4096  # paths and URLs
MAX_NAME_BYTES = 255  # one file or folder name, on every common file system


def _type_label(tp: Any) -> str:
    """`Annotated[float, Field(ge=0, le=1)]` -> `float, ge=0, le=1`; pydantic's default is the repr."""
    if get_origin(tp) is Annotated:
        base, *extras = get_args(tp)
        bounds = [
            f"{bound}={getattr(item, bound)}"
            for extra in extras
            for item in getattr(extra, "metadata", [extra])
            for bound in ("gt", "ge", "lt", "le")
            if hasattr(item, bound)
        ]
        return ", ".join([_type_label(base), *bounds])
    if get_origin(tp) is Literal:
        return "|".join(str(arg) for arg in get_args(tp))
    return getattr(tp, "__name__", repr(tp))


class StrictModel(BaseModel):
    """Typos fail, YAML 1.1 booleans are not numbers, NaN/inf are not bounds, nothing mutates."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True, allow_inf_nan=False)

    @classmethod
    def model_parametrized_name(cls, params: tuple[Any, ...]) -> str:
        """`Range[float, gt=0]`: the name is the JSON Schema's title for it, which editors show."""
        return f"{cls.__name__}[{', '.join(_type_label(param) for param in params)}]"


def _sub_error(field: str, message: str) -> PydanticCustomError:
    """An error about one sub-key (`low`, `high`), so the reported path points at it."""
    return PydanticCustomError("spec_sub", "{message}", {"field": field, "message": message})


class Range(StrictModel, Generic[T]):
    """A uniform range; int bounds on an int key give `suggest_int`, float keys `suggest_float`."""

    low: T
    high: T
    log: bool = False
    step: T | None = None

    @model_validator(mode="after")
    def _check_bounds(self) -> Range[T]:
        low, high = self.low, self.high
        if low > high:  # type: ignore[operator]
            raise _sub_error("high", f"must be >= low ({low}), got {high}")
        if self.log and low <= 0:  # type: ignore[operator]
            raise _sub_error("low", f"must be > 0 for log scale, got {low}")
        if self.step is not None:
            if self.step <= 0:  # type: ignore[operator]
                raise _sub_error("step", f"must be > 0, got {self.step}")
            if self.log:
                raise _sub_error("step", "cannot be combined with log: true")
        return self


class Choices(StrictModel, Generic[T]):
    """A categorical: Optuna stores the chosen value itself, so choices are plain scalars."""

    choices: Annotated[list[T], Field(min_length=1, max_length=MAX_CHOICES)]

    @field_validator("choices")
    @classmethod
    def _unique(cls, value: list[T]) -> list[T]:
        seen: list[Any] = []
        for item in value:
            if any(item == s and type(item) is type(s) for s in seen):
                raise PydanticCustomError("spec", "repeats {item}", {"item": repr(item)})
            seen.append(item)
        return value


def _searchable_kind(value: Any) -> str:
    if isinstance(value, dict):
        return "{choices}" if "choices" in value else "{low,high}"
    if isinstance(value, Choices):
        return "{choices}"
    if isinstance(value, Range):
        return "{low,high}"
    return "fixed"


_TAGS = {"{choices}", "{low,high}", "fixed"}


def searchable(scalar: Any) -> Any:
    """A number-like key: fixed, ranged or chosen; `scalar` constrains all three forms."""
    return Annotated[
        Annotated[Range[scalar], Tag("{low,high}")]
        | Annotated[Choices[scalar], Tag("{choices}")]
        | Annotated[scalar, Tag("fixed")],
        Discriminator(_searchable_kind),
    ]


def choosable(scalar: Any) -> Any:
    """A word-like key (a scheduler, a mode): fixed or chosen, never a range."""
    return Annotated[
        Annotated[Choices[scalar], Tag("{choices}")] | Annotated[scalar, Tag("fixed")],
        Discriminator(lambda v: "{choices}" if isinstance(v, (dict, Choices)) else "fixed"),
    ]


EpochCount = Annotated[int, Field(ge=1, le=MAX_EPOCHS)]
Patience = Annotated[int, Field(ge=0, le=MAX_EPOCHS)]
BatchSize = Annotated[int, Field(ge=1, le=MAX_BATCH_SIZE)]
TrialCount = Annotated[int, Field(ge=1, le=MAX_TRIALS)]
UnfreezeCount = Annotated[int, Field(ge=1, le=MAX_UNFREEZE)]
Seed = Annotated[int, Field(ge=0, le=MAX_SEED)]

BOOLEAN_HINT = "YAML reads yes/no/on/off as booleans"


def _fixed_epochs(value: Any) -> int | str:
    """A whole number of epochs, or `auto`; one error line either way, not one per union member."""
    if value == "auto" and isinstance(value, str):
        return value
    expected = f"expected a whole number from 1 to {MAX_EPOCHS} or auto, got {{value}}"
    if isinstance(value, bool):
        raise PydanticCustomError("spec", f"{expected} ({BOOLEAN_HINT})", {"value": repr(value)})
    if not isinstance(value, int) or not 1 <= value <= MAX_EPOCHS:
        raise PydanticCustomError("spec", expected, {"value": _shown(value)})
    return value


# `train.epochs`: a number (fixed, ranged, chosen) or `auto`, which lets the noise-aware stop end
# each trial within a cap the budget allows (autocnn.budget).
Epochs = Annotated[
    Annotated[Range[EpochCount], Tag("{low,high}")]
    | Annotated[Choices[EpochCount], Tag("{choices}")]
    | Annotated[Any, PlainValidator(_fixed_epochs, json_schema_input_type=EpochCount | Literal["auto"]), Tag("fixed")],
    Discriminator(_searchable_kind),
]
PositiveFloat = Annotated[float, Field(gt=0)]
NonNegativeFloat = Annotated[float, Field(ge=0)]
Probability = Annotated[float, Field(ge=0, lt=1)]
LayerDecay = Annotated[float, Field(gt=0, le=1)]  # 1: every backbone layer at one rate


# --------------------------------------------------------------------------- paths, storage and tracking URIs

STORAGE_FORMS = "sqlite:///path.db, postgresql[+driver]://..., mysql[+driver]://... or a journal file path"
TRACKING_FORMS = (
    "sqlite:///path/mlflow.db, http(s)://host[:port], postgresql[+driver]://..., mysql[+driver]://..., "
    "mssql[+driver]://... or databricks"
)
# Two letters at least: `C:\studies\x.log` is a Windows path, not a URL.
_SCHEME = re.compile(r"([A-Za-z][A-Za-z0-9+.-]+):")
_STORAGE_DATABASE = re.compile(r"(postgresql|mysql)(\+[A-Za-z0-9_]+)?")  # what Optuna's RDBStorage is tested on
_TRACKING_DATABASE = re.compile(r"(postgresql|mysql|mssql)(\+[A-Za-z0-9_]+)?")  # MLflow's SQLAlchemy store


def text_problem(value: str) -> str | None:
    """Characters no file name, URL or experiment name should hold: control characters (a newline
    would forge a line in a log) and lone surrogates (which no encoding writes)."""
    if any(ord(char) < 32 or ord(char) == 127 for char in value):
        return "must not contain control characters (newline, tab, NUL)"
    if any(0xD800 <= ord(char) <= 0xDFFF for char in value):
        return "must be valid Unicode text (it holds a lone surrogate)"
    return None


def _uri_basics(value: str) -> str | None:
    """Problems any storage or tracking value has, whatever its scheme.

    `..` is refused even where it would resolve: a shared spec must not reach outside the
    folders its author can see, and a path without it says the same thing more plainly.
    """
    if not value.strip():
        return "must not be empty"
    if len(value) > MAX_TEXT:
        return f"at most {MAX_TEXT} characters, got {len(value)}"
    if (problem := text_problem(value)) is not None:
        return problem
    if any(".." in re.split(r"[/\\:]", form) for form in (value, unquote(value))):  # `file:..` too
        return "'..' path segments are refused (path traversal); give the path without them"
    return None


def _scheme(value: str) -> tuple[str, str] | None:
    """(scheme, the rest after `scheme:`), or None for a plain path."""
    match = _SCHEME.match(value)
    return (match.group(1), value[match.end() :]) if match else None


def _sqlite_problem(rest: str) -> str | None:
    path = rest.removeprefix("///").split("?", 1)[0]
    if not rest.startswith("///") or path in ("", ":memory:"):
        return "expected sqlite:///path/to/file.db (a file: an in-memory database keeps nothing)"
    return None


def _server_problem(scheme: str, rest: str) -> str | None:
    if not rest.startswith("//") or len(rest) == 2:
        return f"expected {scheme}://user:password@host[:port]/database"
    return None


def storage_problem(value: str) -> str | None:
    """Why `value` is no storage autocnn opens (see `autocnn.storage`); None when it is one."""
    problem = _uri_basics(value)
    parts = _scheme(value)
    if problem or parts is None:  # a plain path: Optuna's journal file
        return problem
    scheme, rest = parts
    if scheme == "sqlite":
        return _sqlite_problem(rest)
    if _STORAGE_DATABASE.fullmatch(scheme):
        return _server_problem(scheme, rest)
    return f"unsupported scheme '{scheme}:'; expected {STORAGE_FORMS}"


def tracking_uri_problem(value: str) -> str | None:
    """Why `value` is no MLflow tracking URI autocnn uses; None when it is one.

    A plain path or `file:` would be MLflow's file store, which autocnn never writes (its
    default is an SQLite file), so both are refused rather than half supported.
    """
    problem = _uri_basics(value)
    if problem or value == "databricks":
        return problem
    parts = _scheme(value)
    if parts is None:
        return f"a plain path is MLflow's file store, which autocnn does not use; expected {TRACKING_FORMS}"
    scheme, rest = parts
    if scheme == "sqlite":
        return _sqlite_problem(rest)
    if scheme in ("http", "https"):
        return None if rest.startswith("//") and rest[2:].split("/", 1)[0] else f"expected {scheme}://host[:port]"
    if scheme == "databricks":
        return None if rest.startswith("//") and len(rest) > 2 else "expected databricks or databricks://<profile>"
    if _TRACKING_DATABASE.fullmatch(scheme):
        return _server_problem(scheme, rest)
    return f"unsupported scheme '{scheme}:'; expected {TRACKING_FORMS}"


def check_overrides(*, storage: str | None = None, tracking_uri: str | None = None) -> None:
    """The command line's `--storage` and `--tracking-uri`, held to the spec keys' rules."""
    problems = [
        f"{option}: {problem}"
        for option, value, check in (
            ("--storage", storage, storage_problem),
            ("--tracking-uri", tracking_uri, tracking_uri_problem),
        )
        if value is not None and (problem := check(value)) is not None
    ]
    if problems:
        raise SpecError(problems)


def _validated_by(check: Any) -> Any:
    def validate(value: str) -> str:
        problem = check(value)
        if problem is not None:
            raise PydanticCustomError("spec", "{problem}", {"problem": problem})
        return value

    return AfterValidator(validate)


def path_problem(value: str) -> str | None:
    """Why the OS would refuse `value` as a file name (a traceback deep in a check otherwise)."""
    if len(value) > MAX_TEXT:
        return f"at most {MAX_TEXT} characters, got {len(value)}"
    if (problem := text_problem(value)) is not None:
        return problem
    longest = max((len(part.encode("utf-8")) for part in re.split(r"[/\\]", value)), default=0)
    if longest > MAX_NAME_BYTES:
        return f"a file or folder name in it is {longest} bytes; file systems allow {MAX_NAME_BYTES}"
    return None


LocalPath = Annotated[str, _validated_by(path_problem), WithJsonSchema({"type": "string", "maxLength": MAX_TEXT})]

# The JSON Schema's patterns say what validate says for every form shown in the README; the few
# finer checks (an empty sqlite path, control characters) are validate's alone.
_NO_TRAVERSAL = r"(?!(?:.*[/\\:])?\.\.(?:[/\\:]|$))"
STORAGE_PATTERN = (
    rf"^{_NO_TRAVERSAL}(?:sqlite:///.+|(?:postgresql|mysql)(?:\+[A-Za-z0-9_]+)?://.+"
    r"|(?![A-Za-z][A-Za-z0-9+.-]+:).+)$"
)
TRACKING_PATTERN = (
    rf"^{_NO_TRAVERSAL}(?:databricks|databricks://.+|sqlite:///.+|https?://[^/].*"
    r"|(?:postgresql|mysql|mssql)(?:\+[A-Za-z0-9_]+)?://.+)$"
)
StorageUrl = Annotated[
    str,
    _validated_by(storage_problem),
    WithJsonSchema({"type": "string", "maxLength": MAX_TEXT, "pattern": STORAGE_PATTERN}),
]
TrackingUri = Annotated[
    str,
    _validated_by(tracking_uri_problem),
    WithJsonSchema({"type": "string", "maxLength": MAX_TEXT, "pattern": TRACKING_PATTERN}),
]


# --------------------------------------------------------------------------- the spec


class SplitSpec(StrictModel):
    val: Annotated[float, Field(gt=0, lt=1)] = 0.2
    test: Annotated[float, Field(ge=0, lt=1)] = 0.2

    @model_validator(mode="after")
    def _leaves_training_data(self) -> SplitSpec:
        if self.val + self.test >= 0.9:
            raise _sub_error("test", f"val + test must leave >= 10% to train, got {self.val + self.test:.2f}")
        return self


NAMED_SOURCES = ("cifar10", "cifar100")  # datasets by name: autocnn.datasets downloads them once


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
    metric: Literal["val_accuracy", "val_macro_f1", "val_loss"] = "val_accuracy"
    sampler: Literal["tpe", "random", "gp", "cmaes"] = "tpe"
    pruner: Literal["none", "median", "hyperband", "successive_halving"] = "median"
    storage: StorageUrl | None = None
    defaults: bool = True  # start a new study with one known-good configuration per model family
    # Frozen backbones: compute pooled features once and train only the head on them (autocnn.features)
    feature_cache: bool = True
    # Several objectives make a multi-objective study; constraints are upper bounds on costs.
    objectives: (
        Annotated[
            list[
                Literal["val_accuracy", "val_macro_f1", "val_loss", "int8_accuracy", "latency_ms", "params", "size_mb"]
            ],
            Field(min_length=1, max_length=MAX_OBJECTIVES),
        ]
        | None
    ) = None
    constraints: dict[Literal["latency_ms", "params", "size_mb"], PositiveFloat] | None = None
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
                "objectives", "needs a quality objective (val_accuracy, val_macro_f1, val_loss or int8_accuracy)"
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
    lr: searchable(PositiveFloat) = 1e-3
    weight_decay: searchable(NonNegativeFloat) = 1e-4
    scheduler: choosable(Literal["cosine", "onecycle", "plateau", "none"]) = "cosine"
    early_stopping: searchable(Patience) = 0
    label_smoothing: searchable(Probability) = 0.0
    # auto: mixed precision on CUDA and on CPUs with native bf16; not `on`/`off`, which YAML reads as booleans
    precision: choosable(Literal["auto", "mixed", "fp32"]) = "auto"


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
    backbone_lr_mult: searchable(NonNegativeFloat) = 1.0
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
    search choose none. The names are the contract with `autocnn.augment.AUGMENTS`.
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
        return (_rebuild_spec, (self.model_dump(mode="json", exclude_unset=True, by_alias=True), self._path))

    @property
    def path(self) -> Path:
        """Where the spec was read from (the current directory for specs built in code)."""
        return self._path if self._path is not None else Path.cwd() / f"{self.name}.yaml"

    @property
    def base_dir(self) -> Path:
        return self.path.parent

    def resolve_path(self, value: str) -> Path:
        """Paths in a spec are relative to the spec file, not to where autocnn runs."""
        path = Path(value).expanduser()
        return path if path.is_absolute() else (self.base_dir / path)

    @property
    def experiment_name(self) -> str:
        return self.mlflow.experiment or self.name


# --------------------------------------------------------------------------- JSON Schema

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


# --------------------------------------------------------------------------- loading

MAX_SPEC_BYTES = 256 * 1024  # real specs are a few KB; the pure-Python parser takes seconds per MB
MAX_NESTING = 32  # the deepest real key, models.<name>.head.hidden.choices, is 6 levels down
MAX_ERROR_LINES = 20


class _SpecLoader(yaml.SafeLoader):
    """SafeLoader that refuses what no spec needs and what would break the loader itself.

    Duplicate keys are errors instead of silently keeping the last. PyYAML composes nested
    collections by recursion, so nesting is capped before Python's recursion limit turns a deep
    document into a RecursionError; an alias inside the collection it names (a cycle) is refused.
    """

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self._open_anchors: list[str | None] = []  # collections being composed, outermost first

    def compose_node(self, parent: yaml.Node | None, index: Any) -> yaml.Node | None:
        event = self.peek_event()
        if isinstance(event, yaml.AliasEvent) and event.anchor in self._open_anchors:
            raise yaml.composer.ComposerError(
                None, None, f"alias *{event.anchor} refers to a collection that contains it", event.start_mark
            )
        if not isinstance(event, (yaml.SequenceStartEvent, yaml.MappingStartEvent)):
            return super().compose_node(parent, index)
        if len(self._open_anchors) >= MAX_NESTING:
            raise yaml.composer.ComposerError(
                None, None, f"nested deeper than {MAX_NESTING} levels; a spec needs about 6", event.start_mark
            )
        self._open_anchors.append(event.anchor)
        try:
            return super().compose_node(parent, index)
        finally:
            self._open_anchors.pop()

    def construct_object(self, node: yaml.Node, deep: bool = False) -> Any:
        """A value Python cannot hold (a 5,000-digit number, a 13th month) is a YAML error with its line."""
        try:
            return super().construct_object(node, deep=deep)
        except (ValueError, OverflowError) as exc:
            raise yaml.constructor.ConstructorError(
                None, None, f"cannot read {_shown(node.value)}: {str(exc).split(';')[0]}", node.start_mark
            ) from None


def _construct_unique_mapping(loader: yaml.SafeLoader, node: yaml.MappingNode, deep: bool = False) -> dict:
    seen: dict[Any, yaml.Node] = {}
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        try:
            first = seen.get(key)
        except TypeError:
            raise yaml.constructor.ConstructorError(
                None, None, "a key must be a word or a number, not a list or a mapping", key_node.start_mark
            ) from None
        if first is not None:
            raise yaml.constructor.ConstructorError(
                None,
                None,
                f"duplicate key {_shown(key)} (first at line {first.start_mark.line + 1})",
                key_node.start_mark,
            )
        seen[key] = key_node
    return loader.construct_mapping(node, deep=deep)


_SpecLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_unique_mapping)


def _read_text(path: Path) -> str:
    """The file's text; anything that is not a small regular UTF-8 file is one error line.

    A FIFO or a device would block or never end, so only regular files are opened.
    """
    try:
        mode = path.stat().st_mode
        if stat.S_ISDIR(mode):
            raise SpecError([f"{path}: is a folder, not a spec file"])
        if not stat.S_ISREG(mode):
            raise SpecError([f"{path}: not a regular file"])
        with path.open("rb") as file:
            data = file.read(MAX_SPEC_BYTES + 1)
    except FileNotFoundError:
        raise SpecError([f"{path}: spec file not found"]) from None
    except OSError as exc:
        raise SpecError([f"{path}: cannot read spec file ({exc.__class__.__name__}: {exc.strerror or exc})"]) from None
    if len(data) > MAX_SPEC_BYTES:
        raise SpecError([f"{path}: larger than {MAX_SPEC_BYTES // 1024} KiB; a spec is a few KB of YAML"])
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise SpecError([f"{path}: cannot read spec file (not UTF-8: {exc.reason} at byte {exc.start})"]) from None


def read_yaml(path: Path) -> Any:
    """Parse YAML safely; one-line errors that name the file and the line."""
    text = _read_text(path)
    try:
        value = yaml.load(text, Loader=_SpecLoader)  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        problem = getattr(exc, "problem", None) or str(exc)
        context = getattr(exc, "context", None)
        detail = f"{context}; {problem}" if context and "duplicate" not in problem else problem
        raise SpecError([f"{path}: {where}invalid YAML: {detail}"]) from None
    if nesting_depth(value) > MAX_NESTING:
        raise SpecError([f"{path}: invalid YAML: nested deeper than {MAX_NESTING} levels through aliases"])
    return value


def nesting_depth(value: Any) -> int:
    """Levels of lists and mappings, counted without recursion.

    Aliases let one collection appear in many places: each is measured once, so a document
    of aliases that would expand to billions of values costs no more than its own size.
    """
    depth: dict[int, int] = {}
    stack: list[tuple[Any, bool]] = [(value, False)]
    while stack:
        node, children_measured = stack.pop()
        if not isinstance(node, (list, dict)) or (id(node) in depth and not children_measured):
            continue
        children = list(node.values() if isinstance(node, dict) else node)
        if children_measured:
            depth[id(node)] = 1 + max((depth.get(id(child), 0) for child in children), default=0)
            continue
        depth[id(node)] = 0  # in progress: a cycle, if one got here, ends
        stack.append((node, True))
        stack.extend((child, False) for child in children if id(child) not in depth)
    return depth.get(id(value), 0)


def load_spec(path: str | Path) -> Spec:
    """Read and validate a spec file; raise SpecError with one line per problem.

    Example:
        >>> spec = autocnn.load_spec("studies/digits.yaml")
        >>> spec.name, spec.study.metric
    """
    path = Path(path)
    raw = read_yaml(path)
    if not isinstance(raw, dict):
        raise SpecError([f"{path}: expected a mapping of spec keys at the top level, got {type(raw).__name__}"])
    spec = parse_spec(raw, source=str(path))
    spec._path = path.resolve()
    return spec


def _rebuild_spec(raw: dict[str, Any], path: Path | None) -> Spec:
    spec = parse_spec(raw)
    spec._path = path
    return spec


def parse_spec(raw: dict[str, Any], *, source: str = "spec") -> Spec:
    try:
        return Spec.model_validate(raw)
    except ValidationError as exc:
        lines = describe_errors(exc)
        more = len(lines) - MAX_ERROR_LINES
        shown = lines[:MAX_ERROR_LINES] + ([f"... and {more} more problems"] if more > 0 else [])
        raise SpecError([f"{source}: {line}" for line in shown]) from None


def describe_errors(exc: ValidationError) -> list[str]:
    """pydantic errors -> `key.path: rule, got value` lines, without pydantic's union noise."""
    lines: list[str] = []
    for err in exc.errors():
        loc = [str(part) for part in err["loc"] if part not in _TAGS]
        ctx = err.get("ctx") or {}
        if err["type"] == "spec_sub":
            loc.append(ctx["field"])
            message = ctx["message"]
        elif err["type"] == "extra_forbidden":
            message = "unknown key" + _suggest(loc)
        elif err["type"] == "spec":
            message = err["msg"]
        elif err["type"] == "missing":
            message = "required key is missing"
        else:
            message = _humanise(err)
        lines.append(f"{'.'.join(loc) or '(top level)'}: {message}")
    return list(dict.fromkeys(lines))


def _shown(value: Any, limit: int = 60) -> str:
    """A value as an error line shows it: scalars in full up to `limit`, collections by kind.

    The repr of a collection built from aliases can be exponentially long, and Python refuses
    to print integers of more than 4,300 digits, so neither is ever formatted whole.
    """
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, (list, tuple)):
        return "a list"
    if isinstance(value, int) and not isinstance(value, bool) and value.bit_length() > 3 * limit:
        return f"a number of about {int(value.bit_length() * math.log10(2))} digits"
    text = repr(value)
    return text if len(text) <= limit else f"{text[: limit - 3]}..."


def _bound_text(bound: float) -> str:
    """Whole bounds in full (`31622400`, not `3.16224e+07`), others as short as `:g` makes them."""
    return str(int(bound)) if float(bound).is_integer() and abs(bound) < 1e15 else f"{bound:g}"


def _humanise(err: dict[str, Any]) -> str:
    message = err["msg"]
    ctx = err.get("ctx") or {}
    for bound, word in (("gt", ">"), ("ge", ">="), ("lt", "<"), ("le", "<=")):
        if bound in ctx and err["type"].startswith(("greater", "less")):
            message = f"must be {word} {_bound_text(ctx[bound])}" if isinstance(ctx[bound], (int, float)) else message
    message = message.removeprefix("Value error, ")
    message = f"{message[0].lower()}{message[1:]}"
    value = err.get("input")
    if isinstance(value, bool):
        return f"{message}, got {value!r} ({BOOLEAN_HINT}{_quote_hint(err)})"
    if isinstance(value, float) and not math.isfinite(value):
        return f"must be a finite number, got {value!r}"
    if isinstance(value, (int, float)) and err["type"] == "string_type":
        return f"{message}, got {_shown(value)} (YAML reads it as a number; quote it to keep it text)"
    if isinstance(value, (str, int, float)) or value is None:
        return f"{message}, got {_shown(value)}"
    return message


def _quote_hint(err: dict[str, Any]) -> str:
    """Where a word belongs, a boolean was one: say how to keep it a word."""
    return "; quote the word to keep it text, e.g. 'off'" if err["type"] in ("string_type", "literal_error") else ""


def _suggest(loc: list[str]) -> str:
    """The supported keys at that path, and `(did you mean 'lr'?)` when one is close."""
    model: Any = Spec
    for part in loc[:-1]:
        field = getattr(model, "model_fields", {}).get(part)
        if field is None and model is ModelsSpec:  # any other key is a timm backbone
            model = TimmSpace
            continue
        if field is None:
            return ""
        model = _model_in(field.annotation)
        if model is None:
            return ""
    known = list(getattr(model, "model_fields", {}))
    if not known:
        return ""
    close = difflib.get_close_matches(loc[-1], known, n=1)
    hint = f" (did you mean '{close[0]}'?)" if close else ""
    return f"; expected one of: {', '.join(known)}{hint}"


def _model_in(annotation: Any) -> type[BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in getattr(annotation, "__args__", ()):
        found = _model_in(arg)
        if found is not None:
            return found
    return None
