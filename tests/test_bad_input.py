"""Bad input: rejected actions leave the env untouched, bad configs name the argument, and random
valid configs / random kwargs never produce anything but clean results or ValueError/TypeError."""

from __future__ import annotations

import math
import reprlib
import warnings

import gymnasium as gym
import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_envs import _actions  # valid actions from the env's seeded action space

import rlhf_envs

ENV_IDS = list(rlhf_envs.ENV_IDS)
BLIND_SPOT_IDS = list(rlhf_envs.BLIND_SPOT_ENV_IDS)


def _step(env, a):
    """One step; a finished response is followed by a reset (no seed), whose output is returned
    as well so that two envs can be compared."""
    out = env.step(a)
    if out[2] or out[3]:
        return out, env.reset()
    return out, None


def _snapshot(env):
    core = env.unwrapped.core
    return {
        "params": {k: v.clone() for k, v in core.params.items()},
        "opt": {k: v.clone() for k, v in core.opt_state.items()},
        "buffer_y": core.buffer_y.clone(),
        "buffer_t": core.buffer_t.clone(),
        "buffer": (core.buffer_len, core.buffer_pos),
        "round_y": core.round_y.clone(),
        "counters": (
            core.in_round,
            core.round,
            core.labels_used.tolist(),
            core.counters()["oracle_queries"].tolist(),
        ),
        "gen": [g.get_state().clone() for g in core.generators],
        "episode": (
            list(getattr(env.unwrapped, "tokens", [])),
            np.asarray(getattr(env.unwrapped, "prompt", 0.0)).tolist(),
        ),
    }


def _assert_snapshot_equal(a, b):
    for key in ("params", "opt"):
        assert a[key].keys() == b[key].keys()
        for k in a[key]:
            assert torch.equal(a[key][k], b[key][k]), f"{key}.{k} changed"
    for key in ("buffer_y", "buffer_t", "round_y"):
        assert torch.equal(a[key], b[key]), f"{key} changed"
    assert a["buffer"] == b["buffer"]
    assert a["counters"] == b["counters"]
    assert all(torch.equal(x, y) for x, y in zip(a["gen"], b["gen"], strict=False))
    assert a["episode"] == b["episode"]


def _bad_actions(d):
    nan = np.zeros(d)
    nan[0] = np.nan
    inf = np.zeros(d)
    inf[-1] = np.inf
    ninf = np.full(d, -np.inf)
    return {
        "nan": nan,
        "inf": inf,
        "-inf": ninf,
        "too_long": np.zeros(d + 1),
        "too_short": np.zeros(max(d - 1, 0)),
        "extra_axis": np.zeros((1, d)),
        "scalar": 0.5,
        "string": "abc",
        "strings": ["x"] * d,
        "none": None,
        "dict": {"y": 1.0},
        "object": object(),
        "ragged": [[0.0], [0.0, 1.0]],
    }


def _bad_tokens(n):
    """Bad actions for a ``Discrete(n)`` env."""
    return {
        "negative": -1,
        "too_large": n,
        "float": 1.5,
        "float_int": 1.0,
        "nan": float("nan"),
        "bool": True,
        "two_tokens": np.array([1, 2]),
        "float_array": np.array([1.0]),
        "extra_axis": np.array([[1]]),
        "string": "abc",
        "none": None,
        "dict": {"y": 1},
        "object": object(),
    }


def _bad_actions_for(env_id):
    space = gym.make(env_id).action_space
    if isinstance(space, gym.spaces.Discrete):
        return _bad_tokens(int(space.n))
    return _bad_actions(space.shape[0])


BAD_CASES = [(env_id, kind) for env_id in ENV_IDS for kind in _bad_actions_for(env_id)]


@pytest.mark.parametrize("env_id,kind", BAD_CASES)
def test_bad_action_rejected_and_state_unchanged(env_id, kind):
    env, ref = gym.make(env_id), gym.make(env_id)
    env.reset(seed=5)
    ref.reset(seed=5)
    spr = env.unwrapped.core.config.samples_per_round
    acts = _actions(env.spec.id, 2 * spr + 2, seed=0)
    warmup = _actions(env.spec.id, spr + 1, seed=0)  # a round plus one response: mid-round
    warmup = warmup + acts[len(warmup) : len(warmup) + 1]  # and mid-response (token envs)
    for a in warmup:
        _step(env, a)
        _step(ref, a)
    before = _snapshot(env)
    with pytest.raises((ValueError, TypeError)) as exc:
        env.unwrapped.step(_bad_actions_for(env_id)[kind])
    assert "action" in str(exc.value)
    _assert_snapshot_equal(before, _snapshot(env))
    # the next valid steps equal those of an env that never saw the bad action
    for a in acts[len(warmup) :]:
        (o1, r1, te1, tr1, i1), reset1 = _step(env, a)
        (o2, r2, te2, tr2, i2), reset2 = _step(ref, a)
        assert np.array_equal(o1, o2) and r1 == r2 and (te1, tr1) == (te2, tr2) and i1 == i2
        if reset1 is not None:
            assert np.array_equal(reset1[0], reset2[0]) and reset1[1] == reset2[1]
    _assert_snapshot_equal(_snapshot(env), _snapshot(ref))


