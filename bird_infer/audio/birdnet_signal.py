"""BirdNET-Analyzer 2.4.0's audio path, step for step, so that ``bird-infer analyze`` sees the samples it sees.

BirdNET-Analyzer reads a file with ``librosa.load(path, sr=48000, offset, duration, mono=True,
res_type="kaiser_fast")`` in pieces of 600 s, filters each piece with a Butterworth band-pass (order 5, only
when ``fmin``/``fmax`` differ from 0/15000 Hz) and cuts it into 3-s segments. This module does the same:

- :func:`load_piece`: libsndfile reads ``int(duration x rate)`` frames from ``int(offset x rate)`` as float32,
  channels are averaged (``numpy.mean``), and the piece is resampled with **resampy's** ``kaiser_fast`` filter
  (the library librosa calls for it), then padded with zeros to ``ceil(n x 48000 / rate)`` samples
  (librosa's ``fix_length``). resampy comes with the ``birdnet`` extra. Formats libsndfile cannot read (m4a,
  wma) are refused; BirdNET-Analyzer hands them to ffmpeg through audioread.
- :func:`bandpass` and :func:`split_signal`: BirdNET-Analyzer's ``audio.bandpass`` and ``audio.split_signal``
  (zero padding, the last segment kept when at least ``minlen`` long).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import soundfile as sf

from bird_infer.contract.errors import AudioDecodeError
from bird_infer.contract.extras import import_extra

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
    """``librosa.resample(y, orig_sr=rate, target_sr=target, res_type="kaiser_fast")``."""
    if rate == target:
        return y
    resampy = import_extra("resampy", "BirdNET-Analyzer's resampling (kaiser_fast)")
    n_out = int(np.ceil(y.shape[-1] * float(target) / rate))
    out = resampy.resample(y, rate, target, filter="kaiser_fast", axis=-1)
    if out.shape[-1] < n_out:
        out = np.pad(out, (0, n_out - out.shape[-1]))
    return np.asarray(out[:n_out], dtype=y.dtype)


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


def split_signal(
    sig: np.ndarray, rate: int, seconds: float, overlap: float, minlen: float = MIN_SEGMENT_S
) -> list[np.ndarray]:
    """BirdNET-Analyzer's ``audio.split_signal`` (no noise): segments of ``seconds`` every ``seconds - overlap``,
    zero-padded; the last kept when at least ``minlen`` long; always at least one."""
    if overlap >= seconds:
        overlap = seconds - 0.01
    chunk = int(rate * seconds)
    step = int(rate * (seconds - overlap))
    minsize = int(rate * minlen)
    last = int((sig.size - chunk + step - 1) / step) * step
    if last < 0:
        last = 0
    elif sig.size - last < minsize:
        last = last - step
    data = np.concatenate((sig, np.zeros(chunk, dtype=sig.dtype)))
    return [data[i : i + chunk] for i in range(0, last + 1, step)]
