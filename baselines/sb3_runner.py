"""Agents whose policy optimiser is a stable-baselines3 algorithm (PPO, SAC, A2C).

The env keeps retraining its reward model on the rollouts; the agent decides only which reward
the algorithm sees, through the one reward wrapper (:class:`agents.wrappers.AgentRewardWrapper`),
and, for agents that act on the optimiser itself, through the callbacks the agent declares
(``kl``: a per-step KL penalty to the initial policy, :mod:`agents.sb3_kl`). What is recorded:
:func:`learn_sb3`.
"""

from __future__ import annotations

import numpy as np

from agents.whitebox import counters
from rlhf_envs.core import QUERY_COLUMNS

ALGOS = ("ppo", "sac", "a2c")

# info keys that are counters or bookkeeping, not per-response measurements
_NOT_MEASURED = {
    "round",
    "rm_updated",
    "labels_used",
    "oracle_queries",
    "oracle_grad_queries",
    "oracle_value_equivalents",
    "response_complete",
    "cluster",
    "in_blind_cluster",
}
# the env's truth and proxy on the responses the policy sampled
_RENAMED = {"true_utility": "sample_true_utility", "proxy_reward": "sample_proxy_reward"}
_NUMBERS = (int, float, np.number)
_NOT_MEASURED |= set(QUERY_COLUMNS.values())


def allowed_algos(agent: str) -> tuple[str, ...]:
    """The SB3 algorithms that ``agent`` (a name or ``module:Class``) works with."""
    from baselines.judge import agent_class

    algos = agent_class(agent).sb3_algos
    return ALGOS if algos is None else tuple(a for a in ALGOS if a in algos)


def learn_sb3(job, seed: int, callback=None, eval_responses: int = 64) -> dict[str, np.ndarray]:
    """Train ``seed`` of the SB3 :class:`baselines.plan.Job` ``job``, the agent and its algorithm
    in their own process (:func:`baselines.judge.judge_sb3`), and return the judge's record.

    Per round: the mean over the responses the policy sampled of every per-response number the env
    reports in ``info`` (``true_utility`` and ``proxy_reward`` become ``sample_true_utility`` and
    ``sample_proxy_reward``; diagnostics such as ``signal_norm`` keep their names), the RM's error
    on them, and the label and query counters (with the queries the agent made scoring the round's
    last response). On a contextual env, the sampled true utility is also split by
    ``info["in_blind_cluster"]``. Besides, ``eval_true_utility`` (NaN except in the last row) is
    the mean true utility of ``eval_responses`` deterministic responses of the final policy (SB3
    ``predict``), scored on a copy of the env (which retrains its own RM on them; the run's env
    is untouched): the number SB3's ``evaluate_policy`` would report.
    """
    from baselines.judge import judge_sb3

    agent, policy_optimizer = job.agent, job.policy_optimizer
    if policy_optimizer not in (algos := allowed_algos(agent)):
        also = f" or policy_optimizer {' or '.join(algos)}" if algos else ""
        raise ValueError(
            f"agent {agent!r} works only with the white-box optimiser{also}, got {policy_optimizer!r}"
        )
    if eval_responses < 1:
        raise ValueError(f"eval_responses must be >= 1, got {eval_responses}")
    recorder = _Recorder(job.rounds, callback)
    evaluation = judge_sb3(job, seed, recorder, eval_responses)
    rows = recorder.rows
    keys = list(dict.fromkeys(k for r in rows for k in r))
    history = {key: np.array([[r.get(key, np.nan)] for r in rows]) for key in keys}
    for key, value in evaluation.items():
        column = np.full((len(rows), 1), np.nan)
        column[-1, 0] = value  # measured once, after the last round
        history[key] = column
    return history


class _Recorder:
    """The judge's record of an SB3 run, one row per RM round, from each step's whole ``info``.

    A round's row is completed at the next call (the next step, or ``None`` at the end), once the
    agent has scored the round's last response: its query counters include those queries."""

    def __init__(self, rounds: int, callback=None):
        self.rounds, self.callback = rounds, callback
        self.rows: list[dict[str, float]] = []
        self.current: dict[str, list] = {}
        self.pending: dict | None = None
        self.core = None  # the judge's env follower (set by the judge)

    def __call__(self, info: dict | None) -> bool:
        """Record one step's ``info``; True once the run has its rounds."""
        if self.pending is not None:
            row = self.pending  # its label count is the round's own
            row.update((k, int(v[0])) for k, v in counters(self.core).items() if k != "labels_used")
            self.rows.append(row)
            self.pending = None
            if self.callback is not None:
                self.callback(row)
        if info is None or info.get("response_complete") is False or "true_utility" not in info:
            return len(self.rows) >= self.rounds
        current = self.current
        for key, v in info.items():
            if key in _NOT_MEASURED or not isinstance(v, _NUMBERS):
                continue
            current.setdefault(_RENAMED.get(key, key), []).append(float(v))
        if "in_blind_cluster" in info:
            side = "blind_cluster" if info["in_blind_cluster"] else "other_clusters"
            current.setdefault(f"sample_true_utility_{side}", []).append(info["true_utility"])
        if info["rm_updated"]:
            t = np.array(current["sample_true_utility"])
            p = np.array(current["sample_proxy_reward"])
            row = {k: float(np.mean(v)) for k, v in current.items()}
            row.update(sample_gap=p.mean() - t.mean(), rm_error=np.abs(p - t).mean())
            queries = ("oracle_queries", "oracle_grad_queries", "oracle_value_equivalents")
            row.update(labels_used=info["labels_used"], **dict.fromkeys(queries))
            if "in_blind_cluster" in info:  # a round may miss one side
                for side in ("blind_cluster", "other_clusters"):
                    row.setdefault(f"sample_true_utility_{side}", np.nan)
            self.pending = row
            current.clear()
            return len(self.rows) + 1 >= self.rounds
        return len(self.rows) >= self.rounds
