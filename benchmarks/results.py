"""benchmarks/results.md and results.json: one table per measurement, every target beside its figure.

search_quality.py and soak.py each own a section of the same results.md between their own markers;
`write_results` rewrites the file around those sections, never through them.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any


def section_markers(name: str) -> tuple[str, str]:
    """The comment lines that open and close a script's own section of results.md."""
    return f"<!-- {name}:start -->", f"<!-- {name}:end -->"


SECTION_START, SECTION_END = section_markers("search-quality")
SOAK_START, SOAK_END = section_markers("soak")
MARKED_SECTIONS = ("search-quality", "soak")
MACHINE_KEYS = (
    "cpu",
    "cores",
    "device",
    "torch",
    "cpu_capability",
    "cpu_native_bf16",
    "python",
    "threads",
    "load_before",
    "quiet",
    "commit",
)


@dataclass
class Row:
    """One line of a measurement's table."""

    what: str
    figure: str
    target: str = ""
    met: bool | None = None  # None: information only


@dataclass
class Item:
    """One numbered measurement: its table rows, notes under the table, and every raw number."""

    number: int
    title: str
    rows: list[Row] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    raw: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0


def verdict(met: bool | None) -> str:
    return "" if met is None else ("met" if met else "**not met**")


def machine_table(info: dict[str, Any]) -> list[str]:
    lines = ["| machine | |", "|---|---|"]
    lines += [f"| {key} | {info[key]} |" for key in MACHINE_KEYS if key in info]
    return lines + [""]


def item_section(item: Item) -> list[str]:
    lines = [f"## {item.number}. {item.title}", "", "| measurement | figure | target | |", "|---|---|---|---|"]
    lines += [f"| {r.what} | {r.figure} | {r.target} | {verdict(r.met)} |" for r in item.rows]
    lines.append("")
    lines += [f"- {note}" for note in item.notes]
    return lines + ["", f"_({item.seconds:.0f} s)_", ""]


def render_markdown(info: dict[str, Any], items: Sequence[Item], *, command: str) -> str:
    """results.md: machine, then one table per item; a reader sees every target and its figure."""
    lines = ["# Benchmark results", "", f"Produced by `{command}` on {info['date']}.", ""]
    lines += machine_table(info)
    for note in info.get("notes", []):
        lines += [f"> {note}", ""]
    for item in items:
        lines += item_section(item)
    return "\n".join(lines).rstrip() + "\n"


def carried_over(out: Path, items: Sequence[Item]) -> list[Item]:
    """`items` and, from the results.json beside `out`, every item this run did not measure (a run
    of `--items 6` must not erase items 1-5), each saying when and where it was measured."""
    previous_file = out.with_suffix(".json")
    if not previous_file.exists():
        return list(items)
    previous = json.loads(previous_file.read_text())
    measured = {item.number for item in items}
    kept = []
    for raw in previous.get("items", []):
        if raw["number"] in measured:
            continue
        item = Item(**{**raw, "rows": [Row(**row) for row in raw["rows"]]})
        machine = raw.get("raw", {}).get("machine") or previous.get("machine", {})
        commit = machine.get("commit", "not recorded")
        stamp = f"Measured on {machine.get('date', 'an earlier run')} ({machine.get('cpu', 'unknown CPU')}, commit {commit})"
        if not any(note.startswith("Measured on ") for note in item.notes):
            item.notes = [*item.notes, f"{stamp}, in an earlier run than the items above it."]
        item.raw = {**item.raw, "machine": machine}
        kept.append(item)
    return sorted([*items, *kept], key=lambda i: i.number)


def write_results(out: Path, info: dict[str, Any], items: Sequence[Item], *, command: str) -> None:
    """results.md at `out` (keeping search_quality.py's section) and every raw number beside it as .json."""
    out.parent.mkdir(parents=True, exist_ok=True)
    text = render_markdown(info, items, command=command)
    out.write_text(keep_marked_section(out.read_text(), text) if out.exists() else text)
    payload = {"machine": info, "items": [asdict(item) for item in items]}
    out.with_suffix(".json").write_text(json.dumps(payload, indent=2, default=str) + "\n")


