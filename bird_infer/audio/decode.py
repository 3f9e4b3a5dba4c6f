"""Reading soundscapes: any format libsndfile reads (ogg, wav, flac, mp3, aiff...), any rate, any channels.

Files are read in blocks, mixed down to mono float32, resampled with soxr (streaming, high quality)
to the manifest's rate and cut into chunks. Memory stays bounded by the block size whatever the
file's length.

**A header's length is a claim.** The rows a file gets follow one rule, the same for every format:

- the audio that decodes is predicted: ``ceil(decoded duration / clip_s)`` chunks, the last one
  zero-padded (at least 1, so an empty file still gets one row);
- where the header claims more (a file cut short, a lying header), the rest of the claimed length gets
  fallback rows and the file is reported ``partial``;
- a claim is capped at :data:`MAX_FILE_S` (24 hours), and a header whose length is unknown or beyond
  the cap is decoded to its end, at most to the cap: no header can make the CSV or memory explode;
- a sample rate outside [:data:`MIN_SAMPLE_RATE`, :data:`MAX_SAMPLE_RATE`] is refused as implausible.

Files are opened through a Python file object, so names that are not valid UTF-8 read like any other.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf
import soxr

from bird_infer.audio.files import entry_problem
from bird_infer.audio.recovery import Slice, flac_unbounded, ogg_links, wav_continuation, wav_header
from bird_infer.contract.errors import AudioDecodeError
from bird_infer.contract.schema import RESAMPLERS, AudioConfig

MIN_SAMPLE_RATE = 1_000
"""Hz. Below this a header is not believed (the lowest rates recorders use are 8 kHz)."""
MAX_SAMPLE_RATE = 1_536_000
"""Hz. Above this a header is not believed (ultrasonic bat recorders reach 768 kHz)."""
MAX_FILE_S = 24 * 3600.0
"""Longest length a file is given rows for (seconds): 17 280 rows at 5 s. Caps lying headers."""
READ_S = 1.0
MAX_READ_BYTES = 16 * 2**20
"""A read is at most this many bytes of float32 samples, whatever the header says (1024 channels at 1.5 MHz would
make a 1-s read 6 GB): a worker's memory stays bounded by the bytes it reads, not by the header's claims."""
"""Seconds of input per libsndfile call: a decode error mid-file loses at most this much audio."""


@dataclass(frozen=True)
class AudioInfo:
    """What the header says about a file."""

    path: Path
    sample_rate: int
    header_frames: int
    """Frames the header claims (FLAC's "length unknown" reads as 2**63 - 1)."""
    channels: int
    note: str | None = None
    """Audio the header hid and that is read anyway (:mod:`bird_infer.audio.recovery`)."""

    @property
    def frames(self) -> int | None:
        """The claim if believed: None when it is beyond :data:`MAX_FILE_S` (the file is decoded to its end)."""
        return self.header_frames if self.header_frames <= MAX_FILE_S * self.sample_rate else None

    @property
    def duration_s(self) -> float:
        return (self.frames or 0) / self.sample_rate


def n_chunks_for(frames: int, sample_rate: int, clip_s: float) -> int:
    """ceil(duration / clip_s), at least 1 (an empty or sub-chunk file still gets one row)."""
    return max(1, math.ceil(frames / (sample_rate * clip_s) - 1e-9))


def max_chunks(clip_s: float) -> int:
    """The most rows any file gets (:data:`MAX_FILE_S` of audio)."""
    return math.ceil(MAX_FILE_S / clip_s)


def claimed_chunks(info: AudioInfo, clip_s: float) -> int:
    """Rows the header claims, capped at :func:`max_chunks`; 1 when the length is unknown."""
    if info.frames is None:
        return 1
    return min(n_chunks_for(info.frames, info.sample_rate, clip_s), max_chunks(clip_s))


class _ReadOnlySoundFile(sf.SoundFile):
    """soundfile re-seeks after every read to keep its read and write positions in step. Read-only, that
    seek is redundant, and it fails on FLAC files whose STREAMINFO says "length unknown" (total samples
    0, which the FLAC format allows). Reporting "not seekable" skips it; reads then take explicit sizes."""

    def seekable(self) -> bool:
        return False


def _wav_claimed_frames(fh) -> int | None:
    """Frames a RIFF/WAVE header's ``data`` chunk claims (libsndfile reports only what is present)."""
    h = wav_header(fh)
    if h is None or h.fmt is None or h.fmt[3] <= 0 or h.data_size == 0xFFFFFFFF:
        return None
    return h.data_size // h.fmt[3]


def _open(path: Path):
    try:
        fh = open(path, "rb")  # a file object: libsndfile then reads any file name, UTF-8 or not
    except OSError as e:
        raise AudioDecodeError(f"{path.name}: cannot open ({e.strerror})") from e
    return fh


class _Chain:
    """The links of a chained Ogg file read one after another, as one file (:func:`recovery.ogg_links`)."""

    def __init__(self, fh, links: list[tuple[int, int]]) -> None:
        self.files = [_ReadOnlySoundFile(Slice(fh, a, n)) for a, n in links]
        first = self.files[0]
        self.samplerate, self.channels = first.samplerate, first.channels
        if any((f.samplerate, f.channels) != (self.samplerate, self.channels) for f in self.files):
            self.close()
            raise AudioDecodeError("a chained Ogg file whose links differ in sample rate or channels")
        self.frames = sum(int(f.frames) for f in self.files)
        self.k = 0

    def read(self, frames: int, dtype: str, always_2d: bool) -> np.ndarray:
        while self.k < len(self.files):
            data = self.files[self.k].read(frames, dtype=dtype, always_2d=always_2d)
            if data.shape[0]:
                return data
            self.k += 1
        return np.zeros((0, self.channels), np.float32)

    def close(self) -> None:
        for f in self.files:
            f.close()

    def __enter__(self) -> _Chain:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _recovered(fh, path: Path):
    """A reader over audio the header hides, and the note that says so; (None, None) when nothing is hidden."""
    cont = wav_continuation(fh)
    if cont is not None:
        f = _ReadOnlySoundFile(
            Slice(fh, cont.data_offset, cont.data_bytes),
            samplerate=cont.sample_rate,
            channels=cont.channels,
            subtype=cont.subtype,
            endian=cont.endian,
            format="RAW",
        )
        rate = cont.sample_rate
        return f, (
            f"the WAV header claims {cont.claimed_frames / rate:.1f} s but the file holds {cont.frames / rate:.1f} s "
            "(a recording cut off before its header was written): all of it read"
        )
    links = ogg_links(fh)
    if len(links) > 1:
        return _Chain(fh, links), f"a chained Ogg file of {len(links)} links: every link read"
    return None, None


def _flac(fh, path: Path):
    """A FLAC file read to its end whatever STREAMINFO claims, and the claim (frames); (None, 0) otherwise."""
    view = flac_unbounded(fh)
    if view is None:
        return None, 0
    return _ReadOnlySoundFile(view[0]), view[1]


def _info_from(fh, path: Path) -> tuple[sf.SoundFile, AudioInfo]:
    wav_frames = _wav_claimed_frames(fh)  # before libsndfile reads through the same file object
    try:
        f, note = _recovered(fh, path)
        if f is not None:
            info = AudioInfo(path, int(f.samplerate), int(f.frames), int(f.channels), note)
            if not MIN_SAMPLE_RATE <= info.sample_rate <= MAX_SAMPLE_RATE:
                f.close()
                raise AudioDecodeError(f"{path.name}: header gives {info.sample_rate} Hz; not believed")
            return f, info
        f, flac_claim = _flac(fh, path)
        if f is not None:
            return f, AudioInfo(path, int(f.samplerate), flac_claim, int(f.channels))
        f = _ReadOnlySoundFile(fh)
    except (sf.LibsndfileError, RuntimeError, OSError, TypeError) as e:
        reason = getattr(e, "error_string", None) or str(e)  # libsndfile's words, without the file object's repr
        raise AudioDecodeError(f"{path.name}: cannot open as audio ({reason})") from e
    sr, channels = int(f.samplerate), int(f.channels)
    if not MIN_SAMPLE_RATE <= sr <= MAX_SAMPLE_RATE or channels <= 0:
        f.close()
        raise AudioDecodeError(
            f"{path.name}: header gives {sr} Hz and {channels} channels; not believed (rates from "
            f"{MIN_SAMPLE_RATE} to {MAX_SAMPLE_RATE} Hz are read)"
        )
    frames = max(0, int(f.frames), wav_frames or 0)
    return f, AudioInfo(path=path, sample_rate=sr, header_frames=frames, channels=channels)


def audio_info(path: str | Path) -> AudioInfo:
    """Read the header only. Raises AudioDecodeError if it cannot be read or is implausible."""
    path = Path(path)
    problem = entry_problem(path)
    if problem:
        raise AudioDecodeError(f"{path.name}: {problem}")
    with _open(path) as fh:
        f, info = _info_from(fh, path)
        f.close()
    return info


@dataclass(frozen=True)
class WindowSpec:
    """What one kind of model call needs: audio at ``sample_rate`` (resampled by ``resampler``), in windows of
    ``window_samples`` centred on each row, moved by ``offset_samples`` (a test-time shift)."""

    sample_rate: int
    window_samples: int
    resampler: str = "soxr_hq"
    offset_samples: int = 0

    @classmethod
    def of(cls, audio: AudioConfig, offset_s: float = 0.0) -> WindowSpec:
        return cls(audio.sample_rate, audio.chunk_samples, audio.resampler, round(offset_s * audio.sample_rate))


class _Stream:
    """One rate's resampled samples, kept from the earliest window still needed."""

    def __init__(self, sr_in: int, rate: int, resampler: str, row_s: float) -> None:
        quality = RESAMPLERS[resampler]
        self.resampler = (
            None if sr_in == rate else soxr.ResampleStream(sr_in, rate, 1, dtype="float32", quality=quality)
        )
        self.row_samples = round(row_s * rate)
        self.pieces: list[np.ndarray] = []
        self.base = 0  # absolute index of the first kept sample
        self.total = 0  # samples received so far

    def feed(self, mono: np.ndarray, last: bool) -> None:
        out = self.resampler.resample_chunk(mono, last=last) if self.resampler is not None else mono
        if out.size:
            self.pieces.append(np.nan_to_num(out, nan=0.0, posinf=0.0, neginf=0.0))
            self.total += out.size

    def start(self, row: int, window: int, offset: int = 0) -> int:
        """First sample of ``row``'s window: centred on the row (for a window of one row: the row itself), then
        moved by ``offset`` samples."""
        return row * self.row_samples + (self.row_samples - window) // 2 + offset

    def windows(self, first_row: int, n_rows: int, window: int, offset: int = 0) -> np.ndarray:
        """(n_rows, window) float32; samples before the file's start or past its end are zero."""
        buf = (
            np.concatenate(self.pieces)
            if len(self.pieces) > 1
            else (self.pieces[0] if self.pieces else np.zeros(0, np.float32))
        )
        self.pieces = [buf] if buf.size else []
        out = np.zeros((n_rows, window), dtype=np.float32)
        end_buf = self.base + buf.size
        for k in range(n_rows):
            s = self.start(first_row + k, window, offset)
            a, b = max(s, self.base), min(s + window, end_buf)
            if b > a:
                out[k, a - s : b - s] = buf[a - self.base : b - self.base]
        return out

    def trim(self, keep_from: int) -> None:
        """Forget samples before absolute index ``keep_from``."""
        if keep_from <= self.base or not self.pieces:
            return
        buf = self.pieces[0] if len(self.pieces) == 1 else np.concatenate(self.pieces)
        drop = min(keep_from - self.base, buf.size)
        self.pieces = [buf[drop:]] if buf.size > drop else []
        self.base += drop


class RowReader:
    """Decode a file once and yield its rows in blocks: ``(first_row, {spec: (k, window_samples) float32})``.

    One soxr stream per distinct (rate, resampler), one window per row and :class:`WindowSpec`, centred on
    the row and zero-padded at the file's edges; memory is bounded by the block and the longest window.
    After iteration: ``claimed`` (rows the header claims, capped), ``decoded`` (rows predicted from decoded
    audio: ``ceil(decoded seconds / row_s)``, at least 1) and ``error`` / ``note`` (see the module docstring).
    Mono mixdown is the mean over channels; non-finite samples become 0. Opening failures raise
    AudioDecodeError; a failure after audio has decoded ends the iteration and is kept in ``error``.
    """

    def __init__(self, path: str | Path, specs: list[WindowSpec], row_s: float, block_rows: int = 12) -> None:
        self.path = Path(path)
        self.specs = list(dict.fromkeys(specs))
        self.row_s = row_s
        self.block_rows = max(1, block_rows)
        self.claimed = 0
        self.decoded = 0
        self.error: str | None = None
        """Why the file has fewer predicted rows than it claims (the rest get fallback rows)."""
        self.note: str | None = None
        """A header that was not believed, though every row is predicted."""
        self.info: AudioInfo | None = None
        self.decoded_s = 0.0
        """Seconds of audio that decoded (known after iteration)."""

    @property
    def rows(self) -> int:
        """Rows this file gets: what decoded, or the claim when that is longer."""
        return max(self.claimed, self.decoded, 1)

    def __iter__(self) -> Iterator[tuple[int, dict[WindowSpec, np.ndarray]]]:
        problem = entry_problem(self.path)
        if problem:
            raise AudioDecodeError(f"{self.path.name}: {problem}")
        with _open(self.path) as fh:
            f, info = _info_from(fh, self.path)
            with f:
                self.info = info
                self.note = info.note
                self.claimed = claimed_chunks(info, self.row_s)
                yield from self._blocks(f, info)

    def _blocks(self, f: sf.SoundFile, info: AudioInfo) -> Iterator[tuple[int, dict[WindowSpec, np.ndarray]]]:
        sr_in = info.sample_rate
        streams = {
            (s.sample_rate, s.resampler): _Stream(sr_in, s.sample_rate, s.resampler, self.row_s) for s in self.specs
        }
        read_frames = max(1, min(round(READ_S * sr_in), MAX_READ_BYTES // (4 * info.channels)))
        limit_in = math.ceil(MAX_FILE_S * sr_in)
        row_in = self.row_s * sr_in
        next_row = 0
        read_in = 0
        last = False
        while not last:
            try:
                data = f.read(min(read_frames, limit_in - read_in), dtype="float32", always_2d=True)
            except (sf.LibsndfileError, RuntimeError, OSError, ValueError, MemoryError) as e:
                reason = getattr(e, "error_string", None) or str(e)
                if read_in == 0:
                    raise AudioDecodeError(f"{self.path.name}: cannot decode ({type(e).__name__}: {reason})") from e
                self.error = f"decoding stopped after {read_in / sr_in:.1f} s ({type(e).__name__}: {reason})"
                data = np.zeros((0, 1), np.float32)
            read_in += data.shape[0]
            self.decoded_s = read_in / sr_in
            last = data.shape[0] == 0 or read_in >= limit_in
            if last and read_in == 0 and (info.frames is None or info.frames > 0):
                raise AudioDecodeError(f"{self.path.name}: no audio decodes ({self.error or 'no data'})")
            mono = data.mean(axis=1, dtype=np.float32) if data.shape[1] > 1 else data[:, 0]
            for stream in streams.values():
                stream.feed(mono, last)
            if last:
                n_rows = max(1, math.ceil(read_in / row_in - 1e-9))
                ready = n_rows
            else:
                ready = min(self._ready(streams, s) for s in self.specs)
            while ready - next_row >= self.block_rows or (last and ready > next_row):
                k = min(self.block_rows, ready - next_row)
                block = {
                    s: streams[(s.sample_rate, s.resampler)].windows(next_row, k, s.window_samples, s.offset_samples)
                    for s in self.specs
                }
                yield next_row, block
                next_row += k
                self.decoded = next_row
                for key, stream in streams.items():
                    starts = [
                        stream.start(next_row, s.window_samples, s.offset_samples)
                        for s in self.specs
                        if (s.sample_rate, s.resampler) == key
                    ]
                    stream.trim(min(starts))
        if self.error is None and read_in >= limit_in:
            self.error = f"the file continues past the {MAX_FILE_S / 3600:g}-hour cap: the rest is not read"
        if self.error is None and info.frames is None and info.header_frames < 2**62 and info.note is None:
            self.note = (
                f"the header claims {info.header_frames / sr_in:.0f} s, beyond the {MAX_FILE_S / 3600:g}-hour "
                f"cap: not believed; {read_in / sr_in:.1f} s decoded and predicted"
            )
        if self.note is None and info.frames is not None and read_in > info.frames + sr_in:
            self.note = (
                f"the header claims {info.frames / sr_in:.1f} s but the file holds {read_in / sr_in:.1f} s: "
                "all of it read"
            )
        if self.error is None and info.frames is not None and self.decoded < self.claimed:
            self.error = f"the header claims {info.frames / sr_in:.1f} s but only {read_in / sr_in:.1f} s decodes"

    @staticmethod
    def _ready(streams: dict[tuple[int, str], _Stream], spec: WindowSpec) -> int:
        """Rows whose ``spec`` window lies wholly within the samples received so far."""
        stream = streams[(spec.sample_rate, spec.resampler)]
        r, w = stream.row_samples, spec.window_samples
        # row i is ready when start(i) + w <= total, start(i) = i * r + (r - w) // 2 + offset
        return max(0, (stream.total - w - (r - w) // 2 - spec.offset_samples) // r + 1)


class ChunkReader:
    """One window spec's blocks of chunks, (k, chunk_samples) float32: rows of ``audio.clip_s`` (see
    :class:`RowReader`). For training, the exporter's check audio and one-member tools."""

    def __init__(self, path: str | Path, audio: AudioConfig, block_chunks: int = 12) -> None:
        self.spec = WindowSpec.of(audio)
        self._reader = RowReader(path, [self.spec], audio.clip_s, block_chunks)

    def __getattr__(self, name: str):
        return getattr(self._reader, name)

    def __iter__(self) -> Iterator[np.ndarray]:
        for _, block in self._reader:
            yield block[self.spec]


def iter_chunk_blocks(path: str | Path, audio: AudioConfig, block_chunks: int = 12) -> Iterator[np.ndarray]:
    """The decodable chunks of a file in blocks (see :class:`ChunkReader`). Raises AudioDecodeError."""
    return iter(ChunkReader(path, audio, block_chunks))


def read_chunks(path: str | Path, audio: AudioConfig) -> np.ndarray:
    """All decodable chunks of a file at once, (n_chunks, chunk_samples) float32. For short files and tests."""
    return np.concatenate(list(iter_chunk_blocks(path, audio)), axis=0)
