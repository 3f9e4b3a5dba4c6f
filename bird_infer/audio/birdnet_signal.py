"""BirdNET-Analyzer 2.4.0's audio path, step for step, so that ``bird-infer analyze`` sees the samples it sees.

BirdNET-Analyzer reads a file with ``librosa.load(path, sr=48000, offset, duration, mono=True,
res_type="kaiser_fast")`` in pieces of 600 s, filters each piece with a Butterworth band-pass (order 5, only
when ``fmin``/``fmax`` differ from 0/15000 Hz) and cuts it into 3-s segments. This module does the same:

- :func:`load_piece`: libsndfile reads ``int(duration x rate)`` frames from ``int(offset x rate)`` as float32,
  channels are averaged (``numpy.mean``), and the piece is resampled with **resampy's** ``kaiser_fast`` filter
  (the library librosa calls for it; here its very arithmetic, faster, :mod:`bird_infer.audio.kaiser_fast`), then
  padded with zeros to ``ceil(n x 48000 / rate)`` samples (librosa's ``fix_length``). resampy (for its filter
  table, and numba) comes with the ``birdnet`` extra. Formats libsndfile cannot read (m4a,
  wma) are refused; BirdNET-Analyzer hands them to ffmpeg through audioread.
- :func:`bandpass` and :func:`split_signal`: BirdNET-Analyzer's ``audio.bandpass`` and ``audio.split_signal``
  (zero padding, the last segment kept when at least ``minlen`` long).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import soundfile as sf

from bird_infer.contract.errors import AudioDecodeError

SAMPLE_RATE = 48_000
SIG_FMIN = 0
SIG_FMAX = 15_000
SEGMENT_S = 3.0
MIN_SEGMENT_S = 1.0
PIECE_S = 600
"""BirdNET-Analyzer's FILE_SPLITTING_DURATION: a file is read, resampled and filtered in pieces this long."""


def file_duration_s(path: str | Path) -> float:
    """``librosa.get_duration(path=...)``: frames / rate from the header."""
    return float(sf.info(str(path)).duration)


def resample(y: np.ndarray, rate: int, target: int = SAMPLE_RATE) -> np.ndarray:
    """``librosa.resample(y, orig_sr=rate, target_sr=target, res_type="kaiser_fast")``: resampy's samples
    (:mod:`bird_infer.audio.kaiser_fast`, bit for bit), padded with zeros from its length, ``int(n x target /
    rate)``, to librosa's, ``ceil(...)``."""
    if rate == target:
        return y
    from bird_infer.audio.kaiser_fast import resample_kaiser_fast  # numba: only where a file needs resampling

    n_out = int(np.ceil(y.shape[-1] * float(target) / rate))
    out = resample_kaiser_fast(np.asarray(y, dtype=np.float32), int(rate), int(target))
    return np.pad(out, (0, max(0, n_out - out.shape[-1])))[:n_out].astype(y.dtype)


def load_piece(path: str | Path, offset_s: float, duration_s: float | None) -> np.ndarray:
    """``librosa.load(path, sr=48000, offset=offset_s, duration=duration_s, mono=True, res_type="kaiser_fast")``."""
    with sf.SoundFile(str(path)) as f:
        rate = f.samplerate
        if offset_s:
            f.seek(int(offset_s * rate))
        frames = int(duration_s * rate) if duration_s is not None else -1
        y = f.read(frames=frames, dtype="float32", always_2d=False).T
    if not np.isfinite(y).all():  # librosa refuses it too ("Audio buffer is not finite everywhere")
        raise AudioDecodeError(f"{Path(path).name}: the samples are not finite everywhere")
    if y.ndim > 1:
        y = np.mean(y, axis=tuple(range(y.ndim - 1)))
    return resample(y, rate)


def bandpass(sig: np.ndarray, rate: int, fmin: int, fmax: int, order: int = 5) -> np.ndarray:
    """BirdNET-Analyzer's ``audio.bandpass``: high-, low- or band-pass Butterworth (``lfilter``) as float32;
    the signal untouched at 0-15000 Hz or when ``fmin > fmax``."""
    if (fmin == SIG_FMIN and fmax == SIG_FMAX) or fmin > fmax:
        return sig
    from scipy.signal import butter, lfilter

    nyquist = 0.5 * rate
    if fmin > SIG_FMIN and fmax == SIG_FMAX:
        b, a = butter(order, fmin / nyquist, btype="high")
    elif fmin == SIG_FMIN and fmax < SIG_FMAX:
        b, a = butter(order, fmax / nyquist, btype="low")
    elif fmin > SIG_FMIN and fmax < SIG_FMAX:
        b, a = butter(order, [fmin / nyquist, fmax / nyquist], btype="band")
    else:
        return sig
    return lfilter(b, a, sig).astype("float32")


def segment_starts(size: int, rate: int, seconds: float, overlap: float, minlen: float = MIN_SEGMENT_S) -> range:
    """Where :func:`split_signal` starts its segments in a signal of ``size`` samples."""
    if overlap >= seconds:
        overlap = seconds - 0.01
    chunk = int(rate * seconds)
    step = int(rate * (seconds - overlap))
    minsize = int(rate * minlen)
    last = int((size - chunk + step - 1) / step) * step
    if last < 0:
        last = 0
    elif size - last < minsize:
        last = last - step
    return range(0, last + 1, step)


def split_signal(
    sig: np.ndarray, rate: int, seconds: float, overlap: float, minlen: float = MIN_SEGMENT_S
) -> list[np.ndarray]:
    """BirdNET-Analyzer's ``audio.split_signal`` (no noise): segments of ``seconds`` every ``seconds - overlap``,
    zero-padded; the last kept when at least ``minlen`` long; always at least one."""
    chunk = int(rate * seconds)
    data = np.concatenate((sig, np.zeros(chunk, dtype=sig.dtype)))
    return [data[i : i + chunk] for i in segment_starts(sig.size, rate, seconds, overlap, minlen)]


def piece_samples(frames: int, rate: int, offset_s: float, duration_s: float = PIECE_S) -> int:
    """The samples :func:`load_piece` returns for a file of ``frames`` frames at ``rate`` (from its header),
    without reading it."""
    start = int(offset_s * rate) if offset_s else 0
    n = max(0, min(int(duration_s * rate), frames - start))
    return n if rate == SAMPLE_RATE else int(np.ceil(n * float(SAMPLE_RATE) / rate))
