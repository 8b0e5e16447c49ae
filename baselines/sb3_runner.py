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
) -> dict[str, np.ndarray]:
    """Train ``optimizer`` on the wrapped env until ``rounds`` RM rounds; per-round metrics."""
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
    rows: list[dict[str, float]] = []
    current: dict[str, list] = {"true": [], "proxy": [], "sig": [], "noise": []}

    class Recorder(BaseCallback):
        def _on_step(self) -> bool:
            for info in self.locals["infos"]:
                if "true_utility" not in info or info.get("response_complete") is False:
                    continue
                current["true"].append(info["true_utility"])
                current["proxy"].append(info["proxy_reward"])
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
    return {key: np.array([[r[key]] for r in rows]) for key in rows[0]}
