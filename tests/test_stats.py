"""baselines.stats against values worked out by hand (and the frozen leaderboard bootstrap)."""

import numpy as np
import pytest

from baselines import stats


# -- IQM ---------------------------------------------------------------------------------------
def test_iqm_by_hand():
    # 8 runs: a quarter (2) cut from each end -> mean of 3, 4, 5, 6
    assert stats.iqm(np.array([100.0, 1, 7, 2, 6, 3, 5, 4])) == 4.5
    # 5 runs: int(1.25) = 1 cut from each end of 1 2 3 10 50 -> mean of 2, 3, 10
    assert stats.iqm([10.0, 1, 3, 2, 50]) == 5.0
    # fewer than 4 runs: nothing is cut
    assert stats.iqm([1.0, 2, 9]) == 4.0


def test_iqm_pools_the_runs_of_all_tasks():
    runs_by_tasks = np.array([[1.0, 5], [2, 6], [3, 7], [4, 100]])  # 4 runs x 2 tasks
    assert stats.iqm(runs_by_tasks) == 4.5  # 1..7, 100 pooled
    assert stats.iqm([[1.0, 2, 3, 4], [5.0, 6, 7, 100]]) == 4.5  # the same, one array per task


# -- probability of improvement ----------------------------------------------------------------
def test_probability_of_improvement_by_hand():
    # x = 1 2 3 against y = 2 2: (0 + 0) + (.5 + .5) + (1 + 1) over 6 pairs
    assert stats.probability_of_improvement([1.0, 2, 3], [2.0, 2]) == 0.5
    # x = 3 4 against y = 1 4: 1 + 0 + 1 + .5 over 4 pairs
    assert stats.probability_of_improvement([3.0, 4], [1.0, 4]) == 0.625
    assert stats.probability_of_improvement([1.0, 4], [3.0, 4]) == 0.375  # P(X>Y) + P(Y>X) = 1


def test_probability_of_improvement_averages_over_tasks():
    x = [[1.0, 2, 3], [3.0, 4]]
    y = [[2.0, 2], [1.0, 4]]
    assert stats.probability_of_improvement(x, y) == pytest.approx((0.5 + 0.625) / 2)
    # pooling the runs instead would give 12 / 20 = 0.6
    assert stats.probability_of_improvement([1.0, 2, 3, 3, 4], [2.0, 2, 1, 4]) == 0.6
    with pytest.raises(ValueError):
        stats.probability_of_improvement(x, y[:1])


def test_probability_of_improvement_ci():
    # every resample of x = 2 3 beats every resample of y = 0 1
    assert stats.probability_of_improvement_ci([2.0, 3], [0.0, 1], n_boot=200) == (1.0, 1.0)
    x, y = np.array([0.3, 1.2, 2.5, -0.4, 1.1]), np.array([0.1, 0.2, -1.0, 0.9])
    # the leaderboard's numbers: resample x then y with one generator, 2.5 / 97.5 % quantiles
    rng = np.random.default_rng(0)
    boots = []
    for _ in range(500):
        xb, yb = x[rng.integers(0, 5, 5)], y[rng.integers(0, 4, 4)]
        boots.append(((xb[:, None] > yb) + 0.5 * (xb[:, None] == yb)).mean())
    want = tuple(np.quantile(boots, [0.025, 0.975]))
    assert stats.probability_of_improvement_ci(x, y, n_boot=500, rng=0) == want


# -- performance profile -----------------------------------------------------------------------
def test_performance_profile_by_hand():
    taus = [-1.0, 0, 1.5, 3, 5]
    # task A: runs 0 1 2 3 -> fractions above tau 1, 3/4, 2/4, 0, 0 (strictly above)
    # task B: runs 5 5     -> 1, 1, 1, 1, 0; averaged over the two tasks:
    got = stats.performance_profile([[0.0, 1, 2, 3], [5.0, 5]], taus)
    np.testing.assert_array_equal(got, [1.0, 0.875, 0.75, 0.5, 0.0])
    # one task: the plain fraction of runs above tau
    np.testing.assert_array_equal(stats.performance_profile([0.0, 1, 2, 3], [0.5, 2]), [0.75, 0.25])


