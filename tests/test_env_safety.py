"""Bad actions are refused before they reach the RM, a failed step changes nothing, ``frozen()``
evaluates without training the RM, and white-box calls before ``reset`` say so."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
import torch

import rlhf_envs
from rlhf_envs.verbosity import ANSWER, EOS, FILLER

BAD = (1e200, -1e300, float("nan"))
TOKENS = [ANSWER, FILLER, EOS, FILLER, ANSWER, EOS, EOS]  # responses of 3, 3 and 1 tokens


def _action(env, i: int):
    """The ``i``-th action of a fixed script: a token, or a response inside the Box."""
    if isinstance(env.action_space, gym.spaces.Discrete):
        return TOKENS[i % len(TOKENS)]
    shape = env.action_space.shape
    return (np.sin(np.arange(np.prod(shape)) + i) * 3).astype(np.float32).reshape(shape)


def _play(env, steps: int, start: int = 0) -> list:
    """``steps`` scripted steps from action ``start``, resetting (no seed) after each episode."""
    out = []
    for i in range(start, start + steps):
        obs, reward, term, trunc, info = env.step(_action(env, i))
        out.append((obs, reward, info))
        if np.all(term) and not isinstance(env, gym.vector.VectorEnv):
            env.reset()
    return out


def _state(core) -> dict:
    """What a step may change in the follower, as plain copies."""
    return {
        "params": {k: v.numpy().copy() for k, v in core.params.items()},
        "opt": {
            k: v.numpy().copy() if torch.is_tensor(v) else v for k, v in core.opt_state.items()
        },
        "buffer": (core.buffer_y.numpy().copy(), core.buffer_t.numpy().copy(), core.buffer_len),
        "counts": (core.round, core.in_round, core.labels_used.copy()),
        "queries": {k: v.copy() for k, v in core.queries.items()},
    }


def _make(env_id: str, vector: bool, **kw):
    if vector:
        env = gym.make_vec(env_id, 2, vectorization_mode="vector_entry_point", **kw)
    else:
        env = gym.make(env_id, disable_env_checker=True, **kw)
    env.reset(seed=3)
    return env


FORMS = [(e, False) for e in rlhf_envs.ENV_IDS] + [(e, True) for e in rlhf_envs.BLIND_SPOT_ENV_IDS]
IDS = [f"{e}{'-vector' if v else ''}" for e, v in FORMS]


@pytest.mark.parametrize("env_id,vector", FORMS, ids=IDS)
def test_out_of_space_actions_are_refused_and_change_nothing(env_id, vector):
    env, twin = _make(env_id, vector, label_noise=0.3), _make(env_id, vector, label_noise=0.3)
    _play(env, 4)
    _play(twin, 4)
    for bad in BAD:
        good = _action(env, 4)
        action = bad if np.isscalar(good) else np.full(good.shape, bad)
        if vector:  # one bad number among good ones is refused too
            action = good.astype(np.float64)
            action[1, 2] = bad
        with pytest.raises((ValueError, TypeError), match="action") as e:
            env.step(action)
        assert "[0, 8)" in str(e.value) or "[-10.0, 10.0]" in str(e.value)
    np.testing.assert_equal(_play(env, 12, 4), _play(twin, 12, 4))  # several retrainings


@pytest.mark.parametrize("env_id,vector", FORMS, ids=IDS)
def test_a_step_whose_rm_update_raises_leaves_the_env_as_it_was(env_id, vector, monkeypatch):
    env, twin = _make(env_id, vector, label_noise=0.3), _make(env_id, vector, label_noise=0.3)
    core = env.unwrapped.core
    update = core.reward_model.update

    def fail(*args, **kwargs):
        update(*args, **kwargs)
        raise FloatingPointError("reward model parameter became NaN/inf")

    monkeypatch.setattr(core.reward_model, "update", fail)
    i = 0
    while True:  # step until a retraining fails
        before = _state(core)
        try:
            _play(env, 1, i)
        except FloatingPointError:
            break
        _play(twin, 1, i)
        i += 1
    np.testing.assert_equal(_state(core), before)
    monkeypatch.setattr(core.reward_model, "update", update)
    after = _play(env, 12, i)
    assert any(np.any(info["rm_updated"]) for _, _, info in after)
    np.testing.assert_equal(after, _play(twin, 12, i))


@pytest.mark.parametrize("env_id", rlhf_envs.ENV_IDS)
def test_evaluate_policy_inside_frozen_leaves_the_experiment_unchanged(env_id):
    from stable_baselines3 import PPO
    from stable_baselines3.common.evaluation import evaluate_policy

    env, twin = _make(env_id, False), _make(env_id, False)
    _play(env, 5)
    _play(twin, 5)
    model = PPO("MlpPolicy", env, n_steps=64, batch_size=64, seed=0, device="cpu")
    core, infos = env.unwrapped.core, []
    before = _state(core)
    with env.unwrapped.frozen():
        evaluate_policy(
            model,
            env,
            n_eval_episodes=12,
            deterministic=False,
            callback=lambda l, g: infos.append(l["info"]),
        )
    np.testing.assert_equal(_state(core), before)
    done = [i for i in infos if "proxy_reward" in i and i.get("response_complete", True)]
    assert len(done) >= 12 and not any(i["rm_updated"] for i in done)
    assert len({i["true_utility"] for i in done}) > 1  # the truth is reported
    np.testing.assert_equal(_play(env, 12, 5), _play(twin, 12, 5))  # and training goes on


@pytest.mark.parametrize("env_id", rlhf_envs.ENV_IDS)
def test_white_box_calls_before_reset_say_to_reset(env_id):
    env = gym.make(env_id, disable_env_checker=True).unwrapped
    ys = torch.zeros(1, env.core.config.dims, dtype=torch.float64)
    calls = [
        lambda: env.rm_params,
        lambda: env.true_utility(ys),
        lambda: env.query_labeler_and_grad(ys),
        lambda: env.step(_action(env, 0)),
        lambda: env.frozen().__enter__(),
        lambda: env.core.counters(),
    ]
    for call in calls:
        with pytest.raises(RuntimeError, match=r"reset\(seed=\.\.\.\)"):
            call()
