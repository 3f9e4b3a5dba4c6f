"""BirdNET V2.4's classifier on ONNX Runtime or OpenVINO: the numpy front (:mod:`bird_infer.runtime.birdnet_front`)
and the converted body (:mod:`bird_infer.contract.birdnet_onnx`), one single-thread process per core.

:class:`OnnxSegmentClassifier` has the same ``logits(segments)`` as the TFLite
:class:`~bird_infer.runtime.birdnet_analyzer.SegmentClassifier`. The body is called on up to :data:`BODY_BATCH`
segments at a time: ONNX Runtime's results do not depend on the batch (tested), and 8 segments cost 18 ms each
against 23.5 ms one by one. :func:`choose_engine` times both engines on the same segments, after checking that
OpenVINO's logits are within :data:`~bird_infer.contract.birdnet_onnx.LOGIT_TOLERANCE` of ONNX Runtime's.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from bird_infer.contract.birdnet_onnx import BODY_FILE, FRONT_FILE, LOGIT_TOLERANCE, cache_folder, read_record
from bird_infer.contract.errors import BirdnetConversionError, ChecksumMismatchError
from bird_infer.contract.extras import have, import_extra
from bird_infer.contract.files import sha256_file
from bird_infer.runtime.birdnet_front import FrontSpec, load_front, spectrograms
from bird_infer.runtime.sessions import checked_bytes, make_session, openvino_config

log = logging.getLogger(__name__)

ONNX_ENGINES = ("onnxruntime", "openvino")
BODY_BATCH = 8
"""Segments per call of the body."""


def load_converted(folder: Path) -> tuple[bytes, FrontSpec]:
    """The body's bytes and the front, both checked against the folder's record."""
    folder = Path(folder)
    record = read_record(folder)
    try:
        body = checked_bytes(folder / BODY_FILE, record.body_sha256, "BirdNET's ONNX body")
        digest = sha256_file(folder / FRONT_FILE)
    except FileNotFoundError as e:
        missing = Path(e.filename).name
        raise BirdnetConversionError(f"{folder}: {missing} is missing: run bird-infer birdnet-onnx") from None
    if digest != record.front_sha256:
        raise ChecksumMismatchError(f"{folder / FRONT_FILE}: sha256 {digest} is not the one its record names")
    return body, load_front(folder / FRONT_FILE)


class OnnxSegmentClassifier:
    """3-s segments at 48 kHz -> (n, 6522) logits: the numpy front, then the ONNX body."""

    def __init__(self, folder: Path | str, threads: int = 1, engine: str = "onnxruntime") -> None:
        folder = Path(folder)
        body, self.front = load_converted(folder)
        self.names = [f.cast for f in self.front.fronts]
        if engine == "onnxruntime":
            session = make_session(body, threads)
            self._body = lambda feeds: session.run(None, feeds)[0]
        elif engine == "openvino":
            ov = import_extra("openvino", "BirdNET on OpenVINO")
            core = ov.Core()
            model = core.read_model(folder / BODY_FILE)
            compiled = core.compile_model(model, "CPU", openvino_config(threads))
            self._body = lambda feeds: compiled([feeds[n] for n in self.names])[0]
        else:
            raise ValueError(f"unknown engine {engine!r}: one of {', '.join(ONNX_ENGINES)}")
        self.engine = engine

    def logits(self, segments: Sequence[np.ndarray] | np.ndarray) -> np.ndarray:
        data = np.asarray(segments, dtype=np.float32)
        if data.ndim == 1:
            data = data[None]
        out = []
        for i in range(0, data.shape[0], BODY_BATCH):
            feeds = spectrograms(data[i : i + BODY_BATCH], self.front)
            out.append(np.asarray(self._body(feeds), dtype=np.float32))
        return np.concatenate(out) if out else np.zeros((0, 0), np.float32)


def trial_segments(n: int = BODY_BATCH, seed: int = 0) -> np.ndarray:
    """``n`` 3-s segments of tones and noise, for timing and agreement (not for accuracy)."""
    rng = np.random.default_rng(seed)
    t = np.arange(144_000, dtype=np.float64) / 48_000
    tones = np.sin(2 * np.pi * (2000 + 3000 * rng.random((n, 1))) * t * (1 + 0.2 * t))
    return (0.3 * tones + 0.05 * rng.standard_normal((n, t.size))).astype(np.float32)


TRIAL_SEGMENTS = BODY_BATCH
"""Segments each engine is timed on (after one untimed call): one batch, as analyze calls the body."""


MARGIN = 0.1
"""OpenVINO is chosen only when at least this much faster: ONNX Runtime's tables are the ones tested against
BirdNET-Analyzer's, and a close call decided by noise would change a run's last digits from run to run."""


def choose_engine(folder: Path, repeats: int = 2) -> str:
    """The faster of ONNX Runtime and OpenVINO for this body on this CPU, one thread each (the best of
    ``repeats`` timings); OpenVINO only where it is installed and its logits agree with ONNX Runtime's within the
    tolerance."""
    if not have("openvino"):
        return "onnxruntime"
    x = trial_segments(TRIAL_SEGMENTS)
    times: dict[str, float] = {}
    results: dict[str, np.ndarray] = {}
    for engine in ONNX_ENGINES:
        classifier = OnnxSegmentClassifier(folder, 1, engine)
        results[engine] = classifier.logits(x)
        best = float("inf")
        for _ in range(repeats):
            t0 = time.perf_counter()
            classifier.logits(x)
            best = min(best, time.perf_counter() - t0)
        times[engine] = best
    diff = float(np.abs(results["openvino"] - results["onnxruntime"]).max())
    if diff > LOGIT_TOLERANCE:
        log.info("OpenVINO's BirdNET logits differ by %.2g from ONNX Runtime's: not used", diff)
        return "onnxruntime"
    chosen = "openvino" if times["openvino"] < (1 - MARGIN) * times["onnxruntime"] else "onnxruntime"
    log.info(
        "BirdNET engine: %s (%s)",
        chosen,
        ", ".join(f"{e} {1e3 * t / len(x):.1f} ms/segment" for e, t in times.items()),
    )
    return chosen


def choose_engine_apart(folder: Path) -> str:
    """:func:`choose_engine` in a process of its own: OpenVINO's thread pool stays alive in a process that loaded
    it, and in the parent of single-thread workers it took their cores (measured: 7.9 s instead of 4.1 s for a
    10-s file on 2 cores)."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
        return pool.submit(choose_engine, Path(folder)).result()


