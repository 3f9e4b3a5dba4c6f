"""Training-side torch modules: the log-mel front-end and the SED model (optional extra ``[torch]``).

Nothing on the inference path imports this package; it needs ``pip install bird_infer[torch]``.
"""

from __future__ import annotations

try:
    import torch  # noqa: F401
except ImportError as e:  # pragma: no cover - depends on the environment
    raise ImportError(
        "bird_infer.nn needs PyTorch and timm: pip install 'bird_infer[torch]' (torch==2.14.1 torchvision==0.29.1 timm)"
    ) from e

from bird_infer.nn.frontend import TorchLogMel
from bird_infer.nn.sed import SEDModel, build_model

__all__ = ["SEDModel", "TorchLogMel", "build_model"]