# -- bootstraps --------------------------------------------------------------------------------
def test_stratified_bootstrap_by_hand():
    # task A = 1 1 1 always resamples to mean 1; task B = 0 0 3 to mean 0, 1, 2 or 3 with
    # probabilities 8/27, 12/27, 6/27, 1/27. The mean over both tasks is then 0.5, 1, 1.5 or 2,
    # with cumulative probabilities .296, .741, .963, 1: its 5 % and 95 % quantiles are 0.5 and
    # 1.5, its 1 % and 99 % quantiles 0.5 and 2.
    tasks = [[1.0, 1, 1], [0.0, 0, 3]]
    assert stats.stratified_bootstrap_ci(tasks, np.mean, alpha=0.1) == (0.5, 1.5)
    assert stats.stratified_bootstrap_ci(tasks, np.mean, alpha=0.02) == (0.5, 2.0)
    runs_by_tasks = np.array(tasks).T  # the same scores as a runs x tasks array
    assert stats.stratified_bootstrap_ci(runs_by_tasks, np.mean, alpha=0.1) == (0.5, 1.5)
    # resampling the six runs pooled, without the strata, would reach below 0.5
    lo, _ = stats.bootstrap_ci(np.array([1.0, 1, 1, 0, 0, 3]), alpha=0.1)
    assert lo < 0.5


def test_stratified_bootstrap_iqm_brackets_the_iqm():
    rng = np.random.default_rng(3)
    scores = rng.normal(0, 1, (10, 3)) + np.array([0.0, 5, 10])
    lo, hi = stats.stratified_bootstrap_ci(scores, n_boot=2000)
    assert lo < stats.iqm(scores) < hi


def test_bootstrap_ci_by_hand_and_frozen():
    # two runs 0 and 1: resampled means 0, .5, 1 with probabilities 1/4, 1/2, 1/4
    assert stats.bootstrap_ci(np.array([0.0, 1]), alpha=0.05) == (0.0, 1.0)
    assert stats.bootstrap_ci(np.array([0.0, 1]), alpha=0.6) == (0.5, 0.5)
    assert stats.bootstrap_ci(np.array([4.0])) == (4.0, 4.0)
    # the committed leaderboard's CIs come from this method: numbers pinned
    assert stats.bootstrap_ci(np.arange(10.0), n_boot=1000, seed=0) == (2.7, 6.4)


# -- sign test ---------------------------------------------------------------------------------
def test_sign_test_by_hand():
    assert stats.sign_test(3, 0) == pytest.approx(0.25)  # 2 * (1/2)^3
    assert stats.sign_test(0, 3) == pytest.approx(0.25)
    assert stats.sign_test(10, 0) == pytest.approx(2 / 1024)
    assert stats.sign_test(7, 3) == pytest.approx(2 * (1 + 10 + 45 + 120) / 1024)  # 0.34375
    assert stats.sign_test(5, 5) == pytest.approx(1.0)
    assert stats.sign_test(0, 0) == 1.0


def test_t_ci_is_the_student_t_interval_of_the_seed_mean():
    x = np.array([[1.0, 2.0], [3.0, 2.0], [5.0, 2.0]])
    mean, lo, hi = stats.t_ci(x)
    assert mean == pytest.approx([3.0, 2.0])
    half = 4.302652729911275 * 2.0 / np.sqrt(3)  # t(0.975, 2) * sd / sqrt(n)
    assert lo == pytest.approx([3.0 - half, 2.0]) and hi == pytest.approx([3.0 + half, 2.0])
    one = stats.t_ci(x[:1])
    assert all(np.array_equal(v, x[0]) for v in one)


def test_mean_ci_is_the_mean_with_its_bootstrap_ci():
    x = np.array([1.0, 4.0, 2.0, 8.0])
    lo, hi = stats.bootstrap_ci(x, 500, seed=3)
    assert stats.mean_ci(x, 500, seed=3) == (3.75, lo, hi)
    assert lo < 3.75 < hi
    assert all(v != v for v in stats.mean_ci([]))
