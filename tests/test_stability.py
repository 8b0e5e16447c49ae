"""The envs stay finite under their own action space's samples (issue: the README's example
diverged), and the linear RM's stability guard never acts on the paper's path."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
import torch

import rlhf_envs  # noqa: F401
from agents import fpo
from agents.registry import get

ENV_IDS = ["RLHFBlindSpot-v0", "RLHFNeuralBlindSpot-v0", "RLHFVerbosity-v0", "RLHFContextual-v0"]


def _random_walk(env_id: str, steps: int, **kwargs) -> float:
    """Step ``env_id`` with ``action_space.sample()``; returns the largest |RM parameter|."""
    env = gym.make(env_id, **kwargs)
    env.reset(seed=0)
    env.action_space.seed(0)
    for _ in range(steps):
        _, reward, terminated, truncated, info = env.step(env.action_space.sample())
        assert np.isfinite(reward) and np.isfinite(info["true_utility"])
        if terminated or truncated:
            env.reset()
    params = env.unwrapped.core.params
    return max(float(v.abs().max()) for v in params.values())


@pytest.mark.parametrize("feedback", ["rating", "preference"])
def test_linear_env_stays_bounded_under_random_actions(feedback):
    # without the guard, w reached 7.7e27 within 300 steps and NaN at round ~1,100
    biggest = _random_walk("RLHFBlindSpot-v0", 3000, feedback=feedback)
    assert biggest < 10.0


@pytest.mark.slow
@pytest.mark.parametrize("env_id", ENV_IDS)
def test_envs_finite_for_100k_random_steps(env_id):
    assert np.isfinite(_random_walk(env_id, 100_000))


def test_guard_is_inactive_on_the_paper_path():
    """Every response naive, FPO and the static anchor submit on the default linear env keeps
    the SGD factor at exactly 1 (so the replication's updates are the paper's, bit for bit)."""
    for name in ["naive", "fpo-relaxed", "static"]:
        env = gym.make_vec("RLHFBlindSpot-v0", num_envs=3, vectorization_mode="vector_entry_point")
        env.reset(seed=[0, 1, 2])
        core = env.unwrapped.core
        cls = get(name)
        agent = cls(cls.config_cls(), seed=[0, 1, 2])
        worst = []
        real_update = core.reward_model.update

        def spy(params, opt_state, y, target, feedback, reference=None, _u=real_update, _w=worst):
            _w.append(float(_u.__self__.step_scale(y, feedback, reference).min()))
            return _u(params, opt_state, y, target, feedback, reference)

        core.reward_model.update = spy
        agent.learn(env, 2000)
        assert len(worst) == 2000 and min(worst) == 1.0, name


def test_guard_shrinks_the_step_to_no_overshoot():
    env = gym.make("RLHFBlindSpot-v0")
    env.reset(seed=0)
    core = env.unwrapped.core
    rm = core.reward_model
    y = torch.full((1, 1, 50), 10.0, dtype=torch.float64)  # a corner of the action Box
    assert float(rm.step_scale(y, "rating")) == pytest.approx(1 / (0.005 * (2 * 5000 + 0.02)))
    target = torch.zeros(1, 1, dtype=torch.float64)
    new, _ = rm.update(core.params, core.opt_state, y, target, "rating")
    before = float(rm.score(core.params, y).abs())
    after = float(rm.score(new, y).abs())
    assert after < before  # the error on y shrinks instead of flipping sign and growing


@pytest.mark.parametrize("feedback", ["rating", "preference"])
def test_exact_fpo_virtual_update_follows_the_guard(feedback):
    """The exact form's virtual step equals the env's real (guarded) update where it acts."""
    env = gym.make("RLHFBlindSpot-v0", feedback=feedback)
    env.reset(seed=0)
    core = env.unwrapped.core
    y = torch.linspace(-9, 9, 50, dtype=torch.float64).reshape(1, 1, 50)
    label = core.labeler_target(y)
    assert float(core.reward_model.step_scale(y, feedback, core.references)) < 1.0
    _, after = fpo.virtual_update_reward(core, y, label)
    by, bt, _, length = core.push(y, label)
    params, _ = core.reward_model.update(
        core.params, core.opt_state, by[:, :length], bt[:, :length], feedback, core.references
    )
    torch.testing.assert_close(after, core.reward_model.score(params, y), rtol=1e-10, atol=1e-12)


def test_a_finite_runaway_policy_is_stopped(tmp_path):
    """A policy that runs away without overflowing (here an anchor 100x too strong, which once
    sent responses to ~1e108) is stopped with a reason instead of finishing as a result."""
    import json

    from baselines import results
    from baselines.run import main

    args = ["--agent", "elite-anchor", "--agent-kwargs", "anchor_coef=100", "--seeds", "1"]
    assert main([*args, "--rounds", "300", "--out", str(tmp_path), "--no-progress"]) == 1
    folder = results.run_dir(tmp_path, "RLHFBlindSpot-v0", "elite-anchor", 1)
    summary = json.loads((folder / "summary.json").read_text())
    assert summary["status"] == "stopped" and "diverged past |y| = 1e+06" in summary["reason"]
