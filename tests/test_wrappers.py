"""Reward wrappers for SB3: the algorithm sees the wrapped reward, the truth stays the env's."""

import gymnasium as gym
import numpy as np
import pytest
import torch
from stable_baselines3 import PPO
from stable_baselines3.common.monitor import Monitor

import rlhf_envs  # noqa: F401
from agents import wrappers
from baselines.run import main as run_main

LINEAR = "RLHFBlindSpot-v0"
NEURAL = "RLHFNeuralBlindSpot-v0"


def make(env_id, wrapper, **kw):
    env = wrapper(gym.make(env_id), **kw)
    env.reset(seed=3)
    return env


def step_checked(env, action):
    """Step, and recompute what the wrapper should have paid, independently."""
    core = env.unwrapped.core
    params = {k: v.clone() for k, v in core.params.items()}
    y = torch.as_tensor(action, dtype=torch.float64).reshape(1, 1, -1)
    obs, reward, term, trunc, info = env.step(action)
    with torch.no_grad():
        r = core.reward_model.score(params, y)[0, 0].item()
        u = core.utility(y)[0, 0].item()
    return reward, info, r, u, params, y


@pytest.mark.parametrize("env_id", [LINEAR, NEURAL])
def test_fpo_wrapper_pays_rm_minus_penalty_and_keeps_truth(env_id):
    env = make(env_id, wrappers.FPORewardWrapper, form="practical", gamma=0.3)
    rng = np.random.default_rng(0)
    for _ in range(12):  # crosses RM retrains on both envs
        action = rng.normal(size=env.action_space.shape)
        reward, info, r, u, params, y = step_checked(env, action)
        k = env.unwrapped.core.reward_model.ntk(params, y, y)[0, 0].item()
        assert reward == pytest.approx(r - 0.3 * k, rel=1e-12, abs=1e-12)
        assert info["wrapped_reward"] == reward
        assert info["true_utility"] == pytest.approx(u, rel=1e-12, abs=1e-300)
        assert info["proxy_reward"] == pytest.approx(r, rel=1e-12, abs=1e-12)
        assert reward != info["proxy_reward"]
        env.reset()


@pytest.mark.parametrize("env_id", [LINEAR, NEURAL])
def test_exact_fpo_wrapper_pays_the_virtual_update_and_reuses_the_buffer_gradient(
    env_id, monkeypatch
):
    import copy

    from agents import fpo
    from rlhf_envs.core import RLHFCore

    env = make(env_id, wrappers.FPORewardWrapper, form="exact", gamma=0.2)
    core = env.unwrapped.core
    calls = []  # cache misses of the env's core and its snapshots (they share the cache dict)
    retained = RLHFCore.retained_after_push

    def counting(self, n_new):
        if self.lookahead_cache is core.lookahead_cache:
            calls.append(self.round)
        return retained(self, n_new)

    monkeypatch.setattr(RLHFCore, "retained_after_push", counting)
    rng = np.random.default_rng(1)
    per_round = core.config.samples_per_round
    for i in range(3 * per_round):
        action = rng.normal(size=env.action_space.shape)
        twin = copy.deepcopy(core)  # independent: its own cache, params and buffer
        y = torch.as_tensor(action, dtype=torch.float64).reshape(1, 1, -1)
        obs, reward, term, trunc, info = env.step(action)
        with torch.no_grad():
            pen = fpo.exact_penalty(twin, y, twin.labeler_target(y))
            r = twin.reward_model.score(twin.params, y)
        assert reward == pytest.approx((r - 0.2 * pen)[0, 0].item(), rel=1e-9, abs=1e-9)
        assert info["true_utility"] == pytest.approx(core.utility(y)[0, 0].item(), rel=1e-12)
        assert info["oracle_queries"] == i + 1
        env.reset()
    # the retained-buffer gradient is computed once per RM state (3 rounds), not per response
    assert calls == [0, 1, 2]


