"""Paths and URIs stored in a run, export, sweep or tracker record are made absolute once, at
the boundary where the user typed them, so that every later command works from any folder.

Rule: a relative path means "relative to the working directory of the command that received
it" (as a shell does); it is resolved there and stored absolute. URIs with a scheme other
than sqlite/file (s3://, http://, databricks) are stored as given."""

from __future__ import annotations

import os
from pathlib import Path


def absolute_path(value: str | os.PathLike[str]) -> str:
    """`value` as an absolute, normalised local path (`~` expanded; symbolic links kept, as the
    user named them); URLs ("scheme://...") as given."""
    text = os.fspath(value)
    if "://" in text:
        return text
    return os.path.abspath(os.path.expanduser(text))


def absolute_uri(uri: str) -> str:
    """A tracking URI with any relative local part made absolute: 'mlruns', 'file:mlruns',
    'file:./mlruns' and 'sqlite:///mlflow.db' (relative in MLflow's reading) become absolute;
    '' (the default store beside the run) and remote URIs are returned unchanged."""
    if not uri:
        return uri
    if uri.startswith("sqlite:///"):
        rest = uri.removeprefix("sqlite:///")
        return uri if rest.startswith("/") or rest == ":memory:" else f"sqlite:///{absolute_path(rest)}"
    if uri.startswith("file://"):
        return uri
    if uri.startswith("file:"):
        return Path(absolute_path(uri.removeprefix("file:"))).as_uri()
    if ":" in uri.split("/", 1)[0] or uri.startswith("databricks"):  # another scheme or MLflow's "databricks"
        return uri
    return absolute_path(uri)
