"""The JSON Schema editors check specs with: the committed file, the models and the examples agree."""

from __future__ import annotations

import copy
import json
import subprocess
import sys
from pathlib import Path
from typing import Any, get_args, get_type_hints

import pytest
from jsonschema import Draft7Validator
from pydantic import BaseModel
from typer.testing import CliRunner

from autocnn.cli.app import app
from autocnn.errors import SpecError
from autocnn.spec.load import load_spec, parse_spec, read_yaml
from autocnn.spec.schema import Spec, json_schema
from tests.conftest import REPO, digits_spec_dict

SCHEMA_FILE = REPO / "studies" / "autocnn.schema.json"
EXAMPLES = sorted((REPO / "studies").glob("*.yaml"))
SCHEMA_COMMENT = "# yaml-language-server: $schema=./autocnn.schema.json"
REGENERATE = "the committed schema is stale: regenerate it with `autocnn schema -o studies/autocnn.schema.json`"

runner = CliRunner()


@pytest.fixture(scope="module")
def validator() -> Draft7Validator:
    schema = json_schema()
    Draft7Validator.check_schema(schema)
    return Draft7Validator(schema)


# --------------------------------------------------------------------------- the committed file


def test_committed_schema_is_what_autocnn_schema_prints() -> None:
    result = runner.invoke(app, ["schema"])
    assert result.exit_code == 0, result.output
    assert result.stdout == SCHEMA_FILE.read_text(encoding="utf-8"), REGENERATE


def test_schema_out_writes_the_same_text_and_leaves_no_temporary_file(tmp_path: Path) -> None:
    out = tmp_path / "autocnn.schema.json"
    out.write_text("stale")
    result = runner.invoke(app, ["schema", "-o", str(out)])
    assert result.exit_code == 0, result.output
    assert result.stdout == ""
    assert out.read_text(encoding="utf-8") == SCHEMA_FILE.read_text(encoding="utf-8")
    assert [path.name for path in tmp_path.iterdir()] == ["autocnn.schema.json"]


def test_schema_out_to_a_missing_folder_is_one_error_line(tmp_path: Path) -> None:
    result = runner.invoke(app, ["schema", "-o", str(tmp_path / "missing" / "s.json")])
    assert result.exit_code == 2
    assert result.output.startswith("error: ") and "Traceback" not in result.output


