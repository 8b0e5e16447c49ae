"""``rlhf_envs.vector``: the shared-follower form (one experiment, parallel samplers) and the
independent form (one experiment per copy), in Gymnasium and through SB3's adapter."""

import subprocess
import sys

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.vector import AutoresetMode, SyncVectorEnv
from stable_baselines3 import PPO
from stable_baselines3.common.env_util import make_vec_env
from stable_baselines3.common.vec_env import DummyVecEnv, VecMonitor

import rlhf_envs
from baselines import animate, map, plan
from baselines.plan import CLIError
from rlhf_envs.vector import SharedFollower, make_vec, share_follower

TOKEN = "RLHFVerbosity-v0"
T = 40  # vector steps: a multiple of every env's samples_per_round (1, 5, 8) and of 2 tokens


def copy_actions(env_id, n, steps=T, seed=0):
    """(steps, n, ...) actions: small Gaussian responses, or ANSWER, EOS, ... (2-token answers)."""
    if env_id == TOKEN:
        return np.tile([[1], [0]], (steps // 2, n)).reshape(steps, n)
    d = gym.spec(env_id).make().action_space.shape[0]
    return np.random.default_rng(seed).normal(0, 0.5, (steps, n, d))


def responses(core):
    """Responses the follower has taken (labelled ones plus those of the round in progress)."""
    return int(core.round * core.config.samples_per_round + core.in_round)


def step_truth(infos, i):
    """Copy ``i``'s true utility of this step: the finished step's info (same-step autoreset puts
    it in ``final_info``) or the info itself (the batched env, unfinished tokens)."""
    final = infos.get("final_info", {})
    if "_final_info" in infos and infos["_final_info"][i]:
        return final["true_utility"][i]
    return infos["true_utility"][i]


def run_single(env_id, seed, actions):
    env = gym.make(env_id)
    env.reset(seed=seed)
    rewards, truths = [], []
    for a in actions:
        _, r, term, trunc, info = env.step(a)
        rewards.append(r)
        truths.append(info["true_utility"])
        if term or trunc:
            env.reset()
    return np.array(rewards), np.array(truths), env.unwrapped.core


@pytest.mark.parametrize("env_id", rlhf_envs.ENV_IDS)
def test_shared_form_is_one_follower_four_times_as_fast(env_id):
    acts = copy_actions(env_id, 4)
    venv = make_vec(env_id, 4)
    venv.reset(seed=0)
    for a in acts:
        _, rew, term, trunc, infos = venv.step(a)
        assert not trunc.any()
    cores = {id(e.unwrapped.core) for e in venv.envs}
    assert len(cores) == 1  # one reward model, labeller and buffer
    core = venv.envs[0].unwrapped.core
    single = run_single(env_id, 0, acts[:, 0])[2]
    assert single.round >= 2
    assert core.round == 4 * single.round
    # every action was used: 4 responses per step (the token env: one every 2 tokens per copy)
    per_step = 2 if env_id == TOKEN else 1
    assert responses(core) == 4 * T // per_step == 4 * responses(single)
    assert int(core.labels_used[0]) == core.round * core.config.samples_per_round
    venv.close()


@pytest.mark.parametrize("env_id", rlhf_envs.ENV_IDS)
def test_shared_form_of_one_copy_is_the_single_env(env_id):
    acts = copy_actions(env_id, 1, steps=12, seed=3)
    venv = make_vec(env_id, 1)
    venv.reset(seed=7)
    rewards = [venv.step(a)[1][0] for a in acts]
    single_rewards = run_single(env_id, 7, acts[:, 0])[0]
    assert np.array_equal(np.array(rewards), single_rewards.astype(np.array(rewards).dtype))


def test_shared_form_copies_draw_their_own_prompts():
    venv = make_vec("RLHFContextual-v0", 3)
    obs, _ = venv.reset(seed=4)
    for i in range(3):
        single_obs, _ = gym.make("RLHFContextual-v0").reset(seed=4 + i)
        assert np.array_equal(obs[i], single_obs)
    assert venv.envs[0].unwrapped.core.seeds == [4]  # the experiment's seed is copy 0's


@pytest.mark.parametrize(
    "env_id,mode",
    [(e, m) for e in rlhf_envs.ENV_IDS for m in (None, "gym")]
    + [(e, "sync") for e in rlhf_envs.BLIND_SPOT_ENV_IDS],
)
def test_independent_form_reproduces_the_single_envs(env_id, mode):
    acts = copy_actions(env_id, 3, steps=16, seed=1)
    if mode == "gym":  # gym.make_vec(id, n): the same experiments (the batched env's numbers)
        venv = gym.make_vec(env_id, 3)
    else:
        venv = make_vec(env_id, 3, follower="independent", vectorization_mode=mode)
    venv.reset(seed=5)
    rewards, truths = [], []
    for a in acts:
        _, rew, term, trunc, infos = venv.step(a)
        rewards.append(rew.copy())
        truths.append([step_truth(infos, i) for i in range(3)])
    rewards, truths = np.array(rewards), np.array(truths)
    assert not np.array_equal(rewards[:, 0], rewards[:, 1])  # different experiments
    for i in range(3):  # every step of every copy is a response or token of its experiment
        single_rewards, single_truths, _ = run_single(env_id, 5 + i, acts[:, i])
        assert np.array_equal(rewards[:, i], single_rewards.astype(rewards.dtype))
        assert np.array_equal(truths[:, i], single_truths)
    venv.close()


@pytest.mark.parametrize("env_id", rlhf_envs.ENV_IDS)
def test_sb3_adapter_trains_one_experiment_with_ppo(env_id):
    n_steps = T
    venv = SharedFollower(make_vec_env(env_id, n_envs=4, seed=0))
    model = PPO("MlpPolicy", venv, n_steps=n_steps, batch_size=n_steps, n_epochs=1, seed=0)
    model.learn(4 * n_steps)  # one rollout: n_steps per copy
    cores = {id(e.unwrapped.core) for e in venv.venv.envs}
    assert len(cores) == 1
    core = venv.venv.envs[0].unwrapped.core
    episodes = [len(e.get_wrapper_attr("get_episode_rewards")()) for e in venv.venv.envs]
    assert min(episodes) >= 1  # every copy answered
    assert responses(core) == sum(episodes)  # each copy's finished responses, and nothing else
    if env_id != TOKEN:  # bandits: one response per step, so exactly 4 single rounds
        single = PPO("MlpPolicy", gym.make(env_id), n_steps=n_steps, batch_size=n_steps, seed=0)
        single.learn(n_steps)
        assert core.round == 4 * single.env.envs[0].unwrapped.core.round >= 8


def test_async_after_the_parent_stepped_the_neural_env():
    script = (
        "import gymnasium as gym, numpy as np, rlhf_envs\n"
        "from rlhf_envs.vector import make_vec\n"
        "env = gym.make('RLHFNeuralBlindSpot-v0'); env.reset(seed=0)\n"
        "env.step(env.action_space.sample())  # torch's threads start in the parent\n"
        "v = make_vec('RLHFNeuralBlindSpot-v0', 2, follower='independent', "
        "vectorization_mode='async')\n"
        "v.reset(seed=3); rew = v.step(np.full((2, 10), 0.5))[1]; v.close()\n"
        "print(repr(rew.tolist()))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=180
    )
    assert out.returncode == 0, out.stderr[-2000:]
    rewards = eval(out.stdout.strip().splitlines()[-1])
    for i in range(2):
        assert rewards[i] == run_single("RLHFNeuralBlindSpot-v0", 3 + i, [np.full(10, 0.5)])[0][0]


def test_bad_arguments_name_themselves():
    with pytest.raises(ValueError, match="follower must be one of"):
        make_vec("RLHFBlindSpot-v0", 2, follower="seeds")
    with pytest.raises(ValueError, match="num_envs must be an int >= 1"):
        make_vec("RLHFBlindSpot-v0", 0)
    with pytest.raises(ValueError, match="vectorization_mode must be one of"):
        make_vec("RLHFBlindSpot-v0", 2, vectorization_mode="threads")
    with pytest.raises(ValueError, match="vectorization_mode must be 'sync' or None"):
        make_vec("RLHFBlindSpot-v0", 2, vectorization_mode="async")
    with pytest.raises(TypeError, match="venv must be an SB3 DummyVecEnv"):
        SharedFollower(VecMonitor(DummyVecEnv([lambda: gym.make(TOKEN)])))
    with pytest.raises(ValueError, match="same arguments"):
        share_follower([gym.make(TOKEN), gym.make(TOKEN, max_len=4)])
    with pytest.raises(ValueError, match="signal_dims"):  # the env's own checks still apply
        make_vec("RLHFBlindSpot-v0", 2, signal_dims=0)


def rms_and_rounds(venv):
    """(reward models, each copy's round) of a vector env: the batched one or copies of an env."""
    if hasattr(venv, "envs"):
        cores = [e.unwrapped.core for e in venv.envs]
        return len({id(c) for c in cores}), [int(c.round) for c in cores]
    return venv.unwrapped.core.S, [int(venv.unwrapped.core.round)] * venv.num_envs


FORMS = {  # form -> (make it with 4 copies, reward models, rounds per single env's round)
    "gym.make_vec": (lambda e: gym.make_vec(e, 4), 4, 1),
    "independent": (lambda e: make_vec(e, 4, follower="independent"), 4, 1),
    "shared": (lambda e: make_vec(e, 4), 1, 4),
}
# what the batched env's step reports: every form of every env reports it for every response
INFO_KEYS = {"true_utility", "proxy_reward", "round", "rm_updated", "labels_used"}
INFO_KEYS |= {"oracle_queries", "oracle_grad_queries", "oracle_value_equivalents"}


@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize("env_id", rlhf_envs.ENV_IDS)
def test_each_form_means_the_same_on_all_four_envs(env_id, form):
    make, rms, speed = FORMS[form]
    venv = make(env_id)
    assert venv.metadata["autoreset_mode"] == AutoresetMode.SAME_STEP  # no action thrown away
    venv.reset(seed=0)
    acts = copy_actions(env_id, 4)
    answered = 0
    for a in acts:
        _, _, term, trunc, infos = venv.step(a)
        done = term | trunc  # an answer ends its episode
        info = infos["final_info"] if "final_info" in infos else infos  # the batched env: infos
        assert INFO_KEYS <= set(info) or not done.any()
        answered += int(done.sum())
    single = run_single(env_id, 0, acts[:, 0])[2]
    assert single.round >= 2
    assert rms_and_rounds(venv) == (rms, [speed * single.round] * 4)
    assert answered == 4 * responses(single)  # every copy's every answer
    venv.close()


@pytest.mark.parametrize("env_id", rlhf_envs.ENV_IDS)
def test_gym_sync_mode_stays_gymnasiums_own(env_id):
    venv = gym.make_vec(env_id, 3, vectorization_mode="sync")
    assert type(venv) is SyncVectorEnv
    assert venv.metadata["autoreset_mode"] == AutoresetMode.NEXT_STEP
    venv.reset(seed=0)
    assert rms_and_rounds(venv)[0] == 3


def test_white_box_envs_are_named_not_read_from_the_registry(tmp_path, capsys):
    assert all(gym.spec(e).vector_entry_point is not None for e in rlhf_envs.ENV_IDS)
    for env_id in rlhf_envs.WHITE_BOX_ENV_IDS:  # the harness's batched env, white-box numbers
        assert hasattr(gym.make_vec(env_id, 2), "submit")
        map.check_axes(env_id, ("label_noise", [0.0]), ("rm_lr", [0.1]), {})
    for env_id in rlhf_envs.FEATURE_ENV_IDS:
        with pytest.raises(CLIError, match="no white-box agents"):
            plan.plan(env_id, "naive", [0], 2, {}, {}, tmp_path)
        with pytest.raises(CLIError, match="no white-box agents"):
            map.check_axes(env_id, ("label_noise", [0.0]), ("rm_lr", [0.1]), {})
        assert animate.main(["--env", env_id]) == 2
        assert "must be a white-box env" in capsys.readouterr().err
