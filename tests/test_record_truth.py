"""``rlhf_envs.wrappers``: the true utility and the proxy beside each episode's return, for
Gymnasium's episode statistics, SB3's Monitor and SB3's logs."""

import csv
import math

import gymnasium as gym
import numpy as np
import pytest
from stable_baselines3 import PPO
from stable_baselines3.common.logger import configure
from stable_baselines3.common.monitor import Monitor

import rlhf_envs
from agents import NaiveAgent
from agents.wrappers import AgentRewardWrapper
from rlhf_envs.vector import make_vec
from rlhf_envs.wrappers import TRUTH_KEYS, LogTruth, RecordTruth, VectorRecordTruth


@pytest.mark.parametrize("env_id", rlhf_envs.ENV_IDS)
def test_episode_holds_the_sums_of_truth_and_proxy(env_id):
    env = RecordTruth(gym.make(env_id))
    env.reset(seed=0)
    env.action_space.seed(1)
    ends, sums = 0, {"r": 0.0, **dict.fromkeys(TRUTH_KEYS, 0.0)}
    for _ in range(40):
        _, reward, term, trunc, info = env.step(env.action_space.sample())
        sums["r"] += reward
        for k in TRUTH_KEYS:
            sums[k] += info[k]
        if term or trunc:
            ep = info["episode"]
            assert set(ep) == {"r", "l", "t", *TRUTH_KEYS}
            assert ep["true_utility"] == pytest.approx(sums["true_utility"], abs=1e-12)
            assert ep["proxy_reward"] == pytest.approx(sums["r"], abs=1e-12)  # reward = proxy
            assert ep["true_utility"] == info["true_utility"]  # the finished response's value
            ends += 1
            sums = dict.fromkeys(sums, 0.0)
            env.reset()
        else:
            assert "episode" not in info
    assert ends >= 5 and len(env.truth_queue) == ends


def test_sealed_truth_is_a_clear_error():
    env = RecordTruth(AgentRewardWrapper(gym.make("RLHFBlindSpot-v0"), NaiveAgent()))
    env.reset(seed=0)
    with pytest.raises(KeyError, match="seal_truth=False"):
        env.step(env.action_space.sample())


def _check_vector(venv, steps):
    """Step ``venv`` (wrapped in VectorRecordTruth) and check each finished episode's truth
    against the finished step's own info."""
    venv = VectorRecordTruth(venv)
    venv.reset(seed=0)
    venv.action_space.seed(2)
    finished = 0
    for _ in range(steps):
        _, rew, term, trunc, infos = venv.step(venv.action_space.sample())
        dones = term | trunc
        if not dones.any():
            assert "episode" not in infos
            continue
        ep = infos["episode"]
        final = infos.get("final_info", infos)  # same-step sync forms / the batched env
        for i in np.flatnonzero(dones):
            assert ep["true_utility"][i] == final["true_utility"][i]
            assert ep["proxy_reward"][i] == pytest.approx(ep["r"][i], abs=1e-6)
        assert np.all(ep["true_utility"][~dones] == 0)
        finished += int(dones.sum())
    assert finished >= 4 and len(venv.truth_queue) == finished
    venv.close()


@pytest.mark.parametrize("env_id", rlhf_envs.ENV_IDS)
def test_vector_form_on_the_shared_form(env_id):
    _check_vector(make_vec(env_id, 3), 20)


@pytest.mark.parametrize("env_id", rlhf_envs.BLIND_SPOT_ENV_IDS)
def test_vector_form_on_the_batched_env(env_id):
    _check_vector(make_vec(env_id, 3, follower="independent"), 4)


def test_vector_form_with_next_step_autoreset():
    # gym.make_vec's own sync env: every second step of a bandit is a reset step (no truth)
    _check_vector(gym.make_vec("RLHFContextual-v0", 2, vectorization_mode="sync"), 12)


def test_monitor_csv_and_sb3_logs_show_the_truth(tmp_path):
    env = Monitor(
        gym.make("RLHFNeuralBlindSpot-v0"), str(tmp_path / "run"), info_keywords=TRUTH_KEYS
    )
    model = PPO("MlpPolicy", env, n_steps=32, batch_size=32, n_epochs=1, seed=0)
    model.set_logger(configure(str(tmp_path), ["csv"]))
    model.learn(64, callback=LogTruth())
    with open(tmp_path / "run.monitor.csv") as f:
        next(f)  # Monitor's JSON header line
        rows = list(csv.DictReader(f))
    assert len(rows) == 64 and {"r", *TRUTH_KEYS} <= set(rows[0])
    assert all(float(r["r"]) == pytest.approx(float(r["proxy_reward"]), abs=1e-5) for r in rows)
    with open(tmp_path / "progress.csv") as f:
        logged = list(csv.DictReader(f))[-1]
    truths = [float(r["true_utility"]) for r in rows]
    assert float(logged["rollout/ep_true_utility_mean"]) == pytest.approx(np.mean(truths), 1e-5)
    assert "rollout/ep_proxy_reward_mean" in logged and "rollout/ep_rew_mean" in logged


def test_log_truth_writes_its_own_tables_from_the_same_episodes(tmp_path):
    env = Monitor(gym.make("RLHFBlindSpot-v0"), info_keywords=TRUTH_KEYS)
    model = PPO("MlpPolicy", env, n_steps=32, batch_size=32, n_epochs=1, seed=0)
    model.set_logger(configure(str(tmp_path), ["csv"]))
    model.learn(64, callback=LogTruth(log_every=16), log_interval=None)
    with open(tmp_path / "progress.csv") as f:
        rows = list(csv.DictReader(f))
    assert [int(r["time/total_timesteps"]) for r in rows] == [16, 32, 48, 64]
    for r in rows:  # the return is the proxy: the same episodes give the same mean
        assert float(r["rollout/ep_proxy_reward_mean"]) == pytest.approx(
            float(r["rollout/ep_rew_mean"]), abs=1e-5
        )
        assert math.isfinite(float(r["rollout/ep_true_utility_mean"]))
    for bad in (0, True, 2.5):
        with pytest.raises(ValueError, match="log_every must be None or an int >= 1"):
            LogTruth(log_every=bad)
