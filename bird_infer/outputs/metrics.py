"""The BirdCLEF metrics, so users can score their own validation folds: padded cmAP (2023) and macro ROC-AUC
over the classes with a positive (2024-2026).

Padded cmAP:

The competition's definition: append ``padding_factor`` (5) rows of 1.0 to both the solution and the
submission, then take the macro average over classes of the average precision
(``sklearn.metrics.average_precision_score(..., average="macro")``). The padding gives every class at
least 5 positives, so classes absent from the solution still count (scoring how high their top
false positives sit), and is why a prediction of exactly 1.0 is harmful: it ties with the pad rows.

Implemented in numpy with sklearn's tie handling (one precision/recall step per distinct score);
``tests/`` checks both against sklearn.

Macro ROC-AUC, as 2024-2026 score: for each class with at least one positive row (and one negative), the
probability that a random positive row outscores a random negative one (ties count half), averaged over
those classes; classes without a positive are skipped.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from bird_infer.contract.errors import SubmissionFormatError

PADDING_FACTOR = 5


def average_precision(y_true: np.ndarray, y_score: np.ndarray) -> float:
    """AP of one class: sum over distinct thresholds of (recall step) x precision. NaN if no positive."""
    y_true = np.asarray(y_true, dtype=np.float64)
    order = np.argsort(-np.asarray(y_score, dtype=np.float64), kind="mergesort")
    y_true, y_score = y_true[order], np.asarray(y_score, dtype=np.float64)[order]
    positives = y_true.sum()
    if positives == 0:
        return float("nan")
    # The last index of each run of equal scores: a threshold admits all tied rows at once.
    last = np.r_[np.flatnonzero(np.diff(y_score)), y_true.size - 1]
    tp = np.cumsum(y_true)[last]
    precision = tp / (last + 1)
    recall = tp / positives
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


def roc_auc(y_true: np.ndarray, y_score: np.ndarray) -> float:
    """ROC-AUC of one class by the rank-sum (Mann-Whitney) formula with average ranks for ties. NaN when the
    class has no positive or no negative."""
    y_true = np.asarray(y_true, dtype=np.float64) > 0
    n_pos = int(y_true.sum())
    n_neg = y_true.size - n_pos
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    score = np.asarray(y_score, dtype=np.float64)
    order = np.argsort(score, kind="mergesort")
    sorted_scores = score[order]
    ranks = np.empty(score.size, dtype=np.float64)
    # average rank (1-based) over each run of equal scores
    starts = np.r_[0, np.flatnonzero(np.diff(sorted_scores)) + 1]
    ends = np.r_[starts[1:], score.size]
    for a, b in zip(starts, ends, strict=True):
        ranks[order[a:b]] = (a + 1 + b) / 2.0
    return float((ranks[y_true].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def _aligned(solution: pd.DataFrame, submission: pd.DataFrame) -> tuple[list[str], np.ndarray, np.ndarray]:
    """The solution's label columns, and truth and scores as arrays with rows matched on ``row_id``."""
    labels = [str(c) for c in solution.columns if c != "row_id"]
    solution = solution.rename(columns=str)
    submission = submission.rename(columns=str)
    missing = [c for c in labels if c not in submission.columns]
    if missing:
        raise SubmissionFormatError(f"submission lacks {len(missing)} label columns, e.g. {missing[:5]}")
    if "row_id" in solution.columns:
        if "row_id" not in submission.columns:
            raise SubmissionFormatError("submission has no row_id column")
        sub = submission.set_index("row_id")
        absent = solution["row_id"][~solution["row_id"].isin(sub.index)]
        if len(absent):
            raise SubmissionFormatError(f"submission lacks {len(absent)} rows, e.g. {absent.iloc[:3].tolist()}")
        scores = sub.loc[solution["row_id"], labels].to_numpy(dtype=np.float64)
    else:
        scores = submission[labels].to_numpy(dtype=np.float64)
    return labels, solution[labels].to_numpy(dtype=np.float64), scores


def macro_roc_auc(solution: pd.DataFrame, submission: pd.DataFrame) -> float:
    """Macro ROC-AUC of ``submission`` against ``solution`` over the classes that have a positive row.

    Raises SubmissionFormatError when rows or labels do not match, or when no class has a positive.
    """
    labels, truth, scores = _aligned(solution, submission)
    aucs = [roc_auc(truth[:, j], scores[:, j]) for j in range(len(labels))]
    scored = [a for a in aucs if not np.isnan(a)]
    if not scored:
        raise SubmissionFormatError("no class has both a positive and a negative row: ROC-AUC is undefined")
    return float(np.mean(scored))


def padded_cmap(solution: pd.DataFrame, submission: pd.DataFrame, padding_factor: int = PADDING_FACTOR) -> float:
    """Padded cmAP of ``submission`` against ``solution`` (both: ``row_id`` + one column per label).

    Rows are matched on ``row_id``; label columns on name (the submission may order them differently).
    Raises SubmissionFormatError when rows or labels do not match.
    """
    labels, truth, scores = _aligned(solution, submission)
    pad = np.ones((padding_factor, len(labels)))
    truth, scores = np.vstack([truth, pad]), np.vstack([scores, pad])
    aps = [average_precision(truth[:, j], scores[:, j]) for j in range(len(labels))]
    return float(np.nanmean(aps))
