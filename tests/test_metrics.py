"""Padded cmAP against scikit-learn's average precision, as the competition computes it."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from bird_infer.contract.errors import SubmissionFormatError
from bird_infer.outputs.metrics import average_precision, padded_cmap


def competition_padded_cmap(solution: pd.DataFrame, submission: pd.DataFrame, padding_factor: int = 5) -> float:
    """The BirdCLEF 2023 scoring code, as published with the competition."""
    metrics = pytest.importorskip("sklearn.metrics")
    solution = solution.drop(["row_id"], axis=1, errors="ignore")
    submission = submission.drop(["row_id"], axis=1, errors="ignore")
    new_rows = pd.DataFrame([[1] * len(solution.columns)] * padding_factor, columns=solution.columns)
    padded_solution = pd.concat([solution, new_rows]).reset_index(drop=True)
    padded_submission = pd.concat([submission, new_rows]).reset_index(drop=True)
    return metrics.average_precision_score(padded_solution.values, padded_submission.values, average="macro")


@pytest.mark.parametrize("seed", range(5))
def test_matches_the_competition_code_with_ties_and_empty_classes(seed: int) -> None:
    rng = np.random.default_rng(seed)
    n, labels = 60, [f"sp{i}" for i in range(7)]
    truth = (rng.random((n, len(labels))) < 0.15).astype(int)
    truth[:, 3] = 0  # a class that never occurs: only the padding rows are positive
    scores = np.round(rng.random((n, len(labels))), 1)  # rounding makes many ties
    ids = [f"s_{5 * (i + 1)}" for i in range(n)]
    sol = pd.DataFrame(truth, columns=labels)
    sol.insert(0, "row_id", ids)
    sub = pd.DataFrame(scores, columns=labels)
    sub.insert(0, "row_id", ids)
    assert padded_cmap(sol, sub) == pytest.approx(competition_padded_cmap(sol, sub), abs=1e-12)


def test_rows_and_columns_are_matched_by_name() -> None:
    sol = pd.DataFrame({"row_id": ["a_5", "a_10", "a_15"], "x": [1, 0, 0], "y": [0, 0, 1]})
    sub = pd.DataFrame({"row_id": ["a_15", "a_5", "a_10"], "y": [0.9, 0.1, 0.2], "x": [0.1, 0.8, 0.3]})
    assert padded_cmap(sol, sub) == pytest.approx(1.0)
    with pytest.raises(SubmissionFormatError):
        padded_cmap(sol, sub.drop(columns="x"))
    with pytest.raises(SubmissionFormatError):
        padded_cmap(sol, sub.iloc[:2])


def test_a_prediction_of_one_ties_with_the_padding() -> None:
    """Why outputs stay below 1: a false positive at exactly 1.0 ranks level with the 5 pad rows."""
    sol = pd.DataFrame({"row_id": ["a_5", "a_10"], "x": [0, 1]})
    at_one = padded_cmap(sol, pd.DataFrame({"row_id": ["a_5", "a_10"], "x": [1.0, 0.5]}))
    below = padded_cmap(sol, pd.DataFrame({"row_id": ["a_5", "a_10"], "x": [0.999999, 0.5]}))
    assert at_one < below


def test_average_precision_of_a_perfect_ranking_is_one() -> None:
    assert average_precision(np.array([0, 1, 1, 0]), np.array([0.1, 0.9, 0.8, 0.2])) == 1.0
    assert np.isnan(average_precision(np.zeros(3), np.ones(3)))
