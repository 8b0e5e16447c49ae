"""The fast paths of SB3 agent-runs give the numbers of the plain ones, bit for bit.

Each test compares two code paths: the suite's fast one (the reward wrapper's cheap snapshot and
reuse of the env's RM score, the sealed info's deep copy, the envs' incremental observations,
per-token infos and gradient-free utilities) and a plain reference kept here (what the code did
before), on the same seeds.
"""

import copy

import gymnasium as gym
import numpy as np
import pytest
import torch

import rlhf_envs  # noqa: F401
from agents import registry, sealed, wrappers
from agents.sealed import FollowerView, SealedError, SealedInfo, seal_info
from agents.wrappers import AgentRewardWrapper
from baselines import results
from baselines.plan import load_defaults
from rlhf_envs.blind_spot import _BlindSpotMixin
from rlhf_envs.contextual import ContextualCore
from rlhf_envs.core import RLHFCore
from rlhf_envs.verbosity import VerbosityCore, VerbosityEnv

ENVS = ["RLHFVerbosity-v0", "RLHFContextual-v0", "RLHFNeuralBlindSpot-v0"]
AGENTS = ["naive", "fpo", "fpo-relaxed", "fpo-exact", "kl", "static", "ensemble", "oracle"]


def reference_seal_info(info):
    audit = {k: info[k] for k in sealed.SEALED_INFO if k in info}
    return SealedInfo((k, v) for k, v in info.items() if k not in sealed.SEALED_INFO), audit


def reference_step(self, action):
    """The wrapper's step as it was: a ``copy.copy`` snapshot, the agent's score computed."""
    core = self.env.unwrapped.core
    before = copy.copy(core)
    obs, reward, terminated, truncated, info = self.env.step(action)
    y = getattr(self.env.unwrapped, "last_response", None)
    if y is not None:
        with torch.no_grad():
            score = self.agent.sb3_score(FollowerView(before), y.unsqueeze(1), self.oracle)
        reward = float(score[0, 0])
        for key in ("oracle_queries", "oracle_grad_queries"):
            info[key] = int(getattr(core, key)[0])
        info["oracle_value_equivalents"] = int(core.oracle_value_equivalents[0])
    info["wrapped_reward"] = reward
    if self.seal_truth:
        info, self.audit = reference_seal_info(info)
    return obs, reward, terminated, truncated, info


def reference_paths(monkeypatch):
    """Switch every fast path of an SB3 agent-run to its plain form."""
    monkeypatch.setattr(AgentRewardWrapper, "step", reference_step)
    monkeypatch.delattr(SealedInfo, "__deepcopy__")
    monkeypatch.setattr(ContextualCore, "utility", reference_contextual_utility)
    monkeypatch.setattr(ContextualCore, "labeler_utility", RLHFCore.labeler_utility)
    monkeypatch.setattr(VerbosityCore, "utility", reference_verbosity_utility)

    def append(self, tok):
        self.tokens.append(tok)
        self._obs_now = self._obs()

    monkeypatch.setattr(VerbosityEnv, "_append", append)
    monkeypatch.setattr(
        VerbosityEnv, "_token_info", lambda self: self._info(np.zeros(1), np.zeros(1), False)
    )


def agent(name, env_id, seed=0):
    d = load_defaults(env_id)
    cls = registry.get(name)
    return cls(cls.config_cls(**{**d.get("agent", {}), **d.get("agents", {}).get(name, {})}))


def actions(env, n, seed):
    rng = np.random.default_rng(seed)
    if isinstance(env.action_space, gym.spaces.Discrete):  # mostly filler, some ends
        return list(rng.choice([0, 1, 2, 2, 3], size=n))
    return list(rng.normal(scale=0.7, size=(n, *env.action_space.shape)).astype(np.float32))


