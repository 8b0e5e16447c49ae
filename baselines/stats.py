"""The statistics of both tracks' tables (the leaderboard and the LLM track).

Aggregates over runs follow Agarwal et al. 2021, "Deep RL at the edge of the statistical
precipice" (arXiv 2108.13264, the rliable library, which does not import on this stack):
interquartile mean, stratified bootstrap CIs, probability of improvement and performance
profiles, on ``scipy.stats`` where it covers them.

Scores of several tasks (envs, configs) are passed as a 2-D array (runs x tasks), as a sequence
of 1-D arrays (one per task; tasks may have different numbers of runs) or as a mapping from task
to 1-D array. A 1-D array is one task.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
from scipy import stats as sps


def tasks_of(scores: Any) -> list[np.ndarray]:
    """The per-task 1-D float arrays of ``scores`` (see the module docstring for the forms)."""
    if isinstance(scores, Mapping):
        scores = list(scores.values())
    if isinstance(scores, (list, tuple)) and scores and np.ndim(scores[0]) == 1:
        tasks = [np.asarray(t, dtype=float) for t in scores]
    else:
        a = np.asarray(scores, dtype=float)
        if a.ndim not in (1, 2):
            raise ValueError(f"scores: expected 1-D or 2-D (runs x tasks); got shape {a.shape}")
        tasks = [a] if a.ndim == 1 else list(a.T)
    if not tasks or any(t.ndim != 1 or len(t) == 0 for t in tasks):
        raise ValueError("scores: every task needs a 1-D array of at least one run")
    return tasks


# -- the leaderboard's bootstrap (numbers frozen) ------------------------------------------------
def bootstrap_ci(x: np.ndarray, n_boot: int = 10_000, alpha: float = 0.05, seed: int = 0):
    """Percentile bootstrap CI of the mean along axis 0 (fixed seed: reproducible tables).

    Resamples the rows of ``x`` with ``numpy.random.default_rng(seed)``: the committed tables'
    numbers, so do not change it (scipy's ``bootstrap`` resamples differently). Under two rows:
    the CI is the mean.
    """
    x = np.asarray(x, dtype=float)
    if len(x) < 2:
        return x.mean(0), x.mean(0)
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(x), size=(n_boot, len(x)))
    means = x[idx].mean(1)
    lo, hi = np.quantile(means, [alpha / 2, 1 - alpha / 2], axis=0)
    return lo, hi


def mean_ci(x: Any, n_boot: int = 10_000, seed: int = 0) -> tuple[float, float, float]:
    """``(mean, lo, hi)`` of the values ``x``: their mean and its :func:`bootstrap_ci` (NaNs for
    no values), as the tables of runs over seeds report it."""
    x = np.asarray(x, dtype=float)
    if len(x) == 0:
        return (float("nan"),) * 3
    lo, hi = bootstrap_ci(x, n_boot, seed=seed)
    return float(x.mean()), float(lo), float(hi)


def t_ci(x: np.ndarray, level: float = 0.95) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Mean over the rows of ``x`` (seeds) and its Student-t CI per column; one row: no interval."""
    mean = x.mean(0)
    if len(x) < 2:
        return mean, mean, mean
    half = sps.t.ppf(0.5 + level / 2, len(x) - 1) * x.std(0, ddof=1) / np.sqrt(len(x))
    return mean, mean - half, mean + half


# -- rliable's aggregates ----------------------------------------------------------------------
def iqm(x: Any, axis: int | None = None):
    """Interquartile mean: the 25 % trimmed mean (``scipy.stats.trim_mean(x, 0.25)``).

    ``axis=None`` pools all runs of all tasks (rliable's) into a float; an axis: an array.
    """
    if axis is None:
        return float(sps.trim_mean(np.concatenate(tasks_of(x)), 0.25, axis=None))
    return sps.trim_mean(np.asarray(x, dtype=float), 0.25, axis=axis)


def stratified_bootstrap_ci(
    scores: Any,
    statistic: Callable[..., Any] = iqm,
    n_boot: int = 10_000,
    alpha: float = 0.05,
    seed: int = 0,
    method: str = "percentile",
) -> tuple[float, float]:
    """Stratified bootstrap CI of an aggregate of all runs of all tasks.

    Each resample draws each task's runs with replacement (``scipy.stats.bootstrap``); then
    ``statistic(pooled, axis=-1)`` (``iqm``, ``np.mean``, ``np.median``) of the pooled runs.
    ``method``: "percentile" (rliable's), "BCa" or "basic". Every task needs two runs or more.
    """
    tasks = tasks_of(scores)

    def pooled(*samples: np.ndarray, axis: int = -1):
        return statistic(np.concatenate(samples, axis=axis), axis=axis)

    res = sps.bootstrap(
        tasks,
        pooled,
        n_resamples=n_boot,
        vectorized=True,
        confidence_level=1 - alpha,
        method=method,
        rng=np.random.default_rng(seed),
    )
    return float(res.confidence_interval.low), float(res.confidence_interval.high)


def _poi(x: np.ndarray, y: np.ndarray) -> float:
    x, y = np.asarray(x, float)[:, None], np.asarray(y, float)[None, :]
    return float(((x > y) + 0.5 * (x == y)).mean())


def probability_of_improvement(x: Any, y: Any) -> float:
    """P(X > Y) + 0.5 P(X = Y) over all pairs of runs of a task, averaged over tasks; ``x`` and
    ``y`` hold two agents' runs on the same tasks, in the same order."""
    xs, ys = tasks_of(x), tasks_of(y)
    if len(xs) != len(ys):
        raise ValueError(f"x has {len(xs)} tasks and y {len(ys)}; they must match")
    return float(np.mean([_poi(a, b) for a, b in zip(xs, ys, strict=True)]))


def probability_of_improvement_ci(
    x: Any,
    y: Any,
    n_boot: int = 2000,
    alpha: float = 0.05,
    rng: np.random.Generator | int = 0,
) -> tuple[float, float]:
    """Percentile bootstrap CI of :func:`probability_of_improvement`, stratified by task.

    Each resample draws, task by task, the runs of ``x`` and then those of ``y`` with
    replacement, independently. ``rng`` may be a shared generator (the leaderboard passes one
    through all its pairs, which fixes the committed numbers) or a seed.
    """
    xs, ys = tasks_of(x), tasks_of(y)
    if len(xs) != len(ys):
        raise ValueError(f"x has {len(xs)} tasks and y {len(ys)}; they must match")
    rng = np.random.default_rng(rng) if isinstance(rng, (int, np.integer)) else rng
    boots = []
    for _ in range(n_boot):
        per_task = [
            _poi(a[rng.integers(0, len(a), len(a))], b[rng.integers(0, len(b), len(b))])
            for a, b in zip(xs, ys, strict=True)
        ]
        boots.append(float(np.mean(per_task)))
    lo, hi = np.quantile(boots, [alpha / 2, 1 - alpha / 2])
    return float(lo), float(hi)


# -- comparisons, with a verdict by rule ------------------------------------------------------
VERDICTS = ("better", "worse", "no difference detected")
BLOCK_START = "<!-- comparisons: generated; verdict by rule (baselines.stats.verdict) -->"
BLOCK_END = "<!-- /comparisons -->"


def verdict(diff_lo: float, diff_hi: float, p_lo: float, p_hi: float) -> str:
    """``better`` where the 95 % CIs of the difference A - B and of P(A > B) both lie above no
    difference (0, 0.5), ``worse`` where both lie below, else ``no difference detected``."""
    if diff_lo > 0 and p_lo > 0.5:
        return VERDICTS[0]
    if diff_hi < 0 and p_hi < 0.5:
        return VERDICTS[1]
    return VERDICTS[2]


def compare(
    x: Any, y: Any, n_boot: int = 2000, rng: np.random.Generator | int = 0, paired: bool = False
) -> dict:
    """A's runs ``x`` against B's ``y``: the mean difference with its Welch t CI (``paired``:
    runs matched by position, the t CI of the differences; several tasks: the t CI of the
    per-task mean differences, paired by task), P(A > B) within tasks with its bootstrap CI
    (:func:`probability_of_improvement_ci`), the numbers of runs and the :func:`verdict`."""
    xs, ys = tasks_of(x), tasks_of(y)
    x, y = np.concatenate(xs), np.concatenate(ys)
    vx, vy = x.var(ddof=1) / len(x), y.var(ddof=1) / len(y)
    dof = (vx + vy) ** 2 / (vx**2 / (len(x) - 1) + vy**2 / (len(y) - 1)) if vx + vy else 1.0
    per_task = np.array([a.mean() - b.mean() for a, b in zip(xs, ys, strict=True)])
    if paired or len(xs) > 1:
        d = x - y if len(xs) == 1 else per_task
        vx, vy, dof = d.var(ddof=1) / len(d), 0.0, len(d) - 1
    diff, half = per_task.mean(), sps.t.ppf(0.975, dof) * np.sqrt(vx + vy)
    p_lo, p_hi = probability_of_improvement_ci(xs, ys, n_boot, rng=rng)
    row = dict(n_a=len(x), n_b=len(y), difference=diff, difference_lo=diff - half)
    row.update(difference_hi=diff + half, p_improvement=probability_of_improvement(xs, ys))
    shown = (round(v, 2) for v in (diff - half, diff + half, p_lo, p_hi))  # as the block prints
    return {**row, "p_lo": p_lo, "p_hi": p_hi, "verdict": verdict(*shown)}


def comparison_block(rows: list[dict], what: str) -> list[str]:
    """Markdown lines of the generated comparison block of ``rows`` (dicts with ``a``, ``b`` and
    the fields of :func:`compare`); ``what``: the compared quantity."""
    head = f"| A | B | n (A / B) | {what}: A - B [95 % t CI] | P(A > B) [95 % CI] | verdict |"
    lines = [BLOCK_START, "", head, "|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(
            f"| {r['a']} | {r['b']} | {r['n_a']} / {r['n_b']} | {r['difference']:+.2f} "
            f"[{r['difference_lo']:+.2f}, {r['difference_hi']:+.2f}] | {r['p_improvement']:.2f} "
            f"[{r['p_lo']:.2f}, {r['p_hi']:.2f}] | {r['verdict']} |"
        )
    return [*lines, "", BLOCK_END]


def performance_profile(scores: Any, taus: Any) -> np.ndarray:
    """Run-score distribution: per tau, the fraction of runs with score > tau, within each task
    and averaged over tasks (rliable's definition)."""
    taus = np.atleast_1d(np.asarray(taus, dtype=float))
    fractions = [(t[:, None] > taus[None, :]).mean(0) for t in tasks_of(scores)]
    return np.mean(fractions, axis=0)


# -- paired comparisons ------------------------------------------------------------------------
def sign_test(wins: int, losses: int) -> float:
    """Two-sided exact binomial (sign) test of wins vs losses under p = 1/2, ties dropped."""
    n = int(wins) + int(losses)
    if n == 0:
        return 1.0
    return float(sps.binomtest(int(wins), n, 0.5).pvalue)
