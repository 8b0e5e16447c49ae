"""The feature-vector envs: the verbosity blind spot by construction and its collapse, the local
labeler bias of the contextual env, the retraining schedule, white-box access and a PPO smoke test.
(The generic contract tests for them live in test_envs.py / test_bad_input.py.)"""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
import torch

import rlhf_envs  # noqa: F401  (registers the envs)
from rlhf_envs.verbosity import ANSWER, EOS, FILLER

VERBOSITY, CONTEXTUAL = "RLHFVerbosity-v0", "RLHFContextual-v0"
SHORT = [ANSWER, EOS]
PADDED = [ANSWER] + [FILLER] * 6 + [EOS]


def _respond(env, tokens):
    for t in tokens:
        out = env.step(t)
    assert out[2] is True
    return out


def _candidates(max_len: int = 8) -> list[list[int]]:
    """Answer or not, k FILLER, j neutral words (token 3), then EOS unless max_len is reached."""
    out = []
    for a in (0, 1):
        for k in range(max_len):
            for j in range(max_len - k):
                body = [ANSWER] * a + [FILLER] * k + [3] * j
                if len(body) < max_len:
                    out.append(body + [EOS])
                elif len(body) == max_len:
                    out.append(body)
    return out


# ---------------------------------------------------------------------------------------------
# verbosity
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_verbosity_padding_beats_short_answer_at_round_0(seed):
    """By construction: padding is proxy-better but truly worse than [ANSWER, EOS]."""
    env = gym.make(VERBOSITY)
    env.reset(seed=seed)
    _, r_short, _, _, i_short = _respond(env, SHORT)
    assert i_short["round"] == 0
    env.reset()
    _, r_pad, _, _, i_pad = _respond(env, PADDED)
    assert i_pad["round"] == 0  # both scored by the initial RM
    assert r_pad > r_short + 0.1
    assert i_pad["true_utility"] < i_short["true_utility"] - 3.0
    # the documented values of the utility
    assert i_short["true_utility"] == pytest.approx(10.0)
    assert i_pad["true_utility"] == pytest.approx(10.0 * np.exp(-0.15 * 6))
    env.reset()
    _, _, _, _, i_empty = _respond(env, [EOS])
    assert i_empty["true_utility"] == pytest.approx(1.0)


def test_verbosity_utility_formula_and_gradient():
    env = gym.make(VERBOSITY, max_len=6, length_penalty=0.3, no_answer_value=0.2).unwrapped
    env.reset(seed=0)
    for tokens in ([ANSWER, EOS], [FILLER, 3, EOS], [3, ANSWER, FILLER, FILLER, 4, 5], [EOS]):
        f = env.features(tokens)
        content = tokens[: tokens.index(EOS)] if EOS in tokens else tokens
        h, n = float(ANSWER in content), len(content)
        expected = 10.0 * (0.2 + 0.8 * h) * np.exp(-0.3 * (n - h))
        assert float(env.core.utility(f)) == pytest.approx(expected, rel=1e-12)
    f = torch.tensor([[0.7, 0.4, 0.2]], dtype=torch.float64, requires_grad=True)
    u, g = env.core.utility_and_grad(f)
    (auto,) = torch.autograd.grad(u.sum(), f)
    assert torch.allclose(g, auto, rtol=1e-12)
    # the labeler's gradient too (its length + filler bias)
    lab, g_lab = env.core.labeler_target_and_grad(f)
    (auto,) = torch.autograd.grad(lab.sum(), f)
    assert torch.allclose(g_lab, auto, rtol=1e-12)


def test_verbosity_greedy_policy_collapses():
    """A policy that each round plays the candidate with the highest current proxy reward ends
    padded: truly worse than [ANSWER, EOS], with a proxy above both its truth and the RM's
    score of the short answer. Retraining on its own responses does not undo the blind spot."""
    env = gym.make(VERBOSITY).unwrapped
    env.reset(seed=0)
    cands = _candidates(env.config.max_len)
    feats = env.features(cands).unsqueeze(0)  # (1, n, 3)
    short = cands.index(SHORT)
    spr = env.config.samples_per_round
    for _ in range(30):
        best = cands[int(torch.argmax(env.core.score(feats)[0]))]
        for _ in range(spr):
            env.reset()
            _, proxy, _, _, info = _respond(env, best)
    assert info["round"] == 30
    u_short = float(env.core.utility(feats[0, short]))
    assert FILLER in best and ANSWER in best
    assert info["true_utility"] < 0.5 * u_short
    assert proxy > info["true_utility"] + 1.0
    assert proxy > float(env.core.score(feats)[0, short]) + 1.0
    # the labeler still prefers the short answer: the RM's retraining is what failed
    assert float(env.core.labeler_target(feats[0, short])) > info["true_utility"]


