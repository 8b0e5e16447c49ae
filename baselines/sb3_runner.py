"""Agents whose policy optimiser is a stable-baselines3 algorithm (PPO, SAC, A2C).

The env keeps retraining its reward model on the rollouts; the agent decides only which reward
the algorithm sees: a reward wrapper around the env (see :mod:`agents.wrappers`), or, for ``kl``,
the naive reward minus a per-step KL penalty to the initial policy, applied by a callback inside
the algorithm's rollout collection (see :mod:`agents.sb3_kl`; PPO and A2C only). Metrics are
recorded per RM round from the responses the policy actually produced in that round (its true
utility, the proxy it was paid, the RM's error on them), the same columns as the white-box
agents' ``metrics.csv``.
"""

from __future__ import annotations

import copy
from typing import Any

import gymnasium as gym
import numpy as np

ALGOS = ("ppo", "sac", "a2c")
WRAPPED_AGENTS = ("naive", "fpo", "fpo-relaxed", "fpo-exact", "oracle", "static", "ensemble")
CALLBACK_AGENTS = ("kl",)  # naive reward + a callback that reshapes it inside the algorithm
SB3_AGENTS = WRAPPED_AGENTS + CALLBACK_AGENTS
# agents that work with only some algorithms (the rest work with all of ALGOS)
AGENT_ALGOS: dict[str, tuple[str, ...]] = {"kl": ("ppo", "a2c")}


def allowed_algos(agent: str) -> tuple[str, ...]:
    """The SB3 algorithms that ``agent`` works with."""
    return AGENT_ALGOS.get(agent, ALGOS)


def wrap(env: gym.Env, agent: str, agent_config: dict[str, Any]) -> gym.Env:
    """The reward wrapper that makes ``agent`` out of any SB3 algorithm."""
    from agents import wrappers

    if agent in ("naive", "kl"):  # kl: the penalty comes from a callback (see learn_sb3)
        return env
    if agent in ("fpo", "fpo-relaxed", "fpo-exact"):
        form = {"fpo": "practical", "fpo-relaxed": "relaxed", "fpo-exact": "exact"}[agent]
        return wrappers.FPORewardWrapper(env, form, agent_config["gamma"])
    if agent == "oracle":
        return wrappers.OracleRewardWrapper(env)
    if agent == "static":
        return wrappers.StaticRewardWrapper(env)
    if agent == "ensemble":
        return wrappers.EnsembleRewardWrapper(
            env,
            agent_config.get("ensemble_size", 5),
            agent_config.get("ensemble_mode", "mean_std"),
            agent_config.get("ensemble_k", 1.0),
        )
    raise ValueError(
        f"agent {agent!r} has no SB3 form (allowed with --optimizer: {', '.join(SB3_AGENTS)})"
    )


def learn_sb3(
    env_id: str,
    env_kwargs: dict[str, Any],
    agent: str,
    agent_config: dict[str, Any],
    optimizer: str,
    hyperparams: dict[str, Any],
    rounds: int,
    seed: int,
    callback=None,
    eval_responses: int = 64,
) -> dict[str, np.ndarray]:
    """Train ``optimizer`` on the wrapped env until ``rounds`` RM rounds; per-round metrics.

    Besides the per-round columns, ``eval_true_utility`` (NaN except in the last row) is the
    mean true utility of ``eval_responses`` deterministic responses of the final policy (see
    :func:`evaluate_deterministic`), the number SB3's ``evaluate_policy`` would report.
    """
    import stable_baselines3 as sb3
    from stable_baselines3.common.callbacks import BaseCallback, CallbackList

    if optimizer not in allowed_algos(agent):
        raise ValueError(
            f"agent {agent!r} works only with optimizer {' or '.join(allowed_algos(agent))}, "
            f"got {optimizer!r}"
        )
    env = wrap(gym.make(env_id, **env_kwargs), agent, agent_config)
    core = env.unwrapped.core
    k = getattr(core.config, "signal_dims", None)
    blind = getattr(getattr(env.unwrapped, "config", None), "blind_cluster", None)
    rows: list[dict[str, float]] = []
    current: dict[str, list] = {
        "true": [],
        "proxy": [],
        "sig": [],
        "noise": [],
        "in_blind": [],
        "out_blind": [],
    }

    class Recorder(BaseCallback):
        def _on_step(self) -> bool:
            for info in self.locals["infos"]:
                if "true_utility" not in info or info.get("response_complete") is False:
                    continue
                current["true"].append(info["true_utility"])
                current["proxy"].append(info["proxy_reward"])
                if blind is not None:
                    side = "in_blind" if info["cluster"] == blind else "out_blind"
                    current[side].append(info["true_utility"])
                y = getattr(env.unwrapped, "last_response", None)
                if k is not None and y is not None and y.shape[-1] == core.config.dims:
                    current["sig"].append(float(y[0, :k].norm()))
                    current["noise"].append(float(y[0, k:].norm()))
                if info["rm_updated"]:
                    t, p = np.array(current["true"]), np.array(current["proxy"])
                    rows.append(
                        {
                            "true_utility": t.mean(),
                            "proxy_reward": p.mean(),
                            "gap": p.mean() - t.mean(),
                            "sample_true_utility": t.mean(),
                            "sample_proxy_reward": p.mean(),
                            "rm_error": np.abs(p - t).mean(),
                            "signal_norm": np.mean(current["sig"]) if current["sig"] else np.nan,
                            "noise_norm": np.mean(current["noise"]) if current["noise"] else np.nan,
                            "labels_used": info["labels_used"],
                            "oracle_queries": info["oracle_queries"],
                        }
                    )
                    if blind is not None:
                        for side, key in (("in_blind", "blind"), ("out_blind", "other")):
                            vals = current[side]
                            rows[-1][f"true_utility_{key}_cluster{'s' * (key == 'other')}"] = (
                                float(np.mean(vals)) if vals else np.nan
                            )
                    for v in current.values():
                        v.clear()
                    if callback is not None:
                        callback(rows[-1])
            return len(rows) < rounds

    cls = {"ppo": sb3.PPO, "sac": sb3.SAC, "a2c": sb3.A2C}[optimizer]
    model = cls("MlpPolicy", env, seed=seed, device="cpu", verbose=0, **hyperparams)
    callbacks: list[BaseCallback] = []
    if agent == "kl":
        from agents.sb3_kl import KLPenaltyCallback

        callbacks.append(KLPenaltyCallback(agent_config["kl_coef"]))
    callbacks.append(Recorder())
    model.learn(total_timesteps=10**9, callback=CallbackList(callbacks))
    history = {key: np.array([[r[key]] for r in rows]) for key in rows[0]}
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
    blind = getattr(getattr(e, "config", None), "blind_cluster", None)
    true, split = [], {"blind": [], "other": []}
    obs, _ = e.reset()
    while len(true) < responses:
        action, _ = model.predict(obs, deterministic=True)
        obs, _, terminated, truncated, info = e.step(action)
        if "true_utility" in info and info.get("response_complete") is not False:
            true.append(info["true_utility"])
            if blind is not None:
                split["blind" if info["cluster"] == blind else "other"].append(info["true_utility"])
        if terminated or truncated:
            obs, _ = e.reset()
    out = {"eval_true_utility": float(np.mean(true))}
    if blind is not None:
        out["eval_true_utility_blind_cluster"] = float(np.mean(split["blind"] or [np.nan]))
        out["eval_true_utility_other_clusters"] = float(np.mean(split["other"] or [np.nan]))
    return out
