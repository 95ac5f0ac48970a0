"""benchmarks/results.md and results.json: one table per measurement, every target beside its figure.

search_quality.py owns a section of the same results.md between its own markers; `write_results`
rewrites the file around that section, never through it.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

SECTION_START = "<!-- search-quality:start -->"
SECTION_END = "<!-- search-quality:end -->"
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
        stamp = f"Measured on {machine.get('date', 'an earlier run')} ({machine.get('cpu', 'unknown CPU')})"
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


def marked_span(text: str) -> tuple[int, int] | None:
    """Where the section lies, markers included; None without a start marker followed by an end one."""
    start = text.find(SECTION_START)
    end = text.find(SECTION_END, start) if start >= 0 else -1
    return None if end < 0 else (start, end + len(SECTION_END))


def splice_section(text: str, section: str) -> str:
    """Replace the marked span in place, or append the section; the rest of the text is untouched."""
    span = marked_span(text)
    if span is not None:
        return text[: span[0]] + section + text[span[1] :]
    return (text.rstrip("\n") + "\n\n" if text.strip() else "") + section + "\n"


def keep_marked_section(previous: str, text: str) -> str:
    """`text` with the previous file's marked section carried over: results.md is rewritten as a
    whole, and must not drop an hour of search-quality results."""
    span = marked_span(previous)
    return text if span is None else splice_section(text, previous[span[0] : span[1]])
