"""Which precision the folds run in: the accuracy guard, and ``--precision auto``.

The guard compares, on a block of real audio (the first :data:`GUARD_CHUNKS` rows of the first readable file),
the whole bundle's probabilities in a mode with ONNX Runtime fp32's, the reference: a mode runs only if every
member's outputs stay within the bound of the reference's (max |p - p_fp32|, before the blend). Whatever is
refused, the run goes on in ONNX Runtime fp32.

- An explicit mode (``--backend openvino --precision bf16|int8``, or OpenVINO fp32) is guarded alone.
- ``auto`` (the Kaggle kernel's default) first **ranks** the modes this machine offers (OpenVINO fp32 where
  OpenVINO is installed, OpenVINO bf16 where the CPU has bf16 too, AVX512-BF16 or AMX, OpenVINO int8 where every
  fold has an int8 model, always ONNX Runtime fp32) by timing each on the block with **one fold per member**
  (the folds of a member share their architecture, so they rank alike), then guards the fastest on the whole
  bundle; if it is refused, the next fastest, and so on to the reference, which needs no guard. With one
  candidate (no OpenVINO) nothing is tried: no audio is read for it.

The ranking is start-up the run pays before its first chunk; the guard is not: :func:`start_precision` returns
the fastest mode at once and guards it in a thread while the workers start in that mode
(:func:`bird_infer.run.plan.iter_outcomes` holds their outcomes until the verdict, and reruns every file in the
mode chosen instead if it is refused). Every decision is logged with its measurements.
``BIRD_INFER_CPU_FLAGS`` (see :mod:`bird_infer.runtime.machine`) stands in for the CPU's flags, to rehearse a machine
without bf16.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from bird_infer.audio.decode import RowReader, WindowSpec
from bird_infer.contract.bundle import Manifest
from bird_infer.contract.errors import AudioDecodeError, PrecisionRefusedError
from bird_infer.contract.extras import have
from bird_infer.contract.text import describe_exception
from bird_infer.runtime.ensemble import BundleModel, window_specs
from bird_infer.runtime.machine import CpuInfo, cpu_info
from bird_infer.runtime.sessions import SessionSettings

log = logging.getLogger(__name__)

PRECISION_BOUND = 0.02
"""The accuracy guard's default: the largest accepted |p - p_fp32| on the check chunks."""

GUARD_CHUNKS = 8
"""Rows of real audio the guard compares on (and ``auto`` times on)."""
RANK_CHUNKS = 4
"""Rows of the block ``auto`` times each mode on (after one warm-up row): start-up the run pays before its first
chunk, so no more than it takes to tell the modes apart (they differ by 10 % or more where the choice matters)."""
GUARD_WAIT_S = 30.0
"""The longest the guard waits for the workers' start-up before it runs (see :func:`start_precision`'s ``after``)."""
REFERENCE = ("onnxruntime", "fp32")


@dataclass(frozen=True)
class Trial:
    """One mode run on the guard's block."""

    backend: str
    precision: str
    max_delta: float | None
    """max |p - p_fp32| over the block, the whole bundle; None when the mode was not guarded (or cannot run)."""
    ms_per_chunk: float | None
    """The ranking's time per chunk (one fold per member for ``auto``, else the whole bundle; one thread), after
    one warm-up pass; None when the mode cannot run here."""
    refused: str | None = None
    """Why the guard refused it (too far from fp32, or not supported here)."""

    @property
    def name(self) -> str:
        return f"{self.backend} {self.precision}"

    def describe(self) -> str:
        if self.ms_per_chunk is None:
            return f"{self.name}: {self.refused}"
        text = f"{self.name}: {self.ms_per_chunk:.1f} ms per chunk"
        if self.max_delta is not None:
            text += f", max |p - p_fp32| = {self.max_delta:.4f}"
        return text + (f" (refused: {self.refused})" if self.refused else "")


def auto_candidates(manifest: Manifest, cpu: CpuInfo, have_openvino: bool) -> list[tuple[str, str]]:
    """The modes ``auto`` tries on this machine, the fp32 reference first."""
    modes = [REFERENCE]
    if have_openvino:
        modes.append(("openvino", "fp32"))
    if have_openvino and cpu.has_bf16:
        modes.append(("openvino", "bf16"))
    onnx_folds = [f for m in manifest.members if m.birdnet is None for f in m.folds]
    if have_openvino and onnx_folds and all(f.int8 is not None for f in onnx_folds):
        modes.append(("openvino", "int8"))
    return modes


def guard_block(manifest: Manifest, paths: list[Path]) -> tuple[dict[WindowSpec, np.ndarray], Path] | None:
    """The first :data:`GUARD_CHUNKS` rows of the first readable file, or None."""
    specs = list(dict.fromkeys(s for specs in window_specs(manifest) for s in specs))
    for p in paths:
        try:
            _first, windows = next(iter(RowReader(p, specs, manifest.row_s, GUARD_CHUNKS)))
        except (AudioDecodeError, StopIteration):
            continue
        return windows, p
    return None