# --------------------------------------------------------------------------- the marked section


def marked_span(text: str, name: str = "search-quality") -> tuple[int, int] | None:
    """Where section `name` lies, markers included; None without a start marker followed by an end one."""
    start_marker, end_marker = section_markers(name)
    start = text.find(start_marker)
    end = text.find(end_marker, start) if start >= 0 else -1
    return None if end < 0 else (start, end + len(end_marker))


def splice_section(text: str, section: str, name: str = "search-quality") -> str:
    """Replace the marked span in place, or append the section; the rest of the text is untouched."""
    span = marked_span(text, name)
    if span is not None:
        return text[: span[0]] + section + text[span[1] :]
    return (text.rstrip("\n") + "\n\n" if text.strip() else "") + section + "\n"


def keep_marked_section(previous: str, text: str) -> str:
    """`text` with the previous file's marked sections carried over: results.md is rewritten as a
    whole, and must not drop an hour of search-quality results or a soak run."""
    for name in MARKED_SECTIONS:
        span = marked_span(previous, name)
        if span is not None:
            text = splice_section(text, previous[span[0] : span[1]], name)
    return text


# --------------------------------------------------------------------------- merging a partial run


def merge_items(out: Path, info: dict[str, Any], items: Sequence[Item], *, command: str) -> None:
    """Put freshly run items into an existing results.md and results.json, every other section kept.

    A run of some items must not drop the others' figures, nor the sections added by hand; the
    machine table at the top describes the full run, so each merged item says where it ran.
    """
    stamped = [_stamped(item, info, command) for item in items]
    text = out.read_text()
    for item in stamped:
        text = splice_item(text, item)
    out.write_text(text)
    data_path = out.with_suffix(".json")
    data = json.loads(data_path.read_text()) if data_path.exists() else {"machine": info, "items": []}
    numbers = {item.number for item in stamped}
    kept = [entry for entry in data["items"] if entry.get("number") not in numbers]
    data["items"] = sorted([*kept, *(asdict(item) for item in stamped)], key=lambda entry: entry["number"])
    data_path.write_text(json.dumps(data, indent=2, default=str) + "\n")


def _stamped(item: Item, info: dict[str, Any], command: str) -> Item:
    where = ", ".join(f"{info[key]}" for key in ("cpu", "device") if key in info)
    cores = f", {info['cores']} cores" if "cores" in info else ""
    note = f"Run on its own: `{command}` on {info.get('date', '?')}, {where}{cores}, quiet: {info.get('quiet', '?')}."
    return Item(item.number, item.title, item.rows, [*item.notes, note], {**item.raw, "machine": info}, item.seconds)


def splice_item(text: str, item: Item) -> str:
    """`text` with item's section in place of its old one, or right after the section of the
    last item numbered below it (else before the first section): numbered items stay in order,
    and sections added by hand stay where they were."""
    section = "\n".join(item_section(item)).rstrip() + "\n\n"
    lines = text.splitlines(keepends=True)
    headings = [
        i for i, line in enumerate(lines) if line.startswith(("## ", *(section_markers(n)[0] for n in MARKED_SECTIONS)))
    ]
    ends = [*headings[1:], len(lines)]
    at = headings[0] if headings else len(lines)
    for start, end in zip(headings, ends, strict=True):
        n = _section_number(lines[start])
        if n == item.number:
            return "".join(lines[:start]) + section + "".join(lines[end:])
        if n is not None and n < item.number:
            at = end
    if at == len(lines):
        return text.rstrip("\n") + "\n\n" + section
    return "".join(lines[:at]) + section + "".join(lines[at:])


def _section_number(line: str) -> int | None:
    """`## 7. Title` -> 7; None for a section that is not a numbered item."""
    head = line[3:].split(".", 1)[0] if line.startswith("## ") else ""
    return int(head) if head.isdigit() else None