def test_oracle_wrapper_pays_truth_and_counts_queries():
    env = make(NEURAL, wrappers.OracleRewardWrapper)
    for i in range(7):
        reward, info, r, u, _, _ = step_checked(env, np.full(10, 0.3 * i))
        assert reward == pytest.approx(u, rel=1e-12)
        assert info["proxy_reward"] == pytest.approx(r)  # the env's proxy is not overwritten
        assert info["oracle_queries"] == i + 1
        env.reset()


def test_static_wrapper_scores_with_initial_rm():
    env = make(LINEAR, wrappers.StaticRewardWrapper)
    w0 = env.unwrapped.core.params["w"].clone()
    rng = np.random.default_rng(1)
    for _ in range(5):
        a = rng.normal(size=50)
        reward, info, *_ = step_checked(env, a)
        assert reward == pytest.approx(float(w0[0] @ torch.as_tensor(a)), rel=1e-12)
        env.reset()
    assert not torch.equal(env.unwrapped.core.params["w"], w0)


def test_ensemble_wrapper_is_pessimistic():
    env = make(NEURAL, wrappers.EnsembleRewardWrapper, size=4, k=2.0)
    rng = np.random.default_rng(2)
    for _ in range(11):
        reward, info, r, *_ = step_checked(env, rng.normal(size=10))
        env.reset()
    assert env.unwrapped.core.round == 2 and env.ensemble.round == 2
    y = torch.zeros(1, 1, 10, dtype=torch.float64)
    s = env.ensemble.scores(y)
    assert env.ensemble.pessimistic(y, "mean_std", 2.0).item() < s.mean().item()


@pytest.mark.parametrize(
    "wrapper,kw",
    [
        (wrappers.FPORewardWrapper, {"form": "practical", "gamma": 0.1}),
        (wrappers.FPORewardWrapper, {"form": "relaxed", "gamma": 0.1}),
        (wrappers.FPORewardWrapper, {"form": "exact", "gamma": 0.1}),
        (wrappers.OracleRewardWrapper, {}),
        (wrappers.EnsembleRewardWrapper, {"size": 3}),
    ],
)
def test_ppo_trains_on_each_wrapper_and_monitor_reports_truth(wrapper, kw):
    env = Monitor(wrapper(gym.make(NEURAL), **kw), info_keywords=("true_utility",))
    model = PPO("MlpPolicy", env, n_steps=64, batch_size=32, seed=0, device="cpu")
    model.learn(total_timesteps=128)
    core = env.unwrapped.core
    assert core.round == 128 // 5  # the RM kept retraining on PPO's rollouts
    # Monitor logged the algorithm's (wrapped) rewards; the truth in info is the env's own
    paid = np.array(env.get_episode_rewards())
    assert len(paid) == 128 and np.isfinite(paid).all()
    env.reset()
    action = np.full(10, 1.0)
    _, reward, _, _, info = env.step(action)
    y = torch.full((1, 1, 10), 1.0, dtype=torch.float64)
    assert info["true_utility"] == pytest.approx(core.utility(y)[0, 0].item(), rel=1e-12)
    assert info["wrapped_reward"] == reward
    if wrapper is not wrappers.OracleRewardWrapper:
        assert reward != pytest.approx(info["true_utility"], rel=1e-3)


def test_wrapper_rejects_bad_form():
    with pytest.raises(ValueError, match="form"):
        wrappers.FPORewardWrapper(gym.make(LINEAR), form="psychic")


def test_harness_runs_sb3_agents_and_rejects_kl(tmp_path, capsys):
    out = str(tmp_path)
    assert (
        run_main(
            [
                "--agent",
                "fpo",
                "--optimizer",
                "ppo",
                "--seeds",
                "0",
                "--rounds",
                "40",
                "--env",
                NEURAL,
                "--out",
                out,
                "--no-progress",
            ]
        )
        == 0
    )
    csv = (tmp_path / NEURAL / "fpo+ppo" / "seed_0" / "metrics.csv").read_text().splitlines()
    assert len(csv) == 41
    # kl has an SB3 form only for on-policy algorithms (tests/test_sb3_kl.py)
    assert run_main(["--agent", "kl", "--optimizer", "sac", "--out", out]) == 2
    assert "kl" in capsys.readouterr().err


