"""One reward wrapper that turns any agent and any stable-baselines3 algorithm into an
iterative-RLHF learner (in the spirit of imitation's ``RewardVecEnvWrapper(reward_fn=...)``).

The env keeps scoring, labelling and retraining its reward model on the rollouts every
``samples_per_round`` responses, whatever the algorithm. The wrapper only replaces the reward the
algorithm sees by the agent's score (:meth:`agents.whitebox.Agent.sb3_score`), also in
``info["wrapped_reward"]``; ``info["proxy_reward"]`` stays the env's.

A response is scored under the reward model that scored it in the env (before any retraining
that the same step triggered): the wrapper keeps a shallow snapshot of the env's follower taken
before the step (parameters, optimiser state and buffer are replaced, never mutated, by an
update, so the snapshot is exact and cheap). The env has already computed that RM's score of the
response (its ``info["proxy_reward"]``): an agent that asks the snapshot's reward model for it
gets that number instead of a second forward pass (the same float; see :class:`_KnownScore`).

The response is ``env.unwrapped.last_response`` right after the step (shape (1, d): the vector
the RM scores), or ``None`` while a response is still incomplete (token envs); then the reward
passes through unchanged.
"""

from __future__ import annotations

import copy
import functools

import gymnasium as gym
import torch

from agents.sealed import FollowerView, Oracle, seal_info
from agents.whitebox import Agent


class AgentRewardWrapper(gym.Wrapper):
    """Pays an SB3 algorithm ``agent.sb3_score`` for each response the env scores.

    The agent sees the follower and the counted queries through :mod:`agents.sealed`.

    Args:
        env: a suite env (single, not vectorised).
        agent: an :class:`~agents.whitebox.Agent`; its :meth:`~agents.whitebox.Agent.start`
            runs at every ``reset(seed=...)`` (and the first reset).
        seal_truth: remove the truth and the env's diagnostics from ``info`` (what the algorithm
            and its callbacks see); they are in :attr:`audit` after each step instead. The
            harness seals; ``False`` keeps ``info`` whole (for your own monitoring).
    """

    def __init__(self, env: gym.Env, agent: Agent, seal_truth: bool = True):
        super().__init__(env)
        if not isinstance(agent, Agent):
            raise TypeError(f"agent must be an agents.Agent, got {type(agent).__name__}")
        self.agent, self.seal_truth = agent, seal_truth
        self._inner = env.unwrapped  # the suite env (fixed for the life of the wrapper)
        self.oracle = Oracle(self._inner)
        self.audit: dict = {}  # the last step's sealed info
        self._started = False

    def reset(self, **kwargs):
        out = self.env.reset(**kwargs)
        if kwargs.get("seed") is not None or not self._started:
            self.agent.start(FollowerView(self._inner.core))
            self._started = True
        return out

    def step(self, action):
        core = self._inner.core
        before = _snapshot(core)
        obs, reward, terminated, truncated, info = self.env.step(action)
        y = self._inner.last_response
        if y is not None:
            y = y.unsqueeze(1)
            proxy = info.get("proxy_reward")
            if isinstance(proxy, float):
                before.reward_model = _KnownScore(core.reward_model, before.params, y, proxy)
            with torch.no_grad():
                reward = float(self.agent.sb3_score(FollowerView(before), y, self.oracle)[0, 0])
            for key in ("oracle_queries", "oracle_grad_queries", "oracle_value_equivalents"):
                info[key] = int(getattr(core, key)[0])  # the agent's own queries
        info["wrapped_reward"] = reward
        if self.seal_truth:
            info, self.audit = seal_info(info)
        return obs, reward, terminated, truncated, info


def _snapshot(core):
    """A shallow copy of ``core``: what ``copy.copy`` makes of a plain object, without its
    generic ``__reduce_ex__`` round trip (``copy.copy`` itself for any other object)."""
    if not _plain_copy(type(core)):
        return copy.copy(core)
    snap = object.__new__(type(core))
    snap.__dict__.update(core.__dict__)
    return snap


@functools.cache
def _plain_copy(cls: type) -> bool:
    """Whether ``copy.copy`` of a ``cls`` instance is a new instance with the same ``__dict__``
    (no copy or pickling hooks of its own, no slots)."""
    hooks = ("__copy__", "__setstate__", "__getnewargs__", "__getnewargs_ex__")
    return (
        not any(hasattr(cls, h) for h in hooks)
        and all(getattr(cls, m) is getattr(object, m) for m in ("__reduce_ex__", "__reduce__"))
        and getattr(cls, "__getstate__", None) is getattr(object, "__getstate__", None)
        and not any("__slots__" in vars(c) for c in cls.__mro__)
    )


class _KnownScore:
    """The env's reward model, except that ``score(params, y)`` for the pre-step ``params`` and
    the response ``y`` (the same objects, no gradient asked) is a fresh tensor of ``value``, the
    float the env computed for that step; every other call goes to the reward model itself."""

    __slots__ = ("_rm", "_params", "_y", "_value")

    def __init__(self, rm, params, y: torch.Tensor, value: float):
        self._rm, self._params, self._y, self._value = rm, params, y, value

    def score(self, params, y: torch.Tensor) -> torch.Tensor:
        if params is self._params and y is self._y and not y.requires_grad:
            return torch.full(y.shape[:2], self._value, dtype=y.dtype)
        return self._rm.score(params, y)

    def __getattr__(self, name: str):
        return getattr(self._rm, name)
