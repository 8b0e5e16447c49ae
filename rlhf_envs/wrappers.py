"""The true utility where RL loggers look: beside the proxy return of each finished episode.

Gymnasium's ``RecordEpisodeStatistics`` (and CleanRL, which reads it) and SB3's ``Monitor`` report
an episode's return, which in this suite is the reward model's score, the proxy. Here:

* :class:`RecordTruth` / :class:`VectorRecordTruth`: ``info["episode"]`` gets ``true_utility`` and
  ``proxy_reward`` (the episode's sums) beside ``r``, ``l`` and ``t``.
* SB3 and rl-zoo3: ``Monitor(env, info_keywords=TRUTH_KEYS)`` (rl-zoo3: ``monitor_kwargs``) puts
  them in the monitor CSV, and the callback :class:`LogTruth` puts their means beside
  ``rollout/ep_rew_mean`` in SB3's logs.
"""

from __future__ import annotations

from collections import deque
from typing import Any

import numpy as np
from gymnasium.vector import AutoresetMode
from gymnasium.wrappers import RecordEpisodeStatistics
from gymnasium.wrappers import vector as vector_wrappers
from stable_baselines3.common.callbacks import BaseCallback

#: the info keys logged beside the return (SB3: ``Monitor(env, info_keywords=TRUTH_KEYS)``)
TRUTH_KEYS = ("true_utility", "proxy_reward")
_MISSING = (
    "RecordTruth needs info[{key!r}] on every step: wrap a suite env, below any wrapper that seals "
    "the truth (agents.wrappers.AgentRewardWrapper keeps it with seal_truth=False)"
)


class RecordTruth(RecordEpisodeStatistics):
    """``RecordEpisodeStatistics`` whose ``info["episode"]`` also holds the truth and the proxy.

    At the end of an episode ``info["episode"]`` is ``{"r", "l", "t", "true_utility",
    "proxy_reward"}``, the last two the sums of ``info[...]`` over the episode (for the token
    env, the finished response's values); :attr:`truth_queue` and :attr:`proxy_queue` keep the
    last ``buffer_length`` of them, as ``return_queue`` keeps the returns.
    """

    def __init__(self, env, buffer_length: int = 100, stats_key: str = "episode"):
        super().__init__(env, buffer_length, stats_key)
        self.truth_queue: deque[float] = deque(maxlen=buffer_length)
        self.proxy_queue: deque[float] = deque(maxlen=buffer_length)
        self._sums = dict.fromkeys(TRUTH_KEYS, 0.0)

    def reset(self, **kwargs: Any):
        self._sums = dict.fromkeys(TRUTH_KEYS, 0.0)
        return super().reset(**kwargs)

    def step(self, action):
        obs, reward, terminated, truncated, info = super().step(action)
        for key in TRUTH_KEYS:
            if key not in info:
                raise KeyError(_MISSING.format(key=key))
            self._sums[key] += float(info[key])
        if self._stats_key in info:  # the episode ended
            info[self._stats_key].update(self._sums)
            self.truth_queue.append(self._sums["true_utility"])
            self.proxy_queue.append(self._sums["proxy_reward"])
            self._sums = dict.fromkeys(TRUTH_KEYS, 0.0)
        return obs, reward, terminated, truncated, info


class VectorRecordTruth(vector_wrappers.RecordEpisodeStatistics):
    """:class:`RecordTruth` for a vector env: ``infos["episode"]`` gets the arrays
    ``true_utility`` and ``proxy_reward`` (0 where no episode ended, as ``r``).

    Works with both autoreset modes: it reads a finished episode's last values from
    ``infos["final_info"]`` (Gymnasium's same-step form) or from ``infos`` itself.
    """

    def __init__(self, env, buffer_length: int = 100, stats_key: str = "episode"):
        super().__init__(env, buffer_length, stats_key)
        self.truth_queue: deque[float] = deque(maxlen=buffer_length)
        self.proxy_queue: deque[float] = deque(maxlen=buffer_length)
        self._sums = np.zeros((len(TRUTH_KEYS), self.num_envs))

    def reset(self, seed=None, options=None):
        mask = (options or {}).get("reset_mask", np.ones(self.num_envs, dtype=bool))
        self._sums[:, mask] = 0.0
        return super().reset(seed=seed, options=options)

    def step(self, actions):
        resetting = self.prev_dones.copy()  # next-step autoreset: these steps are resets
        obs, rewards, terminations, truncations, infos = super().step(actions)
        if self._autoreset_mode == AutoresetMode.NEXT_STEP:
            self._sums[:, resetting] = 0.0
        for j, key in enumerate(TRUTH_KEYS):
            self._sums[j] += _values(infos, key, self.num_envs)
            self._sums[j] += _values(infos.get("final_info", {}), key, self.num_envs)
        dones = np.logical_or(terminations, truncations)
        if dones.any():
            for j, key in enumerate(TRUTH_KEYS):
                infos[self._stats_key][key] = np.where(dones, self._sums[j], 0.0)
            self.truth_queue.extend(self._sums[0, dones])
            self.proxy_queue.extend(self._sums[1, dones])
            if self._autoreset_mode == AutoresetMode.SAME_STEP:
                self._sums[:, dones] = 0.0
        return obs, rewards, terminations, truncations, infos


def _values(infos: dict, key: str, n: int) -> np.ndarray:
    """``infos[key]`` as floats, 0 where its mask ``infos["_" + key]`` is False or absent."""
    if key not in infos:
        return np.zeros(n)
    values = np.asarray(infos[key], dtype=np.float64)
    return np.where(infos.get(f"_{key}", np.ones(n, dtype=bool)), values, 0.0)


class LogTruth(BaseCallback):
    """SB3 callback: ``rollout/ep_true_utility_mean`` and ``rollout/ep_proxy_reward_mean``
    beside ``rollout/ep_rew_mean``.

    The means are over the episodes in the model's ``ep_info_buffer``, which has the keys when
    the env is monitored with ``Monitor(env, info_keywords=TRUTH_KEYS)`` (rl-zoo3:
    ``monitor_kwargs``) or ``VecMonitor(venv, info_keywords=TRUTH_KEYS)``. They are recorded at
    the end of each rollout, for the algorithm's own log tables; with ``log_every`` (>= 1) the
    callback also writes a table every ``log_every`` steps (pass ``log_interval=None`` to
    ``learn``; rl-zoo3: ``--log-interval -2``), the truth and the return from the same episodes.
    """

    def __init__(self, log_every: int | None = None, verbose: int = 0):
        super().__init__(verbose)
        ok = log_every is None or (type(log_every) is int and log_every >= 1)
        if not ok:
            raise ValueError(f"log_every must be None or an int >= 1, got {log_every!r}")
        self.log_every, self._logged = log_every, 0

    def _record(self) -> None:
        for key in TRUTH_KEYS:
            values = [ep[key] for ep in self.model.ep_info_buffer or () if key in ep]
            if values:
                self.logger.record(f"rollout/ep_{key}_mean", float(np.mean(values)))

    def _on_step(self) -> bool:
        if self.log_every and self.num_timesteps >= self._logged + self.log_every:
            self._logged = self.num_timesteps - self.num_timesteps % self.log_every
            self._record()
            self.model.dump_logs()
        return True

    def _on_rollout_end(self) -> None:
        self._record()
