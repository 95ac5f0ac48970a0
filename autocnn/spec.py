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
from pathlib import Path
from typing import Annotated, Any, Generic, Literal, TypeVar, get_args, get_origin

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    PlainValidator,
    PrivateAttr,
    Tag,
    ValidationError,
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
SCHEDULERS = ("cosine", "onecycle", "plateau", "none")
ACTIVATIONS = ("relu", "leaky_relu", "gelu", "silu")


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

    choices: Annotated[list[T], Field(min_length=1)]

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


PositiveInt = Annotated[int, Field(ge=1)]


def _fixed_epochs(value: Any) -> int | str:
    """A whole number of epochs, or `auto`; one error line either way, not one per union member."""
    if value == "auto" and isinstance(value, str):
        return value
    if isinstance(value, bool):
        raise PydanticCustomError(
            "spec",
            "expected a whole number >= 1 or auto, got {value} (YAML reads yes/no/on/off as booleans)",
            {"value": repr(value)},
        )
    if not isinstance(value, int) or value < 1:
        raise PydanticCustomError("spec", "expected a whole number >= 1 or auto, got {value}", {"value": repr(value)})
    return value


# `train.epochs`: a number (fixed, ranged, chosen) or `auto`, which lets the noise-aware stop end
# each trial within a cap the budget allows (autocnn.budget).
Epochs = Annotated[
    Annotated[Range[PositiveInt], Tag("{low,high}")]
    | Annotated[Choices[PositiveInt], Tag("{choices}")]
    | Annotated[Any, PlainValidator(_fixed_epochs, json_schema_input_type=PositiveInt | Literal["auto"]), Tag("fixed")],
    Discriminator(_searchable_kind),
]
PositiveFloat = Annotated[float, Field(gt=0)]
NonNegativeFloat = Annotated[float, Field(ge=0)]
Probability = Annotated[float, Field(ge=0, lt=1)]


class SplitSpec(StrictModel):
    val: Annotated[float, Field(gt=0, lt=1)] = 0.2
    test: Annotated[float, Field(ge=0, lt=1)] = 0.2

    @model_validator(mode="after")
    def _leaves_training_data(self) -> SplitSpec:
        if self.val + self.test >= 0.9:
            raise _sub_error("test", f"val + test must leave >= 10% to train, got {self.val + self.test:.2f}")
        return self


class DataSpec(StrictModel):
    source: Literal["digits", "imagefolder"]
    root: str | None = None
    image_size: Annotated[int, Field(ge=8, le=1024)] = 32
    split: SplitSpec = SplitSpec()

    @model_validator(mode="after")
    def _root_matches_source(self) -> DataSpec:
        if self.source == "imagefolder" and not self.root:
            raise _sub_error("root", "required when source is imagefolder")
        if self.source == "digits" and self.root:
            raise _sub_error("root", "not used with source: digits (the data is built in); remove it")
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
    trials: PositiveInt | None = None
    timeout: Annotated[float, Field(gt=0)] | None = None
    metric: Literal["val_accuracy", "val_macro_f1", "val_loss"] = "val_accuracy"
    sampler: Literal["tpe", "random", "gp", "cmaes"] = "tpe"
    pruner: Literal["none", "median", "hyperband", "successive_halving"] = "median"
    storage: str | None = None
    defaults: bool = True  # start a new study with one known-good configuration per model family

    _parse_timeout = field_validator(
        "timeout", mode="before", json_schema_input_type=Annotated[float, Field(gt=0)] | Duration | None
    )(parse_duration)

    @property
    def target_trials(self) -> int | None:
        """Trials to reach; None: keep starting trials until `timeout` is spent."""
        if self.trials is None and self.timeout is not None:
            return None
        return self.trials or DEFAULT_TRIALS


class TrainSpec(StrictModel):
    epochs: Epochs = 10
    batch_size: searchable(PositiveInt) = 64
    lr: searchable(PositiveFloat) = 1e-3
    weight_decay: searchable(NonNegativeFloat) = 1e-4
    scheduler: choosable(Literal["cosine", "onecycle", "plateau", "none"]) = "cosine"
    early_stopping: searchable(Annotated[int, Field(ge=0)]) = 0
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
    unfreeze_last: searchable(PositiveInt) = 1
    backbone_lr_mult: searchable(NonNegativeFloat) = 1.0
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


