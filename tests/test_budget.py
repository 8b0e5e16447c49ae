"""Budget-matched controls: extra labels per response, the value-limited oracle, sweep entries."""

import json

import gymnasium as gym
import numpy as np
import pytest

import rlhf_envs  # noqa: F401
from agents import OracleValuesAgent, WhiteBoxConfig
from baselines import leaderboard, results, sweep

NEURAL = "RLHFNeuralBlindSpot-v0"


def test_labels_per_response_labels_each_response_m_times_with_own_noise():
    kw = {"samples_per_round": 3, "buffer_size": 6, "label_noise": 0.5}
    one = gym.make(NEURAL, **kw)
    two = gym.make(NEURAL, labels_per_response=2, **kw)
    for env in (one, two):
        env.reset(seed=0)
        for i in range(3):
            info = env.step(np.full(10, 0.1 * i))[-1]
    assert info["rm_updated"] and one.unwrapped.core.labels_used[0] == 3
    core = two.unwrapped.core
    assert core.labels_used[0] == info["labels_used"] == 6
    ys, ts = core.training_batch()
    assert ys.shape[1] == 6
    for j in range(3):  # copies of each response, each with its own noisy label
        assert np.array_equal(ys[0, 2 * j], ys[0, 2 * j + 1])
        assert ts[0, 2 * j] != ts[0, 2 * j + 1]
    with pytest.raises(ValueError, match="labels_per_response"):
        gym.make(NEURAL, labels_per_response=0)


def test_value_limited_oracle_spends_its_budget_in_value_queries():
    env = gym.make_vec(NEURAL, num_envs=2, vectorization_mode="vector_entry_point")
    env.reset(seed=[0, 1])
    cfg = WhiteBoxConfig(policy="gaussian", rounds=4, inner_steps=3, sigma=0.1)
    config = OracleValuesAgent.config_cls(**cfg.to_dict(), value_queries=5)
    agent = OracleValuesAgent(config, seed=[0, 1])
    h = agent.learn(env)
    assert (h["oracle_queries"][-1] == 4 * 3 * 5).all()
    assert (h["oracle_grad_queries"][-1] == 0).all()
    assert agent.declared_reads() == ("truth_values",)


def test_sweep_agent_entries_run_under_their_tag_for_their_envs_only(tmp_path, capsys):
    spec = tmp_path / "s.yaml"
    spec.write_text(
        "envs: [RLHFBlindSpot-v0, RLHFNeuralBlindSpot-v0]\nseeds: 0\nrounds: 3\nagents:\n"
        "  - naive\n"
        "  - {agent: naive, tag: budget=fpo-relaxed, envs: [RLHFNeuralBlindSpot-v0],\n"
        "     env_kwargs: {samples_per_round: 20, buffer_size: 200}}\n"
    )
    _, folders = sweep.plan_sweep(sweep.load_sweep(spec), tmp_path, force=False, jobs=1)
    names = sorted(f"{p.parent.parent.name}/{p.parent.name}" for p in folders)
    assert names == [
        "RLHFBlindSpot-v0/naive",
        "RLHFNeuralBlindSpot-v0/naive",
        "RLHFNeuralBlindSpot-v0/naive@budget=fpo-relaxed",
    ]
    assert sweep.main([str(spec), "--out", str(tmp_path), "--no-progress"]) == 0
    folder = results.run_dir(tmp_path, NEURAL, "naive@budget=fpo-relaxed", 0)
    assert json.loads((folder / "summary.json").read_text())["labels_used"] == 60
    for bad in (
        "  - {tag: x}\n",
        "  - {agent: naive, envs: x}\n",
        "  - {agent: naive, seeds: 3}\n",
    ):
        spec.write_text("envs: [RLHFBlindSpot-v0]\nseeds: 0\nagents:\n" + bad)
        assert sweep.main([str(spec), "--out", str(tmp_path)]) == 2
        assert "agents entry" in capsys.readouterr().err


def test_leaderboard_pairs_methods_with_their_budget_controls_and_draws_the_frontier(tmp_path):
    spec = tmp_path / "s.yaml"
    spec.write_text(
        "envs: [RLHFBlindSpot-v0]\nseeds: 0-2\nrounds: 30\nagents:\n  - naive\n  - fpo-relaxed\n"
        "  - {agent: naive, tag: budget=fpo-relaxed, env_kwargs: {samples_per_round: 2,"
        " buffer_size: 2}}\n"
    )
    assert sweep.main([str(spec), "--out", str(tmp_path / "runs"), "--no-progress"]) == 0
    res = tmp_path / "res"
    assert leaderboard.main(["--runs", str(tmp_path / "runs"), "--results", str(res)]) == 0
    board = (res / "LEADERBOARD.md").read_text()
    assert "| fpo-relaxed | naive@budget=fpo-relaxed |" in board
    row = next(x for x in board.splitlines() if x.startswith("| fpo-relaxed |"))
    assert "| 30 | 30 / 0 | 60 |" in row  # labels, queries (value / grad), labeler calls
    assert (res / "figures" / "RLHFBlindSpot-v0_cost_frontier.png").stat().st_size > 10_000