def engine_key(folder: Path) -> str:
    """What the engine choice depends on: the body, this CPU, the engines' versions."""
    from importlib.metadata import PackageNotFoundError, version

    from bird_infer.runtime.machine import cpu_info

    def installed(name: str) -> str:
        try:
            return version(name)
        except PackageNotFoundError:
            return "-"

    cpu = cpu_info()
    parts = {
        "body": read_record(folder).body_sha256,
        "cpu": cpu.model,
        "flags": list(cpu.flags),
        "cores": cpu.usable_cores,
        "onnxruntime": installed("onnxruntime"),
        "openvino": installed("openvino"),
    }
    return json.dumps(parts, sort_keys=True)


def cached_engine(folder: Path) -> str:
    """:func:`choose_engine_apart`, remembered for this machine (the body, the CPU and the engines' versions, in
    ``engine_choices.json`` of :func:`~bird_infer.contract.birdnet_onnx.cache_folder`): the trial, about 2.5 s,
    runs once per machine. A cache that cannot be read or written is passed over."""
    key = engine_key(folder)
    path = cache_folder() / "engine_choices.json"
    try:
        known = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        known = {}
    if isinstance(known, dict) and known.get(key) in ONNX_ENGINES:
        log.info("BirdNET engine: %s (timed on this machine before)", known[key])
        return known[key]
    chosen = choose_engine_apart(folder)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fresh = {**(known if isinstance(known, dict) else {}), key: chosen}
        tmp = path.with_name(f".{path.name}.{os.getpid()}")
        tmp.write_text(json.dumps(fresh, indent=1), encoding="utf-8")
        os.replace(tmp, path)
    except OSError:
        pass
    return chosen