@pytest.mark.parametrize("env_id", ENVS)
@pytest.mark.parametrize("name", AGENTS)
def test_wrapper_pays_and_reports_what_the_reference_wrapper_does(env_id, name, monkeypatch):
    fast = AgentRewardWrapper(gym.make(env_id), agent(name, env_id))
    slow = AgentRewardWrapper(gym.make(env_id), agent(name, env_id))
    slow.step = reference_step.__get__(slow)
    fast.reset(seed=5)
    slow.reset(seed=5)
    retrained = 0
    for a in actions(fast, 60, seed=1):
        out_f, out_s = fast.step(a), slow.step(a)
        np.testing.assert_array_equal(out_f[0], out_s[0])
        assert out_f[1] == out_s[1] and out_f[2:4] == out_s[2:4]
        assert list(out_f[4].items()) == list(out_s[4].items())  # same keys, order, values
        assert list(fast.audit.items()) == list(slow.audit.items())
        retrained += out_f[4]["rm_updated"]
        if out_f[2] or out_f[3]:
            fast.reset()
            slow.reset()
    assert retrained >= 1


@pytest.mark.parametrize("env_id", ENVS)
def test_the_known_score_is_the_snapshot_rms_own_score(env_id):
    """The reward the fast wrapper pays naive is the RM score of the response under the pre-step
    parameters, recomputed here from scratch, for every scored step (retrains included)."""
    env = AgentRewardWrapper(gym.make(env_id), agent("naive", env_id))
    env.reset(seed=2)
    core, scored = env.unwrapped.core, 0
    for a in actions(env, 80, seed=3):
        params = {k: v.clone() for k, v in core.params.items()}
        _, reward, term, trunc, info = env.step(a)
        y = env.unwrapped.last_response
        if y is not None:
            with torch.no_grad():
                assert reward == float(core.reward_model.score(params, y.unsqueeze(1))[0, 0])
            assert reward == info["proxy_reward"]
            scored += 1
        if term or trunc:
            env.reset()
    assert scored >= 10


def test_known_score_answers_only_its_own_call():
    rm = gym.make("RLHFNeuralBlindSpot-v0").unwrapped
    rm.reset(seed=0)
    core = rm.core
    y = torch.ones(1, 1, 10, dtype=torch.float64)
    known = wrappers._KnownScore(core.reward_model, core.params, y, 123.0)
    assert known.score(core.params, y).tolist() == [[123.0]]
    with torch.no_grad():
        fresh = core.reward_model.score(core.params, y)
        assert torch.equal(known.score(core.params, y.clone()), fresh)  # another tensor
        other = {k: v.clone() for k, v in core.params.items()}
        assert torch.equal(known.score(other, y), fresh)  # other parameters
    y.requires_grad_(True)  # a gradient asked of the response: the RM itself answers
    r = known.score(core.params, y)
    assert r.requires_grad and torch.equal(r.detach(), fresh)
    assert known.ntk == core.reward_model.ntk  # everything else is the RM's


def test_snapshot_is_a_shallow_copy():
    core = gym.make("RLHFContextual-v0").unwrapped.core
    core.reset([0])
    snap = wrappers._snapshot(core)
    assert type(snap) is type(core) and snap is not core
    assert snap.__dict__ == copy.copy(core).__dict__
    assert all(snap.__dict__[k] is v for k, v in core.__dict__.items())

    class Hooked(ContextualCore):  # a core with copy hooks of its own gets copy.copy
        def __copy__(self):
            return "copied"

    hooked = object.__new__(Hooked)
    assert wrappers._snapshot(hooked) == "copied"


def test_sealed_info_deep_copy_equals_the_generic_one():
    info = {
        "round": 3,
        "proxy_reward": 0.5,
        "true_utility": 1.0,
        "terminal_observation": np.arange(3.0),
        "episode": {"r": 1.0, "l": [1, 2]},
    }
    info["self"] = info["episode"]  # shared objects stay shared
    fast, audit = seal_info(dict(info))
    ref, ref_audit = reference_seal_info(dict(info))
    assert list(fast.items()) == list(ref.items()) and audit == ref_audit
    assert list(audit) == list(ref_audit)
    out = copy.deepcopy([fast])[0]
    assert type(out) is SealedInfo and list(out) == list(fast)
    assert out["episode"] == fast["episode"] and out["episode"] is not fast["episode"]
    assert out["self"] is out["episode"]
    np.testing.assert_array_equal(out["terminal_observation"], info["terminal_observation"])
    assert out["terminal_observation"] is not info["terminal_observation"]
    with pytest.raises(SealedError):
        out["true_utility"]