def test_naive_at_budget_spends_its_extra_labels_on_fresh_responses():
    """A deterministic policy's extra responses per round are drawn around it: new information,
    so the control differs from naive (repeated labels of one response would not)."""
    env = gym.make_vec("RLHFBlindSpot-v0", num_envs=2, vectorization_mode="vector_entry_point",
                       samples_per_round=3, buffer_size=3)  # fmt: skip
    env.reset(seed=[0, 1])
    from agents import NaiveAgent

    agent = NaiveAgent(WhiteBoxConfig(rounds=2), seed=[0, 1])
    agent.learn(env)
    ys, _ = env.unwrapped.core.training_batch()
    assert ys.shape[1] == 3
    assert not np.allclose(ys[:, 0], ys[:, 1]) and not np.allclose(ys[:, 1], ys[:, 2])
    assert 0 < float(np.abs(ys[:, 1] - ys[:, 0]).mean()) < 1.0  # sigma 0.1 around the policy


def test_value_limited_oracle_reaches_the_es_level_with_300_queries():
    """The paper's linear config, 300 value queries of the truth in 300 rounds (10 seeds):
    the (1+1) evolution strategy gets well above naive (3.9) and past 4.5 on average."""
    env = gym.make_vec("RLHFBlindSpot-v0", num_envs=10, vectorization_mode="vector_entry_point")
    env.reset(seed=list(range(10)))
    agent = OracleValuesAgent(OracleValuesAgent.config_cls(), seed=list(range(10)))
    h = agent.learn(env)
    assert (h["truth_value_queries"][-1] == 300).all()
    assert h["true_utility"][-1].mean() >= 4.5


def test_sweep_generates_the_budget_controls_of_agents_with_extra_labeler_calls(tmp_path):
    spec = tmp_path / "s.yaml"
    spec.write_text(
        "envs: [RLHFBlindSpot-v0]\nseeds: 0\nrounds: 6\ncontrols: true\n"
        "agents: [naive, fpo-relaxed, fpo-relaxed-grad, oracle]\n"
    )
    assert sweep.main([str(spec), "--out", str(tmp_path), "--no-progress", "--quiet"]) == 0
    runs = results.load_runs([tmp_path], ("ok",)).set_index("run_name")
    for method in ("fpo-relaxed", "fpo-relaxed-grad"):  # the oracle reads the truth: none
        extra = runs.labeler_calls[method] - runs.labels_used[method]
        control = runs.loc[f"naive@budget={method}"]
        assert control.labels_used == runs.labeler_calls[method]  # as many labels as X's calls
        assert runs.oracle_queries[f"oracle-values@budget={method}"] == extra
    assert not any(n.endswith("budget=oracle") or "budget=naive" in n for n in runs.index)


def test_controls_of_reads_only_finished_runs():
    """A run stopped as diverged counted nothing: it neither sets nor breaks the budget."""
    ok = {"status": "ok", "labeler_calls": 600, "labels_used": 300, "reads": "current_rm,"
          "labeler_values", "run_name": "fpo-relaxed", "rounds": 300}  # fmt: skip
    stopped = {**ok, "status": "stopped", "labeler_calls": float("nan"), "labels_used": 0}
    controls = sweep.controls_of("RLHFBlindSpot-v0", {}, [stopped, ok])
    assert controls == [
        ("naive", {}, {"samples_per_round": 2, "buffer_size": 2}),
        ("oracle-values", {"value_queries": 1}, {}),
    ]
    assert sweep.controls_of("RLHFBlindSpot-v0", {}, [stopped]) == []
    assert sweep.controls_of("RLHFBlindSpot-v0", {}, [{**ok, "reads": "truth_values"}]) == []
    sb3 = {**ok, "run_name": "fpo-relaxed+ppo"}  # fresh env steps of its own policy, no repeats
    spr = gym.make("RLHFVerbosity-v0").unwrapped.config.samples_per_round
    assert sweep.controls_of("RLHFVerbosity-v0", {}, [sb3])[0][2]["samples_per_round"] == 2 * spr
