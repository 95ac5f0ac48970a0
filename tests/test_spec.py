"""The spec contract: what validates, and the one-line errors for what does not."""

from __future__ import annotations

from pathlib import Path

import pytest

from autocnn.errors import SpecError
from autocnn.spec.fields import Choices, Range, check_overrides, storage_problem, tracking_uri_problem
from autocnn.spec.load import MAX_NESTING, load_spec, nesting_depth, parse_spec
from autocnn.spec.objectives import Objective, study_objectives
from tests.conftest import REPO, digits_spec_dict, write_spec


@pytest.mark.parametrize("path", sorted((REPO / "studies").glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_specs_load(path: Path) -> None:
    spec = load_spec(path)
    assert spec.name == path.stem
    assert spec.models.spaces()


def test_digits_spec_values() -> None:
    spec = load_spec(REPO / "studies" / "digits.yaml")
    assert spec.train.lr == Range(low=1e-4, high=1e-2, log=True)
    assert isinstance(spec.models.custom_cnn.width, Choices)
    assert study_objectives(spec) == [Objective("val_accuracy", "maximize")]


def errors(**overrides: object) -> list[str]:
    with pytest.raises(SpecError) as info:
        parse_spec(digits_spec_dict(**overrides), source="s.yaml")
    return info.value.lines()


def test_log_scale_needs_positive_low() -> None:
    assert errors(train={"lr": {"low": -1, "high": 1, "log": True}}) == ["s.yaml: train.lr.low: must be > 0, got -1"]
    assert errors(train={"weight_decay": {"low": 0.0, "high": 1.0, "log": True}}) == [
        "s.yaml: train.weight_decay.low: must be > 0 for log scale, got 0.0"
    ]


def test_low_above_high() -> None:
    assert errors(train={"lr": {"low": 0.1, "high": 0.01}}) == ["s.yaml: train.lr.high: must be >= low (0.1), got 0.01"]


def test_yaml_boolean_is_not_a_number() -> None:
    (line,) = errors(train={"epochs": True})
    assert line.startswith("s.yaml: train.epochs: ") and "got True" in line and "yes/no" in line


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_bounds(bad: float) -> None:
    (line,) = errors(train={"lr": {"low": 1e-4, "high": bad}})
    assert line.startswith("s.yaml: train.lr.high: must be a finite number")


def test_unknown_key_suggests_the_closest() -> None:
    (line,) = errors(train={"lrr": 0.1})
    assert line.startswith("s.yaml: train.lrr: unknown key; expected one of: epochs, batch_size, lr, ")
    assert line.endswith(" (did you mean 'lr'?)")


def test_int_key_rejects_float_bounds_and_every_problem_is_listed() -> None:
    lines = errors(
        models={"custom_cnn": {"depth": {"low": 2.5, "high": 4}, "width": {"choices": []}}},
        study={"metric": "accuracy"},
    )
    assert any(line.startswith("s.yaml: models.custom_cnn.depth.low: ") for line in lines)
    assert any(line.startswith("s.yaml: models.custom_cnn.width.choices: ") for line in lines)
    assert any(line.startswith("s.yaml: study.metric: ") and "'accuracy'" in line for line in lines)


def test_precision_is_a_word_and_yaml_booleans_are_refused(tmp_path: Path) -> None:
    assert parse_spec(digits_spec_dict()).train.precision == "auto"
    assert parse_spec(digits_spec_dict(train={"precision": {"choices": ["mixed", "fp32"]}})).train.precision
    path = tmp_path / "on.yaml"
    path.write_text("name: a\ndata: {source: digits}\ntrain: {precision: on}\nmodels: {custom_cnn: {}}\n")
    with pytest.raises(SpecError, match=r"on\.yaml: train\.precision: .*'auto', 'mixed' or 'fp32'"):
        load_spec(path)


def test_name_is_safe_for_file_names() -> None:
    (line,) = errors(name="../etc/passwd")
    assert line.startswith("s.yaml: name: ")
    parse_spec(digits_spec_dict(name="a-b_c.1"))


@pytest.mark.parametrize(("text", "seconds"), [(90, 90.0), ("90s", 90.0), ("45m", 2700.0), ("3h", 10800.0)])
def test_timeout_durations(text: object, seconds: float) -> None:
    assert parse_spec(digits_spec_dict(study={"timeout": text})).study.timeout == seconds


def test_bad_timeout() -> None:
    (line,) = errors(study={"timeout": "3 days"})
    assert line.startswith("s.yaml: study.timeout: expected seconds or a duration")


def test_imagefolder_needs_root() -> None:
    assert errors(data={"source": "imagefolder"}) == ["s.yaml: data.root: required when source is imagefolder"]


def test_duplicate_keys_are_errors(tmp_path: Path) -> None:
    path = tmp_path / "dup.yaml"
    path.write_text("name: a\nname: b\ndata: {source: digits}\nmodels: {custom_cnn: {}}\n")
    with pytest.raises(SpecError, match=r"dup\.yaml: line 2, column 1: invalid YAML: duplicate key 'name'"):
        load_spec(path)


def test_yaml_tags_never_construct_objects(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.yaml"
    path.write_text(f"name: !!python/object/apply:os.system ['touch {marker}']\n")
    with pytest.raises(SpecError, match="invalid YAML"):
        load_spec(path)
    assert not marker.exists()


def test_missing_file_and_non_mapping(tmp_path: Path) -> None:
    with pytest.raises(SpecError, match=r"nope\.yaml: spec file not found"):
        load_spec(tmp_path / "nope.yaml")
    path = tmp_path / "list.yaml"
    path.write_text("- a\n- b\n")
    with pytest.raises(SpecError, match="expected a mapping"):
        load_spec(path)


def test_paths_are_relative_to_the_spec(tmp_path: Path) -> None:
    spec = digits_spec_dict(data={"source": "imagefolder", "root": "../images"})
    loaded = load_spec(write_spec(tmp_path / "studies", spec))
    assert loaded.data.root == str(tmp_path / "studies" / ".." / "images")  # resolved once, at load


# --------------------------------------------------------------------------- storage and tracking URIs


@pytest.mark.parametrize(
    "value",
    [
        "sqlite:////srv/studies/digits.db",
        "sqlite:///studies/digits.db?timeout=30",
        "postgresql://user:secret@db.example.com:5432/optuna",
        "postgresql+psycopg2://user@localhost/optuna",
        "mysql+pymysql://user:pw@localhost/optuna",
        "studies/digits.journal",
        "/srv/studies/digits.journal",
        "~/studies/digits.journal",
        "C:\\studies\\digits.journal",
        "runs/a..b.log",  # dots inside a name are no traversal
    ],
)
def test_supported_storages(value: str) -> None:
    assert storage_problem(value) is None


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        ("gopher://example.com/study", "unsupported scheme 'gopher:'"),
        ("file:studies/digits.db", "unsupported scheme 'file:'"),
        ("redis://localhost:6379", "unsupported scheme 'redis:'"),
        ("sqlite://", "expected sqlite:///path/to/file.db"),
        ("sqlite:///:memory:", "an in-memory database keeps nothing"),
        ("postgresql:", "expected postgresql://user:password@host[:port]/database"),
        ("sqlite:///../outside.db", "'..' path segments are refused"),
        ("sqlite:///data/%2e%2e/%2E%2E/outside.db", "'..' path segments are refused"),
        ("..\\outside.journal", "'..' path segments are refused"),
        ("", "must not be empty"),
        ("studies/a\nb.journal", "must not contain control characters"),
        ("x" * 5000, "at most 4096 characters"),
    ],
)
def test_refused_storages(value: str, problem: str) -> None:
    assert problem in (storage_problem(value) or "")


@pytest.mark.parametrize(
    "value",
    [
        "sqlite:////srv/mlruns/mlflow.db",
        "http://127.0.0.1:5000",
        "https://mlflow.example.com/tracking",
        "postgresql://user@db/mlflow",
        "mysql+pymysql://user@db/mlflow",
        "mssql+pyodbc://user@db/mlflow",
        "databricks",
        "databricks://my-profile",
    ],
)
def test_supported_tracking_uris(value: str) -> None:
    assert tracking_uri_problem(value) is None


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        ("file:../../etc/mlruns", "'..' path segments are refused"),
        ("file:///srv/mlruns", "unsupported scheme 'file:'"),
        ("mlruns", "a plain path is MLflow's file store"),
        ("gopher://example.com/", "unsupported scheme 'gopher:'"),
        ("http://", "expected http://host[:port]"),
        ("https:/nohost", "expected https://host[:port]"),
        ("databricks:", "expected databricks or databricks://<profile>"),
        ("http://example.com/a/../b", "'..' path segments are refused"),
    ],
)
def test_refused_tracking_uris(value: str, problem: str) -> None:
    assert problem in (tracking_uri_problem(value) or "")