def test_verbosity_observations_and_token_infos_equal_the_from_scratch_ones():
    env = gym.make("RLHFVerbosity-v0", vocab_size=6, max_len=7).unwrapped
    obs, _ = env.reset(seed=4)
    zero = np.zeros(1)
    rng = np.random.default_rng(0)
    for tok in rng.integers(0, 6, size=300):
        env.query_labeler(torch.zeros(1, 3, dtype=torch.float64))  # the counters move
        obs, _, term, _, info = env.step(int(tok))
        np.testing.assert_array_equal(obs, env._obs())
        assert obs.tobytes() == env._obs().tobytes()
        if not term:
            full = VerbosityEnv._info(env, zero, zero, False)
            assert list(info.items()) == list(full.items())
            assert [type(v) for v in info.values()] == [type(v) for v in full.values()]
        else:
            env.reset()
    assert _BlindSpotMixin._info is not VerbosityEnv._info


def reference_verbosity_utility(core, y):
    """``VerbosityCore.utility`` as it was, written with operators."""
    c = core.env_config
    a = c.no_answer_value + (1.0 - c.no_answer_value) * y[..., 0]
    e = torch.exp(-c.length_penalty * (c.max_len * y[..., 1] - y[..., 0]))
    return c.utility_scale * a * e


def reference_contextual_utility(core, z):
    """``ContextualCore.utility`` as it was: the first output of its gradient form."""
    c, p = core.env_config, core.env_config.prompt_dims
    diff = z[..., p:] - core.targets[core.cluster(z)]
    return c.utility_scale * torch.exp(-c.utility_width * (diff**2).sum(-1))


@pytest.mark.parametrize("env_id", ["RLHFContextual-v0", "RLHFVerbosity-v0"])
def test_core_utilities_equal_the_gradient_and_generic_forms_bit_for_bit(env_id):
    env = gym.make(env_id).unwrapped
    env.reset(seed=0)
    core, n = env.core, env.core.config.dims
    g = torch.Generator().manual_seed(0)
    z = 3 * torch.randn(1, 64, n, generator=g, dtype=torch.float64)
    if env_id == "RLHFVerbosity-v0":
        z = z.abs() / 3
    reference = (
        reference_verbosity_utility
        if env_id == "RLHFVerbosity-v0"
        else reference_contextual_utility
    )
    for y in (z, z[:, :1], z[0, :1]):  # shapes (S, n, dims), (S, 1, dims), (S, dims)
        assert torch.equal(core.utility(y), reference(core, y))
        assert torch.equal(core.utility_and_grad(y)[0], reference(core, y))
        assert torch.equal(core.labeler_utility(y), RLHFCore.labeler_utility(core, y))
    if env_id == "RLHFContextual-v0":
        assert len(set(core.cluster(z).flatten().tolist())) == 2  # both clusters covered


@pytest.mark.parametrize(
    "env_id,agent_name,rounds",
    [
        ("RLHFVerbosity-v0", "fpo-relaxed", 25),
        ("RLHFContextual-v0", "fpo-exact", 30),
        ("RLHFContextual-v0", "naive", 30),
    ],
)
def test_sb3_run_metrics_are_byte_identical_on_the_reference_paths(
    env_id, agent_name, rounds, monkeypatch
):
    from baselines.plan import Job
    from baselines.sb3_runner import learn_sb3

    d = load_defaults(env_id)
    cfg = {**d.get("agent", {}), **d.get("agents", {}).get(agent_name, {})}
    hyper = {**d["sb3"]["ppo"], "n_steps": 64, "n_epochs": 2}  # a few PPO updates

    def csv():
        return results.metrics_csv(
            learn_sb3(Job(env_id, agent_name, [1], rounds, {}, cfg, "", "", "ppo", hyper), 1), 0
        )

    fast = csv()
    with monkeypatch.context() as m:
        reference_paths(m)
        slow = csv()
    assert fast == slow
    assert len(fast.splitlines()) == rounds + 1