@pytest.mark.parametrize("env_id", BLIND_SPOT_IDS)
@pytest.mark.parametrize("kind", ["nan", "inf", "shape", "string"])
def test_vector_env_bad_actions_rejected(env_id, kind):
    venv = gym.make_vec(env_id, num_envs=2, vectorization_mode="vector_entry_point")
    venv.reset(seed=[1, 2])
    d = venv.unwrapped.single_action_space.shape[0]
    good = np.ones((2, d))
    venv.step(good)
    bad = {
        "nan": np.where(np.arange(d) == 0, np.nan, 1.0)[None].repeat(2, 0),
        "inf": np.full((2, d), np.inf),
        "shape": np.ones((3, d)),
        "string": "y",
    }[kind]
    before = _snapshot(venv)
    with pytest.raises((ValueError, TypeError), match="action"):
        venv.step(bad)
    _assert_snapshot_equal(before, _snapshot(venv))
    _, rew, *_ = venv.step(good)
    assert np.all(np.isfinite(rew))


@pytest.mark.parametrize("env_id", ENV_IDS)
def test_step_before_reset_raises(env_id):
    env = gym.make(env_id, disable_env_checker=True)
    with pytest.raises(Exception) as exc:
        env.step(env.action_space.sample())
    assert "reset" in str(exc.value)


# ---------------------------------------------------------------------------------------------
# invalid configs name the argument
# ---------------------------------------------------------------------------------------------
# settings every env has (the reward model, its retraining, the labels)
COMMON_BAD_CONFIGS = [
    ("rm_lr", dict(rm_lr=-0.1)),
    ("rm_lr", dict(rm_lr=0.0)),
    ("rm_lr", dict(rm_lr=float("nan"))),
    ("buffer_size", dict(buffer_size=0)),
    ("samples_per_round", dict(samples_per_round=0)),
    ("not_an_argument", dict(not_an_argument=1)),
    ("rm_hidden", dict(rm_hidden=(0, 32))),
    ("rm_hidden", dict(rm_hidden=(8,))),
    ("label_noise", dict(label_noise=-0.1)),
    ("rm_weight_decay", dict(rm_weight_decay=-1.0)),
    ("reward_model", dict(reward_model="transformer")),
    ("rm_optimizer", dict(rm_optimizer="lbfgs")),
    ("rm_steps", dict(rm_steps=0)),
    ("utility_scale", dict(utility_scale=0.0)),
]
BLIND_SPOT_BAD_CONFIGS = [
    ("signal_dims", dict(dims=3, signal_dims=4)),
    ("feedback", dict(feedback="thumbs")),
    ("temperature", dict(temperature=0.0)),
    ("temperature", dict(temperature=-1.0)),
    ("labeler_bias_dims", dict(dims=4, signal_dims=2, labeler_bias_dims=(4,))),
    ("labeler_bias_dims", dict(dims=4, signal_dims=2, labeler_bias_dims=(-1,))),
    ("blind_spot_dims", dict(dims=4, signal_dims=2, blind_spot_dims=(7,))),
    ("dims", dict(dims=0)),
    ("dims", dict(dims=2.5)),
    ("preference_labels", dict(preference_labels="hard")),
    ("utility_width", dict(utility_width=0.0)),
    ("reference_response", dict(dims=3, signal_dims=1, reference_response=(0.0, 1.0))),
]
SPECIFIC_BAD_CONFIGS = {
    "RLHFBlindSpot-v0": BLIND_SPOT_BAD_CONFIGS,
    "RLHFNeuralBlindSpot-v0": BLIND_SPOT_BAD_CONFIGS,
    "RLHFVerbosity-v0": [
        ("vocab_size", dict(vocab_size=2)),
        ("vocab_size", dict(vocab_size=8.0)),
        ("max_len", dict(max_len=1)),
        ("length_penalty", dict(length_penalty=-0.1)),
        ("no_answer_value", dict(no_answer_value=1.5)),
        ("rm_filler_bias", dict(rm_filler_bias=float("inf"))),
        ("feedback", dict(feedback="thumbs")),
        ("temperature", dict(temperature=0.0)),
        ("preference_labels", dict(preference_labels="hard")),
    ],
    "RLHFContextual-v0": [
        ("prompt_dims", dict(prompt_dims=0)),
        ("dims", dict(dims=0)),
        ("n_clusters", dict(prompt_dims=2, n_clusters=5)),
        ("blind_cluster", dict(n_clusters=3, blind_cluster=3)),
        ("labeler_bias_dims", dict(dims=3, labeler_bias_dims=(3,))),
        ("cluster_std", dict(cluster_std=-1.0)),
        ("cluster_radius", dict(cluster_radius=0.0)),
        ("task_seed", dict(task_seed=-1)),
        ("utility_width", dict(utility_width=0.0)),
        ("feedback", dict(feedback="preference")),  # ratings only: an unknown argument
    ],
}
BAD_CONFIG_CASES = [
    (env_id, name, kw)
    for env_id in ENV_IDS
    for name, kw in COMMON_BAD_CONFIGS + SPECIFIC_BAD_CONFIGS[env_id]
]


