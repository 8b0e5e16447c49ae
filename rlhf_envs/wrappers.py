"""The true utility where RL loggers look: beside the proxy return of each finished episode.

:class:`RecordTruth` / :class:`VectorRecordTruth` put it in ``info["episode"]``, SB3's ``Monitor``
(``info_keywords=TRUTH_KEYS``; rl-zoo3: ``monitor_kwargs``) in its CSV, :class:`LogTruth` in logs.
"""

from __future__ import annotations

from collections import deque

import numpy as np
from gymnasium.vector import AutoresetMode
from gymnasium.wrappers import RecordEpisodeStatistics
from gymnasium.wrappers import vector as vector_wrappers
from stable_baselines3.common.callbacks import BaseCallback

#: the info keys logged beside the return (SB3: ``Monitor(env, info_keywords=TRUTH_KEYS)``)
TRUTH_KEYS = ("true_utility", "proxy_reward")


class RecordTruth(RecordEpisodeStatistics):
    """``RecordEpisodeStatistics`` whose ``info["episode"]`` also holds ``true_utility`` and
    ``proxy_reward``, their sums over the episode (the token env: the finished response's)."""

    def __init__(self, env, buffer_length: int = 100, stats_key: str = "episode"):
        super().__init__(env, buffer_length, stats_key)
        self.truth_queue: deque[float] = deque(maxlen=buffer_length)
        self._sums = dict.fromkeys(TRUTH_KEYS, 0.0)

    def reset(self, **kwargs):
        self._sums = dict.fromkeys(TRUTH_KEYS, 0.0)
        return super().reset(**kwargs)

    def step(self, action):
        obs, reward, terminated, truncated, info = super().step(action)
        for key in TRUTH_KEYS:
            if key not in info:
                msg = "(AgentRewardWrapper keeps the truth with seal_truth=False)"
                raise KeyError(f"RecordTruth needs info[{key!r}]: wrap a suite env {msg}")
            self._sums[key] += float(info[key])
        if self._stats_key in info:  # the episode ended
            info[self._stats_key].update(self._sums)
            self.truth_queue.append(self._sums["true_utility"])
            self._sums = dict.fromkeys(TRUTH_KEYS, 0.0)
        return obs, reward, terminated, truncated, info


class VectorRecordTruth(vector_wrappers.RecordEpisodeStatistics):
    """:class:`RecordTruth` for a vector env (either autoreset mode; the values are read from
    ``infos`` and ``infos["final_info"]``): arrays, 0 where no episode ended, as ``r``."""

    def __init__(self, env, buffer_length: int = 100, stats_key: str = "episode"):
        super().__init__(env, buffer_length, stats_key)
        self.truth_queue: deque[float] = deque(maxlen=buffer_length)
        self._sums = np.zeros((len(TRUTH_KEYS), self.num_envs))

    def reset(self, seed=None, options=None):
        self._sums[:, (options or {}).get("reset_mask", slice(None))] = 0.0
        return super().reset(seed=seed, options=options)

    def step(self, actions):
        resetting = self.prev_dones.copy()  # next-step autoreset: these steps are resets
        obs, rewards, terminations, truncations, infos = super().step(actions)
        if self._autoreset_mode == AutoresetMode.NEXT_STEP:
            self._sums[:, resetting] = 0.0
        for j, key in enumerate(TRUTH_KEYS):
            for part in (infos, infos.get("final_info", {})):
                if key in part:  # 0 where the mask "_key" says there is no value
                    mask = part.get(f"_{key}", np.ones(self.num_envs, dtype=bool))
                    self._sums[j] += np.where(mask, np.asarray(part[key], dtype=float), 0.0)
        dones = np.logical_or(terminations, truncations)
        if dones.any():
            for j, key in enumerate(TRUTH_KEYS):
                infos[self._stats_key][key] = np.where(dones, self._sums[j], 0.0)
            self.truth_queue.extend(self._sums[0, dones])
            if self._autoreset_mode == AutoresetMode.SAME_STEP:
                self._sums[:, dones] = 0.0
        return obs, rewards, terminations, truncations, infos


class LogTruth(BaseCallback):
    """SB3 callback: ``rollout/ep_true_utility_mean`` and ``rollout/ep_proxy_reward_mean``
    beside ``rollout/ep_rew_mean``.

    Means over ``ep_info_buffer`` (``Monitor``/``VecMonitor`` with ``info_keywords=TRUTH_KEYS``)
    at each rollout's end; with ``log_every`` it also writes a table every ``log_every`` steps
    (``learn(log_interval=None)``; rl-zoo3: ``--log-interval -2``), from the same episodes.
    """

    def __init__(self, log_every: int | None = None, verbose: int = 0):
        super().__init__(verbose)
        if not (log_every is None or (type(log_every) is int and log_every >= 1)):
            raise ValueError(f"log_every must be None or an int >= 1, got {log_every!r}")
        self.log_every, self._logged = log_every, 0

    def _on_rollout_end(self) -> None:
        for key in TRUTH_KEYS:
            values = [ep[key] for ep in self.model.ep_info_buffer or () if key in ep]
            if values:
                self.logger.record(f"rollout/ep_{key}_mean", float(np.mean(values)))

    def _on_step(self) -> bool:
        if self.log_every and self.num_timesteps >= self._logged + self.log_every:
            self._logged = self.num_timesteps - self.num_timesteps % self.log_every
            self._on_rollout_end()  # the means now, then the table
            self.model.dump_logs()
        return True