def test_spec_keys_name_the_key() -> None:
    assert errors(study={"storage": "gopher://x/y"})[0].startswith(
        "s.yaml: study.storage: unsupported scheme 'gopher:'"
    )
    (line,) = errors(mlflow={"tracking_uri": "file:../mlruns"})
    assert line.startswith("s.yaml: mlflow.tracking_uri: '..' path segments are refused")
    spec = parse_spec(digits_spec_dict(study={"storage": "runs/digits.journal"}, mlflow={"tracking_uri": "databricks"}))
    assert spec.study.storage == str(Path.cwd() / "runs/digits.journal")  # a journal file: resolved at load
    assert spec.mlflow.tracking_uri == "databricks"


def test_command_line_overrides_are_held_to_the_same_rules() -> None:
    check_overrides(storage="sqlite:////tmp/x.db", tracking_uri="http://localhost:5000")
    check_overrides()
    with pytest.raises(SpecError) as info:
        check_overrides(storage="gopher://x/y", tracking_uri="file:../mlruns")
    assert info.value.lines() == [
        "--storage: unsupported scheme 'gopher:'; expected sqlite:///path.db, postgresql[+driver]://..., "
        "mysql[+driver]://... or a journal file path",
        "--tracking-uri: '..' path segments are refused (path traversal); give the path without them",
    ]


