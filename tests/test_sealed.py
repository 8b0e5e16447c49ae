"""Harness runs seal the truth from agents: forbidden reads fail loudly, counted calls are counted."""

import json
import sys

import numpy as np
import pytest

from baselines import results
from baselines.run import main

LINEAR = "RLHFBlindSpot-v0"
VERBOSITY = "RLHFVerbosity-v0"

PEEKERS = '''
import torch
from stable_baselines3.common.callbacks import BaseCallback
from agents import Agent


class CoreTruth(Agent):
    """Ascends the hidden utility read off the follower (forbidden)."""

    name = "core-truth"

    def score(self, core, y, oracle):
        return core.utility(y)


class EnvTruth(Agent):
    """Reads the truth's settings off the env (forbidden)."""

    name = "env-truth"

    def score(self, core, y, oracle):
        target = core.config.target_value
        return -((y - target) ** 2).sum(-1)


class InfoTruth(Agent):
    """Naive reward; its SB3 callback reads the truth from info (forbidden)."""

    name = "info-truth"

    def score(self, core, y, oracle):
        return core.reward_model.score(core.params, y)

    def sb3_callbacks(self):
        class Peek(BaseCallback):
            def _on_step(self):
                return self.locals["infos"][0]["true_utility"] > -1.0

        return [Peek()]


class OracleStep(Agent):
    """Reaches past the counted queries for the env itself (forbidden)."""

    name = "oracle-step"

    def score(self, core, y, oracle):
        return oracle.core.utility(y)


class Counted(Agent):
    """Naive reward plus a counted value query of the labeler on every scored response."""

    name = "counted"
    reads = ("current_rm", "labeler_values")

    def score(self, core, y, oracle):
        r = core.reward_model.score(core.params, y)
        return r + 0.0 * oracle.query_labeler(y)
'''


@pytest.fixture
def peekers(tmp_path, monkeypatch):
    (tmp_path / "peekers.py").write_text(PEEKERS)
    monkeypatch.syspath_prepend(str(tmp_path))
    yield
    sys.modules.pop("peekers", None)


def run(tmp_path, agent, *extra):
    out = tmp_path / "runs"
    argv = ["--agent", f"peekers:{agent}", "--seeds", "0", "--out", str(out), "--no-progress"]
    return main([*argv, *extra]), out


def summary(out, env, name):
    return json.loads((results.run_dir(out, env, name, 0) / "summary.json").read_text())


WHITE_BOX = ["--env", LINEAR, "--rounds", "5"]
PPO = ["--env", VERBOSITY, "--policy-optimizer", "ppo", "--rounds", "3"]


@pytest.mark.parametrize(
    "agent,name,needle",
    [
        ("CoreTruth", "core-truth", "core.utility is sealed"),
        ("EnvTruth", "env-truth", "core.config.target_value is sealed"),
        ("OracleStep", "oracle-step", "oracle.core is sealed"),
    ],
)
@pytest.mark.parametrize("mode", ["whitebox", "ppo"])
def test_forbidden_reads_fail_the_run_with_a_clear_reason(
    peekers, tmp_path, capsys, agent, name, needle, mode
):
    args, env = (WHITE_BOX, LINEAR) if mode == "whitebox" else (PPO, VERBOSITY)
    code, out = run(tmp_path, agent, *args)
    assert code == 1
    s = summary(out, env, name if mode == "whitebox" else f"{name}+ppo")
    assert s["status"] == "failed" and needle in s["reason"], s["reason"]
    assert needle in capsys.readouterr().err


def test_reading_the_truth_from_info_fails_under_ppo(peekers, tmp_path, capsys):
    code, out = run(tmp_path, "InfoTruth", *PPO)
    assert code == 1
    reason = summary(out, VERBOSITY, "info-truth+ppo")["reason"]
    assert 'info["true_utility"] is sealed' in reason


@pytest.mark.parametrize("mode", ["whitebox", "ppo"])
def test_counted_queries_match_the_calls(peekers, tmp_path, mode):
    args, env = (WHITE_BOX, LINEAR) if mode == "whitebox" else (PPO, VERBOSITY)
    assert run(tmp_path, "Counted", *args)[0] == 0
    folder = results.run_dir(tmp_path / "runs", env, "counted" + ("+ppo" * (mode == "ppo")), 0)
    s = json.loads((folder / "summary.json").read_text())
    metrics = results.read_metrics(folder / "metrics.csv")
    # white-box: one scored response per round (linear env: 1 inner step); PPO: one query per
    # finished response, i.e. per label the RM gets (every response is labelled)
    expected = s["rounds"] if mode == "whitebox" else s["labels_used"]
    assert s["oracle_queries"] == expected and s["oracle_grad_queries"] == 0
    assert s["oracle_value_equivalents"] == expected
    assert s["labeler_calls"] == s["labels_used"] + expected
    assert s["reads"] == "current_rm,labeler_values"
    assert np.all(np.diff(metrics["oracle_queries"]) >= 0)


def test_gradient_queries_are_counted_with_their_value_equivalent(tmp_path):
    out = tmp_path / "runs"
    argv = ["--seeds", "0", "--rounds", "300", "--out", str(out), "--no-progress"]
    assert main(["--agent", "fpo-relaxed-grad", *argv]) == 0
    assert main(["--agent", "fpo-relaxed", *argv]) == 0
    grad = summary(out, LINEAR, "fpo-relaxed-grad")
    values = summary(out, LINEAR, "fpo-relaxed")
    assert grad["reads"] == "current_rm,labeler_grads"
    assert (grad["oracle_queries"], grad["oracle_grad_queries"]) == (0, 300)
    assert grad["oracle_value_equivalents"] == 300 * 51  # d + 1 = 51 per gradient query
    assert values["reads"] == "current_rm,labeler_values"
    assert (values["oracle_queries"], values["oracle_grad_queries"]) == (300, 0)
    # the gradient is what the paper's linear relaxed FPO wins with
    assert grad["final_true_utility"] > values["final_true_utility"] + 2.0


def test_gym_make_users_still_see_the_truth():
    import gymnasium as gym
    import torch

    import rlhf_envs  # noqa: F401

    env = gym.make(LINEAR)
    env.reset(seed=0)
    info = env.step(np.zeros(50))[-1]
    y = torch.zeros(1, 50, dtype=torch.float64)
    assert info["true_utility"] == pytest.approx(float(env.unwrapped.core.utility(y)[0]))
