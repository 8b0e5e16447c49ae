"""Fast paths: they give the same numbers bit for bit, and exact FPO's closed-form gradient
agrees with autograd through the virtual update to 1e-12 relative."""

import pickle

import gymnasium as gym
import numpy as np
import pytest
import torch

import rlhf_envs  # noqa: F401
from agents import fpo, registry
from agents.follower import Follower, Oracle, answer, follower_state
from agents.foresight import FPOExactAgent
from baselines.plan import load_defaults
from rlhf_envs.reward_models import (
    FlatParams,
    LinearRewardModel,
    MLPRewardModel,
    OptimizerConfig,
    flatten,
    unflatten,
)

NEURAL = "RLHFNeuralBlindSpot-v0"
torch.set_num_threads(1)


def mlp(skip: bool, optimizer: str = "adam") -> tuple[MLPRewardModel, dict]:
    skip_init = torch.linspace(-0.5, 0.5, 6, dtype=torch.float64) if skip else None
    rm = MLPRewardModel(6, OptimizerConfig(optimizer, 1e-2, 1e-3), (5, 4), 0.3, skip_init)
    return rm, rm.init_params([torch.Generator().manual_seed(s) for s in (0, 1, 2)])


def responses(n: int = 4, seed: int = 0) -> torch.Tensor:
    return torch.randn(3, n, 6, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


@pytest.mark.parametrize("skip", [False, True])
def test_mlp_gradient_paths_are_bit_identical_to_the_full_ones(skip):
    rm, params = mlp(skip)
    y = responses()
    parts = rm.parts(params, y)
    r, g, k, _ = rm.first_order_parts(params, y)
    assert torch.equal(r, parts[0]) and torch.equal(g, rm.grad_y_from_parts(params, parts))
    assert torch.equal(rm.grad_y(params, y), g)
    torch.testing.assert_close(k, rm.ntk(params, y, y), rtol=1e-12, atol=0)
    # the extra sigmoids handed out by parts() change nothing either
    sig: list = []
    assert all(
        torch.equal(a, b)
        for a, b in zip(rm.parts(params, y, sig), rm.parts(params, y), strict=True)
    )
    assert len(sig) == 3


def test_linear_grad_y_is_the_weight():
    rm = LinearRewardModel(6, OptimizerConfig(), torch.ones(6, dtype=torch.float64), 0.1)
    params = rm.init_params([torch.Generator().manual_seed(0)] * 3)
    y = responses()
    assert torch.equal(rm.grad_y(params, y), params["w"].unsqueeze(1).expand_as(y))


def test_adam_from_flat_params_equals_adam_from_a_plain_dict():
    rm, params = mlp(skip=True)
    state = rm.init_opt_state(params)
    y, t = responses(7), torch.randn(3, 7, dtype=torch.float64)
    new, state = rm.update(params, state, y, t, "rating")  # FlatParams, carrying .flat
    assert isinstance(new, FlatParams) and torch.equal(new.flat, flatten(new))
    a, sa = rm.update(new, state, y, t, "rating")
    b, sb = rm.update(dict(new), state, y, t, "rating")  # a plain dict: flattened afresh
    assert all(torch.equal(a[k], b[k]) for k in a) and torch.equal(sa["m"], sb["m"])
    again = pickle.loads(pickle.dumps(a))
    assert torch.equal(again.flat, a.flat) and all(torch.equal(again[k], a[k]) for k in a)


@pytest.mark.parametrize(
    "env_kwargs", [{}, {"rm_weight_decay": 0.0}, {"rm_optimizer": "sgd"}, {"rm_steps": 3}]
)
def test_virtual_step_is_the_optimisers_step_bit_for_bit(env_kwargs):
    env, core = advanced_core(env_kwargs)
    cache: dict = {}
    n, g_rest, _, virtual = fpo._lookahead(core, cache)
    y = torch.randn(3, 1, 10, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    runs = []
    for step in (
        lambda g: unflatten(virtual(g)[0], core.params),
        lambda g: core.reward_model.apply_grads(
            core.params, core.opt_state, unflatten(g, core.params)
        )[0],
    ):
        yy = y.clone().requires_grad_(True)
        label = torch.ones(3, 1, dtype=torch.float64)
        g_new, _ = core.reward_model.loss_grad_and_score(core.params, yy, label, "rating", None, n)
        new = step(g_rest + flatten(g_new))
        score = core.reward_model.score(new, yy).sum()
        runs.append((new, torch.autograd.grad(score, yy)[0]))
    (a, ga), (b, gb) = runs
    assert all(torch.equal(a[k], b[k]) for k in b) and torch.equal(ga, gb)
    assert fpo._lookahead(core, cache)[3] is virtual  # kept while the RM and buffer stay


def test_unflatten_gives_the_slices_values_and_gradient():
    rm, params = mlp(skip=True)
    flat = flatten(params).clone().requires_grad_(True)
    out = unflatten(flat * 1.5, params)
    i, ref = 0, {}
    for k in sorted(params):
        size = params[k][0].numel()
        ref[k] = (flat * 1.5)[:, i : i + size].reshape(params[k].shape).contiguous()
        i += size
    assert all(torch.equal(out[k], ref[k]) and out[k].is_contiguous() for k in ref)
    w = {k: torch.randn_like(v) for k, v in ref.items()}
    ga = torch.autograd.grad(sum((out[k] * w[k]).sum() for k in w), flat)[0]
    gb = torch.autograd.grad(sum((ref[k] * w[k]).sum() for k in w), flat)[0]
    assert torch.equal(ga, gb)


def test_a_nan_parameter_is_still_reported_by_name():
    env = gym.make(NEURAL, rm_lr=1e300)
    env.reset(seed=0)
    with pytest.raises(FloatingPointError, match="reward model parameter"):
        for _ in range(10):
            env.step(np.full(10, 5.0, dtype=np.float32))


def advanced_core(env_kwargs: dict, seeds=(0, 1, 2), steps: int = 37):
    env = gym.make_vec(
        NEURAL, num_envs=len(seeds), vectorization_mode="vector_entry_point", **env_kwargs
    )
    env.reset(seed=list(seeds))
    core = env.unwrapped.core
    g = torch.Generator().manual_seed(1)
    for _ in range(steps):
        core.step(torch.randn(len(seeds), 10, generator=g, dtype=torch.float64) + 1.0)
    return env, core


def started(env_kwargs: dict, label_grad: bool, *classes):
    """An advanced core, the agents' copy of its follower and their counted queries (what
    ``learn`` gives them), and one started agent of each class on it."""
    env, core = advanced_core(env_kwargs)
    agents = [cls(fpo_gamma=0.005, seed=[0, 1, 2], label_grad=label_grad) for cls in classes]
    reads = tuple(dict.fromkeys(r for a in agents for r in a.declared_reads()))
    view = Follower(reads, follower_state(core, slice(None), reads, True))
    oracle = Oracle(
        lambda kind, ys: answer(core, slice(None), reads, kind, ys, env.unwrapped.ys_error)
    )
    for agent in agents:
        agent.start(view)
    return core, view, oracle, agents


def charged(core) -> np.ndarray:
    """Oracle queries charged so far, value and gradient, per experiment."""
    return np.stack([core.counters()[k] for k in ("oracle_queries", "oracle_grad_queries")])


@pytest.mark.parametrize(
    "env_kwargs",
    [
        {},
        {"blind_spot_dims": (3,), "blind_spot_bias": 0.5},
        {"rm_optimizer": "sgd"},
        {"rm_weight_decay": 0.0},
    ],
)
@pytest.mark.parametrize("label_grad", [False, True])
def test_closed_form_exact_gradient_matches_autograd_to_1e_12(env_kwargs, label_grad):
    core, view, oracle, (agent,) = started(env_kwargs, label_grad, FPOExactAgent)
    g = torch.Generator().manual_seed(2)
    for _ in range(3):  # the second and third calls reuse the cached buffer terms
        y = torch.randn(3, 1, 10, generator=g, dtype=torch.float64) + 1.0
        yy = y.clone().requires_grad_(True)
        before = charged(core)
        (want,) = torch.autograd.grad(agent.score(view, yy, oracle).sum(), yy)
        by_autograd = charged(core) - before
        got = agent.score_grad(view, y, oracle)
        assert by_autograd.sum() == 3  # one query per experiment
        assert np.array_equal(charged(core) - before, 2 * by_autograd)  # the same either way
        rel = (got - want).abs().max() / want.abs().max()
        assert rel <= 1e-12, float(rel)


def test_closed_form_exact_gradient_scores_several_candidates_apart():
    env, core = advanced_core({})
    y = torch.randn(3, 4, 10, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    label = core.labeler_target(y)
    both = fpo.exact_score_grad(core, y, label, 0.005)
    for j in range(4):
        one = fpo.exact_score_grad(core, y[:, j : j + 1], label[:, j : j + 1], 0.005)
        assert torch.allclose(both[:, j : j + 1], one, rtol=1e-12, atol=1e-15)


def test_closed_form_refuses_preference_feedback():
    env, core = advanced_core({"feedback": "preference"})
    y = torch.zeros(3, 1, 10, dtype=torch.float64)
    with pytest.raises(ValueError, match="rating"):
        fpo.exact_score_grad(core, y, torch.zeros(3, 1, dtype=torch.float64), 0.1)


def learn(agent: str, seeds: list[int], rounds: int, env_kwargs: dict | None = None):
    defaults = load_defaults(NEURAL)
    cls = registry.get(agent)
    name = cls.name if ":" in agent else agent
    kwargs = {**defaults["agent"], **defaults.get("agents", {}).get(name, {}), "rounds": rounds}
    env = gym.make_vec(
        NEURAL, num_envs=len(seeds), vectorization_mode="vector_entry_point", **(env_kwargs or {})
    )
    env.reset(seed=seeds)
    return cls(cls.config_cls(**kwargs), seed=seeds).learn(env)


@pytest.mark.parametrize("agent", ["naive", "fpo", "fpo-exact", "ensemble", "oracle-values"])
def test_a_seed_gives_the_same_numbers_alone_and_batched(agent):
    batched = learn(agent, [4, 0, 7], 12)
    alone = learn(agent, [0], 12)
    for key, values in alone.items():
        assert np.array_equal(values[:, 0], batched[key][:, 1]), key


@pytest.mark.parametrize("env_id", [NEURAL, "RLHFBlindSpot-v0"])
def test_submit_is_step_without_the_info(env_id):
    def made():
        env = gym.make_vec(env_id, num_envs=3, vectorization_mode="vector_entry_point")
        env.reset(seed=[5, 0, 2])
        return env

    by_step, by_submit = made(), made()
    d = by_step.unwrapped.config.dims
    g = torch.Generator().manual_seed(6)
    for _ in range(2 * by_step.unwrapped.config.samples_per_round):  # two retrainings
        y = torch.randn(3, d, generator=g, dtype=torch.float64) * 0.5
        _, reward, _, _, info = by_step.step(y.numpy())
        proxy, true_u = by_submit.submit(y)
        assert np.array_equal(proxy, reward) and np.array_equal(proxy, info["proxy_reward"])
        assert np.array_equal(true_u, info["true_utility"])
        assert torch.equal(by_submit.last_response, by_step.last_response)
    a, b = by_step.unwrapped.core, by_submit.unwrapped.core
    assert a.round == b.round == 2 and np.array_equal(a.labels_used, b.labels_used)
    assert all(torch.equal(a.params[k], b.params[k]) for k in a.params)
    assert torch.equal(a.buffer_y, b.buffer_y)


def test_submit_rejects_what_step_rejects_and_keeps_the_env():
    env = gym.make_vec(NEURAL, num_envs=2, vectorization_mode="vector_entry_point")
    with pytest.raises(RuntimeError, match="reset"):
        env.submit(torch.zeros(2, 10, dtype=torch.float64))
    env.reset(seed=[0, 1])
    core = env.unwrapped.core
    with pytest.raises(ValueError, match=r"action must have shape \(2, 10\), got \(2, 9\)"):
        env.submit(torch.zeros(2, 9, dtype=torch.float64))
    bad = torch.zeros(2, 10, dtype=torch.float64)
    bad[1, 3] = float("nan")
    with pytest.raises(ValueError, match="action must be finite"):
        env.submit(bad)
    assert core.in_round == 0 and core.round == 0  # nothing was taken in
    y = torch.ones(2, 10, dtype=torch.float32)  # another dtype is read as float64, as step does
    proxy, _ = env.submit(y)
    assert core.in_round == 1 and proxy.dtype == np.float64
    y += 1.0  # the env keeps its own copy
    assert torch.equal(env.unwrapped.last_response, torch.ones(2, 10, dtype=torch.float64))
