"""Audio that a header hides: read anyway, and said so.

- **A WAV whose header claims less than the file holds.** A recorder that loses power leaves a RIFF header
  whose ``data`` size was never updated (0, or the size at its last flush) over a file that holds the whole
  recording. libsndfile reads what the header claims. When the bytes after the claimed data are not a RIFF chunk
  (an ID of printable characters and a size that fits), they are the recording's continuation: the data is read
  to the end of the file, as raw samples in the header's format (PCM 8/16/24/32-bit, float 32/64).
- **A chained Ogg file** (``cat a.ogg b.ogg``: several logical streams one after another). libsndfile stops at the
  end of the first; each link is read in turn (they must share rate and channels).

Each is a *note* in the report (``header_ignored``): every second present is predicted.
"""

from __future__ import annotations

import io
import itertools
import os
import struct
from dataclasses import dataclass

WAV_SUBTYPES = {
    (1, 8): "PCM_U8",
    (1, 16): "PCM_16",
    (1, 24): "PCM_24",
    (1, 32): "PCM_32",
    (3, 32): "FLOAT",
    (3, 64): "DOUBLE",
}
WAVE_FORMAT_EXTENSIBLE = 0xFFFE


class _View(io.RawIOBase):
    """A read-only, seekable view of ``length`` bytes of a binary file (subclasses read them)."""

    def __init__(self, fh, length: int) -> None:
        super().__init__()
        self.fh, self.length, self.pos = fh, length, 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self.pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self.pos, io.SEEK_END: self.length}[whence]
        self.pos = max(0, min(self.length, base + offset))
        return self.pos


class Slice(_View):
    """A read-only window ``[start, start + length)`` of a binary file, seen as a file of its own."""

    def __init__(self, fh, start: int, length: int) -> None:
        super().__init__(fh, length)
        self.start = start

    def readinto(self, buffer) -> int:
        n = min(len(buffer), self.length - self.pos)
        if n <= 0:
            return 0
        self.fh.seek(self.start + self.pos)
        data = self.fh.read(n)
        buffer[: len(data)] = data
        self.pos += len(data)
        return len(data)


@dataclass(frozen=True)
class WavContinuation:
    """Where a WAV's samples really are, when the header claims fewer."""

    data_offset: int
    data_bytes: int
    claimed_frames: int
    frames: int
    channels: int
    sample_rate: int
    subtype: str
    endian: str


@dataclass(frozen=True)
class WavHeader:
    """What a RIFF/WAVE header says: its ``fmt`` chunk (None when absent) and where its ``data`` chunk starts."""

    endian: str
    fmt: tuple[int, int, int, int, int] | None
    """(format tag, channels, rate, block align, bits per sample); the tag of WAVE_FORMAT_EXTENSIBLE resolved."""
    data_offset: int
    data_size: int


def wav_header(fh) -> WavHeader | None:
    """The header of a RIFF/WAVE file up to its ``data`` chunk (the file object left at 0); None for other files."""
    head = fh.read(1 << 16)
    fh.seek(0)
    if len(head) < 12 or head[:4] not in (b"RIFF", b"RIFX") or head[8:12] != b"WAVE":
        return None
    e = "<" if head[:4] == b"RIFF" else ">"
    pos, fmt = 12, None
    while pos + 8 <= len(head):
        cid, size = head[pos : pos + 4], struct.unpack(e + "I", head[pos + 4 : pos + 8])[0]
        if cid == b"fmt " and pos + 24 <= len(head):
            tag, channels, rate = struct.unpack(e + "HHI", head[pos + 8 : pos + 16])
            align, bits = struct.unpack(e + "HH", head[pos + 20 : pos + 24])
            if tag == WAVE_FORMAT_EXTENSIBLE and size >= 40 and pos + 34 <= len(head):
                tag = struct.unpack(e + "H", head[pos + 32 : pos + 34])[0]
            fmt = (tag, channels, rate, align, bits)
        if cid == b"data":
            return WavHeader(e, fmt, pos + 8, size)
        pos += 8 + size + (size & 1)
    return None


