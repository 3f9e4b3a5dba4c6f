"""BirdCLEF editions as data: the one table the Kaggle kernel, the deadline guard, ``bird-infer score`` and the
latency benchmark read. Figures are the competitions' public ones, approximate where the hidden test set's
size was never published (``test_files_assumed``).

Labels and their column order are never taken from here: they always come from the competition's
``sample_submission.csv`` (column names are strings, whatever they look like: ``"1139490"``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

STRICTEST_LIMIT_MIN = 90.0
"""The shortest CPU-notebook limit of any edition: what an unknown competition is given."""
NOTEBOOK_START_MIN = 5.0
"""Minutes of the limit left for the notebook's own start, imports and installs: the job gets the rest."""

METRICS = ("padded-cmap", "roc-auc")


@dataclass(frozen=True)
class Edition:
    """One BirdCLEF competition's inference constraints."""

    slug: str
    """The Kaggle competition slug (the folder name under ``/kaggle/input/competitions/``)."""
    species: int
    """Columns after ``row_id`` in its sample submission."""
    test_files: int
    """Soundscapes in the hidden test set (approximate)."""
    file_min: float
    """Length of each test soundscape (minutes)."""
    limit_min: float
    """CPU notebook time limit (minutes)."""
    metric: str
    """``padded-cmap`` (2023) or ``roc-auc`` (macro ROC-AUC over classes with a positive, 2024-2026)."""
    python: str
    """The notebook image's Python."""
    test_files_assumed: bool = False
    """True where the test set's size is not public and ``test_files`` is a guess."""

    @property
    def rows(self) -> int:
        """5-s rows in the hidden test set."""
        return round(self.test_files * self.file_min * 60 / 5)

    @property
    def job_limit_min(self) -> float:
        """What the deadline guard gets: the limit less the notebook's own start."""
        return self.limit_min - NOTEBOOK_START_MIN


EDITIONS: tuple[Edition, ...] = (
    Edition("birdclef-2023", 264, 200, 10.0, 120.0, "padded-cmap", "3.10"),
    Edition("birdclef-2024", 182, 1100, 4.0, 120.0, "roc-auc", "3.10"),
    Edition("birdclef-2025", 206, 700, 1.0, 90.0, "roc-auc", "3.11"),
    Edition("birdclef-2026", 234, 700, 1.0, 90.0, "roc-auc", "3.12", test_files_assumed=True),
)


def edition_for(name: str | None) -> Edition | None:
    """The edition a competition slug or folder name names (``birdclef-2025``, ``BirdCLEF 2025``...), or None."""
    if not name:
        return None
    m = re.search(r"birdclef[\s_-]*(20\d\d)", name.lower())
    if not m:
        return None
    return next((e for e in EDITIONS if e.slug == f"birdclef-{m.group(1)}"), None)
