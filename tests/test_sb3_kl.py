"""The SB3 form of the ``kl`` defence: a per-step KL penalty to the initial policy (PPO, A2C).

Every check recomputes what the rollout buffer should hold from the env's own numbers and from
log-probabilities evaluated independently of :class:`agents.sb3_kl.KLPenaltyCallback`.
"""

import gymnasium as gym
import numpy as np
import pytest
import torch
from gymnasium import spaces
from stable_baselines3 import A2C, PPO, SAC
from stable_baselines3.common.callbacks import BaseCallback, CallbackList

import rlhf_envs  # noqa: F401
from agents.sb3_kl import KLPenaltyCallback
from baselines import sb3_runner
from baselines.plan import Job, plan
from baselines.run import main as run_main

LINEAR = "RLHFBlindSpot-v0"
VERBOSITY = "RLHFVerbosity-v0"
TINY = {"n_steps": 32, "batch_size": 16, "learning_rate": 3e-3}


def sb3_job(env_id, agent, rounds, agent_config, optimizer, hyper):
    from agents import registry

    reads = ",".join(registry.get(agent)().declared_reads(sb3=True))  # what the judge gives it
    return Job(env_id, agent, [], rounds, {}, agent_config, "", "", optimizer, hyper, reads=reads)


def buffer_log_probs(policy, obs: np.ndarray, actions: np.ndarray) -> np.ndarray:
    """log policy(a|s) of stored (obs, action) pairs via ``evaluate_actions`` (the path PPO's
    ``train`` uses; the callback uses ``get_distribution``)."""
    obs_t = torch.as_tensor(obs.reshape(-1, *policy.observation_space.shape))
    act_t = torch.as_tensor(actions)
    if isinstance(policy.action_space, spaces.Discrete):
        act_t = act_t.long().flatten()
    else:
        act_t = act_t.reshape(-1, *policy.action_space.shape)
    with torch.no_grad():
        return policy.evaluate_actions(obs_t, act_t)[1].double().numpy()


class Probe(BaseCallback):
    """Per rollout: what the env paid and reported, and a copy of what the buffer received."""

    def __init__(self):
        super().__init__()
        self.rollouts: list[dict] = []

    def _on_rollout_start(self) -> None:
        self.cur = {"infos": []}

    def _on_step(self) -> bool:
        self.cur["infos"].append([dict(i) for i in self.locals["infos"]])
        return True

    def _on_rollout_end(self) -> None:  # before train(): model.policy is the rollout's policy
        buf = self.model.rollout_buffer
        self.cur.update(
            obs=buf.observations.copy(),
            actions=buf.actions.copy(),
            rewards=buf.rewards.copy().reshape(-1).astype(np.float64),
            sb3_log_probs=buf.log_probs.copy().reshape(-1).astype(np.float64),
            log_probs=buffer_log_probs(self.model.policy, buf.observations, buf.actions),
            proxy=np.array([i[0]["proxy_reward"] for i in self.cur["infos"]]),
            penalty=np.array([i[0]["kl_penalty"] for i in self.cur["infos"]]),
            bootstrap=np.array([self.bootstrap(i[0]) for i in self.cur["infos"]]),
        )
        self.rollouts.append(self.cur)

    def bootstrap(self, info: dict) -> float:
        """What SB3 adds to a truncated step's reward: gamma * V(terminal obs)."""
        if not info.get("TimeLimit.truncated") or info.get("terminal_observation") is None:
            return 0.0
        obs = torch.as_tensor(info["terminal_observation"][None])
        with torch.no_grad():
            return self.model.gamma * self.model.policy.predict_values(obs).item()