def test_schema_command_imports_no_heavy_library(tmp_path: Path) -> None:
    code = (
        "import sys; from autocnn.cli.app import app; "
        f"app(['schema', '-o', {str(tmp_path / 's.json')!r}], standalone_mode=False); "
        "print(sorted(m for m in ('torch', 'mlflow', 'timm', 'optuna', 'albumentations') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO).stdout
    assert out.strip() == "[]"
    assert json.loads((tmp_path / "s.json").read_text()) == json_schema()


def test_schema_names_its_dialect_and_holds_no_private_attribute() -> None:
    schema = json_schema()
    assert schema["$schema"] == "http://json-schema.org/draft-07/schema#"
    assert schema["title"] == "autocnn study spec"
    names = [name for node in [schema, *schema["definitions"].values()] for name in node.get("properties", {})]
    assert Spec.__private_attributes__ and not [name for name in names if name.startswith("_")]


def _keywords(node: dict[str, Any]) -> set[str]:
    """Every keyword a schema uses, without descending into names (`properties`) or values (`default`)."""
    found = set(node)
    for key, value in node.items():
        if key in ("properties", "definitions"):
            found |= {word for sub in value.values() for word in _keywords(sub)}
        elif key in ("anyOf", "oneOf", "allOf"):
            found |= {word for sub in value for word in _keywords(sub)}
        elif key in ("items", "additionalProperties", "not") and isinstance(value, dict):
            found |= _keywords(value)
    return found


def test_schema_uses_only_draft_7_keywords_for_editors() -> None:
    annotations = {"$schema", "title", "description", "default", "definitions"}
    assert _keywords(json_schema()) - annotations - set(Draft7Validator.VALIDATORS) == set()


# --------------------------------------------------------------------------- the example specs


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_example_spec_points_editors_at_the_schema_and_validates(path: Path, validator: Draft7Validator) -> None:
    assert path.read_text(encoding="utf-8").splitlines()[0] == SCHEMA_COMMENT
    assert (path.parent / SCHEMA_COMMENT.split("=", 1)[1]).resolve() == SCHEMA_FILE
    problems = [f"{'.'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(read_yaml(path))]
    assert problems == []
    spec = load_spec(path)
    assert spec.name == path.stem
    # Every default, filled in and dumped, is a value the schema accepts too.
    assert list(validator.iter_errors(spec.model_dump(mode="json"))) == []


# --------------------------------------------------------------------------- schema <-> models


def _models_in(annotation: Any) -> set[type[BaseModel]]:
    """The spec models a field's annotation can hold (through unions, Annotated, Optional)."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return {annotation}
    return {model for arg in get_args(annotation) for model in _models_in(arg)}


def _refs_in(node: Any) -> set[str]:
    """`definitions` a schema node points at, ignoring `default` values."""
    if isinstance(node, list):
        return {ref for item in node for ref in _refs_in(item)}
    if not isinstance(node, dict):
        return set()
    own = {node["$ref"].removeprefix("#/definitions/")} if "$ref" in node else set()
    return own | {ref for key, value in node.items() if key != "default" for ref in _refs_in(value)}


def _compare(model: type[BaseModel], node: dict[str, Any], defs: dict[str, Any], seen: set[str]) -> list[str]:
    """Differences between one model and its schema node, then between their sub-models and sub-nodes."""
    where = model.__name__
    problems: list[str] = []
    fields, properties = set(model.model_fields), set(node.get("properties", {}))
    problems += [f"{where}.{name}: a model field missing from the schema" for name in sorted(fields - properties)]
    problems += [f"{where}.{name}: in the schema, not a model field" for name in sorted(properties - fields)]
    required = {name for name, field in model.model_fields.items() if field.is_required()}
    if required != set(node.get("required", [])):
        problems.append(f"{where}: required {sorted(required)} vs schema {sorted(node.get('required', []))}")
    pairs = [(model.model_fields[name].annotation, node["properties"][name]) for name in sorted(fields & properties)]
    if model.model_config.get("extra") == "allow":
        pairs.append((get_type_hints(model)["__pydantic_extra__"], node.get("additionalProperties")))
    elif node.get("additionalProperties") is not False:
        problems.append(f"{where}: forbids unknown keys but the schema allows them")
    for annotation, sub in pairs:
        by_title = {defs[ref]["title"]: ref for ref in _refs_in(sub)}
        by_name = {sub_model.__name__: sub_model for sub_model in _models_in(annotation)}
        if set(by_title) != set(by_name):
            problems.append(f"{where}: sub-models {sorted(by_name)} vs schema {sorted(by_title)}")
        for name in sorted(set(by_title) & set(by_name)):
            if by_title[name] not in seen:
                seen.add(by_title[name])
                problems += _compare(by_name[name], defs[by_title[name]], defs, seen)
    return problems


def test_every_model_key_is_in_the_schema_and_every_schema_key_in_the_models() -> None:
    schema = json_schema()
    seen: set[str] = set()
    assert _compare(Spec, schema, schema["definitions"], seen) == []
    assert {"TrainSpec", "ModelsSpec", "TimmSpace", "HeadSpace", "Range_int_ge_1_le_10000", "Choices_bool"} <= seen
    assert sorted(set(schema["definitions"]) - seen) == [], "definitions no model field reaches"


def test_comparison_notices_a_key_the_schema_lacks() -> None:
    schema = json_schema()
    broken = copy.deepcopy(schema)
    del broken["definitions"]["TimmSpace"]["properties"]["unfreeze_last"]
    broken["definitions"]["HeadSpace"]["properties"]["width"] = {"type": "integer"}
    assert _compare(Spec, broken, broken["definitions"], set()) == [
        "TimmSpace.unfreeze_last: a model field missing from the schema",
        "HeadSpace.width: in the schema, not a model field",
    ]


# --------------------------------------------------------------------------- the same verdicts

DROP = object()


def _spec_with(**changes: Any) -> dict[str, Any]:
    """The test digits spec with keys set (`train__lr` is `train.lr`), or removed when the value is DROP."""
    spec = copy.deepcopy(digits_spec_dict())
    for dotted, value in changes.items():
        *parents, key = dotted.split("__")
        node = spec
        for part in parents:
            node = node.setdefault(part, {})
        if value is DROP:
            node.pop(key)
        else:
            node[key] = value
    return spec


REJECTED = {
    "unknown top-level key": _spec_with(trials=5),
    "unknown train key": _spec_with(train__learning_rate=0.01),
    "unknown custom_cnn key": _spec_with(models__custom_cnn__dept=3),
    "unknown backbone key": _spec_with(models__resnet18={"frozen": True}),
    "unknown range key": _spec_with(train__lr={"low": 0.1, "high": 0.2, "logarithmic": True}),
    "lr is a word": _spec_with(train__lr="fast"),
    "epochs is a word": _spec_with(train__epochs="many"),
    "epochs is a YAML boolean": _spec_with(train__epochs=True),
    "epochs is zero": _spec_with(train__epochs=0),
    "trials is a string": _spec_with(study__trials="ten"),
    "timeout is not a duration": _spec_with(study__timeout="soon"),
    "timeout has a unit autocnn lacks": _spec_with(study__timeout="2d"),
    "unknown data source": _spec_with(data__source="imagenet"),
    "unknown scheduler choice": _spec_with(train__scheduler={"choices": ["cosine", "step"]}),
    "no choices": _spec_with(train__batch_size={"choices": []}),
    "range without high": _spec_with(train__lr={"low": 0.1}),
    "scheduler as a range": _spec_with(train__scheduler={"low": 1, "high": 2}),
    "probability above 1": _spec_with(augment={"hflip": 1.5}),
    "name with a space": _spec_with(name="my study"),
    "no models": _spec_with(models={}),
    "models missing": _spec_with(models=DROP),
    "storage with an unsupported scheme": _spec_with(study__storage="gopher://example.com/study"),
    "storage with a traversal": _spec_with(study__storage="sqlite:///../outside.db"),
    "journal path with a traversal": _spec_with(study__storage="runs/../../outside.log"),
    "tracking uri file: with a traversal": _spec_with(mlflow={"tracking_uri": "file:../../etc/mlruns"}),
    "tracking uri as a plain path": _spec_with(mlflow={"tracking_uri": "mlruns"}),
    "tracking uri with an unsupported scheme": _spec_with(mlflow={"tracking_uri": "gopher://example.com/"}),
    "absurd epochs": _spec_with(train__epochs=10**30),
    "absurd batch size range": _spec_with(train__batch_size={"low": 1, "high": 10**20}),
    "absurd trials": _spec_with(study__trials=10**11),
    "negative seed": _spec_with(seed=-1),
    "too many choices": _spec_with(train__batch_size={"choices": list(range(1, 1001))}),
    "too many models": _spec_with(models={f"m{i}": None for i in range(100)}),
}

ACCEPTED = {
    "epochs auto": _spec_with(train__epochs="auto"),
    "epochs chosen": _spec_with(train__epochs={"choices": [5, 10]}),
    "timeout in minutes": _spec_with(study__timeout="5m"),
    "timeout in fractional hours": _spec_with(study__timeout="1.5h"),
    "timeout in plain seconds": _spec_with(study__timeout=90),
    "a timm backbone with any name": _spec_with(
        models__my_net_v2={"pretrained": False, "freeze": {"choices": ["none", "backbone"]}, "head": {"hidden": 64}}
    ),
    "a bare backbone name": _spec_with(models__resnet18=None),
    "a bare custom_cnn": _spec_with(models={"custom_cnn": None}),
    "local weights": _spec_with(models__resnet18={"pretrained": "weights/resnet18.safetensors"}),
    "precision chosen": _spec_with(train__precision={"choices": ["mixed", "fp32"]}),
    "empty augment": _spec_with(augment=None),
    "augment switched by the search": _spec_with(augment={"enabled": {"choices": [True, False]}, "rotate": 15}),
    "sqlite storage": _spec_with(study__storage="sqlite:////srv/studies/digits.db"),
    "postgresql storage with a driver": _spec_with(study__storage="postgresql+psycopg2://u:p@db:5432/optuna"),
    "journal storage": _spec_with(study__storage="runs/digits.journal"),
    "http tracking": _spec_with(mlflow={"tracking_uri": "http://127.0.0.1:5000"}),
    "databricks tracking": _spec_with(mlflow={"tracking_uri": "databricks"}),
    "the largest values": _spec_with(train__epochs=10_000, train__batch_size=65_536, seed=2**31 - 1),
}


def _pydantic_accepts(spec: dict[str, Any]) -> bool:
    try:
        parse_spec(spec)
    except SpecError:
        return False
    return True


@pytest.mark.parametrize("spec", REJECTED.values(), ids=REJECTED.keys())
def test_hostile_spec_is_rejected_by_the_models_and_by_the_schema(
    spec: dict[str, Any], validator: Draft7Validator
) -> None:
    assert not _pydantic_accepts(spec)
    assert not validator.is_valid(spec)


@pytest.mark.parametrize("spec", ACCEPTED.values(), ids=ACCEPTED.keys())
def test_valid_non_default_spec_is_accepted_by_the_models_and_by_the_schema(
    spec: dict[str, Any], validator: Draft7Validator
) -> None:
    assert _pydantic_accepts(spec)
    assert [error.message for error in validator.iter_errors(spec)] == []
