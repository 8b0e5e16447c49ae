"""Reward wrappers for SB3: the algorithm sees the agent's score, the truth stays the env's."""

import copy

import gymnasium as gym
import numpy as np
import pytest
import torch
from stable_baselines3 import PPO
from stable_baselines3.common.monitor import Monitor

import rlhf_envs  # noqa: F401
from agents import (
    EnsembleAgent,
    FPOAgent,
    FPOExactAgent,
    FPORelaxedAgent,
    OracleAgent,
    StaticAgent,
    fpo,
)
from agents.registry import BUILTIN
from agents.wrappers import AgentRewardWrapper
from baselines.run import main as run_main

LINEAR = "RLHFBlindSpot-v0"
NEURAL = "RLHFNeuralBlindSpot-v0"


def make(env_id, agent):
    env = AgentRewardWrapper(gym.make(env_id), agent)
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


@pytest.mark.parametrize("form", ["practical", "relaxed"])
@pytest.mark.parametrize("env_id", [LINEAR, NEURAL])
def test_fpo_wrapper_pays_rm_minus_penalty_and_keeps_truth(env_id, form):
    agent = FPOAgent(fpo_gamma=0.3) if form == "practical" else FPORelaxedAgent(fpo_gamma=0.3)
    env = make(env_id, agent)
    assert env.agent is agent
    core = env.unwrapped.core
    rng = np.random.default_rng(0)
    rounds = []
    for i in range(12):  # crosses RM retrains on both envs
        action = rng.normal(size=env.action_space.shape)
        reward, info, r, u, params, y = step_checked(env, action)
        rounds.append(core.round)
        with torch.no_grad():
            k = core.reward_model.ntk(params, y, y)[0, 0].item()
        # rating feedback: relaxed multiplies the kernel by the error against the verdict
        pen = k if form == "practical" else (r - core.labeler_target(y)[0, 0].item()) * k
        assert reward == pytest.approx(r - 0.3 * pen, rel=1e-12, abs=1e-12)
        assert info["wrapped_reward"] == reward
        assert env.audit["true_utility"] == pytest.approx(u, rel=1e-12, abs=1e-300)
        assert info["proxy_reward"] == pytest.approx(r, rel=1e-12, abs=1e-12)
        assert reward != info["proxy_reward"]
        # practical FPO asks no oracle; relaxed asks the labeler once per response
        assert info["oracle_queries"] == (0 if form == "practical" else i + 1)
        env.reset()
    assert rounds[-1] >= 2  # the RM retrained during the run


@pytest.mark.parametrize("env_id", [LINEAR, NEURAL])
def test_exact_fpo_wrapper_pays_the_virtual_update_and_reuses_the_buffer_gradient(
    env_id, monkeypatch
):
    agent = FPOExactAgent(fpo_gamma=0.2)
    env = make(env_id, agent)
    core = env.unwrapped.core
    assert agent._lookahead == {}  # start() at the seeded reset gives a fresh cache
    misses = []  # rounds at which the wrapper's agent recomputed the retained-buffer gradient
    counting = False
    from agents.follower import Follower

    retained = Follower.retained_after_push

    def spy(self, n_new):
        if counting:  # only inside env.step (the independent twin below has its own cache)
            misses.append(self.round)
        return retained(self, n_new)

    monkeypatch.setattr(Follower, "retained_after_push", spy)
    rng = np.random.default_rng(1)
    per_round = core.config.samples_per_round
    g_prev, round_prev = None, None
    for i in range(3 * per_round):
        action = rng.normal(size=env.action_space.shape)
        twin = copy.deepcopy(core)  # independent: its own params and buffer, no cache
        seen = env.follower  # the agent's copy of the follower, as it was before the step
        params_before, buffer_before, round_before = seen.params, seen.buffer_y, core.round
        y = torch.as_tensor(action, dtype=torch.float64).reshape(1, 1, -1)
        counting = True
        obs, reward, term, trunc, info = env.step(action)
        counting = False
        with torch.no_grad():
            pen = fpo.exact_penalty_and_reward(twin, y, twin.labeler_target(y))[0]
            r = twin.reward_model.score(twin.params, y)
        assert reward == pytest.approx((r - 0.2 * pen)[0, 0].item(), rel=1e-9, abs=1e-9)
        assert env.audit["true_utility"] == pytest.approx(core.utility(y)[0, 0].item(), rel=1e-12)
        assert info["oracle_queries"] == i + 1
        # the agent's cache is keyed by the RM that scored the response (the pre-step one)
        cache = agent._lookahead
        assert cache["params"] is params_before and cache["buffer_y"] is buffer_before
        if round_prev == round_before:  # RM unchanged since the last step: the cache is reused
            assert cache["g_rest"] is g_prev
        else:  # first step, or the RM retrained: a fresh retained-buffer gradient
            assert cache["g_rest"] is not g_prev
        g_prev, round_prev = cache["g_rest"], round_before
        env.reset()
    assert core.round == 3
    # the retained-buffer gradient is computed once per RM state (3 rounds), not per response
    assert misses == [0, 1, 2]
    # a seeded reset starts a new experiment: start() drops the cache
    env.reset(seed=4)
    assert agent._lookahead == {}


