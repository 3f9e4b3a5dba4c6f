"""The shipped models' CSV and error report on the test recordings, as a fixture: one code version writes it
(``python -m tests.parity``), every later one must give the same bytes (``test_shipped_models``).

The fixture was written on the project's full shared set (24 maad_day clips); the repository carries 4 of them
(``tests/data/audio``), so the test compares the fixture's rows of the files present (:func:`fixture_rows`).

The folder predicted is built in a temporary place: a link to each recording, plus three bad entries
that give the error report rows (a WAV cut to 40 % of its bytes, an empty ``.wav``, and text named ``.wav``).
The report's ``file`` column is written relative to that folder, so that the fixture does not hold a temporary
path. ``cpu.json`` records the machine: ONNX Runtime's kernels differ between vector extensions (AVX2,
AVX-512), so the last printed digit may differ on another CPU; the test then compares values to 2e-6.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
AUDIO = ROOT / "tests" / "data" / "audio"
FIXTURE = ROOT / "tests" / "data" / "shipped_models"
BAD = ("cut_short", "empty", "not_audio")
"""The stems of the three bad entries."""


def build_audio_folder(folder: Path) -> Path:
    """Links to the test recordings (by their folder) and the three bad entries; returns ``folder``."""
    for src in sorted(AUDIO.rglob("*.wav")):
        dest = folder / src.parent.name / src.name
        dest.parent.mkdir(parents=True, exist_ok=True)
        os.symlink(src, dest)
    bad = folder / "bad"
    bad.mkdir()
    whole = (AUDIO / "opensoundscape" / "birds_10s.wav").read_bytes()
    (bad / "cut_short.wav").write_bytes(whole[: int(0.4 * len(whole))])
    (bad / "empty.wav").write_bytes(b"")
    (bad / "not_audio.wav").write_text("this is not audio\n", encoding="utf-8")
    return folder


def predict_into(out_dir: Path) -> tuple[Path, Path]:
    """Run ``bird-infer predict`` (the CLI, stable across code versions) on the built folder; the CSV and the
    report, its ``file`` column made relative to the audio folder."""
    from bird_infer.cli import main

    with tempfile.TemporaryDirectory() as tmp:
        audio = build_audio_folder(Path(tmp) / "audio")
        csv = out_dir / "shipped_submission.csv"  # not submission.csv: .gitignore keeps those out of git
        code = main(["-q", "predict", "--audio", str(audio), "--models", str(ROOT / "models"), "--out", str(csv)])
        if code != 0:
            raise SystemExit(f"predict exited {code}")
        report = out_dir / "shipped_submission_errors.csv"
        report.write_text(report.read_text(encoding="utf-8").replace(f"{audio}/", ""), encoding="utf-8")
    return csv, report


def fixture_rows(text: str, stems: set[str]) -> str:
    """The fixture CSV's header and the rows of the files whose stems are given, in its order."""
    lines = text.splitlines(keepends=True)
    return "".join([lines[0], *(x for x in lines[1:] if x.split(",", 1)[0].rsplit("_", 1)[0] in stems)])


def cpu_signature() -> dict:
    from bird_infer.runtime.machine import cpu_info

    info = cpu_info()
    return {"model": info.model, "flags": list(info.flags)}


if __name__ == "__main__":
    if not AUDIO.is_dir():
        sys.exit(f"no recordings at {AUDIO}")
    FIXTURE.mkdir(parents=True, exist_ok=True)
    predict_into(FIXTURE)
    (FIXTURE / "cpu.json").write_text(json.dumps(cpu_signature(), indent=2) + "\n", encoding="utf-8")
    print(f"wrote {FIXTURE}")
