"""Names of earlier releases keep working for one release, with a warning."""

import json

import pytest

from agents import FPORelaxedAgent
from baselines import results, sweep
from baselines.run import main


def test_fpo_gamma_old_name_warns_and_sets_the_new_field(tmp_path, capsys):
    with pytest.warns(DeprecationWarning, match="'gamma' is now 'fpo_gamma'"):
        agent = FPORelaxedAgent(gamma=0.25)
    assert agent.config.fpo_gamma == 0.25
    argv = ["--agent", "fpo", "--seeds", "0", "--rounds", "3", "--out", str(tmp_path)]
    with pytest.warns(DeprecationWarning):
        assert main([*argv, "--agent-kwargs", "gamma=0.25", "--no-progress"]) == 0
    folder = results.run_dir(tmp_path, "RLHFBlindSpot-v0", "fpo", 0)
    config = json.loads((folder / "config.json").read_text())
    assert config["agent_config"]["fpo_gamma"] == 0.25 and "gamma" not in config["agent_config"]
    assert json.loads((folder / "summary.json").read_text())["run_name"] == "fpo"


def test_sweep_key_optimizers_still_read(tmp_path, capsys):
    spec = tmp_path / "s.yaml"
    spec.write_text("envs: [RLHFContextual-v0]\nagents: [naive]\noptimizers: [ppo]\nseeds: 0\n")
    jobs, folders = sweep.plan_sweep(sweep.load_sweep(spec), tmp_path, force=False, jobs=1)
    assert "optimizers is now policy_optimizers" in capsys.readouterr().err
    assert [j.policy_optimizer for j in jobs] == ["ppo"]
    assert folders[0].parent.name == "naive+ppo"
