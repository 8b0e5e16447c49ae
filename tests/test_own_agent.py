"""An agent written outside the package (the README's example) runs through every tool."""

import json
import re
import sys
from pathlib import Path

import pytest

from agents import WhiteBoxConfig
from baselines import leaderboard, results, sweep
from baselines.plan import load_defaults, plan
from baselines.run import main

README = Path(__file__).resolve().parent.parent / "README.md"
NEURAL = "RLHFNeuralBlindSpot-v0"


@pytest.fixture
def my_agent(tmp_path, monkeypatch):
    """The README's "write your own agent" code saved as ``my_agent.py`` on the import path."""
    text = README.read_text()
    section = text[text.index("### Write your own agent") :]
    code = re.search(r"```python\n(.*?)```", section, flags=re.S)[1]
    (tmp_path / "my_agent.py").write_text(code)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv("PYTHONPATH", str(tmp_path))  # for spawned workers
    yield "my_agent:HalfStaticAgent"
    sys.modules.pop("my_agent", None)


def summary(out: Path, env: str, label: str, seed: int) -> dict:
    return json.loads((results.run_dir(out, env, label, seed) / "summary.json").read_text())


def test_own_agent_white_box_ppo_sweep_and_leaderboard(my_agent, tmp_path):
    out = tmp_path / "runs"
    args = ["--out", str(out), "--no-progress"]
    assert (
        main(["--agent", my_agent, "--env", NEURAL, "--seeds", "0-1", "--rounds", "30", *args]) == 0
    )
    assert (
        main(["--agent", "naive", "--env", NEURAL, "--seeds", "0-1", "--rounds", "30", *args]) == 0
    )
    s = summary(out, NEURAL, "half-static", 0)
    assert s["status"] == "ok" and s["reads"] == "current_rm,initial_rm"
    assert s["agent"] == my_agent and s["oracle_queries"] == 0
    # it is not naive: the initial RM pulls its policy elsewhere
    assert s["final_true_utility"] != summary(out, NEURAL, "naive", 0)["final_true_utility"]

    ppo = [
        "--policy-optimizer",
        "ppo",
        "--env",
        "RLHFVerbosity-v0",
        "--seeds",
        "0",
        "--rounds",
        "3",
    ]
    assert main(["--agent", my_agent, *ppo, *args]) == 0
    metrics = results.run_dir(out, "RLHFVerbosity-v0", "half-static+ppo", 0) / "metrics.csv"
    assert metrics.read_text().count("\n") == 4  # header + 3 rounds

    spec = tmp_path / "sweep.yaml"
    spec.write_text(
        f"envs: [{NEURAL}]\nagents: [naive, '{my_agent}']\nseeds: 2-3\nrounds: 30\nsubdir: sw\n"
    )
    assert sweep.main([str(spec), "--out", str(out), "--jobs", "2", "--no-progress"]) == 0
    assert summary(out / "sw", NEURAL, "half-static", 3)["status"] == "ok"

    res = tmp_path / "res"
    assert leaderboard.main(["--runs", str(out / "sw"), "--results", str(res)]) == 0
    board = (res / "LEADERBOARD.md").read_text()
    row = next(line for line in board.splitlines() if line.startswith("| half-static |"))
    assert "current_rm,initial_rm" in row
    # the outside agent is compared against the baselines
    assert "| half-static | naive |" in board