class ModelsSpec(StrictModel):
    """`custom_cnn` and any number of timm backbones, each key a timm model name."""

    model_config = ConfigDict(extra="allow", json_schema_extra=_models_json_schema)

    custom_cnn: CustomCNNSpace | None = None
    __pydantic_extra__: dict[str, TimmSpace] = Field(init=False)  # type: ignore[assignment]

    @model_validator(mode="before")
    @classmethod
    def _bare_name_means_defaults(cls, value: Any) -> Any:
        """`custom_cnn:` with nothing under it searches nothing and uses the defaults."""
        if isinstance(value, dict):
            return {name: ({} if space is None else space) for name, space in value.items()}
        return value

    def spaces(self) -> dict[str, StrictModel]:
        """Model name -> its sub-space, in spec order."""
        return {name: space for name, space in self if space is not None}

    @model_validator(mode="after")
    def _at_least_one(self) -> ModelsSpec:
        if not self.spaces():
            raise PydanticCustomError("spec", "name at least one model, for example custom_cnn")
        return self


class MlflowSpec(StrictModel):
    tracking_uri: str | None = None
    experiment: str | None = None


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


class Spec(StrictModel):
    name: Annotated[str, Field(pattern=r"^[A-Za-z0-9._-]{1,64}$")]
    seed: int = 0
    data: DataSpec
    study: StudySpec = StudySpec()
    train: TrainSpec = TrainSpec()
    models: ModelsSpec
    mlflow: MlflowSpec = MlflowSpec()
    augment: AugmentSpace | None = None  # missing (or empty): no augmentation

    _path: Path | None = PrivateAttr(default=None)

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


class _UniqueKeyLoader(yaml.SafeLoader):
    """SafeLoader that refuses duplicate keys instead of silently keeping the last one."""


def _construct_unique_mapping(loader: yaml.SafeLoader, node: yaml.MappingNode, deep: bool = False) -> dict:
    seen: dict[Any, yaml.Node] = {}
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        if key in seen:
            raise yaml.constructor.ConstructorError(
                None,
                None,
                f"duplicate key {key!r} (first at line {seen[key].start_mark.line + 1})",
                key_node.start_mark,
            )
        seen[key] = key_node
    return loader.construct_mapping(node, deep=deep)


_UniqueKeyLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_unique_mapping)


def read_yaml(path: Path) -> Any:
    """Parse YAML safely; one-line errors that name the file and the line."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise SpecError([f"{path}: spec file not found"]) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise SpecError([f"{path}: cannot read spec file ({exc.__class__.__name__}: {exc})"]) from None
    try:
        return yaml.load(text, Loader=_UniqueKeyLoader)  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        problem = getattr(exc, "problem", None) or str(exc)
        context = getattr(exc, "context", None)
        detail = f"{context}; {problem}" if context and "duplicate" not in problem else problem
        raise SpecError([f"{path}: {where}invalid YAML: {detail}"]) from None


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


def parse_spec(raw: dict[str, Any], *, source: str = "spec") -> Spec:
    try:
        return Spec.model_validate(raw)
    except ValidationError as exc:
        raise SpecError([f"{source}: {line}" for line in describe_errors(exc)]) from None


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


def _humanise(err: dict[str, Any]) -> str:
    message = err["msg"]
    ctx = err.get("ctx") or {}
    for bound, word in (("gt", ">"), ("ge", ">="), ("lt", "<"), ("le", "<=")):
        if bound in ctx and err["type"].startswith(("greater", "less")):
            message = f"must be {word} {ctx[bound]:g}" if isinstance(ctx[bound], (int, float)) else message
    message = message.removeprefix("Value error, ")
    value = err.get("input")
    if isinstance(value, bool) and err["type"] in ("int_type", "float_type"):
        return f"{message[0].lower()}{message[1:]}, got {value!r} (YAML reads yes/no/on/off as booleans)"
    if isinstance(value, float) and not math.isfinite(value):
        return f"must be a finite number, got {value!r}"
    if isinstance(value, (str, int, float, bool)) or value is None:
        return f"{message[0].lower()}{message[1:]}, got {value!r}"
    return f"{message[0].lower()}{message[1:]}"


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
