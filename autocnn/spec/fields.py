"""Building blocks of the spec: searchable values, the known metrics and costs, and the checks on
paths, URLs and durations that the schema's fields apply.

Any value under `train`, `models.<name>` and `augment` is a *searchable*: a plain value (fixed),
`{low, high[, log][, step]}` (uniform) or `{choices: [...]}` (categorical). The key's own type
(int, float in a range, one of a few words) applies to the fixed value, to both bounds and to every
choice, so `train.lr.low: -1` fails with the key path, not deep inside a trial. Only pydantic and
the standard library here: checks that need torch, timm or the data live with the code that owns
them (`autocnn.search.checks`).
"""

from __future__ import annotations

import math
import re
from typing import Annotated, Any, Generic, Literal, TypeVar, get_args, get_origin
from urllib.parse import unquote

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    PlainValidator,
    Tag,
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
    "val_balanced_accuracy": "maximize",  # the mean of per-class recalls: every class counts the same
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
        raise PydanticCustomError("spec", expected, {"value": shown(value)})
    return value


# `train.epochs`: a number (fixed, ranged, chosen) or `auto`, which lets the noise-aware stop end
# each trial within a cap the budget allows (autocnn.training.budget).
Epochs = Annotated[
    Annotated[Range[EpochCount], Tag("{low,high}")]
    | Annotated[Choices[EpochCount], Tag("{choices}")]
    | Annotated[Any, PlainValidator(_fixed_epochs, json_schema_input_type=EpochCount | Literal["auto"]), Tag("fixed")],
    Discriminator(_searchable_kind),
]
# Every float key has an upper bound, as every int key does: a typo such as `lr: 1e3` or `.inf`
# fails at load with the key's path, not as a diverged or stalled trial.
MAX_LR = 10.0  # an optimizer step of 10 trains nothing; real rates are 1e-5..1
MAX_WEIGHT_DECAY = 10.0  # AdamW's decoupled decay: lr x this shrinks every weight each step
MAX_LR_MULT = 100.0  # a backbone's rate as a multiple of the head's
MAX_COST = 1e15  # a constraint on latency (ms), parameters or size (MB): beyond any real model
LearningRate = Annotated[float, Field(gt=0, le=MAX_LR, allow_inf_nan=False)]
WeightDecay = Annotated[float, Field(ge=0, le=MAX_WEIGHT_DECAY, allow_inf_nan=False)]
LrMultiplier = Annotated[float, Field(ge=0, le=MAX_LR_MULT, allow_inf_nan=False)]
CostBound = Annotated[float, Field(gt=0, le=MAX_COST, allow_inf_nan=False)]
Probability = Annotated[float, Field(ge=0, lt=1)]
LayerDecay = Annotated[float, Field(gt=0, le=1)]  # 1: every backbone layer at one rate
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
    """Why `value` is no storage autocnn opens (see `autocnn.search.storage`); None when it is one."""
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


def shown(value: Any, limit: int = 60) -> str:
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
