"""Agents whose policy optimiser is a stable-baselines3 algorithm (PPO, SAC, A2C).

The env keeps retraining its reward model on the rollouts; the agent decides only which reward
the algorithm sees, through the one reward wrapper (:class:`agents.wrappers.AgentRewardWrapper`),
and, for agents that act on the optimiser itself, through the callbacks the agent declares
(``kl``: a per-step KL penalty to the initial policy, :mod:`agents.sb3_kl`). Metrics are recorded
per RM round from the responses the policy actually sampled in that round, in columns named
``sample_*`` (white-box runs record the policy mean's ``true_utility`` besides).
"""

from __future__ import annotations

import copy

import gymnasium as gym
import numpy as np

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


def algorithm(name: str):
    """The stable-baselines3 class of ``name`` (one of :data:`ALGOS`)."""
    import stable_baselines3 as sb3

    return {"ppo": sb3.PPO, "sac": sb3.SAC, "a2c": sb3.A2C}[name]


def allowed_algos(agent: str) -> tuple[str, ...]:
    """The SB3 algorithms that ``agent`` (a name or ``module:Class``) works with."""
    from agents import registry

    algos = registry.get(agent).sb3_algos
    return ALGOS if algos is None else tuple(a for a in ALGOS if a in algos)


def learn_sb3(job, seed: int, callback=None, eval_responses: int = 64) -> dict[str, np.ndarray]:
    """Train ``seed`` of the SB3 :class:`baselines.plan.Job` ``job`` on its agent-wrapped env.

    Per round: the mean over the responses the policy sampled of every per-response number the env
    reports in ``info`` (``true_utility`` and ``proxy_reward`` become ``sample_true_utility`` and
    ``sample_proxy_reward``; diagnostics such as ``signal_norm`` keep their names), the RM's error
    on them, and the label / oracle counters. On a contextual env, the sampled true utility is also
    split by ``info["in_blind_cluster"]``. Besides, ``eval_true_utility`` (NaN except in the last
    row) is the mean true utility of ``eval_responses`` deterministic responses of the final policy
    (see :func:`evaluate_deterministic`), the number SB3's ``evaluate_policy`` would report.
    """
    from stable_baselines3.common.callbacks import BaseCallback, CallbackList

    from agents import registry
    from agents.wrappers import AgentRewardWrapper

    agent, policy_optimizer = job.agent, job.policy_optimizer
    if policy_optimizer not in (algos := allowed_algos(agent)):
        also = f" or policy_optimizer {' or '.join(algos)}" if algos else ""
        raise ValueError(
            f"agent {agent!r} works only with the white-box optimiser{also}, got {policy_optimizer!r}"
        )
    cls = registry.get(agent)
    the_agent = cls(cls.config_cls(**job.agent_config), seed=seed)
    env = AgentRewardWrapper(gym.make(job.env_id, **job.env_kwargs), the_agent)
    rows: list[dict[str, float]] = []
    current: dict[str, list] = {}

    class Recorder(BaseCallback):
        def _on_step(self) -> bool:
            for info in self.locals["infos"]:  # one env; the truth comes on the audit channel
                if info.get("response_complete") is False:  # a token of an unfinished response
                    continue
                info = {**info, **env.get_wrapper_attr("audit")}
                if "true_utility" not in info:
                    continue
                for key, v in info.items():
                    if key in _NOT_MEASURED or not isinstance(v, _NUMBERS):
                        continue
                    current.setdefault(_RENAMED.get(key, key), []).append(float(v))
                if "in_blind_cluster" in info:
                    side = "blind_cluster" if info["in_blind_cluster"] else "other_clusters"
                    current.setdefault(f"sample_true_utility_{side}", []).append(
                        info["true_utility"]
                    )
                if info["rm_updated"]:
                    t = np.array(current["sample_true_utility"])
                    p = np.array(current["sample_proxy_reward"])
                    row = {k: float(np.mean(v)) for k, v in current.items()}
                    row.update(
                        sample_gap=p.mean() - t.mean(),
                        rm_error=np.abs(p - t).mean(),
                        labels_used=info["labels_used"],
                        oracle_queries=info["oracle_queries"],
                        oracle_grad_queries=info["oracle_grad_queries"],
                        oracle_value_equivalents=info["oracle_value_equivalents"],
                    )
                    if "in_blind_cluster" in info:  # a round may miss one side
                        for side in ("blind_cluster", "other_clusters"):
                            row.setdefault(f"sample_true_utility_{side}", np.nan)
                    rows.append(row)
                    current.clear()
                    if callback is not None:
                        callback(rows[-1])
            return len(rows) < job.rounds

    model = algorithm(policy_optimizer)(
        "MlpPolicy",
        env,
        seed=seed,
        device="cpu",
        verbose=0,
        tensorboard_log=job.tensorboard,
        **job.hyperparams,
    )
    callbacks = [*the_agent.sb3_callbacks(), Recorder()]
    model.learn(
        total_timesteps=10**9,
        callback=CallbackList(callbacks),
        tb_log_name=f"{job.env_id}/{agent}+{policy_optimizer}/seed_{seed}_sb3",
    )
    keys = list(dict.fromkeys(k for r in rows for k in r))
    history = {key: np.array([[r.get(key, np.nan)] for r in rows]) for key in keys}
    for key, value in evaluate_deterministic(model, env, eval_responses).items():
        column = np.full((len(rows), 1), np.nan)
        column[-1, 0] = value  # measured once, after the last round
        history[key] = column
    return history


def evaluate_deterministic(model, env: gym.Env, responses: int) -> dict[str, float]:
    """True utility of the trained policy's deterministic responses (SB3 ``predict``).

    Runs on a deep copy of the env, so the run's own env, RM, counters and random state are
    untouched (the copy retrains its RM on these responses as usual; they are then discarded).
    For a contextual env the utility is also split between the blind cluster and the others.
    """
    if responses < 1:
        raise ValueError(f"eval_responses must be >= 1, got {responses}")
    e = copy.deepcopy(env.unwrapped)
    true, split = [], {"blind_cluster": [], "other_clusters": []}
    obs, _ = e.reset()
    while len(true) < responses:
        action, _ = model.predict(obs, deterministic=True)
        obs, _, terminated, truncated, info = e.step(action)
        if "true_utility" in info and info.get("response_complete") is not False:
            true.append(info["true_utility"])
            if "in_blind_cluster" in info:
                side = "blind_cluster" if info["in_blind_cluster"] else "other_clusters"
                split[side].append(info["true_utility"])
        if terminated or truncated:
            obs, _ = e.reset()
    out = {"eval_true_utility": float(np.mean(true))}
    if split["blind_cluster"] or split["other_clusters"]:
        for side, vals in split.items():
            out[f"eval_true_utility_{side}"] = float(np.mean(vals or [np.nan]))
    return out