def lead_folds(manifest: Manifest) -> Manifest:
    """The bundle with each member's first fold only: what ``auto`` ranks the modes on."""
    members = tuple(dataclasses.replace(m, folds=m.folds[:1]) for m in manifest.members)
    return dataclasses.replace(manifest, members=members)


def run_block(manifest: Manifest, settings: SessionSettings, windows: dict[WindowSpec, np.ndarray]) -> tuple:
    """Build the bundle in ``settings``, then :func:`time_block`. Raises PrecisionRefusedError when the mode cannot
    run here."""
    return time_block(BundleModel(manifest, settings), windows)


def time_block(bundle: BundleModel, windows: dict[WindowSpec, np.ndarray]) -> tuple[np.ndarray, float]:
    """Warm ``bundle`` up on one row, then run the block once: (every probability, ms per chunk). One timed pass,
    not two: it is start-up the run pays."""
    bundle.predict_windows({spec: w[:1] for spec, w in windows.items()})
    t0 = time.perf_counter()
    probs = bundle.predict_windows(windows).flat()
    n = next(iter(windows.values())).shape[0]
    return probs, (time.perf_counter() - t0) * 1000 / n


def rank_modes(
    manifest: Manifest, st: SessionSettings, windows: dict[WindowSpec, np.ndarray], modes: list[tuple[str, str]]
) -> list[Trial]:
    """Each mode timed on the block's first :data:`RANK_CHUNKS` rows with one fold per member (:func:`lead_folds`),
    in ``modes``' order; a mode this machine cannot run gets no time and says why. The modes' sessions are built
    side by side (OpenVINO's compilation and ONNX Runtime's optimisation release the GIL), then timed one after
    another, alone."""
    lead = lead_folds(manifest)
    rows = {spec: w[:RANK_CHUNKS] for spec, w in windows.items()}

    def build(mode: tuple[str, str]) -> BundleModel | PrecisionRefusedError:
        try:
            return BundleModel(lead, dataclasses.replace(st, backend=mode[0], precision=mode[1]))
        except PrecisionRefusedError as e:
            return e

    with ThreadPoolExecutor(max_workers=len(modes), thread_name_prefix="rank") as builders:
        bundles = list(builders.map(build, modes))
    trials = []
    for (backend, precision), bundle in zip(modes, bundles, strict=True):
        if isinstance(bundle, PrecisionRefusedError):
            trials.append(Trial(backend, precision, None, None, str(bundle)))
        else:
            trials.append(Trial(backend, precision, None, time_block(bundle, rows)[1]))
    return trials


def guard(
    manifest: Manifest,
    settings: SessionSettings,
    windows: dict[WindowSpec, np.ndarray],
    reference: np.ndarray,
    bound: float,
    ms_per_chunk: float | None = None,
) -> Trial:
    """The accuracy guard on one mode: the whole bundle's probabilities on the block against ``reference``'s
    (ONNX Runtime fp32's); refused beyond ``bound``, or when the mode cannot run here."""
    try:
        probs, ms = run_block(manifest, settings, windows)
    except PrecisionRefusedError as e:
        return Trial(settings.backend, settings.precision, None, ms_per_chunk, str(e))
    delta = float(np.nanmax(np.abs(probs - reference))) if probs.size else 0.0
    refused = f"exceeds the bound {bound:g}" if delta > bound else None
    return Trial(settings.backend, settings.precision, delta, ms_per_chunk or ms, refused)


Verdict = tuple[SessionSettings, str, list[Trial]]
"""The settings to run with, a line saying what runs and why, and every trial measured."""


class PrecisionChoice:
    """The mode a run starts in (:attr:`start`), and the guard's verdict on it (:meth:`wait`), computed in a thread
    of its own when ``verdict`` is given, else known at once. One object per run; nothing global."""

    def __init__(
        self,
        start: SessionSettings,
        note: str,
        verdict: Callable[[], Verdict] | None = None,
        trials: list[Trial] | None = None,
        after: Callable[[], bool] | None = None,
    ) -> None:
        self.start = start
        self._note = note
        self._result: Verdict | None = None if verdict is not None else (start, note, trials or [])
        self._done = threading.Event()
        self._go = threading.Event()
        if verdict is None:
            self._done.set()
            return

        def run() -> None:
            try:
                t_end = time.monotonic() + GUARD_WAIT_S
                while after is not None and not after() and time.monotonic() < t_end and not self._go.is_set():
                    time.sleep(0.05)
                self._result = verdict()
            except Exception as e:  # a guard that fails is a refusal: the run goes on in the reference mode
                note = f"onnxruntime fp32 (the accuracy guard failed: {describe_exception(e)})"
                log.warning("precision: %s", note)
                self._result = (dataclasses.replace(start, backend=REFERENCE[0], precision=REFERENCE[1]), note, [])
            finally:
                self._done.set()

        threading.Thread(target=run, name="accuracy-guard", daemon=True).start()

    def done(self) -> bool:
        return self._done.is_set()

    def wait(self) -> Verdict:
        """The verdict (waits for the guard, which starts now if it was waiting for the workers)."""
        self._go.set()
        self._done.wait()
        assert self._result is not None
        return self._result

    @property
    def note(self) -> str:
        """What runs and why: the verdict's line once known, else the mode started in, pending."""
        return self._result[1] if self._result is not None else self._note


