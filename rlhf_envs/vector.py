"""Vector forms of the suite's envs, whose meaning is chosen: one experiment, or independent ones.

``follower="shared"``: ONE experiment, parallel samplers: each copy's response goes to copy 0's
core (its ``step``, copies in order): one RM, labelled and retrained on all, whose round advances
``num_envs`` times as fast. ``"independent"``: copy ``i`` reset with ``s`` is the single env reset
with ``s + i``. Copies reset in the step that ends their episode (``SAME_STEP``): no wasted action.
"""

from __future__ import annotations

import functools
import multiprocessing

import gymnasium as gym
from gymnasium.vector import AsyncVectorEnv, AutoresetMode, SyncVectorEnv, VectorEnv
from stable_baselines3.common.vec_env import DummyVecEnv, VecEnvWrapper

FOLLOWERS = ("shared", "independent")
MODES = (None, "sync", "async", "vector_entry_point")
#: how ``"async"`` starts its workers: a fork after torch's threads started can hang
START_METHOD = "forkserver" if "forkserver" in multiprocessing.get_all_start_methods() else "spawn"


class _OwnSeed(gym.Wrapper):
    """Copy ``i > 0`` of a shared form: ``reset(seed=s)`` seeds its own draws (its prompts) and
    leaves the shared follower, which copy 0's reset starts, as it is."""

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        if seed is not None:
            gym.Env.reset(self.env.unwrapped, seed=seed)
        return self.env.reset(options=options)


def share_follower(envs: list[gym.Env]) -> list[gym.Env]:
    """``envs`` (one env class, the same arguments) made samplers of ``envs[0]``'s follower;
    reset them in order, copy 0 first, as vector envs do."""
    lead = envs[0].unwrapped
    for env in envs[1:]:
        if type(env.unwrapped) is not type(lead) or env.unwrapped.config != lead.config:
            raise ValueError("envs must be copies of one env id with the same arguments")
        env.unwrapped.core = lead.core
    return [envs[0], *(_OwnSeed(env) for env in envs[1:])]


def make_vec(
    env_id: str, num_envs: int, follower: str = "shared", vectorization_mode=None, **kw
) -> VectorEnv:
    """``num_envs`` copies of ``env_id`` made with ``kw``, as a Gymnasium ``VectorEnv``.

    ``follower``: ``"shared"`` (sync only; ``reset(seed=s)``: copy ``i`` draws its prompts from
    ``s + i``) or ``"independent"``: ``"sync"``, ``"async"`` (:data:`START_METHOD`) or
    ``"vector_entry_point"`` (the default, ``gym.make_vec(id, n)``'s: batched for the blind-spot
    envs, else ``"sync"``), the same numbers in all.
    """
    if type(num_envs) is not int or num_envs < 1:
        raise ValueError(f"num_envs must be an int >= 1, got {num_envs!r}")
    for name, value, allowed in (
        ("follower", follower, FOLLOWERS),
        ("vectorization_mode", vectorization_mode, MODES),
    ):
        if value not in allowed:
            raise ValueError(f"{name} must be one of {allowed}, got {value!r}")
    mode = vectorization_mode or ("vector_entry_point" if follower == "independent" else "sync")
    if follower == "shared" and mode != "sync":
        raise ValueError(f"vectorization_mode must be 'sync' or None when shared, got {mode!r}")
    if mode == "vector_entry_point":
        return gym.make_vec(env_id, num_envs, "vector_entry_point", **kw)
    if follower == "shared":
        envs = share_follower([gym.make(env_id, **kw) for _ in range(num_envs)])
        fns = [lambda e=e: e for e in envs]
    else:
        # "module:id": async workers import the package (registering the envs) to unpickle it
        fns = [functools.partial(gym.make, f"rlhf_envs:{env_id}", **kw)] * num_envs
    if mode == "sync":
        return SyncVectorEnv(fns, autoreset_mode=AutoresetMode.SAME_STEP)
    return AsyncVectorEnv(fns, autoreset_mode=AutoresetMode.SAME_STEP, context=START_METHOD)


class SharedFollower(VecEnvWrapper):
    """SB3's ``follower="shared"``: the copies of a ``DummyVecEnv`` (``make_vec_env(id, n_envs=4)``)
    sample for copy 0's follower. rl-zoo3: ``vec_env_wrapper: rlhf_envs.vector.SharedFollower``."""

    def __init__(self, venv: DummyVecEnv):
        if not isinstance(venv, DummyVecEnv):
            raise TypeError(f"venv must be an SB3 DummyVecEnv, got {type(venv).__name__}")
        venv.envs[:] = share_follower(venv.envs)
        super().__init__(venv)

    def reset(self):
        return self.venv.reset()

    def step_wait(self):
        return self.venv.step_wait()
