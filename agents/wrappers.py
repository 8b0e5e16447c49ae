"""One reward wrapper that turns any agent and any stable-baselines3 algorithm into an
iterative-RLHF learner (in the spirit of imitation's ``RewardVecEnvWrapper(reward_fn=...)``).

The env keeps scoring, labelling and retraining its reward model on the rollouts every
``samples_per_round`` responses, whatever the algorithm. The wrapper only replaces the reward the
algorithm sees by the agent's score (:meth:`agents.whitebox.Agent.sb3_score`), also in
``info["wrapped_reward"]``; ``info["proxy_reward"]`` stays the env's.

A response is scored under the reward model that scored it in the env (before any retraining
that the same step triggered): the agent's copy of the follower is refreshed only after it has
scored the step, and that RM's score of the response is the env's (:class:`_KnownScore`).

The response is ``env.unwrapped.last_response`` right after the step (shape (1, d): the vector
the RM scores), or ``None`` while a response is still incomplete (token envs); then the reward
passes through unchanged.
"""

from __future__ import annotations

import gymnasium as gym
import torch

from agents.follower import SEALED_INFO, Follower, Oracle, answer, follower_state
from agents.whitebox import Agent, counters


class AgentRewardWrapper(gym.Wrapper):
    """Pays an SB3 algorithm ``agent.sb3_score`` for each response the env scores.

    Args:
        env: a suite env (single, not vectorised), or in harness runs the agent process's stand-in
            for the env (:class:`baselines.judge.RemoteEnv`).
        agent: an :class:`~agents.whitebox.Agent`; its :meth:`~agents.whitebox.Agent.start`
            runs at every ``reset(seed=...)`` (and the first reset).
        seal_truth: remove the truth and the env's diagnostics from ``info`` (what the algorithm
            and its callbacks see); they are in :attr:`audit` after each step instead. ``False``
            keeps ``info`` whole (for your own monitoring).
    """

    def __init__(self, env: gym.Env, agent: Agent, seal_truth: bool = True):
        super().__init__(env)
        if not isinstance(agent, Agent):
            raise TypeError(f"agent must be an agents.Agent, got {type(agent).__name__}")
        self.agent, self.seal_truth = agent, seal_truth
        self.reads = agent.declared_reads(sb3=True)
        inner = env.unwrapped
        self._link = inner if hasattr(inner, "follower_state") else _Local(inner, self.reads)
        self.audit: dict = {}  # the last step's sealed info
        self.follower: Follower | None = None

    def reset(self, **kwargs):
        out = self.env.reset(**kwargs)
        if kwargs.get("seed") is not None or self.follower is None:
            self.follower = Follower(self.reads, self._link.follower_state(True))
            self.agent.start(self.follower)
        return out

    def step(self, action):
        obs, reward, terminated, truncated, info = self.env.step(action)
        view, y = self.follower, self._link.last_response
        if y is not None:
            y = y.unsqueeze(1)
            proxy, rm = info.get("proxy_reward"), vars(view).get("reward_model")
            if isinstance(proxy, float) and "params" in vars(view):
                view.reward_model = _KnownScore(rm, view.params, y, proxy)
            with torch.no_grad():
                reward = float(self.agent.sb3_score(view, y, self._link)[0, 0])
            view.reward_model = rm
            info.update(self._link.counts())  # with the agent's own queries for this step
        if info.get("rm_updated"):
            view.update(self._link.follower_state(False))
        info["wrapped_reward"] = reward
        if self.seal_truth:
            self.audit = {k: info.pop(k) for k in SEALED_INFO if k in info}
        return obs, reward, terminated, truncated, info


class _Local(Oracle):
    """The link to a suite env in this process: its follower's state and its counted queries."""

    def __init__(self, env, reads: tuple[str, ...]):
        super().__init__(self.ask)
        self.env, self.reads = env, reads

    def follower_state(self, start: bool) -> dict:
        return follower_state(self.env.core, slice(None), self.reads, start)

    @property
    def last_response(self):
        return self.env.last_response

    def counts(self) -> dict[str, int]:
        """The env's query counters now (those that ``info`` reports)."""
        return {k: int(v[0]) for k, v in counters(self.env.core).items() if k != "labels_used"}

    def ask(self, kind: str, ys):
        return answer(self.env.core, slice(None), self.reads, kind, ys, self.env.ys_error)


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