@pytest.mark.parametrize(
    "env_id,name,kwargs",
    BAD_CONFIG_CASES,
    ids=[f"{e}-{n}-{i}" for i, (e, n, _) in enumerate(BAD_CONFIG_CASES)],
)
def test_invalid_config_names_the_argument(env_id, name, kwargs):
    with pytest.raises((ValueError, TypeError)) as exc:
        gym.make(env_id, **kwargs)
    assert name in str(exc.value)
    if gym.spec(env_id).vector_entry_point is not None:
        with pytest.raises((ValueError, TypeError)) as exc:
            gym.make_vec(env_id, num_envs=2, vectorization_mode="vector_entry_point", **kwargs)
        assert name in str(exc.value)


# ---------------------------------------------------------------------------------------------
# hypothesis: random valid configs and random actions
# ---------------------------------------------------------------------------------------------
@st.composite
def valid_setups(draw):
    env_id = draw(st.sampled_from(BLIND_SPOT_IDS))
    dims = draw(st.integers(1, 8))
    kw = dict(
        dims=dims,
        signal_dims=draw(st.integers(1, dims)),
        feedback=draw(st.sampled_from(["rating", "preference"])),
        preference_labels=draw(st.sampled_from(["soft", "sampled"])),
        samples_per_round=draw(st.integers(1, 4)),
        buffer_size=draw(st.integers(1, 6)),
        reward_model=draw(st.sampled_from(["linear", "mlp"])),
        rm_hidden=(draw(st.integers(1, 6)), draw(st.integers(1, 6))),
        rm_optimizer=draw(st.sampled_from(["sgd", "adam"])),
        label_noise=draw(st.sampled_from([0.0, 0.1, 1.0])),
        rm_steps=draw(st.integers(1, 2)),
    )
    if draw(st.booleans()):
        kw["blind_spot_dims"] = (dims - 1,)
        kw["blind_spot_bias"] = draw(st.floats(-1, 1))
    if draw(st.booleans()):
        kw["labeler_bias"] = draw(st.floats(0, 2))
    n_steps = draw(st.integers(1, 12))
    finite = st.floats(-5, 5, allow_nan=False, allow_infinity=False)
    actions = draw(
        st.lists(st.lists(finite, min_size=dims, max_size=dims), min_size=n_steps, max_size=n_steps)
    )
    return env_id, kw, np.array(actions, dtype=np.float64), draw(st.integers(0, 2**31 - 2))


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(valid_setups())
def test_random_valid_configs_never_crash(setup):
    env_id, kw, actions, seed = setup
    env = gym.make(env_id, **kw)
    env.reset(seed=seed)
    spr = kw["samples_per_round"]
    for t, a in enumerate(actions, start=1):
        _, r, term, trunc, info = env.step(a)
        assert math.isfinite(r) and math.isfinite(info["true_utility"])
        assert r == info["proxy_reward"]
        assert 0.0 <= info["true_utility"] <= env.unwrapped.config.utility_scale
        assert info["round"] == t // spr
        assert info["rm_updated"] == (t % spr == 0)
        assert info["labels_used"] == (t // spr) * spr
        assert term is True and trunc is False
    assert env.unwrapped.core.round == len(actions) // spr
    for v in env.unwrapped.rm_params.values():
        assert torch.isfinite(v).all()


# ---------------------------------------------------------------------------------------------
# hypothesis + grid: arbitrary kwargs only ever raise ValueError / TypeError
# ---------------------------------------------------------------------------------------------
def _fields(env_id: str) -> list[str]:
    cls = type(gym.make(env_id).unwrapped.config)
    return sorted(cls.__dataclass_fields__)


FIELDS = {env_id: _fields(env_id) for env_id in ENV_IDS}
FIELD_CASES = [(env_id, f) for env_id in ENV_IDS for f in FIELDS[env_id]]
SPECIAL_VALUES = [
    None,
    True,
    False,
    0,
    1,
    -1,
    2,
    3,
    10**400,
    -(10**400),
    2**63,
    0.0,
    -0.0,
    0.5,
    -2.5,
    1e308,
    1e-320,
    float("inf"),
    float("-inf"),
    float("nan"),
    "",
    "rating",
    "mlp",
    "1",
    "abc",
    [],
    (),
    {},
    [1],
    (0, 32),
    (1.5, 2.5),
    [float("inf")],
    [float("nan")],
    (float("inf"), 1),
    [10**400],
    ["a", "b"],
    [None],
    [[1]],
    np.int64(2),
    np.float64(0.1),
    np.array([1, 2]),
    np.nan,
    1 + 2j,
    b"x",
    object(),
]


def _make_only_value_or_type_errors(env_id, kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            env = gym.make(env_id, **kwargs)
        except (ValueError, TypeError) as e:
            assert str(e)  # and says something
            return "rejected"
    env.close()
    return "accepted"


@pytest.mark.parametrize("env_id,field", FIELD_CASES)
def test_every_field_with_odd_values_only_raises_value_or_type_error(env_id, field):
    outcomes, broken = [], []
    for v in SPECIAL_VALUES:
        try:
            outcomes.append(_make_only_value_or_type_errors(env_id, {field: v}))
        except Exception as e:  # noqa: BLE001 -- report every value that broke it
            broken.append(f"{field}={reprlib.repr(v)} -> {type(e).__name__}: {e}")
    assert not broken, f"gym.make({env_id!r}, ...) raised other errors:\n" + "\n".join(broken)
    assert "rejected" in outcomes  # every field has some invalid value among these


odd_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.integers(-(10**400), 10**400),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=4),
    st.sampled_from(["rating", "preference", "soft", "sampled", "linear", "mlp", "sgd", "adam"]),
    st.complex_numbers(max_magnitude=10),
)
odd_values = st.one_of(
    odd_scalars,
    st.lists(odd_scalars, max_size=4),
    st.tuples(odd_scalars, odd_scalars),
    st.dictionaries(st.text(max_size=2), st.integers(), max_size=2),
)