# --------------------------------------------------------------------------- limits


@pytest.mark.parametrize(
    ("overrides", "line"),
    [
        ({"train": {"epochs": 10**30}}, "train.epochs: expected a whole number from 1 to 10000 or auto, got 10000"),
        ({"train": {"epochs": {"low": 1, "high": 10**6}}}, "train.epochs.high: must be <= 10000, got 1000000"),
        ({"train": {"early_stopping": 20000}}, "train.early_stopping: must be <= 10000, got 20000"),
        ({"train": {"batch_size": {"choices": [32, 10**9]}}}, "train.batch_size.choices.1: must be <= 65536"),
        ({"study": {"trials": 10**12}}, "study.trials: must be <= 100000, got 1000000000000"),
        ({"study": {"timeout": "99999999h"}}, "study.timeout: must be <= 31622400"),
        ({"seed": -1}, "seed: must be >= 0, got -1"),
        ({"seed": 2**40}, "seed: must be <= 2147483647, got 1099511627776"),
        ({"models": {"resnet18": {"unfreeze_last": 10**6}}}, "models.resnet18.unfreeze_last: must be <= 1000"),
        ({"models": {"resnet18": {"head": {"hidden": 10**6}}}}, "models.resnet18.head.hidden: must be <= 8192"),
        (
            {"models": {"custom_cnn": {"width": {"low": 8, "high": 10**6}}}},
            "models.custom_cnn.width.high: must be <= 512",
        ),
    ],
)
def test_integers_have_upper_bounds(overrides: dict, line: str) -> None:
    lines = errors(**overrides)
    assert any(got.startswith(f"s.yaml: {line}") for got in lines), lines


def test_a_huge_integer_is_shown_short() -> None:
    (line,) = errors(train={"epochs": 10**400})
    assert (
        line
        == "s.yaml: train.epochs: expected a whole number from 1 to 10000 or auto, got a number of about 400 digits"
    )


@pytest.mark.parametrize(("word", "value"), [("off", False), ("no", False), ("on", True), ("yes", True)])
def test_a_study_name_yaml_reads_as_a_boolean_gets_the_hint(tmp_path: Path, word: str, value: bool) -> None:
    path = tmp_path / "s.yaml"
    path.write_text(f"name: {word}\ndata: {{source: digits}}\nmodels: {{custom_cnn: {{}}}}\n")
    with pytest.raises(SpecError) as info:
        load_spec(path)
    assert info.value.lines() == [
        f"{path}: name: input should be a valid string, got {value} "
        "(YAML reads yes/no/on/off as booleans; quote the word to keep it text, e.g. 'off')"
    ]
    path.write_text(f"name: '{word}'\ndata: {{source: digits}}\nmodels: {{custom_cnn: {{}}}}\n")
    assert load_spec(path).name == word


def test_nesting_is_measured_without_recursion_and_aliases_once() -> None:
    deep: list = []
    for _ in range(100_000):
        deep = [deep]
    assert nesting_depth(deep) == 100_001
    shared = [1, 2]
    wide = {"a": [shared] * 1000, "b": {"c": shared}}
    assert nesting_depth(wide) == 3
    assert nesting_depth("scalar") == 0


def test_aliases_cannot_nest_past_the_limit(tmp_path: Path) -> None:
    # Each anchor stays within the limit; together, through aliases, they go far past it.
    lines = ["l0: &l0 [1]"] + [f"l{i}: &l{i} [[[[[[[[[[*l{i - 1}]]]]]]]]]]" for i in range(1, 8)]
    path = tmp_path / "s.yaml"
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(SpecError, match=rf"invalid YAML: nested deeper than {MAX_NESTING} levels through aliases"):
        load_spec(path)


@pytest.mark.parametrize(
    ("overrides", "line"),
    [
        ({"train": {"lr": 1e3}}, "s.yaml: train.lr: must be <= 10, got 1000.0"),
        ({"train": {"lr": {"low": 1e-4, "high": 50.0}}}, "s.yaml: train.lr.high: must be <= 10, got 50.0"),
        ({"train": {"weight_decay": float("inf")}}, "s.yaml: train.weight_decay: must be a finite number, got inf"),
        (
            {"models": {"resnet18": {"pretrained": False, "backbone_lr_mult": 1e4}}},
            "s.yaml: models.resnet18.backbone_lr_mult: must be <= 100, got 10000.0",
        ),
        ({"study": {"constraints": {"latency_ms": float("nan")}}}, "s.yaml: study.constraints.latency_ms: must be"),
    ],
)
def test_every_float_key_has_an_upper_bound_and_refuses_inf_and_nan(overrides: dict, line: str) -> None:
    assert errors(**overrides)[0].startswith(line)
