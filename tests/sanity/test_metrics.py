"""cotviz.analysis.sanity: the similarity and localisation metrics on hand-made maps with known answers."""

from __future__ import annotations

import math

import numpy as np
import pytest

from cotviz.analysis.sanity import pointing_game, rank, relevance_mass_ratio, roc_auc, spearman, upsample_to


def test_rank_averages_ties() -> None:
    assert rank(np.array([10.0, 30.0, 20.0, 20.0])).tolist() == [1.0, 4.0, 2.5, 2.5]


def test_spearman_known_values() -> None:
    a = np.arange(16.0).reshape(4, 4)
    assert spearman(a, a ** 3) == pytest.approx(1.0)  # any increasing transform
    assert spearman(a, -a) == pytest.approx(-1.0)
    # ties: ranks x = [1, 2.5, 2.5, 4], y = [1, 3, 2, 4] -> rho = 4.5 / sqrt(4.5 * 5) = sqrt(0.9)
    assert spearman(np.array([1.0, 2, 2, 3]), np.array([1.0, 3, 2, 4])) == pytest.approx(math.sqrt(0.9))
    # no ties, d = [0, -1, 1, -1, 1]: rho = 1 - 6 sum d^2 / (n (n^2 - 1)) = 1 - 24 / 120
    assert spearman(np.arange(5.0), np.array([0.0, 2, 1, 4, 3])) == pytest.approx(0.8)


def test_spearman_undefined() -> None:
    assert math.isnan(spearman(np.ones((3, 3)), np.arange(9.0).reshape(3, 3)))
    assert math.isnan(spearman(np.array([1.0, np.nan, 2]), np.array([1.0, 2, 3])))
    with pytest.raises(ValueError, match="different sizes"):
        spearman(np.ones(4), np.ones(5))


def test_relevance_mass_ratio() -> None:
    mask = np.zeros((4, 4), bool)
    mask[:2, :2] = True  # area share 1/4
    inside = mask.astype(float)
    assert relevance_mass_ratio(inside, mask) == pytest.approx(4.0)  # all mass inside: 1 / (1/4)
    assert relevance_mass_ratio(np.ones((4, 4)), mask) == pytest.approx(1.0)  # uniform
    assert relevance_mass_ratio(1 - inside, mask) == pytest.approx(0.0)
    assert relevance_mass_ratio(inside - 5 * (1 - inside), mask) == pytest.approx(4.0)  # negatives clipped
    assert math.isnan(relevance_mass_ratio(np.zeros((4, 4)), mask))
    assert math.isnan(relevance_mass_ratio(np.ones((4, 4)), np.zeros((4, 4), bool)))
    with pytest.raises(ValueError, match="differ in size"):
        relevance_mass_ratio(np.ones((3, 3)), mask)


def test_pointing_game() -> None:
    mask = np.array([[True, False], [False, False]])
    assert pointing_game(np.array([[2.0, 1], [0, 0]]), mask) == 1.0
    assert pointing_game(np.array([[0.0, 1], [0, 0]]), mask) == 0.0
    assert pointing_game(np.array([[1.0, 1], [0, 0]]), mask) == 0.5  # two maxima, one inside
    assert math.isnan(pointing_game(np.ones((2, 2)), np.zeros((2, 2), bool)))


def test_roc_auc() -> None:
    mask = np.array([True, True, False, False])
    assert roc_auc(np.array([3.0, 2, 1, 0]), mask) == 1.0
    assert roc_auc(np.array([0.0, 1, 2, 3]), mask) == 0.0
    assert roc_auc(np.ones(4), mask) == 0.5
    assert roc_auc(np.array([3.0, 1, 2, 0]), mask) == 0.75  # pairs (3>2, 3>0, 1<2, 1>0)
    assert roc_auc(np.array([2.0, 1, 2, 0]), mask) == pytest.approx(0.625)  # a tie counts 1/2
    assert math.isnan(roc_auc(np.ones(4), np.ones(4, bool)))


def test_upsample_to_keeps_a_constant_and_the_size() -> None:
    up = upsample_to(np.full((3, 3), 2.0), (12, 12))
    assert up.shape == (12, 12) and np.allclose(up, 2.0)
