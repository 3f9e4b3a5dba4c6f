"""Where ``bird-infer analyze``'s time goes, per minute of audio, one thread: decode, resampling (resampy's
``kaiser_fast``, what BirdNET-Analyzer's librosa calls, and bird_infer's identical one), the band-pass, the
front, the ONNX body, and writing the tables. Each stage is timed alone on the same minute, ``--repeats``
times (median), and set against the model (front + body): a stage above 10 % of it is worth taking down.

    python benchmarks/birdnet_stages.py --birdnet-onnx DIR [--rate 44100] [--repeats 5]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import soundfile as sf

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bird_infer.audio.birdnet_signal import SAMPLE_RATE, bandpass, load_piece, resample, split_signal  # noqa: E402
from bird_infer.contract.analyze import AnalyzeSettings, FileAnalysis  # noqa: E402
from bird_infer.contract.birdnet import EBIRD_CODES  # noqa: E402
from bird_infer.outputs.analyzer_tables import TableWriter, result_file_names  # noqa: E402
from bird_infer.runtime.birdnet_analyzer import bias_sigmoid  # noqa: E402
from bird_infer.runtime.birdnet_front import spectrograms  # noqa: E402
from bird_infer.runtime.birdnet_onnx import OnnxSegmentClassifier  # noqa: E402


def median_s(fn, repeats: int) -> float:
    fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--birdnet-onnx", type=Path, required=True)
    ap.add_argument("--rate", type=int, default=44100, help="the recording's rate (resampled to 48 kHz)")
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    src = ROOT.parent / "shared" / "data" / "audio" / "opensoundscape" / "1min.wav"
    x, rate = sf.read(str(src), dtype="float32")
    x = x if x.ndim == 1 else x.mean(axis=1)
    with tempfile.TemporaryDirectory() as tmp:
        wav = Path(tmp) / "minute.wav"
        sf.write(str(wav), resample(x, rate, args.rate)[: 60 * args.rate], args.rate, subtype="PCM_16")
        raw = sf.read(str(wav), dtype="float32")[0]
        sig = resample(raw, args.rate)
        chunks = np.stack(split_signal(sig, SAMPLE_RATE, 3.0, 0.0))
        model = OnnxSegmentClassifier(args.birdnet_onnx)
        feeds = spectrograms(chunks, model.front)
        probs = bias_sigmoid(model.logits(chunks), 1.0)
        settings = AnalyzeSettings(input_path=tmp, output_path=str(Path(tmp) / "out"), rtypes=("table", "csv"))
        Path(settings.output_path).mkdir()
        labels = model_labels()
        results = {
            f"{3 * k}-{3 * k + 3}": [(labels[j], float(p[j])) for j in np.flatnonzero(p >= 0.1)]
            for k, p in enumerate(probs)
        }
        writer = TableWriter(settings, json.loads(EBIRD_CODES.read_text(encoding="utf-8")))
        names = result_file_names(settings, str(wav))
        stages = {
            "decode (libsndfile)": lambda: sf.read(str(wav), dtype="float32"),
            f"resample {args.rate} -> 48000, resampy itself": lambda: resampy_itself(raw, args.rate),
            f"resample {args.rate} -> 48000, bird_infer's kaiser_fast (the same samples)": lambda: resample(
                raw, args.rate
            ),
            "band-pass 500-12000 Hz (only with --fmin/--fmax)": lambda: bandpass(sig, SAMPLE_RATE, 500, 12000),
            "load_piece (decode + resample)": lambda: load_piece(wav, 0, 600),
            "front (numpy, float64 FFT)": lambda: spectrograms(chunks, model.front),
            "body (ONNX Runtime)": lambda: model._body(feeds),
            "tables (table + csv)": lambda: writer.write(FileAnalysis(results, args.rate, 60.0), names, str(wav)),
        }
        seconds = {name: median_s(fn, args.repeats) for name, fn in stages.items()}
    model_s = seconds["front (numpy, float64 FFT)"] + seconds["body (ONNX Runtime)"]
    print(f"one minute of audio at {args.rate} Hz, {len(chunks)} segments, one thread, median of {args.repeats}\n")
    print("| stage | ms per minute of audio | share of the model (front + body) |")
    print("|---|---|---|")
    for name, s in seconds.items():
        print(f"| {name} | {1e3 * s:.0f} | {100 * s / model_s:.0f} % |")
    return 0


def resampy_itself(x: np.ndarray, rate: int) -> np.ndarray:
    import resampy

    return resampy.resample(x, rate, SAMPLE_RATE, filter="kaiser_fast")


def model_labels() -> list[str]:
    from bird_infer.contract.birdnet import birdnet_labels

    return birdnet_labels()


if __name__ == "__main__":
    sys.exit(main())