@settings(max_examples=60, deadline=None)
@given(env_id=st.sampled_from(ENV_IDS), data=st.data())
def test_random_kwargs_only_raise_value_or_type_error(env_id, data):
    names = st.sampled_from(FIELDS[env_id] + ["bogus", "num_envs"])
    kwargs = data.draw(st.dictionaries(names, odd_values, max_size=4), label="kwargs")
    try:
        _make_only_value_or_type_errors(env_id, kwargs)
    except Exception as e:  # noqa: BLE001
        raise AssertionError(
            f"gym.make({env_id!r}, **{reprlib.repr(kwargs)}) raised {type(e).__name__}: {e}"
        ) from e


@pytest.mark.parametrize("env_id,field", FIELD_CASES)
def test_every_field_rejection_names_the_argument(env_id, field):
    """DESIGN.md: bad input gets a clear error naming the argument."""
    unnamed, rejected = [], 0
    for v in SPECIAL_VALUES:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                gym.make(env_id, **{field: v})
            except (ValueError, TypeError) as e:
                rejected += 1
                if field not in str(e):
                    unnamed.append(f"{field}={reprlib.repr(v)} -> {type(e).__name__}: {e}")
            except Exception:  # noqa: BLE001 -- other exception types are the grid test's job
                rejected += 1
    assert rejected > 0
    assert not unnamed, "errors that do not name the argument:\n" + "\n".join(unnamed)


# ---------------------------------------------------------------------------------------------
# the same two fuzzers with 500 examples each, in the slow suite (pytest -m slow)
# ---------------------------------------------------------------------------------------------
_SLOW = settings(
    max_examples=500,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)
test_random_valid_configs_never_crash_500 = pytest.mark.slow(
    _SLOW(given(valid_setups())(test_random_valid_configs_never_crash.hypothesis.inner_test))
)
test_random_kwargs_only_raise_value_or_type_error_500 = pytest.mark.slow(
    _SLOW(
        given(env_id=st.sampled_from(ENV_IDS), data=st.data())(
            test_random_kwargs_only_raise_value_or_type_error.hypothesis.inner_test
        )
    )
)