def test_deterministic_evaluation_uses_the_policy_mean_and_leaves_the_env_alone():
    from baselines.sb3_runner import evaluate_deterministic

    env = gym.make("RLHFBlindSpot-v0")
    env.reset(seed=3)
    model = PPO("MlpPolicy", env, seed=0, device="cpu", n_steps=32, batch_size=16)
    core = env.unwrapped.core
    params = {k: v.clone() for k, v in core.params.items()}
    rng_state = core.generators[0].get_state().clone()
    queries = int(core.oracle_queries[0])
    out = evaluate_deterministic(model, env, responses=5)
    # the observation is constant, so the deterministic response is the policy's mean
    mean, _ = model.predict(np.zeros(1, dtype=np.float32), deterministic=True)
    expected = float(core.utility(torch.as_tensor(mean, dtype=torch.float64)[None]))
    assert out["eval_true_utility"] == pytest.approx(expected, rel=1e-9)
    for k, v in core.params.items():
        torch.testing.assert_close(v, params[k], rtol=0, atol=0)
    assert torch.equal(core.generators[0].get_state(), rng_state)
    assert int(core.oracle_queries[0]) == queries
    with pytest.raises(ValueError, match="eval_responses"):
        evaluate_deterministic(model, env, responses=0)


def test_contextual_per_cluster_columns_match_the_env_infos():
    from baselines.sb3_runner import learn_sb3

    seen = []

    class Spy(gym.Wrapper):
        def step(self, action):
            out = super().step(action)
            seen.append((out[4]["cluster"], out[4]["true_utility"]))
            return out

    import baselines.sb3_runner as runner

    original = runner.wrap
    runner.wrap = lambda env, agent, cfg: Spy(original(env, agent, cfg))
    try:
        h = learn_sb3(
            "RLHFContextual-v0", {}, "naive", {}, "ppo", {"n_steps": 32, "batch_size": 16}, 6, 0
        )
    finally:
        runner.wrap = original
    per_round = 8  # RLHFContextual-v0's samples_per_round
    for t in range(6):
        chunk = seen[t * per_round : (t + 1) * per_round]
        blind = [u for c, u in chunk if c == 0]
        other = [u for c, u in chunk if c != 0]
        got_b, got_o = h["true_utility_blind_cluster"][t, 0], h["true_utility_other_clusters"][t, 0]
        assert (np.isnan(got_b) and not blind) or got_b == pytest.approx(np.mean(blind))
        assert got_o == pytest.approx(np.mean(other))
    assert np.isnan(h["eval_true_utility"][:-1]).all() and np.isfinite(h["eval_true_utility"][-1])


def test_sb3_kwargs_override_the_yaml_and_are_checked(tmp_path, capsys):
    import json

    out = str(tmp_path)
    args = ["--agent", "naive", "--optimizer", "ppo", "--seeds", "0", "--rounds", "3"]
    args += ["--env", "RLHFVerbosity-v0", "--out", out, "--no-progress"]
    assert run_main(args + ["--sb3-kwargs", "ent_coef=0.01"]) == 0
    cfg = json.loads(
        (tmp_path / "RLHFVerbosity-v0" / "naive+ppo" / "seed_0" / "config.json").read_text()
    )
    hp = json.dumps(cfg)
    assert '"ent_coef": 0.01' in hp and '"n_steps": 512' in hp  # override + the YAML's values
    capsys.readouterr()
    assert run_main(args + ["--force", "--sb3-kwargs", "ent_coeff=0.01"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--sb3-kwargs" in err[0] and "ent_coeff" in err[0]
    assert "ent_coef" in err[0].split("allowed:")[1]
    assert run_main(["--agent", "naive", "--out", out, "--sb3-kwargs", "ent_coef=0.01"]) == 2