def test_unknown_or_bad_agent_is_a_one_line_error(tmp_path, capsys, my_agent):
    (tmp_path / "not_agent.py").write_text("class Thing:\n    name = 'thing'\n")
    for spec, needle in [
        ("psychic", "unknown agent 'psychic'"),
        ("no_such_module:X", "cannot load agent"),
        ("my_agent:Nope", "cannot load agent"),
        ("not_agent:Thing", "not a subclass of agents.Agent"),
    ]:
        assert main(["--agent", spec, "--out", str(tmp_path), "--no-progress"]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and needle in err, err


PLUGINS = """
from dataclasses import dataclass

from agents import NaiveAgent, WhiteBoxConfig


@dataclass
class FastConfig(WhiteBoxConfig):
    policy_lr: float = 0.04


class FastNaive(NaiveAgent):
    name = "fast-naive"
    config_cls = FastConfig


class SelfTuned(NaiveAgent):
    name = "self-tuned"

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.config.policy_lr = 0.05
"""


@pytest.fixture
def plugins(tmp_path, monkeypatch):
    (tmp_path / "cfg_plugins.py").write_text(PLUGINS)
    monkeypatch.syspath_prepend(str(tmp_path))
    yield "cfg_plugins"
    sys.modules.pop("cfg_plugins", None)


@pytest.mark.parametrize(
    "agent,kwargs,lr",
    [
        ("FastNaive", [], 0.04),  # the class's own default, not the YAML's 0.02
        ("FastNaive", ["--agent-kwargs", "policy_lr=0.03"], 0.03),  # the user's value wins
        ("SelfTuned", [], 0.05),  # set in __init__: what runs is what is recorded
    ],
)
def test_a_plugins_recorded_config_is_the_one_it_runs_with(plugins, tmp_path, agent, kwargs, lr):
    env = "RLHFBlindSpot-v0"
    assert load_defaults(env)["agent"]["policy_lr"] == 0.02
    out = tmp_path / "runs"
    args = ["--env", env, "--seeds", "0", "--rounds", "5", "--out", str(out), "--no-progress"]
    assert main(["--agent", f"{plugins}:{agent}", *kwargs, *args, "--quiet"]) == 0
    assert main(["--agent", "naive", "--agent-kwargs", f"policy_lr={lr}", *args, "--quiet"]) == 0
    assert plugins not in sys.modules  # the plugin ran in its own process only
    name = {"FastNaive": "fast-naive", "SelfTuned": "self-tuned"}[agent]
    folder = results.run_dir(out, env, name, 0)
    config = json.loads((folder / "config.json").read_text())
    assert config["agent_config"]["policy_lr"] == lr
    # it ran with that step size: its numbers are naive's with it
    naive = results.run_dir(out, env, "naive", 0)
    assert (folder / "metrics.csv").read_bytes() == (naive / "metrics.csv").read_bytes()
    replay = ["--from", str(folder / "config.json"), "--out", str(tmp_path / "re")]
    assert main([*replay, "--no-progress"]) == 0  # the record reproduces the run


def test_the_yaml_fills_a_plugins_fields_that_keep_the_base_default(plugins, tmp_path):
    (job,), _ = plan(NEURAL, f"{plugins}:FastNaive", [0], None, {}, {}, tmp_path)
    yaml = load_defaults(NEURAL)
    assert job.agent_config["policy_lr"] == 0.04 != yaml["agent"]["policy_lr"]
    assert job.agent_config["l2"] == yaml["agent"]["l2"] != WhiteBoxConfig.l2
    assert job.rounds == yaml["rounds"] != WhiteBoxConfig.rounds


def test_the_exact_labels_example_climbs_the_labeler_not_the_truth(tmp_path, monkeypatch):
    """examples/exact_labels.py: with an unbiased noiseless labeler it is the oracle to the last
    digit; with a biased one it ends below the oracle, its gradient queries counted."""
    root = str(README.parent)
    monkeypatch.syspath_prepend(root)
    monkeypatch.setenv("PYTHONPATH", root)  # for the agent's own process
    out, env = tmp_path / "runs", "RLHFBlindSpot-v0"
    common = ["--env", env, "--seeds", "0", "--rounds", "30", "--no-progress", "--quiet"]
    for name, bias in (("oracle", 0), ("examples.exact_labels:ExactLabels", 0), ("oracle", 3)):
        kw = ["--env-kwargs", "label_noise=0", f"labeler_bias={bias}"]
        assert main(["--agent", name, *common, *kw, "--out", str(out / str(bias))]) == 0
    assert main(["--agent", "examples.exact_labels:ExactLabels", *common, "--env-kwargs",
                 "label_noise=0", "labeler_bias=3", "--out", str(out / "3")]) == 0  # fmt: skip
    same, oracle = summary(out / "0", env, "exact-labels", 0), summary(out / "0", env, "oracle", 0)
    assert same["final_true_utility"] == oracle["final_true_utility"]
    assert same["reads"] == "labeler_grads" and same["oracle_grad_queries"] > 0
    biased = summary(out / "3", env, "exact-labels", 0)["final_true_utility"]
    assert biased < summary(out / "3", env, "oracle", 0)["final_true_utility"] - 0.1