def start_precision(
    manifest: Manifest,
    st: SessionSettings,
    paths: list[Path],
    bound: float = PRECISION_BOUND,
    cpu: CpuInfo | None = None,
    after: Callable[[], bool] | None = None,
) -> PrecisionChoice:
    """The mode to start the workers in, and the accuracy guard on it running beside them (see the module's text).
    ``bound``: the largest accepted |p - p_fp32|. ``after``: the guard starts once it returns True (the workers
    have built their sessions: on a machine with as many workers as cores, a guard beside their start-up would
    delay their first chunk by its own work), or after :data:`GUARD_WAIT_S`."""
    asked = (st.backend, st.precision)
    if asked == REFERENCE:
        return PrecisionChoice(st, "onnxruntime fp32")

    def with_mode(backend: str, precision: str) -> SessionSettings:
        return dataclasses.replace(st, backend=backend, precision=precision)

    fallback = with_mode(*REFERENCE)
    auto = st.precision == "auto"
    if auto:
        modes = auto_candidates(manifest, cpu or cpu_info(), have("openvino"))
        if len(modes) == 1:  # nothing to choose between: no trial, no audio read, no session built
            log.info("precision: onnxruntime fp32 (auto: the only mode this machine offers)")
            return PrecisionChoice(fallback, "onnxruntime fp32 (auto: the only mode here)")
    block = guard_block(manifest, paths)
    if block is None:
        return PrecisionChoice(
            fallback, f"onnxruntime fp32 ({st.backend} {st.precision} not checked: no readable audio)"
        )
    windows, path = block
    n = next(iter(windows.values())).shape[0]
    # an explicit mode is "ranked" alone: a mode this machine cannot run is refused before any worker starts in it
    ranked = rank_modes(manifest, st, windows, modes if auto else [asked])
    order = sorted((t for t in ranked if t.ms_per_chunk is not None), key=lambda t: t.ms_per_chunk or 0.0)
    if not order:
        note = f"onnxruntime fp32 ({ranked[0].describe()})"
        log.warning("accuracy guard: %s", note)
        return PrecisionChoice(fallback, note, trials=ranked)
    first = order[0]
    if (first.backend, first.precision) == REFERENCE:  # the reference is fastest: nothing to guard
        trials = [dataclasses.replace(t, max_delta=0.0) if t is first else t for t in ranked]
        measured = "; ".join(t.describe() for t in trials)
        note = f"onnxruntime fp32 (auto: the fastest on {path.name}, one fold per member: {measured})"
        log.info("precision: %s", note)
        return PrecisionChoice(fallback, note, trials=trials)

    def verdict() -> Verdict:
        reference, _ = run_block(manifest, fallback, windows)
        results = {t.name: t for t in ranked}
        chosen = None
        for t in order:
            if (t.backend, t.precision) == REFERENCE:
                chosen = results[t.name] = dataclasses.replace(t, max_delta=0.0)
                break
            results[t.name] = trial = guard(
                manifest, with_mode(t.backend, t.precision), windows, reference, bound, t.ms_per_chunk
            )
            if trial.refused is None:
                chosen = trial
                break
        trials = list(results.values())
        measured = "; ".join(t.describe() for t in trials)
        if auto:
            assert chosen is not None  # the reference is always ranked, and always accepted
            note = f"{chosen.name} (auto: the fastest the guard accepts on {n} chunks of {path.name}: {measured})"
        elif chosen is None:
            note = f"onnxruntime fp32 ({trials[-1].name} refused on {n} chunks of {path.name}: {trials[-1].describe()})"
            log.warning("accuracy guard: %s", note)
            return fallback, note, trials
        else:
            note = f"{chosen.name} (accuracy guard on {n} chunks of {path.name}: {measured})"
        log.info("precision: %s", note)
        return with_mode(chosen.backend, chosen.precision), note, trials

    pending = f"{first.name} (accuracy guard pending)"
    return PrecisionChoice(with_mode(first.backend, first.precision), pending, verdict, after=after)


def choose_precision(
    manifest: Manifest,
    st: SessionSettings,
    paths: list[Path],
    bound: float = PRECISION_BOUND,
    cpu: CpuInfo | None = None,
) -> Verdict:
    """:func:`start_precision`, waiting for the verdict: the session settings to run with (``st`` in the mode
    chosen), a line saying what runs and why, and every trial measured."""
    return start_precision(manifest, st, paths, bound, cpu).wait()