def train(env_id, kl_coef, rollouts, algo=PPO, hyper=TINY, seed=0):
    """``rollouts`` rollouts of ``algo`` with the KL callback; (model, probe, initial policy).

    The initial policy is an untrained twin model built from the same seed (not the callback's
    copy)."""
    env = gym.make(env_id)
    env.reset(seed=seed)
    model = algo("MlpPolicy", env, seed=seed, device="cpu", **hyper)
    twin = algo("MlpPolicy", gym.make(env_id), seed=seed, device="cpu", **hyper).policy
    for p, q in zip(model.policy.parameters(), twin.parameters(), strict=True):
        assert torch.equal(p, q)
    probe = Probe()
    kl = KLPenaltyCallback(kl_coef)
    model.learn(rollouts * hyper["n_steps"], callback=CallbackList([kl, probe]))
    return model, probe, twin


@pytest.mark.parametrize("env_id", [LINEAR, VERBOSITY])
def test_first_rollout_pays_the_env_reward_exactly(env_id):
    _, probe, _ = train(env_id, kl_coef=1.0, rollouts=1)
    r = probe.rollouts[0]
    assert np.array_equal(r["rewards"], r["proxy"].astype(np.float32).astype(np.float64))
    assert np.all(r["penalty"] == 0.0)
    assert np.any(r["proxy"] != 0.0)


@pytest.mark.parametrize("env_id,algo", [(LINEAR, PPO), (VERBOSITY, PPO), (VERBOSITY, A2C)])
def test_buffer_reward_is_env_reward_minus_kl_coef_times_log_ratio(env_id, algo):
    kl_coef = 0.5
    hyper = TINY if algo is PPO else {"n_steps": 32, "learning_rate": 3e-3}
    model, probe, twin = train(env_id, kl_coef, rollouts=3, algo=algo, hyper=hyper)
    r = probe.rollouts[-1]
    lp0 = buffer_log_probs(twin, r["obs"], r["actions"])
    expected_pen = kl_coef * (r["log_probs"] - lp0)
    assert np.abs(expected_pen).max() > 1e-2  # the policy moved: the check has teeth
    # SB3's own log-probs (the ones PPO's ratio uses) are the current policy's
    np.testing.assert_allclose(r["sb3_log_probs"], r["log_probs"], atol=1e-5)
    np.testing.assert_allclose(r["penalty"], expected_pen, atol=1e-5)
    np.testing.assert_allclose(r["rewards"], r["proxy"] - expected_pen, atol=1e-5)
    # truth untouched by the penalty
    assert all("true_utility" in i[0] for i in r["infos"])


def test_truncation_bootstrap_is_added_once_on_top_of_the_penalty():
    # a time limit makes SB3 add gamma * V(terminal obs) to the reward, in place, after on_step
    env = gym.wrappers.TimeLimit(gym.make("CartPole-v1").unwrapped, max_episode_steps=4)
    model = PPO("MlpPolicy", env, seed=0, device="cpu", **TINY)
    twin = PPO("MlpPolicy", env, seed=0, device="cpu", **TINY).policy
    probe = Probe()

    class EnvReward(BaseCallback):  # CartPole has no proxy_reward: read the env's reward
        def _on_step(self) -> bool:
            for info, rew in zip(self.locals["infos"], self.locals["rewards"], strict=True):
                info["proxy_reward"] = float(rew)
            return True

    model.learn(3 * 32, callback=CallbackList([EnvReward(), KLPenaltyCallback(0.5), probe]))
    r = probe.rollouts[-1]
    pen = 0.5 * (r["log_probs"] - buffer_log_probs(twin, r["obs"], r["actions"]))
    assert np.abs(pen).max() > 1e-2
    boot = r["bootstrap"]
    assert np.count_nonzero(boot) >= 3
    np.testing.assert_allclose(r["rewards"], r["proxy"] - pen + boot, atol=1e-4)


class Recording(gym.Wrapper):
    """Keeps the true utility and proxy of every finished response as the env reported them."""

    def __init__(self, env):
        super().__init__(env)
        self.responses: list[tuple[float, float, bool]] = []

    def step(self, action):
        obs, reward, term, trunc, info = self.env.step(action)
        truth = info.get("true_utility")  # the judge's env: its info is whole
        if truth is not None and info.get("response_complete") is not False:
            self.responses.append((truth, info["proxy_reward"], info["rm_updated"]))
        return obs, reward, term, trunc, info


