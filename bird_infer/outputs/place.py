"""Where the submission goes: checked before any audio is read, and a last-resort place after all of it has been.

- :func:`check_output`: the CSV's place is created, a probe file written and removed, and the disk has room for
  the CSV (:func:`estimate_csv_bytes`);
- :func:`write_outputs`: if the CSV still cannot be written where asked (the disk filled up meanwhile, the folder
  was removed), the rows are kept in another place and the caller is told where.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import time
from pathlib import Path

import pandas as pd

from bird_infer.contract.errors import OutputError
from bird_infer.outputs.report import ReportEntry, report_path, write_report
from bird_infer.outputs.submission import write_submission

log = logging.getLogger(__name__)

CELL_BYTES = 12
"""Upper bound of one probability cell in the CSV: ``%.6g`` gives at most 12 characters, with the comma."""


def estimate_csv_bytes(prefixes: list[str], rows: list[int], n_labels: int, clip_s: float) -> int:
    """An upper bound of the CSV's size: each row's id plus ``n_labels`` cells of at most :data:`CELL_BYTES`."""
    id_extra = len(str(int(max(rows, default=1) * clip_s))) + 2
    return sum(
        n * (len(p.encode("utf-8")) + id_extra + n_labels * CELL_BYTES) for p, n in zip(prefixes, rows, strict=True)
    )


def check_output(out: str | Path, needed_bytes: int = 0) -> None:
    """The CSV (and its error report) can be written at ``out``: raise OutputError now if not."""
    out = Path(out)
    for target in (out, report_path(out)):
        if target.is_dir():
            raise OutputError(f"--out {target} is a folder; give a file name, e.g. {target / 'submission.csv'}")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(dir=out.parent, prefix=".bird_infer_probe.", suffix=".tmp")
        try:
            os.write(fd, b"probe\n")
            os.fsync(fd)
        finally:
            os.close(fd)
            Path(probe).unlink(missing_ok=True)
    except OSError as e:
        raise OutputError(f"cannot write in {out.parent}: {e.strerror or e}; choose another --out") from e
    free = shutil.disk_usage(out.parent).free
    if needed_bytes and free < 1.1 * needed_bytes + (1 << 20):
        raise OutputError(
            f"{out.parent} has {free / 2**20:.1f} MiB free, and the submission needs up to "
            f"{needed_bytes / 2**20:.1f} MiB; free some space or choose another --out"
        )


def fallback_places() -> list[Path]:
    """Where rows go when the requested place fails at the end: the temporary folder, the working folder, home."""
    return [Path(tempfile.gettempdir()), Path.cwd(), Path.home()]


def write_outputs(df: pd.DataFrame, entries: list[ReportEntry], out: Path) -> tuple[Path, Path, str | None]:
    """Write the CSV and the report at ``out``; if that fails, in the first :func:`fallback_places` that works.

    Returns (CSV path, report path, why ``out`` failed or None). Raises OutputError only when no place works.
    """
    try:
        path = write_submission(df, out)
        return path, write_report(entries, path), None
    except OSError as e:
        error = f"cannot write {out}: {e.strerror or e}"
    log.error("%s; keeping the rows elsewhere", error)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    tried = []
    for place in fallback_places():
        alt = place / f"{out.stem}-{stamp}-{os.getpid()}{out.suffix or '.csv'}"
        try:
            path = write_submission(df, alt)
            rep = write_report(entries, path)
        except OSError as e:
            tried.append(f"{alt}: {e.strerror or e}")
            continue
        log.error("the submission was written to %s instead of %s", path, out)
        return path, rep, error
    raise OutputError(f"{error}; no other place worked either ({'; '.join(tried)})")