def wav_continuation(fh) -> WavContinuation | None:
    """The WAV's samples as the file holds them, when its header claims fewer and what follows the claim is not
    another chunk; None otherwise (not a WAV, a format read as raw samples cannot be, or nothing hidden)."""
    h = wav_header(fh)
    return None if h is None else _continuation(fh, h.fmt, h.data_offset, h.data_size, h.endian)


def _continuation(fh, fmt, offset: int, claimed: int, e: str) -> WavContinuation | None:
    if fmt is None or claimed == 0xFFFFFFFF:
        return None
    tag, channels, rate, align, bits = fmt
    subtype = WAV_SUBTYPES.get((tag, bits))
    if subtype is None or channels <= 0 or align != channels * bits // 8 or align <= 0:
        return None
    present = os.fstat(fh.fileno()).st_size - offset
    if present < claimed + align + (claimed & 1):
        return None
    after = offset + claimed + (claimed & 1)
    fh.seek(after)
    nxt = fh.read(8)
    fh.seek(0)
    if len(nxt) == 8 and all(32 <= c < 127 for c in nxt[:4]):
        size = struct.unpack(e + "I", nxt[4:])[0]
        if after + 8 + size <= offset + present:  # a real chunk after the data (LIST, id3...): nothing hidden
            return None
    frames = present // align
    endian = "LITTLE" if e == "<" else "BIG"
    return WavContinuation(offset, frames * align, claimed // align, frames, channels, rate, subtype, endian)


def ogg_links(fh) -> list[tuple[int, int]]:
    """(start, length) of each link of an Ogg file: a link starts at a "beginning of stream" page that follows a
    page that is not one (streams multiplexed in one link begin with BOS pages back to back). One entry for an
    ordinary file; none for a file that is not Ogg. Stops at the first bytes that are not an Ogg page."""
    if fh.read(4) != b"OggS":
        fh.seek(0)
        return []
    size = os.fstat(fh.fileno()).st_size
    starts: list[int] = []
    pos, prev_bos = 0, False
    while pos + 27 <= size:
        fh.seek(pos)
        page = fh.read(27)
        if len(page) < 27 or page[:4] != b"OggS":
            break
        n_segments = page[26]
        lacing = fh.read(n_segments)
        bos = bool(page[5] & 0x02)
        if bos and not prev_bos:
            starts.append(pos)
        prev_bos = bos
        pos += 27 + n_segments + sum(lacing)
    fh.seek(0)
    bounds = [*starts, min(pos, size)]
    return [(a, b - a) for a, b in itertools.pairwise(bounds)]


class Patched(_View):
    """A read-only view of a whole binary file with some bytes replaced (``patches``: offset -> bytes)."""

    def __init__(self, fh, patches: dict[int, bytes]) -> None:
        super().__init__(fh, os.fstat(fh.fileno()).st_size)
        self.patches = patches

    def readinto(self, buffer) -> int:
        self.fh.seek(self.pos)
        data = bytearray(self.fh.read(len(buffer)))
        for at, new in self.patches.items():
            lo, hi = max(at, self.pos), min(at + len(new), self.pos + len(data))
            if lo < hi:
                data[lo - self.pos : hi - self.pos] = new[lo - at : hi - at]
        buffer[: len(data)] = data
        self.pos += len(data)
        return len(data)


def flac_unbounded(fh) -> tuple[Patched, int] | None:
    """A FLAC file seen with its STREAMINFO total-samples field set to 0 ("unknown": libsndfile then decodes to
    the end instead of stopping at the claim), and the frames it claimed; None for other files or no claim."""
    head = fh.read(42)
    fh.seek(0)
    if len(head) < 42 or head[:4] != b"fLaC" or head[4] & 0x7F != 0:  # the first block must be STREAMINFO
        return None
    si = 8
    claimed = ((head[si + 13] & 0x0F) << 32) | int.from_bytes(head[si + 14 : si + 18], "big")
    if claimed == 0:
        return None
    return Patched(fh, {si + 13: bytes([head[si + 13] & 0xF0, 0, 0, 0, 0])}), claimed