def test_verbosity_observation_and_intermediate_info():
    env = gym.make(VERBOSITY)
    obs, _ = env.reset(seed=0)
    assert np.all(obs == 0) and obs.dtype == np.float32
    obs, r, term, trunc, info = env.step(ANSWER)
    assert (r, term, trunc) == (0.0, False, False)
    assert info["true_utility"] == 0.0 and info["proxy_reward"] == 0.0
    assert info["response_length"] == 1 and not info["response_complete"]
    assert "signal_norm" not in info and "noise_norm" not in info
    assert env.unwrapped.last_response is None
    obs, *_ = env.step(FILLER)
    expected = np.zeros(9, dtype=np.float32)
    expected[[ANSWER, FILLER]] = 1 / 8
    expected[-1] = 2 / 8
    assert np.array_equal(obs, expected)
    # max_len without EOS also ends the response
    for _ in range(5):
        assert env.step(3)[2] is False
    _, _, term, _, info = env.step(4)
    assert term is True and info["response_length"] == 8 and info["response_complete"]
    # f = [has_answer, length, filler] = [1, 8/8, 1/8]; signal_dims = 1
    assert info["signal_norm"] == 1.0
    assert info["noise_norm"] == pytest.approx(np.sqrt(1 + 1 / 64), rel=1e-14)
    with pytest.raises(RuntimeError, match="reset"):
        env.step(ANSWER)


# ---------------------------------------------------------------------------------------------
# contextual
# ---------------------------------------------------------------------------------------------
def test_contextual_labeler_bias_only_in_blind_cluster():
    env = gym.make(CONTEXTUAL).unwrapped
    env.reset(seed=0)
    c, core = env.config, env.core
    rng = np.random.default_rng(0)
    for k in range(c.n_clusters):
        x = core.centres[k].numpy() + c.cluster_std * rng.normal(size=(16, c.prompt_dims))
        y = rng.normal(size=(16, c.dims)) * 2
        z = torch.from_numpy(np.concatenate([x, y], axis=1)).unsqueeze(0)
        assert torch.equal(core.cluster(z)[0], torch.full((16,), k))
        lab, u = env.query_labeler(z), env.true_utility(z)
        if k == c.blind_cluster:
            expected = u + c.labeler_bias * z[..., c.prompt_dims + c.dims - 1]
            assert torch.allclose(lab, expected, rtol=1e-12)
            assert not torch.equal(lab, u)
        else:
            assert torch.equal(lab, u)  # labels are exactly the true utility elsewhere
    assert env.step(np.zeros(c.dims))[4]["oracle_queries"] == 2 * 16 * c.n_clusters


def test_contextual_prompts_clusters_and_reset_semantics():
    env = gym.make(CONTEXTUAL)
    obs, info = env.reset(seed=3)
    seen, first = set(), obs.copy()
    core = env.unwrapped.core
    for _ in range(40):
        k = info["cluster"]
        seen.add(k)
        assert int(np.argmin(((obs - core.centres.numpy()) ** 2).sum(1))) == k
        assert info["in_blind_cluster"] is (k == env.unwrapped.config.blind_cluster)
        _, _, term, _, step_info = env.step(np.zeros(4, dtype=np.float32))
        assert term and step_info["cluster"] == k
        assert step_info["in_blind_cluster"] is (k == env.unwrapped.config.blind_cluster)
        # z = concat(x, y) with y = 0: signal_dims = 1, so |x[0]| and ||x[1:]||
        x = obs.astype(np.float64)
        assert step_info["signal_norm"] == pytest.approx(abs(x[0]), rel=1e-12)
        assert step_info["noise_norm"] == pytest.approx(np.sqrt((x[1:] ** 2).sum()), rel=1e-12)
        y_star = core.targets[k].numpy()
        assert step_info["true_utility"] == pytest.approx(10.0 * np.exp(-0.1 * (y_star**2).sum()))
        obs, info = env.reset()  # next prompt, same RM
    assert seen == set(range(env.unwrapped.config.n_clusters))
    assert info["round"] == 40 // 8
    obs, _ = env.reset(seed=3)
    assert np.array_equal(obs, first)


