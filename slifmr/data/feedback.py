"""Which imported rows are positives: one rule for every importer (tables, RecBole, MMRec).

Implicit feedback: every row is a positive, unless thresholds ({"rating": 4}, `--threshold
COL=VALUE`, RecBole's convention) keep only the rows with COL >= VALUE; the summary says how
many were dropped. Without a threshold on it, a `label` column holding values <= 0 (explicit
negatives) is refused, naming its first such row and the threshold that keeps the positives,
and a `rating` column is reported as ignored (every rating is an interaction, the MMRec
protocol the embedded ml-100k follows). Readers feed it batch by batch (`keep`), then `summary`
gives the provenance entries, the log lines, or the refusal."""

from __future__ import annotations

from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from slifmr.errors import DataError, SlifmrError

LABEL, RATING = "label", "rating"


def rule_text(thresholds: dict[str, float]) -> str:
    return " and ".join(f"{c} >= {v:g}" for c, v in thresholds.items())


@dataclass
class FeedbackRule:
    """The rule for `thresholds` over a source whose id and split columns are `id_columns`
    (no threshold may name one: SlifmrError). `present`: the columns the source has."""

    thresholds: dict[str, float]
    id_columns: tuple[str, ...]
    present: Collection[str]
    negatives: int = 0
    first_negative: tuple[str, str] | None = None  # (file, which row) of the first label <= 0
    positive_min: float = float("inf")
    rows: int = 0
    kept: int = 0
    _checks_label: bool = field(init=False)

    def __post_init__(self) -> None:
        self.thresholds = dict(self.thresholds or {})
        for col, v in self.thresholds.items():
            if col in self.id_columns:
                raise SlifmrError(f"--threshold {col}={v:g}: '{col}' is an id or split column, not a feedback value")
        self._checks_label = LABEL in self.present and LABEL not in self.thresholds

    @property
    def columns(self) -> list[str]:
        """The columns `keep` reads (the thresholds', and `label` when it is checked)."""
        return list(dict.fromkeys([*self.thresholds, *([LABEL] if self._checks_label else [])]))

    def keep(self, rows: int, values: dict[str, np.ndarray], where: Callable[[int], tuple[str, str]]) -> np.ndarray:
        """The positives among a batch's `rows` rows, given its `columns` as float64 arrays (a batch
        without a `label` column is not checked for negatives); `where(i)` names row i of the
        batch as (the error's location, the row as the message says it), called for the first
        explicit negative only."""
        mask = np.ones(rows, bool)
        for col, v in self.thresholds.items():
            mask &= values[col] >= v
        if self._checks_label and LABEL in values:
            label = values[LABEL]
            negative = label <= 0
            if negative.any():
                if self.first_negative is None:
                    self.first_negative = where(int(np.flatnonzero(negative)[0]))
                self.negatives += int(negative.sum())
            if (~negative).any():
                self.positive_min = min(self.positive_min, float(label[~negative].min()))
        self.rows += rows
        self.kept += int(mask.sum())
        return mask

    def summary(self) -> tuple[dict[str, Any], list[str], list[str]]:
        """(provenance entries, notes for the import summary, log lines) once every batch is kept.
        Raises DataError at the first explicit negative when `label` holds values <= 0 without a
        label threshold."""
        if self.negatives and self.first_negative is not None:
            source, row = self.first_negative
            hint = f"{self.positive_min:g}" if np.isfinite(self.positive_min) else "1"
            rows = f"{self.negatives:,} rows hold" if self.negatives != 1 else "1 row holds"
            raise DataError(source, f"{rows} label <= 0 (explicit negatives; the first is {row}); "
                            f"pass --threshold label={hint} to keep only positives", column=LABEL)
        prov: dict[str, Any] = {"threshold": self.thresholds or None}
        notes, infos = [], []
        if self.thresholds:
            dropped = self.rows - self.kept
            prov["threshold_dropped"] = dropped
            notes.append(f"positives are rows with {rule_text(self.thresholds)} (--threshold): kept {self.kept:,} of "
                         f"{self.rows:,} rows, dropped {dropped:,}")
            infos.append(f"--threshold {rule_text(self.thresholds)}: dropped {dropped:,} of {self.rows:,} rows")
        else:
            if LABEL in self.present:
                notes.append("label column: every value is > 0, every row is a positive")
            if RATING in self.present:
                notes.append("rating column ignored: every row is a positive (--threshold rating=4 keeps ratings >= 4)")
        if notes:
            prov["feedback"] = "; ".join(notes)
        return prov, notes, infos
