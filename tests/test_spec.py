"""The spec contract: what validates, and the one-line errors for what does not."""

from __future__ import annotations

from pathlib import Path

import pytest

from autocnn.errors import SpecError
from autocnn.objectives import Objective, study_objectives
from autocnn.spec import Choices, Range, load_spec, parse_spec
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
    assert loaded.resolve_path(loaded.data.root) == (tmp_path / "studies" / ".." / "images")
