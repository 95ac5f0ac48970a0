"""Errors the user can fix. The CLI turns these into one line each and exit code 2."""

from __future__ import annotations


class AutocnnError(Exception):
    """Base class: anything raised as this is the user's to fix, never a bug in autocnn."""

    def lines(self) -> list[str]:
        return [str(self)]


class SpecError(AutocnnError):
    """The spec file is unreadable or breaks the contract; one line per problem."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__("\n".join(problems))

    def lines(self) -> list[str]:
        return list(self.problems)


class DataError(AutocnnError):
    """The data a spec points at is missing, empty or unusable."""


class StudyError(AutocnnError):
    """The study cannot run as asked (storage, trial count, nothing to report)."""


class ExportError(AutocnnError):
    """A model cannot be finalized, exported or loaded for prediction (missing files, failed checks)."""