def test_oracle_wrapper_pays_truth_and_counts_queries():
    env = make(NEURAL, OracleAgent())
    for i in range(7):
        reward, info, r, u, _, _ = step_checked(env, np.full(10, 0.3 * i))
        assert reward == pytest.approx(u, rel=1e-12)
        assert info["proxy_reward"] == pytest.approx(r)  # the env's proxy is not overwritten
        assert info["oracle_queries"] == i + 1
        env.reset()


def test_static_wrapper_scores_with_initial_rm():
    env = make(LINEAR, StaticAgent())
    w0 = env.unwrapped.core.params["w"].clone()
    rng = np.random.default_rng(1)
    for _ in range(5):
        a = rng.normal(size=50)
        reward, info, r, *_ = step_checked(env, a)
        assert reward == pytest.approx(float(w0[0] @ torch.as_tensor(a)), rel=1e-12)
        assert info["oracle_queries"] == 0
        env.reset()
    assert not torch.equal(env.unwrapped.core.params["w"], w0)
    assert reward != pytest.approx(r, rel=1e-6)  # the retrained RM would have paid otherwise


def test_ensemble_wrapper_is_pessimistic():
    env = make(NEURAL, EnsembleAgent(ensemble_size=4, ensemble_k=2.0))
    ens = env.agent.ensemble
    assert len(ens.members) == 3
    rng = np.random.default_rng(2)
    for _ in range(11):
        reward, info, r, *_ = step_checked(env, rng.normal(size=10))
        env.reset()
    core = env.unwrapped.core
    assert core.round == 2 and ens.round == 2
    y = torch.zeros(1, 1, 10, dtype=torch.float64)
    with torch.no_grad():
        s = ens.scores(core, y)
        assert s.shape == (4, 1, 1)
        torch.testing.assert_close(s[0], core.reward_model.score(core.params, y), rtol=0, atol=0)
        pess = ens.pessimistic(core, y, "mean_std", 2.0)
        assert pess.item() < s.mean().item()
        assert pess.item() == pytest.approx((s.mean() - 2.0 * s.std()).item(), rel=1e-9)
        assert ens.pessimistic(core, y, "min").item() == pytest.approx(s.min().item(), rel=0)


@pytest.mark.parametrize(
    "agent",
    [
        FPOAgent(fpo_gamma=0.1),
        FPORelaxedAgent(fpo_gamma=0.1),
        FPOExactAgent(fpo_gamma=0.1),
        OracleAgent(),
        EnsembleAgent(ensemble_size=3),
    ],
    ids=lambda a: a.name,
)
def test_ppo_trains_on_each_wrapper_and_monitor_reports_truth(agent):
    unsealed = AgentRewardWrapper(gym.make(NEURAL), agent, seal_truth=False)  # own monitoring
    env = Monitor(unsealed, info_keywords=("true_utility",))
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
    if not isinstance(agent, OracleAgent):
        assert reward != pytest.approx(info["true_utility"], rel=1e-3)
    else:
        assert reward == pytest.approx(info["true_utility"], rel=1e-12)


