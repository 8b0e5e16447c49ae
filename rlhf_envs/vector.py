"""Vector forms of the suite's envs, whose meaning is chosen: one experiment, or independent ones.

Each env holds a follower (reward model, labeler, buffer), so ``num_envs`` copies mean one of:

* ``follower="shared"``: one experiment with parallel samplers. The copies sample for ONE
  follower: copy ``i``'s response goes to the core of copy 0 (its ``step``, once per response,
  copies in order), so one reward model is labelled and retrained on all of them and its round
  advances ``num_envs`` times as fast as a single env's. ``reset(seed=s)`` starts the experiment
  from ``s`` (copy 0's seed); copy ``i`` draws its own prompts from ``s + i``. What a researcher
  training one policy with parallel rollouts expects; with one copy it is the single env.
* ``follower="independent"``: ``num_envs`` experiments (e.g. seeds), each with its own follower;
  experiment ``i`` reset with ``s`` gives exactly the numbers of the single env reset with
  ``s + i``. Gymnasium's meaning of ``gym.make_vec`` and SB3's ``make_vec_env``.

Every form resets a copy in the step that finishes its episode (``AutoresetMode.SAME_STEP``), so
every action is a response (or, for the token env, a token) that counts. :func:`make_vec` gives
the same meaning on all four envs for the same arguments; :class:`SharedFollower` is the shared
form for SB3 and rl-zoo3.
"""

from __future__ import annotations

import functools
import multiprocessing
from typing import Any

import gymnasium as gym
from gymnasium.vector import AsyncVectorEnv, AutoresetMode, SyncVectorEnv, VectorEnv
from stable_baselines3.common.vec_env import DummyVecEnv, VecEnvWrapper

FOLLOWERS = ("shared", "independent")
VECTORIZATION_MODES = ("sync", "async", "vector_entry_point")
#: processes for ``"async"`` start fresh: a fork after torch's threads started can hang
START_METHOD = "forkserver" if "forkserver" in multiprocessing.get_all_start_methods() else "spawn"


def _make(env_id: str, kwargs: dict[str, Any]) -> gym.Env:
    """``gym.make(env_id, **kwargs)``; a module-level function, so async workers can unpickle it
    (which imports this package and registers the envs)."""
    return gym.make(env_id, **kwargs)


class _OwnSeed(gym.Wrapper):
    """A copy ``i > 0`` of a shared form: ``reset(seed=s)`` seeds this copy's own draws (its
    prompts) and leaves the shared follower, which copy 0's reset starts, as it is."""

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        if seed is not None:
            gym.Env.reset(self.env.unwrapped, seed=seed)
        return self.env.reset(options=options)


def share_follower(envs: list[gym.Env]) -> list[gym.Env]:
    """``envs`` made into samplers of the follower of ``envs[0]`` (its core, shared by all).

    Reset them in order, copy 0 first (vector envs do). Raises ``ValueError`` unless every env is
    the same env class with the same arguments.
    """
    lead = envs[0].unwrapped
    for env in envs[1:]:
        if type(env.unwrapped) is not type(lead) or env.unwrapped.config != lead.config:
            raise ValueError(
                "envs must be copies of one env id with the same arguments to share a follower, "
                f"got {type(lead).__name__} and {type(env.unwrapped).__name__} with other settings"
            )
        env.unwrapped.core = lead.core
    return [envs[0], *(_OwnSeed(env) for env in envs[1:])]


def make_vec(
    env_id: str,
    num_envs: int,
    follower: str = "shared",
    vectorization_mode: str | None = None,
    **kwargs: Any,
) -> VectorEnv:
    """``num_envs`` copies of ``env_id`` (made with ``kwargs``) as a Gymnasium vector env.

    Args:
        env_id: a registered suite env.
        num_envs: the copies (>= 1).
        follower: ``"shared"`` (one experiment; sync only) or ``"independent"`` (one per copy).
        vectorization_mode: how independent copies run: ``"sync"``, ``"async"`` (subprocesses
            started by :data:`START_METHOD`) or ``"vector_entry_point"`` (the blind-spot envs'
            batched tensor program; the default where the env has one, else ``"sync"``). The
            same numbers in every mode.
    """
    if isinstance(num_envs, bool) or not isinstance(num_envs, int) or num_envs < 1:
        raise ValueError(f"num_envs must be an int >= 1, got {num_envs!r}")
    if follower not in FOLLOWERS:
        raise ValueError(f"follower must be one of {FOLLOWERS}, got {follower!r}")
    if vectorization_mode not in (None, *VECTORIZATION_MODES):
        raise ValueError(
            f"vectorization_mode must be one of {VECTORIZATION_MODES} or None, "
            f"got {vectorization_mode!r}"
        )
    batched = gym.spec(env_id).vector_entry_point is not None
    if follower == "shared":
        if vectorization_mode not in (None, "sync"):
            raise ValueError(
                "vectorization_mode must be 'sync' or None for follower='shared' (the copies "
                f"share one follower in one process), got {vectorization_mode!r}"
            )
        envs = share_follower([gym.make(env_id, **kwargs) for _ in range(num_envs)])
        return SyncVectorEnv([lambda e=e: e for e in envs], autoreset_mode=AutoresetMode.SAME_STEP)
    mode = vectorization_mode or ("vector_entry_point" if batched else "sync")
    if mode == "vector_entry_point":
        if not batched:
            raise ValueError(
                f"vectorization_mode 'vector_entry_point' needs a batched env "
                f"({env_id} has none); use 'sync' or 'async'"
            )
        return gym.make_vec(env_id, num_envs, "vector_entry_point", **kwargs)
    fns = [functools.partial(_make, env_id, kwargs)] * num_envs
    if mode == "sync":
        return SyncVectorEnv(fns, autoreset_mode=AutoresetMode.SAME_STEP)
    return AsyncVectorEnv(fns, autoreset_mode=AutoresetMode.SAME_STEP, context=START_METHOD)


class SharedFollower(VecEnvWrapper):
    """SB3 form of ``follower="shared"``: the copies of an SB3 ``DummyVecEnv`` sample for the
    follower of copy 0, so SB3 and rl-zoo3 train ONE experiment with ``n_envs`` samplers.

    ``SharedFollower(make_vec_env(env_id, n_envs=4, seed=0))`` (each copy keeps its ``Monitor``);
    rl-zoo3: ``vec_env_wrapper: rlhf_envs.vector.SharedFollower`` in the hyperparameters. SB3's
    own ``make_vec_env`` alone gives independent experiments (``follower="independent"``).
    """

    def __init__(self, venv: DummyVecEnv):
        if not isinstance(venv, DummyVecEnv):
            raise TypeError(
                "venv must be an SB3 DummyVecEnv (the copies share one follower in one "
                f"process), got {type(venv).__name__}"
            )
        venv.envs[:] = share_follower(venv.envs)
        super().__init__(venv)

    def reset(self):
        return self.venv.reset()

    def step_wait(self):
        return self.venv.step_wait()
