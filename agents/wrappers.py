"""Reward wrappers that turn any stable-baselines3 algorithm into an iterative-RLHF agent.

The env keeps scoring, labelling and retraining its reward model on the rollouts every
``samples_per_round`` responses, whatever the algorithm. A wrapper only replaces the reward the
algorithm sees; ``info["true_utility"]`` and ``info["proxy_reward"]`` stay those of the env, so
``Monitor``/``evaluate_policy`` and the harness report the truth. The wrapped reward is in
``info["wrapped_reward"]``.

A response is scored under the reward model that scored it in the env (before any retraining
that the same step triggered): the wrapper keeps a shallow snapshot of the env's follower taken
before the step (parameters, optimiser state and buffer are replaced, never mutated, by an
update, so the snapshot is exact and cheap).

The response is ``env.unwrapped.last_response`` after the step (shape (1, d): the vector the RM
scores), or ``None`` while a response is still incomplete (token envs); then the reward passes
through unchanged.
"""

from __future__ import annotations

import copy

import gymnasium as gym
import torch

from agents import fpo
from agents.ensemble import RMEnsemble


class _RMRewardWrapper(gym.Wrapper):
    def step(self, action):
        core = self.env.unwrapped.core
        before = copy.copy(core)
        obs, reward, terminated, truncated, info = self.env.step(action)
        y = getattr(self.env.unwrapped, "last_response", None)
        if y is not None:
            reward = float(self.wrapped_reward(before, y.unsqueeze(1))[0, 0])
            info["oracle_queries"] = int(core.oracle_queries[0])  # the wrapper's own queries
        info["wrapped_reward"] = reward
        return obs, reward, terminated, truncated, info

    def wrapped_reward(self, core, y: torch.Tensor) -> torch.Tensor:  # pragma: no cover
        raise NotImplementedError


class FPORewardWrapper(_RMRewardWrapper):
    """Reward ``r(y) - gamma * penalty(y)`` with the FPO penalty of ``form``.

    ``practical`` needs no oracle; ``relaxed`` and ``exact`` query the labeler once per
    response (counted). Source: Gauthier, Bach & Jordan, arXiv 2605.04266, Sec. 2.
    """

    def __init__(self, env: gym.Env, form: str = "practical", gamma: float = 0.1):
        super().__init__(env)
        if form not in fpo.FORMS:
            raise ValueError(f"form must be one of {fpo.FORMS}, got {form!r}")
        if not gamma >= 0:
            raise ValueError(f"gamma must be >= 0, got {gamma!r}")
        self.form, self.gamma = form, float(gamma)

    def wrapped_reward(self, core, y):
        with torch.no_grad():
            if self.form == "exact":  # the virtual update scores y anyway
                label = self.env.unwrapped.query_labeler(y)
                pen, r = fpo.exact_penalty_and_reward(core, y, label)
            else:
                r = core.reward_model.score(core.params, y)
                pen = fpo.penalty(self.form, core, y, self.env.unwrapped.query_labeler)
        return r - self.gamma * pen


class OracleRewardWrapper(_RMRewardWrapper):
    """Reward = the true utility (a counted oracle query per response): the ceiling."""

    def wrapped_reward(self, core, y):
        return self.env.unwrapped.true_utility(y)


class StaticRewardWrapper(_RMRewardWrapper):
    """Reward = the RM as it was when the experiment started (the env still retrains it).

    Source: the fixed-proxy setting of Gao et al., arXiv 2210.10760.
    """

    def reset(self, **kwargs):
        out = self.env.reset(**kwargs)
        core = self.env.unwrapped.core
        if kwargs.get("seed") is not None or not hasattr(self, "params0"):
            self.params0 = dict(core.params)
        return out

    def wrapped_reward(self, core, y):
        return core.reward_model.score(self.params0, y)


class EnsembleRewardWrapper(_RMRewardWrapper):
    """Reward = ``mean - k * std`` (or ``min``) over an ensemble of K reward models.

    Members besides the env's RM train on the env's labelled buffer each time it retrains.
    Source: Coste et al., "Reward Model Ensembles Help Mitigate Overoptimization",
    arXiv 2310.02743.
    """

    def __init__(self, env: gym.Env, size: int = 5, mode: str = "mean_std", k: float = 1.0):
        super().__init__(env)
        self.size, self.mode, self.k = size, mode, k
        self.ensemble: RMEnsemble | None = None

    def reset(self, **kwargs):
        out = self.env.reset(**kwargs)
        core = self.env.unwrapped.core
        if kwargs.get("seed") is not None or self.ensemble is None:
            self.ensemble = RMEnsemble(core, self.size, core.seeds)
        return out

    def wrapped_reward(self, core, y):
        with torch.no_grad():
            reward = self.ensemble.pessimistic(y, self.mode, self.k, core=core)
        self.ensemble.sync()
        return reward
