"""bird_infer: run BirdCLEF-style SED fold models on CPU, offline, exactly as they were trained.

Public API::

    from bird_infer import load_manifest, run_predict, LogMelFrontend, FoldEnsemble

The package is a house of floors, each importing only the floors below it (``import-linter`` contracts in
pyproject.toml): :mod:`~bird_infer.contract` -> :mod:`~bird_infer.audio` -> :mod:`~bird_infer.runtime` ->
:mod:`~bird_infer.run` -> :mod:`~bird_infer.outputs` -> :mod:`~bird_infer.jobs`, :mod:`~bird_infer.tools`,
:mod:`~bird_infer.kaggle` -> :mod:`~bird_infer.cli`. Beside them, never imported by inference:
:mod:`~bird_infer.nn`, :mod:`~bird_infer.train` and :mod:`~bird_infer.export` (torch).

The names below are imported when first used, so that ``import bird_infer.contract...`` (a worker process, a
tool) does not pay for the whole stack.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_PUBLIC = {
    "BirdInferError": "bird_infer.contract.errors",
    "ManifestError": "bird_infer.contract.errors",
    "Manifest": "bird_infer.contract.bundle",
    "load_manifest": "bird_infer.contract.manifest",
    "LogMelFrontend": "bird_infer.audio.logmel",
    "SessionSettings": "bird_infer.runtime.sessions",
    "BundleModel": "bird_infer.runtime.ensemble",
    "FoldEnsemble": "bird_infer.runtime.ensemble",
    "RunOptions": "bird_infer.run.options",
    "predict_files": "bird_infer.run.engine",
    "stream_files": "bird_infer.run.engine",
    "run_predict": "bird_infer.jobs.predict",
    "run_detect": "bird_infer.jobs.detect",
}

__all__ = sorted(_PUBLIC)


def __getattr__(name: str) -> Any:
    if name in _PUBLIC:
        return getattr(importlib.import_module(_PUBLIC[name]), name)
    raise AttributeError(f"module 'bird_infer' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_PUBLIC])
