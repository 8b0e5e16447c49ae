"""The oracle's counted labeler program and the fused exact-FPO round built on it (opt-in):
the program labels as ``query_labeler`` does and charges the same queries; the fused round takes
the closed form's steps to rounding error."""

import math

import gymnasium as gym
import numpy as np
import pytest
import torch

import rlhf_envs  # noqa: F401
from agents import registry
from agents.batching import SliceCore, SliceOracle
from agents.foresight import FPOExactCompiledAgent, FPOExactFusedAgent
from agents.sealed import FollowerView, Oracle, SealedError
from agents.whitebox import learn_together
from baselines.run import load_defaults
from rlhf_envs import programs

NEURAL = "RLHFNeuralBlindSpot-v0"
torch.set_num_threads(1)


def vector_env(seeds, env_id: str = NEURAL, **kwargs):
    env = gym.make_vec(
        env_id, num_envs=len(seeds), vectorization_mode="vector_entry_point", **kwargs
    )
    env.reset(seed=list(seeds))
    return env


def twice(label, y):  # labels two responses per experiment per call
    return label(y) + 2.0 * label(y + 1.0)


@pytest.mark.needs_compiler
def test_labeler_program_labels_as_query_labeler_and_charges_each_response():
    env = vector_env([0, 1, 2], labeler_bias=0.5)
    core, oracle = env.unwrapped.core, Oracle(env.unwrapped)
    y = torch.randn(3, 1, 10, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    program = oracle.labeler_program(twice, [y], key="twice")
    assert program.queries_per_call == 2
    before = core.oracle_queries.copy()
    got = program(y)
    charged = core.oracle_queries - before
    want = oracle.query_labeler(y) + 2.0 * oracle.query_labeler(y + 1.0)
    assert torch.allclose(got, want, rtol=1e-12, atol=1e-12)
    assert charged.tolist() == [2, 2, 2]  # what the two query_labeler calls charged too
    assert (core.oracle_queries - before).tolist() == [4, 4, 4]
    # a new env with the same settings: the same compiled program, fed that env's tensors
    other = vector_env([5, 6, 7], labeler_bias=0.5)
    n = len(programs._PROGRAMS)
    again = Oracle(other.unwrapped).labeler_program(twice, [y], key="twice")
    assert len(programs._PROGRAMS) == n
    other.unwrapped.core.y_star = other.unwrapped.core.y_star + 1.0  # read at each call
    want = other.unwrapped.query_labeler(y) + 2.0 * other.unwrapped.query_labeler(y + 1.0)
    assert torch.allclose(again(y), want, rtol=1e-12, atol=1e-12)
    assert not torch.allclose(again(y), program(y))


@pytest.mark.needs_compiler
def test_a_slice_oracle_charges_its_own_experiments_only():
    env = vector_env([0, 1, 2, 3, 4], labeler_bias=0.5)  # the settings of the test above
    core = env.unwrapped.core
    part = SliceCore(core, 1, 4)
    y = torch.ones(3, 1, 10, dtype=torch.float64)
    program = SliceOracle(env.unwrapped, part).labeler_program(twice, [y], key="twice")
    want = env.unwrapped.core.labeler_target(y) + 2.0 * env.unwrapped.core.labeler_target(y + 1)
    assert torch.allclose(program(y), want, rtol=1e-12, atol=1e-12)
    assert core.oracle_queries.tolist() == [0, 2, 2, 2, 0]


def test_the_labeler_program_is_an_oracle_query_not_a_follower_attribute():
    env = vector_env([0])
    assert callable(Oracle(env.unwrapped).labeler_program)
    with pytest.raises(SealedError):
        FollowerView(env.unwrapped.core).labeler_program  # noqa: B018


def agent(cls, seeds, rounds: int, **fields):
    kwargs = {**load_defaults(NEURAL)["agent"], "rounds": rounds, "inner_steps": 2, **fields}
    return cls(cls.config_cls(**kwargs), seed=list(seeds))


@pytest.mark.needs_compiler
@pytest.mark.parametrize(
    "policy", ["gaussian", pytest.param("deterministic", marks=pytest.mark.slow)]
)
def test_fused_round_takes_the_closed_forms_steps(policy):
    seeds = [3, 0]
    cf = registry.get("agents.foresight:FPOExactClosedFormAgent")
    want = agent(cf, seeds, 8, policy=policy).learn(vector_env(seeds))
    got = agent(FPOExactFusedAgent, seeds, 8, policy=policy).learn(vector_env(seeds))
    for key in ("true_utility", "proxy_reward", "signal_norm", "noise_norm"):
        np.testing.assert_allclose(got[key], want[key], rtol=1e-9, atol=1e-12, err_msg=key)
    for key in ("oracle_queries", "oracle_grad_queries", "labels_used"):
        np.testing.assert_array_equal(got[key], want[key], err_msg=key)  # the same queries
    assert FPOExactFusedAgent().declared_reads() == cf().declared_reads()


@pytest.mark.needs_compiler
def test_a_fused_policy_that_diverges_stops_as_step_by_step():
    seeds = [3, 0]  # the program of the test above (the step size is one of its inputs)
    # caught in the round it happens (not a round late, from the policy the round began with)
    with pytest.raises(FloatingPointError, match=r"diverged past .* at round 0 "):
        agent(FPOExactFusedAgent, seeds, 8, policy_lr=1e9).learn(vector_env(seeds))


@pytest.mark.needs_compiler
def test_fused_agent_is_deterministic_and_batched_with_others_gets_its_numbers_alone():
    naive = registry.get("naive")
    together = learn_together(
        [naive(naive.config_cls(rounds=6), seed=[1]), agent(FPOExactFusedAgent, [4, 0], 6)],
        vector_env([1, 4, 0]),
    )[1]
    alone = agent(FPOExactFusedAgent, [4, 0], 6).learn(vector_env([4, 0]))
    again = agent(FPOExactFusedAgent, [4, 0], 6).learn(vector_env([4, 0]))
    for key in alone:
        np.testing.assert_array_equal(alone[key], again[key], err_msg=key)
        np.testing.assert_array_equal(together[key], alone[key], err_msg=key)


def test_other_settings_take_the_compiled_agents_steps():
    # a linear reward model: the closed form does not cover it, and neither does the fused round
    seeds = [0, 1]
    env = dict(reward_model="linear")
    want = agent(FPOExactCompiledAgent, seeds, 4).learn(vector_env(seeds, **env))
    got = agent(FPOExactFusedAgent, seeds, 4).learn(vector_env(seeds, **env))
    for key in want:
        np.testing.assert_array_equal(got[key], want[key], err_msg=key)


def test_a_failed_fused_compilation_says_what_to_run_instead(monkeypatch):
    def fail(fn, example):
        raise RuntimeError("CppCompileError: no C++ compiler")

    monkeypatch.setattr(programs, "compile_program", fail)
    monkeypatch.setattr(programs, "_PROGRAMS", {})
    with pytest.raises(
        RuntimeError, match="fused exact FPO round could not be built.*fpo-exact-cf"
    ):
        agent(FPOExactFusedAgent, [0], 2).learn(vector_env([0]))
    assert programs._PROGRAMS == {}  # nothing half-built is kept


@pytest.mark.slow
@pytest.mark.needs_compiler
def test_fused_exact_agrees_with_autograd_exact_within_95_percent_cis():
    """10 seeds of each on the neural env (300 rounds, the env's settings)."""
    seeds = list(range(10))

    def final(name):
        cls = registry.get(name)
        kwargs = {**load_defaults(NEURAL)["agent"], "rounds": 300}
        return cls(cls.config_cls(**kwargs), seed=seeds).learn(vector_env(seeds))["true_utility"][
            -1
        ]

    auto, fused = final("fpo-exact"), final("agents.foresight:FPOExactFusedAgent")
    t975 = 2.262  # Student t, 9 degrees of freedom

    def half_width(x):
        return t975 * x.std(ddof=1) / math.sqrt(len(x))

    gap = abs(auto.mean() - fused.mean())
    assert gap <= half_width(auto) and gap <= half_width(fused)
    diff = fused - auto
    assert abs(diff.mean()) <= half_width(diff) + 1e-9


@pytest.mark.needs_compiler
def test_compiled_programs_can_be_kept_in_torchs_on_disk_cache():
    from torch._dynamo.utils import counters

    def fn(a, b):
        return (torch.sigmoid(a) * b + 1.0,)

    a, b = torch.randn(4, 3, dtype=torch.float64), torch.randn(4, 3, dtype=torch.float64)
    before = dict(counters["inductor"])
    run = programs.compile_program(fn, [a, b])
    assert torch.allclose(run(a, b)[0], fn(a, b)[0], rtol=1e-12)
    seen = {k: counters["inductor"][k] - before.get(k, 0) for k in counters["inductor"]}
    assert seen.get("fxgraph_cache_bypass", 0) == 0  # traced with a shape environment
    assert seen.get("fxgraph_cache_hit", 0) + seen.get("fxgraph_cache_miss", 0) == 1
