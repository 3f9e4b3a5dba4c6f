"""Checks made before any audio is read, and the last-resort writer after all of it has been.

A run over 200 soundscapes must not fail at minute 40 on something that was knowable at second 1:

- :func:`check_models`: every fold is loaded by ONNX Runtime and run once on a check input, and the
  shapes it computes are compared with the ones the manifest declares (a fold whose file loads but
  computes another width would otherwise kill every worker, file after file);
- :func:`check_output`: the CSV's place is created, a probe file written and removed, and the disk
  has room for the CSV.

And at the end, :func:`write_outputs`: if the CSV still cannot be written where asked (the disk filled
up meanwhile, the folder was removed), the rows are kept in another place and the caller is told where.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

from bird_infer.errors import BirdInferError, ModelCheckError, OutputError
from bird_infer.frontend import LogMelFrontend
from bird_infer.report import ReportEntry, report_path, write_report
from bird_infer.schema import Manifest, Member
from bird_infer.submission import write_submission

log = logging.getLogger(__name__)

CELL_BYTES = 12
"""Upper bound of one probability cell in the CSV: ``%.6g`` gives at most 12 characters, with the comma."""


def check_input(member: Member) -> np.ndarray:
    """A fixed check input for ``member``, batch of one: the log-mel of quiet noise with a tone, or the
    waveform window itself for a member that takes the waveform."""
    n, sr = member.audio.chunk_samples, member.audio.sample_rate
    t = np.arange(n) / sr
    wave = 0.1 * np.sin(2 * np.pi * min(2000.0, sr / 4) * t) + 0.01 * np.random.default_rng(0).standard_normal(n)
    wave = wave[None].astype(np.float32)
    return wave if member.frontend is None else LogMelFrontend(member.frontend, sr)(wave)


def check_models(manifest: Manifest) -> None:
    """Load every fold of every member with ONNX Runtime and run it once; raise ModelCheckError naming the
    fold when it cannot be loaded or run, or computes shapes other than the manifest declares. A fold whose
    output is not finite is only warned about: at run time such outputs are left out chunk by chunk."""
    from bird_infer.ensemble import make_session

    for member in manifest.members:
        x = check_input(member)
        n_labels = len(member.labels)
        prefix = f"member {member.name}, " if len(manifest.members) > 1 else ""
        if member.birdnet is not None:
            _check_birdnet(manifest, member, x, prefix)
            continue
        for fold in member.folds:
            path = manifest.fold_path(fold)
            try:
                session = make_session(str(path))
            except Exception as e:  # ORT raises its own classes (Fail, InvalidGraph, ...): any is a dead fold
                raise ModelCheckError(
                    f"{prefix}fold {fold.name}: ONNX Runtime cannot load {path.name} ({type(e).__name__}: "
                    f"{' '.join(str(e).split())[:300]}); re-export it with `bird-infer export`"
                ) from e
            wanted = [fold.clipwise] + ([fold.segmentwise] if fold.segmentwise else [])
            try:
                outs = session.run([w.name for w in wanted], {fold.input.name: x})
            except Exception as e:
                raise ModelCheckError(
                    f"{prefix}fold {fold.name}: {path.name} fails on a check input of shape {list(x.shape)} "
                    f"({type(e).__name__}: {' '.join(str(e).split())[:300]})"
                ) from e
            for spec, y in zip(wanted, outs, strict=True):
                segments = y.shape[-1] if y.ndim == 3 else -1
                expect = (1, n_labels) if spec is fold.clipwise else (1, n_labels, segments)
                if tuple(y.shape) != expect:
                    raise ModelCheckError(
                        f"{prefix}fold {fold.name}: output {spec.name!r} has shape {list(y.shape)} on one chunk, "
                        f"but the manifest declares {list(spec.shape)} with {n_labels} labels; the file does not "
                        "compute what the manifest says. Re-export the fold, or give the labels it was trained with"
                    )
                if not np.isfinite(y).all():
                    log.warning(
                        "%sfold %s: output %r is NaN or inf on the check input; such outputs are left out",
                        prefix,
                        fold.name,
                        spec.name,
                    )
            del session


def _check_birdnet(manifest: Manifest, member: Member, x: np.ndarray, prefix: str) -> None:
    """A birdnet member: its runtime loads BirdNET's model and scores the check input with the declared width."""
    from bird_infer.ensemble import MemberModel

    fold = member.folds[0]
    try:
        y = MemberModel(member, manifest.root).fold_outputs(x)
    except BirdInferError:
        raise
    except Exception as e:  # the TFLite runtime's own errors: any means the member cannot run
        raise ModelCheckError(
            f"{prefix}fold {fold.name}: BirdNET's model does not run "
            f"({type(e).__name__}: {' '.join(str(e).split())[:300]})"
        ) from e
    if y.shape != (1, 1, len(member.labels)):
        raise ModelCheckError(
            f"{prefix}fold {fold.name}: BirdNET gave shape {list(y.shape[1:])}, expected [1, {len(member.labels)}]"
        )


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
