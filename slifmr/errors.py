"""The one error type the command line turns into a one-line message and exit status 2."""

from __future__ import annotations


class SlifmrError(Exception):
    """Bad input or state the user can fix: printed as one line, exit status 2."""


class DataError(SlifmrError):
    """A dataset file is missing, malformed or inconsistent."""

    def __init__(self, file: str, message: str, column: str | None = None, row: int | None = None):
        where = str(file)
        if column is not None:
            where += f", column '{column}'"
        if row is not None:
            where += f", row {row}"
        super().__init__(f"{where}: {message}")
        self.file, self.message, self.column, self.row = file, message, column, row

    def __reduce__(self) -> tuple:  # crosses process boundaries (Ray workers) intact
        return (DataError, (self.file, self.message, self.column, self.row))


class ConfigError(SlifmrError):
    """An unknown or ill-typed configuration key or value."""


class NonFiniteError(SlifmrError):
    """Training produced a NaN or infinite loss, gradient or representation: it stops, and
    nothing non-finite is saved (the last good checkpoint stays)."""
