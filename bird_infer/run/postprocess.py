"""Post-processing of one file's rows after the ensemble (the manifest's ``postprocess``; off by default).

1. **Smoothing** over neighbouring rows of the same file: ``p'[i] = sum_t w[t] p[i + t - h] / sum_t w[t]``
   over the rows ``i + t - h`` that exist and hold predictions (``h = len(w) // 2``). At a file's edges,
   and next to fallback rows, the missing neighbours are left out and the remaining weights renormalised.
2. **File-max mixing**: ``p = (1 - a) p + a max_file(p)``, the maximum over the file's predicted rows.

Fallback rows are neither used nor changed.
"""

from __future__ import annotations

import numpy as np

from bird_infer.contract.schema import PostProcess


def smooth_rows(probs: np.ndarray, valid: np.ndarray, weights: tuple[float, ...]) -> np.ndarray:
    """(n, L) -> (n, L): the weighted mean over each valid row's valid neighbours (see the module docstring)."""
    n = probs.shape[0]
    h = len(weights) // 2
    acc = np.zeros(probs.shape, dtype=np.float64)
    wsum = np.zeros((n, 1), dtype=np.float64)
    for t, w in enumerate(weights):
        shift = t - h  # neighbour j = i + shift
        lo, hi = max(0, -shift), min(n, n - shift)
        if lo >= hi or w == 0:
            continue
        src = slice(lo + shift, hi + shift)
        ok = valid[src][:, None]
        acc[lo:hi] += np.where(ok, w * probs[src].astype(np.float64), 0.0)
        wsum[lo:hi] += np.where(ok, w, 0.0)
    out = probs.astype(np.float64).copy()
    rows = valid & (wsum[:, 0] > 0)
    out[rows] = acc[rows] / wsum[rows]
    return out.astype(np.float32)


def postprocess(probs: np.ndarray, valid: np.ndarray, pp: PostProcess) -> np.ndarray:
    """Apply ``pp`` to one file's rows ``probs`` (n, L); ``valid`` (n,) marks rows holding predictions."""
    out = probs
    if pp.smoothing:
        out = smooth_rows(out, valid, pp.smoothing)
    if pp.file_max_mix > 0 and valid.any():
        a = pp.file_max_mix
        peak = out[valid].max(axis=0).astype(np.float64)
        mixed = ((1 - a) * out.astype(np.float64) + a * peak).astype(np.float32)
        out = np.where(valid[:, None], mixed, out)
    return out
