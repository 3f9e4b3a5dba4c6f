"""Reading soundscapes: any format libsndfile reads (ogg, wav, flac, mp3...), any rate, any channels.

Files are read in blocks, mixed down to mono float32, resampled with soxr (streaming, high quality)
to the manifest's rate and cut into chunks. Memory stays bounded by the block size whatever the
file's length. The number of chunks comes from the input's duration: ceil(duration / clip_s), at
least 1, the last chunk zero-padded, so resampler rounding never adds or drops a row.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf
import soxr

from bird_infer.errors import AudioDecodeError
from bird_infer.manifest import AudioConfig

AUDIO_EXTENSIONS = (".ogg", ".wav", ".flac", ".mp3", ".oga", ".opus")


@dataclass(frozen=True)
class AudioInfo:
    """What the header says about a file."""

    path: Path
    sample_rate: int
    frames: int
    channels: int

    @property
    def duration_s(self) -> float:
        return self.frames / self.sample_rate


def n_chunks_for(frames: int, sample_rate: int, clip_s: float) -> int:
    """ceil(duration / clip_s), at least 1 (an empty or sub-chunk file still gets one row)."""
    return max(1, math.ceil(frames / (sample_rate * clip_s) - 1e-9))


def audio_info(path: str | Path) -> AudioInfo:
    """Read the header only. Raises AudioDecodeError if libsndfile cannot open the file."""
    path = Path(path)
    try:
        info = sf.info(str(path))
    except (sf.LibsndfileError, RuntimeError, OSError) as e:
        raise AudioDecodeError(f"{path}: cannot open as audio ({e})") from e
    if info.samplerate <= 0 or info.channels <= 0:
        raise AudioDecodeError(f"{path}: header gives {info.samplerate} Hz and {info.channels} channels")
    frames = max(0, int(info.frames))
    return AudioInfo(path=path, sample_rate=int(info.samplerate), frames=frames, channels=info.channels)


def iter_chunk_blocks(path: str | Path, audio: AudioConfig, block_chunks: int = 12) -> Iterator[np.ndarray]:
    """Yield the file's chunks in blocks of up to ``block_chunks``, each (k, chunk_samples) float32.

    Mono mixdown is the mean over channels. Non-finite samples (NaN or inf in float files) become 0.
    Raises AudioDecodeError when the file cannot be decoded.
    """
    path = Path(path)
    chunk = audio.chunk_samples
    try:
        with sf.SoundFile(str(path)) as f:
            sr_in = int(f.samplerate)
            n_chunks = n_chunks_for(max(0, f.frames), sr_in, audio.clip_s)
            total_out = n_chunks * chunk
            resampler = None if sr_in == audio.sample_rate else soxr.ResampleStream(
                sr_in, audio.sample_rate, 1, dtype="float32", quality="HQ"
            )
            read_frames = max(1, round(block_chunks * audio.clip_s * sr_in))
            want = block_chunks * chunk
            pending: list[np.ndarray] = []
            pending_n = emitted = 0
            while emitted < total_out:
                data = f.read(read_frames, dtype="float32", always_2d=True)
                last = data.shape[0] < read_frames
                mono = data.mean(axis=1, dtype=np.float32) if data.shape[1] > 1 else data[:, 0]
                if resampler is not None:
                    mono = resampler.resample_chunk(mono, last=last)
                if mono.size:
                    pending.append(np.nan_to_num(mono, nan=0.0, posinf=0.0, neginf=0.0))
                    pending_n += mono.size
                if last and pending_n < total_out - emitted:  # zero-pad the last partial chunk
                    pending.append(np.zeros(total_out - emitted - pending_n, dtype=np.float32))
                    pending_n = total_out - emitted
                while pending_n >= want or (last and pending_n >= chunk):
                    buf = np.concatenate(pending) if len(pending) > 1 else pending[0]
                    take = min(want, pending_n, total_out - emitted) // chunk * chunk
                    if take == 0:
                        break
                    yield buf[:take].reshape(-1, chunk)
                    emitted += take
                    rest = buf[take:]
                    pending, pending_n = ([rest], rest.size) if rest.size else ([], 0)
                if last:
                    break
    except (sf.LibsndfileError, RuntimeError, OSError, ValueError) as e:
        raise AudioDecodeError(f"{path}: cannot decode ({type(e).__name__}: {e})") from e


def read_chunks(path: str | Path, audio: AudioConfig) -> np.ndarray:
    """All chunks of a file at once, (n_chunks, chunk_samples) float32. For short files and tests."""
    return np.concatenate(list(iter_chunk_blocks(path, audio)), axis=0)


def find_audio_files(folder: str | Path) -> list[Path]:
    """Audio files under ``folder`` (recursively), sorted by path, so rows come out in a stable order."""
    folder = Path(folder)
    if folder.is_file():
        return [folder]
    if not folder.is_dir():
        raise FileNotFoundError(f"audio folder {folder} does not exist")
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in AUDIO_EXTENSIONS)
