"""Optional extras: one place that says which ``pip install 'bird_infer[...]'`` brings a missing package."""

from __future__ import annotations

import importlib
import importlib.util
from types import ModuleType

from bird_infer.contract.errors import MissingExtraError

EXTRA_OF = {
    "openvino": "openvino",
    "nncf": "quantize",
    "distributed": "dask",
    "dask": "dask",
    "matplotlib": "field",
    "pyarrow": "field",
    "ai_edge_litert": "birdnet",
    "torch": "torch",
    "timm": "torch",
}
"""Module -> the extra of pyproject.toml that installs it."""


def install_hint(module: str) -> str:
    """What to run to get ``module``."""
    extra = EXTRA_OF.get(module.split(".")[0])
    return f"pip install 'bird_infer[{extra}]'" if extra else f"pip install {module}"


def have(module: str) -> bool:
    """Whether ``module`` can be imported (looked up, not imported)."""
    return importlib.util.find_spec(module) is not None


def require(module: str, what: str) -> None:
    """Raise MissingExtraError naming the extra when ``module`` is not installed; ``what`` needs it."""
    if not have(module):
        raise MissingExtraError(f"{what} needs {module}: {install_hint(module)}")


def import_extra(module: str, what: str) -> ModuleType:
    """Import an optional ``module`` for ``what``, or raise MissingExtraError saying which extra to install."""
    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise MissingExtraError(f"{what} needs {module}: {install_hint(module)} ({e})") from e
