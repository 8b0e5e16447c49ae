"""Harness runs keep the truth from agents: an agent's process has no env, so reading the truth
fails the run with one line naming what was read; counted calls are counted, per kind.

The plugins run through the harness in subprocesses (``baselines.sweep``, the plugin module on
``PYTHONPATH``): an agent's process is forked from a server that the harness starts once per
process, with the ``sys.path`` of that moment.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

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


REPO = Path(__file__).resolve().parents[1]
PLUGINS = ("CoreTruth", "EnvTruth", "OracleStep", "Counted")
ROUNDS = {"whitebox": 5, "ppo": 3}


@pytest.fixture(scope="module")
def peeked(tmp_path_factory):
    """One sweep per mode (white-box on the linear env, PPO on the verbosity env) of every
    plugin; ``{mode: (output folder, exit code, output)}``."""
    root = tmp_path_factory.mktemp("peekers")
    (root / "peekers.py").write_text(PEEKERS)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(root), str(REPO)])}
    procs = {}
    for mode, env_id, extra in (
        ("whitebox", LINEAR, []),
        ("ppo", VERBOSITY, ["InfoTruth"]),
    ):
        spec = root / f"{mode}.yaml"
        agents = [f"peekers:{a}" for a in (*PLUGINS, *extra)]
        spec.write_text(
            f"envs: [{env_id}]\nagents: {json.dumps(agents)}\nseeds: [0]\n"
            f"rounds: {ROUNDS[mode]}\npolicy_optimizers: [{mode}]\n"
        )
        procs[mode] = subprocess.Popen(
            [sys.executable, "-m", "baselines.sweep", str(spec), "--out", str(root / mode)]
            + ["--no-progress", "--quiet", "--jobs", "1"],
            cwd=root,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
    out = {}
    for mode, proc in procs.items():
        text, _ = proc.communicate(timeout=600)
        out[mode] = (root / mode, proc.returncode, text)
    return out


def summary(out, env, name):
    return json.loads((results.run_dir(out, env, name, 0) / "summary.json").read_text())


def plugin_summary(peeked, mode, name):
    out, _, _ = peeked[mode]
    env, folder = (LINEAR, name) if mode == "whitebox" else (VERBOSITY, f"{name}+ppo")
    return summary(out, env, folder)


@pytest.mark.parametrize(
    "name,needle",
    [
        ("core-truth", "'utility'"),
        ("env-truth", "'target_value'"),
        ("oracle-step", "'core'"),
    ],
)
@pytest.mark.parametrize("mode", ["whitebox", "ppo"])
def test_reading_the_truth_fails_the_run_with_one_line_naming_it(peeked, name, needle, mode):
    _, code, text = peeked[mode]
    assert code == 1, text
    s = plugin_summary(peeked, mode, name)
    assert s["status"] == "failed" and needle in s["reason"], s["reason"]
    assert "\n" not in s["reason"]


def test_reading_the_truth_from_info_fails_under_ppo(peeked):
    reason = plugin_summary(peeked, "ppo", "info-truth")["reason"]
    assert "'true_utility'" in reason and "\n" not in reason, reason


@pytest.mark.parametrize("mode", ["whitebox", "ppo"])
def test_counted_queries_match_the_calls(peeked, mode):
    out, _, _ = peeked[mode]
    env = LINEAR if mode == "whitebox" else VERBOSITY
    folder = results.run_dir(out, env, "counted" + ("+ppo" * (mode == "ppo")), 0)
    s = json.loads((folder / "summary.json").read_text())
    assert s["status"] == "ok", s.get("reason")
    metrics = results.read_metrics(folder / "metrics.csv")
    # white-box: one scored response per round (linear env: 1 inner step); PPO: one query per
    # finished response, i.e. per label the RM gets (every response is labelled)
    expected = s["rounds"] if mode == "whitebox" else s["labels_used"]
    assert s["oracle_queries"] == expected and s["oracle_grad_queries"] == 0
    assert s["oracle_value_equivalents"] == expected
    assert s["labeler_calls"] == s["labels_used"] + expected
    assert s["reads"] == "current_rm,labeler_values"
    assert np.all(np.diff(metrics["oracle_queries"]) >= 0)
    # all of them labeler values, none of the truth
    assert np.array_equal(metrics["labeler_value_queries"], metrics["oracle_queries"])
    for kind in ("labeler_grad_queries", "truth_value_queries", "truth_grad_queries"):
        assert not metrics[kind].any(), kind


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
    for name, kind in (("fpo-relaxed-grad", "labeler_grad"), ("fpo-relaxed", "labeler_value")):
        m = results.read_metrics(results.run_dir(out, LINEAR, name, 0) / "metrics.csv")
        assert m[f"{kind}_queries"][-1] == 300, name  # each charged to its own kind
        others = {"labeler_value", "labeler_grad", "truth_value", "truth_grad"} - {kind}
        assert not any(m[f"{k}_queries"].any() for k in others), name
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
