"""The fast paths of SB3 agent-runs give the numbers of the plain ones, bit for bit.

Each test compares two code paths: the suite's fast one (the reward wrapper's reuse of the env's
RM score, its copy of the follower refreshed only after RM rounds, the envs' incremental
observations, per-token infos and gradient-free utilities) and a plain reference kept here, on the
same seeds. Harness runs (the agent and its algorithm in a process of their own, the judge's
recorder here) give the numbers of the plain reference run in one process.
"""

import copy

import gymnasium as gym
import numpy as np
import pytest
import torch

import rlhf_envs  # noqa: F401
from agents import registry, wrappers
from agents.follower import SEALED_INFO, Follower, follower_state
from agents.wrappers import AgentRewardWrapper
from baselines import results
from baselines.plan import load_defaults
from rlhf_envs.blind_spot import _BlindSpotMixin
from rlhf_envs.contextual import ContextualCore
from rlhf_envs.core import RLHFCore
from rlhf_envs.verbosity import VerbosityCore, VerbosityEnv

ENVS = ["RLHFVerbosity-v0", "RLHFContextual-v0", "RLHFNeuralBlindSpot-v0"]
AGENTS = ["naive", "fpo", "fpo-relaxed", "fpo-exact", "kl", "static", "ensemble", "oracle"]


def reference_step(self, action):
    """The wrapper's step in its plain form: a fresh copy of the follower taken before the step
    (every RM score computed, none reused), the counters read off the env, the truth moved out."""
    core = self.env.unwrapped.core
    before = Follower(self.reads, follower_state(core, slice(None), self.reads, True))
    obs, reward, terminated, truncated, info = self.env.step(action)
    y = getattr(self.env.unwrapped, "last_response", None)
    if y is not None:
        with torch.no_grad():
            score = self.agent.sb3_score(before, y.unsqueeze(1), self._link)
        reward = float(score[0, 0])
        info.update({k: int(v[0]) for k, v in core.counters().items() if k != "labels_used"})
    info["wrapped_reward"] = reward
    if self.seal_truth:
        self.audit = {k: info.pop(k) for k in SEALED_INFO if k in info}
    return obs, reward, terminated, truncated, info


def reference_paths(monkeypatch):
    """Switch every fast path of an SB3 agent-run in this process to its plain form."""
    monkeypatch.setattr(AgentRewardWrapper, "step", reference_step)
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


def in_process_sb3(job, seed: int, eval_responses: int = 64) -> dict[str, np.ndarray]:
    """``baselines.sb3_runner.learn_sb3``'s run with the judge and the agent in this one process:
    the judge's recorder reads each step's whole ``info`` before the agent scores it, the
    algorithm sees the agent's reward, and the final policy is evaluated on a copy of the env."""
    from stable_baselines3.common.callbacks import BaseCallback, CallbackList

    from baselines.judge import algorithm
    from baselines.sb3_runner import _Recorder

    env = gym.make(job.env_id, **job.env_kwargs)
    inner = env.unwrapped
    recorder = _Recorder(job.rounds)
    recorder.core = inner.core
    done = [False]

    class Record(gym.Wrapper):
        def step(self, action):
            out = self.env.step(action)
            done[0] = recorder(out[4])
            return out

    cls = registry.get(job.agent)
    agent_ = cls(cls.config_cls(**job.agent_config), seed=seed)
    wrapped = AgentRewardWrapper(Record(env), agent_)

    class Stop(BaseCallback):
        def _on_step(self) -> bool:
            return not done[0]

    model = algorithm(job.policy_optimizer)(
        "MlpPolicy", wrapped, seed=seed, device="cpu", verbose=0, **job.hyperparams
    )
    model.learn(total_timesteps=10**9, callback=CallbackList([*agent_.sb3_callbacks(), Stop()]))
    evaluating = copy.deepcopy(inner)
    scores: dict[str, list] = {"": [], "blind_cluster": [], "other_clusters": []}
    obs = evaluating.reset()[0]
    while len(scores[""]) < eval_responses:
        action, _ = model.predict(obs, deterministic=True)
        obs, _, term, trunc, info = evaluating.step(action)
        if "true_utility" in info and info.get("response_complete") is not False:
            scores[""].append(info["true_utility"])
            if "in_blind_cluster" in info:  # contextual envs: split by the prompt's cluster
                side = "blind_cluster" if info["in_blind_cluster"] else "other_clusters"
                scores[side].append(info["true_utility"])
        if term or trunc:
            obs, _ = evaluating.reset()
    recorder(None)
    rows = recorder.rows
    keys = list(dict.fromkeys(k for r in rows for k in r))
    history = {key: np.array([[r.get(key, np.nan)] for r in rows]) for key in keys}
    for side, values in scores.items():
        if values or (side and scores["blind_cluster"] + scores["other_clusters"]):
            key = f"eval_true_utility_{side}" if side else "eval_true_utility"
            history[key] = np.full((len(rows), 1), np.nan)
            history[key][-1, 0] = float(np.mean(values or [np.nan]))
    return history


@pytest.mark.parametrize(
    "env_id,agent_name,rounds",
    [
        ("RLHFVerbosity-v0", "fpo-relaxed", 25),
        ("RLHFContextual-v0", "fpo-exact", 30),
        ("RLHFContextual-v0", "naive", 30),
    ],
)
def test_harness_sb3_metrics_are_byte_identical_to_the_plain_run_in_one_process(
    env_id, agent_name, rounds, monkeypatch
):
    """The harness run (agent and algorithm in their own process, every fast path) writes the
    metrics.csv of the same run in one process on every plain path."""
    from baselines.plan import Job
    from baselines.sb3_runner import learn_sb3

    d = load_defaults(env_id)
    cfg = {**d.get("agent", {}), **d.get("agents", {}).get(agent_name, {})}
    hyper = {**d["sb3"]["ppo"], "n_steps": 64, "n_epochs": 2}  # a few PPO updates
    cls = registry.get(agent_name)
    reads = ",".join(cls(cls.config_cls(**cfg)).declared_reads(sb3=True))  # as plan() declares
    job = Job(env_id, agent_name, [1], rounds, {}, cfg, "", "", "ppo", hyper, reads=reads)
    harness = results.metrics_csv(learn_sb3(job, 1), 0)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as in the agent's process
    try:
        with monkeypatch.context() as m:
            reference_paths(m)
            plain = results.metrics_csv(in_process_sb3(job, 1), 0)
    finally:
        torch.set_num_threads(threads)
    assert harness == plain
    assert len(harness.splitlines()) == rounds + 1
