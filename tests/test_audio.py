"""Reading: chunk counts from duration, mono mixdown, resampling that keeps pitch, bounded blocks."""

from __future__ import annotations

import numpy as np
import pytest
import soundfile as sf

from bird_infer.audio.decode import iter_chunk_blocks, n_chunks_for, read_chunks
from bird_infer.audio.files import find_audio_files
from bird_infer.contract.schema import AudioConfig

AUDIO = AudioConfig(sample_rate=32000, clip_s=5.0)


@pytest.mark.parametrize(
    ("frames", "sr", "rows"),
    [
        (0, 32000, 1),
        (1, 32000, 1),
        (160000, 32000, 1),
        (160001, 32000, 2),
        (220000, 22000, 2),
        (19_200_000, 32000, 120),
    ],
)
def test_rows_are_ceil_of_duration(frames: int, sr: int, rows: int) -> None:
    assert n_chunks_for(frames, sr, 5.0) == rows


def test_resampling_keeps_the_tone_and_pads_the_last_chunk(tmp_path) -> None:
    sr = 44100
    t = np.arange(int(sr * 7.0)) / sr
    stereo = np.stack([np.sin(2 * np.pi * 1000 * t), np.sin(2 * np.pi * 1000 * t)], axis=1) * 0.5
    sf.write(tmp_path / "a.wav", stereo, sr, subtype="PCM_24")
    chunks = read_chunks(tmp_path / "a.wav", AUDIO)
    assert chunks.shape == (2, 160000) and chunks.dtype == np.float32
    spectrum = np.abs(np.fft.rfft(chunks[0]))
    assert abs(np.argmax(spectrum) * 32000 / 160000 - 1000) < 1  # still 1 kHz at 32 kHz
    assert np.all(chunks[1, int(2.05 * 32000) :] == 0)  # 7 s: the second chunk is padded after 2 s


def test_blocks_are_bounded_and_complete(tmp_path) -> None:
    x = np.random.default_rng(0).standard_normal(32000 * 61).astype(np.float32) * 0.1
    sf.write(tmp_path / "b.flac", x, 32000)
    blocks = list(iter_chunk_blocks(tmp_path / "b.flac", AUDIO, block_chunks=4))
    assert [len(b) for b in blocks] == [4, 4, 4, 1]
    np.testing.assert_allclose(np.concatenate(blocks).ravel()[: x.size], x, atol=1e-4)


def test_find_audio_files_is_sorted_and_filtered(tmp_path) -> None:
    for name in ("b.ogg", "a.wav", "notes.txt", "sub/c.flac"):
        (tmp_path / name).parent.mkdir(exist_ok=True)
        (tmp_path / name).write_bytes(b"")
    assert [p.name for p in find_audio_files(tmp_path)] == ["a.wav", "b.ogg", "c.flac"]