@pytest.mark.parametrize("env_id", [LINEAR, VERBOSITY])
def test_learn_sb3_reports_the_env_truth(env_id, monkeypatch):
    from baselines import judge

    envs = []
    make = judge.gym.make

    def wrap(*args, **kwargs):  # the judge's env, in this process
        envs.append(Recording(make(*args, **kwargs)))
        return envs[-1]

    monkeypatch.setattr(judge.gym, "make", wrap)
    rounds = 80 if env_id == LINEAR else 20
    h = sb3_runner.learn_sb3(sb3_job(env_id, "kl", rounds, {"kl_coef": 1.0}, "ppo", TINY), 0)
    true, proxy, rows = [], [], []
    for u, p, updated in envs[0].responses:
        true.append(u)
        proxy.append(p)
        if updated:
            rows.append((np.mean(true), np.mean(proxy)))
            true, proxy = [], []
    rows = np.array(rows[:rounds])
    assert len(rows) == rounds
    np.testing.assert_array_equal(h["sample_true_utility"][:, 0], rows[:, 0])
    np.testing.assert_array_equal(h["sample_proxy_reward"][:, 0], rows[:, 1])


@pytest.mark.parametrize(
    "env_id,optimizer", [(LINEAR, "ppo"), (VERBOSITY, "ppo"), (VERBOSITY, "a2c")]
)
def test_kl_coef_zero_is_naive_exactly(env_id, optimizer):
    rounds = 80 if env_id == LINEAR else 20
    hyper = TINY if optimizer == "ppo" else {"n_steps": 16, "learning_rate": 3e-3}

    def run(agent, kl_coef=None):
        cfg = {} if kl_coef is None else {"kl_coef": kl_coef}
        return sb3_runner.learn_sb3(sb3_job(env_id, agent, rounds, cfg, optimizer, hyper), 1)

    naive, zero, strong = run("naive"), run("kl", 0.0), run("kl", 1.0)
    assert zero.keys() == naive.keys()  # the agent's own numbers (its penalty) are not recorded
    for key in naive:
        np.testing.assert_array_equal(zero[key], naive[key], err_msg=key)
    u = "sample_true_utility"
    assert not np.array_equal(strong[u], naive[u])  # the penalty acts


def test_cli_rejects_kl_with_sac_in_one_line(tmp_path, capsys):
    argv = ["--agent", "kl", "--policy-optimizer", "sac", "--seeds", "0", "--out", str(tmp_path)]
    code = run_main(argv)
    err = capsys.readouterr().err
    assert code == 2
    assert err.count("\n") == 1 and err.startswith("python -m baselines.run: error:")
    assert "--policy-optimizer" in err and "--agent kl" in err and "ppo, a2c" in err
    assert not any(tmp_path.iterdir())  # nothing ran


@pytest.mark.parametrize("optimizer", ["ppo", "a2c"])
def test_plan_accepts_kl_with_on_policy_algorithms(tmp_path, optimizer):
    cfg = {"kl_coef": 0.2}
    jobs, _ = plan(VERBOSITY, "kl", [0], 3, {}, cfg, tmp_path, policy_optimizer=optimizer)
    assert jobs[0].run_name == f"kl+{optimizer}" and jobs[0].agent_config["kl_coef"] == 0.2


def test_callback_rejects_off_policy_algorithms_and_bad_coefs():
    with pytest.raises(ValueError, match="kl_coef"):
        KLPenaltyCallback(-0.1)
    with pytest.raises(ValueError, match="kl_coef"):
        KLPenaltyCallback(float("nan"))
    model = SAC("MlpPolicy", gym.make(LINEAR), learning_starts=1, device="cpu")
    with pytest.raises(TypeError, match="on-policy"):
        model.learn(2, callback=KLPenaltyCallback(0.1))
    with pytest.raises(ValueError, match="ppo or a2c"):
        sb3_runner.learn_sb3(sb3_job(LINEAR, "kl", 1, {"kl_coef": 0.1}, "sac", {}), 0)