def test_contextual_utility_gradient_matches_autograd():
    core = gym.make(CONTEXTUAL).unwrapped.core
    z = torch.randn(1, 5, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    z[..., :4] += core.centres[0]
    z.requires_grad_(True)
    for fn in (core.utility_and_grad, core.labeler_target_and_grad):
        u, g = fn(z)
        (auto,) = torch.autograd.grad(u.sum(), z)
        assert torch.allclose(g, auto, rtol=1e-12)


# ---------------------------------------------------------------------------------------------
# both
# ---------------------------------------------------------------------------------------------
def _response_actions(env_id, rng):
    if env_id == VERBOSITY:
        n = int(rng.integers(1, 9))
        return list(rng.integers(1, 8, size=n - 1)) + [EOS]
    return [rng.normal(size=4)]


@pytest.mark.parametrize("env_id", [VERBOSITY, CONTEXTUAL])
@pytest.mark.parametrize("spr", [1, 3])
def test_retrain_every_samples_per_round_completed_responses(env_id, spr):
    env = gym.make(env_id, samples_per_round=spr)
    env.reset(seed=1)
    rng = np.random.default_rng(spr)
    for n in range(1, 3 * spr + 2):
        for a in _response_actions(env_id, rng):
            before = {k: v.clone() for k, v in env.unwrapped.rm_params.items()}
            _, _, term, _, info = env.step(a)
            changed = any(not torch.equal(before[k], v) for k, v in env.unwrapped.rm_params.items())
            assert info["rm_updated"] == changed == (term and n % spr == 0)
        assert term and info["round"] == n // spr and info["labels_used"] == (n // spr) * spr
        env.reset()


@pytest.mark.parametrize("env_id", [VERBOSITY, CONTEXTUAL])
def test_white_box_last_response_and_counted_oracle(env_id):
    env = gym.make(env_id)
    env.reset(seed=0)
    rng = np.random.default_rng(0)
    for a in _response_actions(env_id, rng):
        _, _, term, _, info = env.step(a)
    u = env.unwrapped
    y = u.last_response
    assert term and y is not None and y.shape == (1, u.core.config.dims)
    assert float(u.true_utility(y.unsqueeze(1))[0, 0]) == info["true_utility"]
    k = u.reward_model.ntk(u.rm_params, y.unsqueeze(1), y.unsqueeze(1))
    assert k.shape == (1, 1) and torch.isfinite(k).all()
    env.reset()
    assert u.last_response is None
    assert env.step(_response_actions(env_id, rng)[0])[4]["oracle_queries"] == 1
    with pytest.raises(ValueError, match="ys"):
        u.true_utility(np.zeros((2, u.core.config.dims)))


@pytest.mark.parametrize("env_id", [VERBOSITY, CONTEXTUAL])
def test_determinism_across_instances_and_pickle(env_id):
    import pickle

    def trace(env):
        rng = np.random.default_rng(7)
        out = []
        for _ in range(12):
            for a in _response_actions(env_id, rng):
                o, r, *_, info = env.step(a)
                out.append((o.tobytes(), r, sorted(info.items())))
            out.append(env.reset()[0].tobytes())
        return out

    e1 = gym.make(env_id)
    e1.reset(seed=11)
    e2 = pickle.loads(pickle.dumps(e1))
    assert trace(e1) == trace(e2)


@pytest.mark.parametrize("env_id", [VERBOSITY, CONTEXTUAL])
def test_ppo_smoke(env_id):
    from stable_baselines3 import PPO
    from stable_baselines3.common.monitor import Monitor

    env = Monitor(gym.make(env_id), info_keywords=("true_utility",))
    env.reset(seed=0)
    model = PPO("MlpPolicy", env, n_steps=128, batch_size=64, n_epochs=2, seed=0, device="cpu")
    model.learn(total_timesteps=512)
    rewards = env.get_episode_rewards()
    assert len(rewards) > 0 and np.all(np.isfinite(rewards))
    assert env.unwrapped.core.round >= 1
