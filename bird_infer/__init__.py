"""bird_infer: run BirdCLEF-style SED fold models on CPU, offline, exactly as they were trained.

Public API::

    from bird_infer import load_manifest, run_predict, LogMelFrontend, FoldEnsemble
"""

from bird_infer.ensemble import BundleModel, FoldEnsemble, SessionSettings
from bird_infer.errors import BirdInferError, ManifestError
from bird_infer.frontend import LogMelFrontend
from bird_infer.job import run_predict
from bird_infer.manifest import Manifest, load_manifest
from bird_infer.pipeline import RunOptions
from bird_infer.scheduler import predict_files

__version__ = "0.1.0"

__all__ = [
    "BirdInferError",
    "BundleModel",
    "FoldEnsemble",
    "LogMelFrontend",
    "Manifest",
    "ManifestError",
    "RunOptions",
    "SessionSettings",
    "load_manifest",
    "predict_files",
    "run_predict",
]
