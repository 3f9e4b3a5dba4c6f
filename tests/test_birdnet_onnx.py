"""BirdNET V2.4 on ONNX: the exact numpy front against the TFLite interpreter's own tensors, the converted body's
logits, the engines, ``analyze`` on it (BirdNET-Analyzer's golden tables), a long file split across workers, and
the birdnet member on the same body."""

from __future__ import annotations

import dataclasses
import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from bird_infer.audio.birdnet_signal import SAMPLE_RATE, load_piece, split_signal
from bird_infer.cli import main
from bird_infer.contract.birdnet import MODEL_FILE
from bird_infer.contract.birdnet_onnx import BODY_FILE, LOGIT_TOLERANCE, RECORD_FILE
from bird_infer.contract.errors import BirdnetConversionError, ChecksumMismatchError
from bird_infer.runtime.birdnet_analyzer import SegmentClassifier, checked_file
from bird_infer.runtime.birdnet_front import read_front, spectrograms
from bird_infer.runtime.birdnet_onnx import ONNX_ENGINES, OnnxSegmentClassifier, choose_engine, load_converted
from bird_infer.tools.compare_tables import compare_folders
from tests.conftest import real_audio_dir
from tests.test_analyze import RUNS

GOLDEN = Path(__file__).resolve().parent / "data" / "birdnet_analyzer"
OWN = {"bird_infer_analyze_done.jsonl"}
MAX_APART_SHARE = 0.005
"""ONNX Runtime's kernels are not TensorFlow's (logits within 5e-5 of its interpreter's): a confidence may print
one unit apart in its 4th decimal. Measured on the golden set: 17 of 4,275 lines (0.40 %), all of them a single
unit; LiteRT's kernels, the TFLite path, measured 17 of 4,111. Nothing else may differ."""


def real_segments(n_files: int = 2, overlap: float = 0.0) -> np.ndarray:
    """3-s segments at 48 kHz from the first 60 s of real recordings, as analyze cuts them."""
    out = []
    for path in sorted(real_audio_dir("opensoundscape").glob("*.wav"))[:n_files]:
        out += split_signal(load_piece(path, 0, 60), SAMPLE_RATE, 3.0, overlap)
    return np.stack(out).astype(np.float32)


