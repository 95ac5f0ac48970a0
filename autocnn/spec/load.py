"""Reading a spec file: safe YAML with duplicate keys, size and nesting refused, then validation
whose errors say `key.path: rule, got value`, one line per problem.
"""

from __future__ import annotations

import difflib
import math
import stat
from pathlib import Path
from typing import Any

import yaml
from pydantic import (
    BaseModel,
    ValidationError,
)

from autocnn.errors import SpecError
from autocnn.spec.fields import _TAGS, BOOLEAN_HINT, shown
from autocnn.spec.schema import ModelsSpec, Spec, TimmSpace

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
                None, None, f"cannot read {shown(node.value)}: {str(exc).split(';')[0]}", node.start_mark
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
                f"duplicate key {shown(key)} (first at line {first.start_mark.line + 1})",
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
    spec = parse_spec(raw, source=str(path), base_dir=path.resolve().parent)
    spec._path = path.resolve()
    return spec


def parse_spec(raw: dict[str, Any], *, source: str = "spec", base_dir: Path | None = None) -> Spec:
    """Validate a spec's keys and resolve its paths against `base_dir` (the spec file's folder;
    the current directory for a spec built in code)."""
    try:
        return Spec.model_validate(raw).with_paths_under(base_dir or Path.cwd())
    except ValidationError as exc:
        lines = describe_errors(exc)
        more = len(lines) - MAX_ERROR_LINES
        kept = lines[:MAX_ERROR_LINES] + ([f"... and {more} more problems"] if more > 0 else [])
        raise SpecError([f"{source}: {line}" for line in kept]) from None


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
        return f"{message}, got {shown(value)} (YAML reads it as a number; quote it to keep it text)"
    if isinstance(value, (str, int, float)) or value is None:
        return f"{message}, got {shown(value)}"
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