def test_wrapper_and_agents_reject_bad_arguments():
    env = gym.make(LINEAR)
    with pytest.raises(TypeError, match="agent"):
        AgentRewardWrapper(env, "not an agent")
    with pytest.raises(TypeError, match="agent"):
        AgentRewardWrapper(env, FPOAgent)  # the class, not an agent
    with pytest.raises(ValueError, match="fpo_gamma"):
        FPORelaxedAgent(fpo_gamma=-1)
    with pytest.raises(ValueError, match="fpo_gamma"):
        FPOExactAgent(fpo_gamma=float("nan"))
    with pytest.raises(ValueError, match="ensemble_size"):
        EnsembleAgent(ensemble_size=1)
    with pytest.raises(ValueError, match="ensemble_mode"):
        EnsembleAgent(ensemble_mode="median")
    with pytest.raises(TypeError):
        FPOAgent(fpo_gamma_typo=0.1)  # unknown config field


@pytest.mark.parametrize("name", list(BUILTIN))
def test_agent_wrapper_pays_each_builtin_agents_sb3_score_under_the_pre_step_rm(name):
    agent = BUILTIN[name]()
    env = make(NEURAL, agent)
    oracle = env.unwrapped
    rng = np.random.default_rng(11)
    retrained = 0
    for _ in range(12):  # samples_per_round is 5: two RM retrains
        action = rng.normal(size=10)
        y = torch.as_tensor(action, dtype=torch.float64).reshape(1, 1, -1)
        # independent twins of the env (its follower and counted oracle) and of the agent's state
        twin_env, twin_agent = copy.deepcopy((oracle, agent))
        _, reward, _, _, info = env.step(action)
        with torch.no_grad():
            expected = twin_agent.sb3_score(twin_env.core, y, twin_env)
        assert expected.shape == (1, 1)
        assert reward == float(expected[0, 0])
        assert info["wrapped_reward"] == reward
        assert info["oracle_queries"] == int(twin_env.core.counters()["oracle_queries"][0])
        assert env.audit["true_utility"] == pytest.approx(
            oracle.core.utility(y)[0, 0].item(), rel=1e-12
        )
        if info["rm_updated"]:
            retrained += 1
            if "current_rm" in agent.declared_reads():
                # the post-step RM would pay something else: the snapshot matters
                post_env, post_agent = copy.deepcopy((oracle, twin_agent))
                with torch.no_grad():
                    post = post_agent.sb3_score(post_env.core, y, post_env)
                assert float(post[0, 0]) != reward
        env.reset()
    assert retrained == 2 and oracle.core.round == 2


def test_harness_runs_sb3_agents_and_rejects_kl(tmp_path, capsys):
    out = str(tmp_path)
    assert (
        run_main(
            [
                "--agent",
                "fpo",
                "--policy-optimizer",
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
    assert run_main(["--agent", "kl", "--policy-optimizer", "sac", "--out", out]) == 2
    assert "kl" in capsys.readouterr().err


def test_contextual_per_cluster_columns_match_the_env_infos(monkeypatch):
    from baselines.plan import Job
    from baselines.sb3_runner import learn_sb3
    from rlhf_envs.contextual import ContextualEnv

    seen = []
    step = ContextualEnv.step

    def spy(self, action):  # the judge's env, in this process
        out = step(self, action)
        seen.append((out[-1]["in_blind_cluster"], out[-1]["true_utility"]))
        return out

    monkeypatch.setattr(ContextualEnv, "step", spy)
    hyper = {"n_steps": 32, "batch_size": 16}
    job = Job(
        "RLHFContextual-v0", "naive", [0], 6, {}, {}, "", "", "ppo", hyper, reads="current_rm"
    )
    h = learn_sb3(job, 0, eval_responses=4)
    seen = seen[: len(seen) - 4]  # less the evaluation's steps (on a copy of the env)
    assert seen  # the spy saw the steps
    per_round = 8  # RLHFContextual-v0's samples_per_round
    for t in range(6):
        chunk = seen[t * per_round : (t + 1) * per_round]
        blind = [u for b, u in chunk if b]
        other = [u for b, u in chunk if not b]
        got_b = h["sample_true_utility_blind_cluster"][t, 0]
        got_o = h["sample_true_utility_other_clusters"][t, 0]
        assert (np.isnan(got_b) and not blind) or got_b == pytest.approx(np.mean(blind))
        assert got_o == pytest.approx(np.mean(other))
    assert np.isnan(h["eval_true_utility"][:-1]).all() and np.isfinite(h["eval_true_utility"][-1])


def test_sb3_kwargs_override_the_yaml_and_are_checked(tmp_path, capsys):
    import json

    out = str(tmp_path)
    args = ["--agent", "naive", "--policy-optimizer", "ppo", "--seeds", "0", "--rounds", "3"]
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