def test_front_equals_the_tflite_graphs_cast_tensors() -> None:
    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    model = checked_file(MODEL_FILE)
    spec = read_front(model)
    assert [f.length for f in spec.fronts] == [2048, 1024] and [f.step for f in spec.fronts] == [278, 280]
    it = Interpreter(
        model_path=str(model),
        experimental_preserve_all_tensors=True,
        experimental_op_resolver_type=OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES,
    )
    it.allocate_tensors()
    index = {d["name"]: d["index"] for d in it.get_tensor_details()}
    segments = real_segments(2)[::3]
    worst = 0.0
    identical = total = 0
    for seg in segments:
        it.set_tensor(it.get_input_details()[0]["index"], seg[None])
        it.invoke()
        ours = spectrograms(seg[None], spec)
        for f in spec.fronts:
            theirs = it.get_tensor(index[f.cast])
            assert ours[f.cast].shape == theirs.shape == (1, 511, f.length // 2 + 1)
            worst = max(worst, float(np.abs(ours[f.cast] - theirs).max()))
            identical += int((ours[f.cast] == theirs).sum())
            total += theirs.size
    assert worst <= 1e-9, worst
    assert identical / total > 0.99  # the float64 FFTs differ in their last bits only


def test_front_in_float32_or_with_an_analytic_window_is_not_exact() -> None:
    """What the exact front guards against: a float32 FFT, or a periodic Hann computed here instead of the graph's
    window, moves the spectrogram far beyond 1e-9."""
    from scipy.fft import rfft

    from bird_infer.runtime.birdnet_front import normalise

    spec = read_front(checked_file(MODEL_FILE))
    f = spec.fronts[0]
    seg = real_segments(1)[:1]
    exact = spectrograms(seg, spec)[f.cast][0]
    hann = np.hanning(f.length + 1)[:-1].astype(np.float32)
    assert not np.array_equal(hann, f.window)
    analytic = spectrograms(seg, dataclasses.replace(spec, fronts=(dataclasses.replace(f, window=hann),)))[f.cast][0]
    frames = np.lib.stride_tricks.sliding_window_view(normalise(seg, spec)[0], f.length)[:: f.step] * f.window
    single = rfft(frames.astype(np.float32), axis=-1).real  # scipy keeps float32 in float32
    assert np.abs(analytic - exact).max() > 1e-6
    assert np.abs(single - exact).max() > 1e-6


def test_converted_body_gives_tflites_logits(converted_birdnet: Path) -> None:
    record = json.loads((converted_birdnet / RECORD_FILE).read_text())
    assert record["max_logit_diff"] <= LOGIT_TOLERANCE and record["converter"].startswith("tf2onnx 1.17")
    segments = real_segments(3, overlap=1.0)[:24]
    ours = OnnxSegmentClassifier(converted_birdnet).logits(segments)
    tflite = SegmentClassifier(checked_file(MODEL_FILE).read_bytes())
    ref = np.concatenate([tflite.logits(s[None]) for s in segments])
    assert np.abs(ours - ref).max() <= LOGIT_TOLERANCE
    one_by_one = np.concatenate([OnnxSegmentClassifier(converted_birdnet).logits(s[None]) for s in segments[:4]])
    assert np.array_equal(one_by_one, ours[:4])  # the batch does not change a bit


def test_engines_agree_and_auto_picks_one(converted_birdnet: Path) -> None:
    pytest.importorskip("openvino")
    segments = real_segments(1)[:8]
    logits = {e: OnnxSegmentClassifier(converted_birdnet, 1, e).logits(segments) for e in ONNX_ENGINES}
    assert np.abs(logits["openvino"] - logits["onnxruntime"]).max() <= LOGIT_TOLERANCE
    assert choose_engine(converted_birdnet, repeats=1) in ONNX_ENGINES


def test_a_changed_body_or_record_is_refused(converted_birdnet: Path, tmp_path: Path) -> None:
    copy = tmp_path / "copy"
    shutil.copytree(converted_birdnet, copy)
    with open(copy / BODY_FILE, "r+b") as f:
        f.seek(-64, 2)
        f.write(b"\0" * 8)
    with pytest.raises(ChecksumMismatchError):
        load_converted(copy)
    (copy / RECORD_FILE).write_text("{}")
    with pytest.raises(BirdnetConversionError, match="not a record"):
        load_converted(copy)
    with pytest.raises(BirdnetConversionError, match=r"no birdnet_onnx\.json"):
        load_converted(tmp_path / "nothing")


def test_no_converter_is_one_line(tmp_path: Path, capsys) -> None:
    rc = main(["birdnet-onnx", "--out", str(tmp_path / "x"), "--converter-python", sys.executable])
    err = capsys.readouterr().err.strip().splitlines()
    if rc == 0:  # this interpreter has tensorflow and tf2onnx: nothing to show
        pytest.skip("this Python can convert")
    assert rc == 2 and len(err) == 1 and "pip install tensorflow-cpu tf2onnx==1.17.0" in err[0]
    assert not (tmp_path / "x").exists()


def test_analyze_without_a_converted_body_runs_tflite_and_says_how(tmp_path: Path, caplog) -> None:
    audio = tmp_path / "a"
    audio.mkdir()
    shutil.copy(real_audio_dir("opensoundscape") / "aru_1.wav", audio)
    with caplog.at_level("WARNING"):
        assert main(["analyze", str(audio), "-o", str(tmp_path / "o"), "-t", "1"]) == 0
    assert "bird-infer birdnet-onnx" in caplog.text
    assert (tmp_path / "o" / "aru_1.BirdNET.selection.table.txt").is_file()


def test_analyze_on_onnx_gives_birdnet_analyzers_tables(converted_birdnet: Path, tmp_path: Path, monkeypatch) -> None:
    """Every golden run, by default (no option): the same detections, a confidence at most one unit apart in its
    4th decimal on at most :data:`MAX_APART_SHARE` of the lines."""
    monkeypatch.setenv("BIRD_INFER_BIRDNET_ONNX", str(converted_birdnet))
    audio = real_audio_dir()
    lines = apart = 0
    for name, (inp, options) in RUNS.items():
        opts = [o.replace("{SLIST}", str(GOLDEN / "slist.txt")) for o in options]
        out = tmp_path / name
        assert main(["-q", "analyze", f"{audio}/{inp}", "-o", str(out), "-t", "2", *opts]) == 0
        c = compare_folders(GOLDEN / "analyze" / name, out, ("{AUDIO}", str(audio.resolve())), OWN)
        assert c.problems == [], (name, c.problems)
        lines += c.lines
        apart += c.apart_lines
    assert lines > 4000 and apart <= MAX_APART_SHARE * lines, (apart, lines)


def _long_recording(path: Path, seconds: float, rate: int) -> Path:
    """``seconds`` of real audio at ``rate``, tiled with varied gains, written in 30-s blocks."""
    x, native = sf.read(str(real_audio_dir("opensoundscape") / "1min.wav"), dtype="float32")
    x = x if x.ndim == 1 else x.mean(axis=1)
    if native != rate:
        from bird_infer.audio.birdnet_signal import resample

        x = resample(x.astype(np.float32), native, rate)
    n = int(seconds * rate)
    reps = -(-n // len(x))
    y = np.concatenate([x * (0.4 + 0.15 * (r % 4)) for r in range(reps)])[:n]
    with sf.SoundFile(str(path), "w", rate, 1, "PCM_16") as f:
        for i in range(0, n, 30 * rate):
            f.write(y[i : i + 30 * rate])
    return path


@pytest.mark.parametrize("overlap", ["0", "0.1"])
def test_a_long_file_split_across_workers_gives_the_unsplit_tables(
    converted_birdnet: Path, tmp_path: Path, monkeypatch, overlap: str
) -> None:
    """1,270 s at 44.1 kHz is three pieces (the third 70 s); ``-t 2`` cuts it into two parts at a piece
    boundary. With overlap 0.1 a piece is 207 segments of 2.9 s: the parts add up float starts."""
    monkeypatch.setenv("BIRD_INFER_BIRDNET_ONNX", str(converted_birdnet))
    audio = tmp_path / "audio"
    audio.mkdir()
    _long_recording(audio / "long.wav", 1270, 44100)
    opts = ["--overlap", overlap, "--min_conf", "0.1", "--rtype", "table", "csv", "audacity"]
    assert main(["-q", "analyze", str(audio), "-o", str(tmp_path / "one"), "-t", "1", *opts]) == 0
    assert main(["analyze", str(audio), "-o", str(tmp_path / "two"), "-t", "2", *opts]) == 0
    c = compare_folders(tmp_path / "one", tmp_path / "two", ignore={"bird_infer_analyze_done.jsonl"})
    assert c.problems == [] and c.apart_lines == 0 and c.identical == c.files >= 3
    csv = (tmp_path / "two" / "long.BirdNET.results.csv").read_text().splitlines()
    starts = {float(line.split(",")[0]) for line in csv[1:]}
    assert max(starts) > 1200  # the last piece is there


def test_birdnet_member_runs_the_same_body(converted_birdnet: Path, tmp_path: Path, monkeypatch) -> None:
    """A birdnet-bundle written where a converted body exists runs it; its rows are the TFLite member's within
    1e-5, and a bundle naming another body is refused with the reason."""
    from bird_infer.contract.manifest import load_manifest
    from bird_infer.run.options import RunOptions
    from bird_infer.run.predictor import FilePredictor
    from bird_infer.tools.birdnet_bundle import write_bundle

    wanted = ["amerob", "bkbwar", "tenwar", "comyel", "easblu"]
    wav = real_audio_dir("opensoundscape") / "birds_10s.wav"
    tflite, _ = write_bundle(tmp_path / "tflite", wanted)  # no converted folder seen: TFLite
    assert tflite.members[0].birdnet.onnx_sha256 is None
    monkeypatch.setenv("BIRD_INFER_BIRDNET_ONNX", str(converted_birdnet))
    onnx, _ = write_bundle(tmp_path / "onnx", wanted)
    record = json.loads((converted_birdnet / RECORD_FILE).read_text())
    assert onnx.members[0].birdnet.onnx_sha256 == record["body_sha256"]
    assert load_manifest(tmp_path / "onnx").members[0].birdnet.onnx_converter == record["converter"]
    a = FilePredictor(tflite, RunOptions()).predict_file(wav).probs
    b = FilePredictor(onnx, RunOptions()).predict_file(wav).probs
    assert a.shape == b.shape and np.abs(a - b).max() <= 1e-5  # measured: 8e-7 on all 6,522 labels
    other = json.loads((tmp_path / "onnx" / "manifest.json").read_text())
    other["members"][0]["birdnet"]["onnx_sha256"] = "0" * 64
    (tmp_path / "onnx" / "manifest.json").write_text(json.dumps(other))
    with pytest.raises(BirdnetConversionError, match="point"):
        FilePredictor(load_manifest(tmp_path / "onnx"), RunOptions()).predict_file(wav)


@pytest.mark.parametrize("rate", [8000, 22050, 32000, 44100, 88200, 96000])
def test_kaiser_fast_is_resampys_bit_for_bit(rate: int) -> None:
    """The resampler analyze runs gives resampy's very float32 samples (the model moves a confidence by 0.001 on a
    quiet segment for a difference of 2e-7), on real audio and on a slice shorter than its filter."""
    resampy = pytest.importorskip("resampy")
    from bird_infer.audio.birdnet_signal import resample

    x, native = sf.read(str(real_audio_dir("opensoundscape") / "great_plains_toad.wav"), dtype="float32")
    x = resampy.resample(x[: 10 * native], native, rate, filter="kaiser_fast").astype(np.float32)
    for piece in (x, x[:777]):
        ref = resampy.resample(piece, rate, SAMPLE_RATE, filter="kaiser_fast")
        ours = resample(piece, rate)
        assert ours.shape[0] == int(np.ceil(piece.shape[0] * SAMPLE_RATE / rate))
        assert np.array_equal(ours[: ref.shape[0]], ref) and not ours[ref.shape[0] :].any()
