"""The reward models and their retraining: closed forms against autograd / torch.optim, the paper's
linear update rule, the retraining schedule, reset semantics and the labeler's feedback."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
import torch
import torch.nn.functional as F

import rlhf_envs
from rlhf_envs.core import BlindSpotConfig, RLHFCore

LINEAR, NEURAL = "RLHFBlindSpot-v0", "RLHFNeuralBlindSpot-v0"


def _clone(params):
    return {k: v.detach().clone() for k, v in params.items()}


def _same(p1, p2):
    return p1.keys() == p2.keys() and all(torch.equal(p1[k], p2[k]) for k in p1)


def _loss(model, params, y, target, feedback, reference=None):
    """The per-experiment loss (S,) whose gradient ``loss_grad_and_score`` gives in closed form:
    mean squared error (rating) or mean cross-entropy of ``sigmoid(r(y) - r(reference))``
    against ``target`` (preference)."""
    r = model.score(params, y)
    if feedback == "rating":
        return ((r - target) ** 2).mean(dim=-1)
    logits = r - model.score(params, reference.reshape(y.shape[0], 1, -1))
    return (F.softplus(logits) - target * logits).mean(dim=-1)


def _np_utility(y, c):
    y_star = np.zeros(c.dims)
    y_star[: c.signal_dims] = c.target_value
    return c.utility_scale * np.exp(-c.utility_width * np.sum((y - y_star) ** 2))


# ---------------------------------------------------------------------------------------------
# the paper's linear update rule
# ---------------------------------------------------------------------------------------------
def test_linear_rm_update_is_the_paper_rule():
    env = gym.make(LINEAR)
    env.reset(seed=3)
    c = env.unwrapped.config
    rng = np.random.default_rng(0)
    for _ in range(8):
        w = env.unwrapped.rm_params["w"][0].numpy().copy()
        y = rng.normal(size=c.dims) * 0.5
        y[:3] += 1.0
        expected = w * (1 - 1e-4) + 0.005 * 2 * (_np_utility(y, c) - w @ y) * y
        _, r, _, _, info = env.step(y)
        assert r == pytest.approx(w @ y, abs=1e-12)  # scored before learning from y
        assert info["rm_updated"]
        got = env.unwrapped.rm_params["w"][0].numpy()
        np.testing.assert_allclose(got, expected, atol=1e-6, rtol=0)
        assert not np.allclose(got, w, atol=1e-6)  # it did move


def test_linear_rm_initialisation_is_the_papers():
    ws = []
    for seed in range(40):
        env = gym.make(LINEAR)
        env.reset(seed=seed)
        ws.append(env.unwrapped.rm_params["w"][0].numpy().copy())
    ws = np.array(ws)
    mean = np.zeros(50)
    mean[:3] = 1.0
    dev = ws - mean
    assert abs(dev.std() - 0.1) < 0.01
    assert np.abs(dev.mean()) < 0.01


# ---------------------------------------------------------------------------------------------
# MLP training
# ---------------------------------------------------------------------------------------------
def test_mlp_buffer_loss_decreases():
    env = gym.make(NEURAL)
    env.reset(seed=0)
    rng = np.random.default_rng(0)
    centre = np.zeros(10)
    centre[:2] = 2.5
    for _ in range(50):
        env.step(centre + 0.7 * rng.normal(size=10))
    u = env.unwrapped
    model, core = u.reward_model, u.core
    y, t = core.training_batch()
    assert y.shape == (1, 50, 10) and t.shape == (1, 50)
    params, state = _clone(core.params), {k: v.clone() for k, v in core.opt_state.items()}
    losses = [float(_loss(model, params, y, t, "rating")[0])]
    for _ in range(200):
        params, state = model.update(params, state, y, t, "rating")
        losses.append(float(_loss(model, params, y, t, "rating")[0]))
    assert np.isfinite(losses).all()
    assert losses[-1] < 0.5 * losses[0]
    assert losses[100] < losses[0] and losses[-1] < losses[100]
    # update is pure: the env's own parameters are untouched
    assert _same(core.params, u.rm_params)
    assert not _same(params, core.params)


# ---------------------------------------------------------------------------------------------
# retraining schedule and reset semantics
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("env_id", rlhf_envs.BLIND_SPOT_ENV_IDS + ["RLHFContextual-v0"])
@pytest.mark.parametrize("spr", [1, 3, 5])
def test_retrain_exactly_every_samples_per_round(env_id, spr):
    env = gym.make(env_id, samples_per_round=spr)
    env.reset(seed=1)
    d = env.unwrapped.config.dims
    rng = np.random.default_rng(spr)
    updated, changed = [], []
    for t in range(1, 3 * spr + 2):
        before = _clone(env.unwrapped.rm_params)
        _, _, _, _, info = env.step(rng.normal(size=d))
        updated.append(info["rm_updated"])
        changed.append(not _same(before, env.unwrapped.rm_params))
        assert info["round"] == t // spr
        assert info["labels_used"] == (t // spr) * spr
    expected = [t % spr == 0 for t in range(1, 3 * spr + 2)]
    assert updated == expected
    assert changed == expected


@pytest.mark.parametrize("env_id", rlhf_envs.BLIND_SPOT_ENV_IDS + ["RLHFContextual-v0"])
def test_reset_without_seed_keeps_rm_and_with_seed_restores(env_id):
    env = gym.make(env_id)
    env.reset(seed=9)
    initial = _clone(env.unwrapped.rm_params)
    spr = env.unwrapped.config.samples_per_round
    rng = np.random.default_rng(0)
    d = env.unwrapped.config.dims
    for _ in range(2 * spr):
        env.step(rng.normal(size=d))
    trained = _clone(env.unwrapped.rm_params)
    assert not _same(trained, initial)
    _, info = env.reset()
    assert _same(env.unwrapped.rm_params, trained)
    assert info["round"] == 2  # the experiment goes on
    _, info = env.reset(seed=9)
    assert _same(env.unwrapped.rm_params, initial)
    assert info["round"] == 0 and info["labels_used"] == 0
    assert env.unwrapped.core.buffer_len == 0
    fresh = gym.make(env_id)
    fresh.reset(seed=9)
    assert _same(env.unwrapped.rm_params, fresh.unwrapped.rm_params)
    # and both continue identically
    a = rng.normal(size=d)
    assert env.step(a)[1] == fresh.step(a)[1]
    other = gym.make(env_id)
    other.reset(seed=10)
    assert not _same(other.unwrapped.rm_params, initial)


# ---------------------------------------------------------------------------------------------
# white-box maths against autograd
# ---------------------------------------------------------------------------------------------
def _core(kind: str, S: int = 2, **kw) -> RLHFCore:
    base = dict(dims=4, signal_dims=2)
    if kind == "linear":
        cfg = BlindSpotConfig(**base, **kw)
    elif kind == "mlp":
        cfg = BlindSpotConfig(**base, reward_model="mlp", rm_hidden=(5, 3), rm_init_noise=0.5, **kw)
    else:  # mlp with a blind-spot skip term
        cfg = BlindSpotConfig(
            **base,
            reward_model="mlp",
            rm_hidden=(5, 3),
            rm_init_noise=0.5,
            blind_spot_dims=(0,),
            blind_spot_bias=0.5,
            **kw,
        )
    core = RLHFCore(cfg, S)
    core.reset(list(range(100, 100 + S)))
    if kind != "linear":  # non-zero biases and skip so every term of the gradient is exercised
        g = torch.Generator().manual_seed(0)
        core.params = {
            k: v + 0.3 * torch.randn(v.shape, generator=g, dtype=v.dtype)
            for k, v in core.params.items()
        }
    return core


KINDS = ["linear", "mlp", "mlp_skip"]


def _autograd_flat_grad(model, params, s, y):
    p = {k: v[s : s + 1].detach().clone().requires_grad_(True) for k, v in params.items()}
    r = model.score(p, y.reshape(1, 1, -1)).sum()
    names = sorted(p)
    grads = torch.autograd.grad(r, [p[k] for k in names])
    return torch.cat([g.reshape(-1) for g in grads])


@pytest.mark.parametrize("kind", KINDS)
def test_ntk_is_the_inner_product_of_autograd_gradients(kind):
    core = _core(kind)
    model, params = core.reward_model, core.params
    if kind == "mlp_skip":
        assert "skip" in params
        assert torch.allclose(
            core.reward_model.init_params([torch.Generator().manual_seed(0)])["skip"][0],
            torch.tensor([0.5, 0.0, 0.0, 0.0], dtype=torch.float64),
        )
    g = torch.Generator().manual_seed(1)
    S, n, d = 2, 3, 4
    ya = torch.randn(S, n, d, generator=g, dtype=torch.float64)
    yb = torch.randn(S, n, d, generator=g, dtype=torch.float64)

    def per_sample_grads(y):  # (S, n, P), by autograd one response at a time
        grads = [
            [_autograd_flat_grad(model, params, s, y[s, i]) for i in range(n)] for s in range(S)
        ]
        return torch.stack([torch.stack(row) for row in grads])

    G, Gb = per_sample_grads(ya), per_sample_grads(yb)
    assert G.shape == (S, n, sum(v[0].numel() for v in params.values()))
    torch.testing.assert_close(model.ntk(params, ya, yb), (G * Gb).sum(-1), atol=1e-8, rtol=0)
    torch.testing.assert_close(model.ntk(params, ya, ya), (G * G).sum(-1), atol=1e-8, rtol=0)
    assert (model.ntk(params, ya, ya) > 0).all()


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("feedback", ["rating", "preference"])
def test_loss_grad_matches_autograd(kind, feedback):
    core = _core(kind)
    model = core.reward_model
    g = torch.Generator().manual_seed(2)
    S, n, d = 2, 5, 4
    y = torch.randn(S, n, d, generator=g, dtype=torch.float64)
    if feedback == "rating":
        target = 3.0 * torch.randn(S, n, generator=g, dtype=torch.float64)
        ref = None
    else:
        target = torch.rand(S, n, generator=g, dtype=torch.float64)
        ref = torch.randn(S, d, generator=g, dtype=torch.float64)
    p = {k: v.detach().clone().requires_grad_(True) for k, v in core.params.items()}
    loss = _loss(model, p, y, target, feedback, ref)
    assert loss.shape == (S,)
    auto = torch.autograd.grad(loss.sum(), [p[k] for k in sorted(p)])
    closed = model.loss_grad_and_score(core.params, y, target, feedback, ref)[0]
    assert sorted(closed) == sorted(p)
    for k, a in zip(sorted(p), auto, strict=False):
        torch.testing.assert_close(closed[k], a, atol=1e-10, rtol=0, msg=f"param {k}")
    assert any(a.abs().max() > 1e-3 for a in auto)  # a non-trivial check


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("feedback", ["rating", "preference"])
def test_adam_update_equals_torch_optim_adam(kind, feedback):
    lr, wd = 0.01, 0.05
    core = _core(kind, rm_optimizer="adam", rm_lr=lr, rm_weight_decay=wd)
    model = core.reward_model
    opt_cfg = model.optimizer
    assert opt_cfg.name == "adam" and opt_cfg.lr == lr and opt_cfg.weight_decay == wd
    g = torch.Generator().manual_seed(3)
    S, n, d = 2, 6, 4
    y = torch.randn(S, n, d, generator=g, dtype=torch.float64)
    if feedback == "rating":
        target = 3.0 * torch.rand(S, n, generator=g, dtype=torch.float64)
    else:
        target = torch.rand(S, n, generator=g, dtype=torch.float64)
    ref = torch.randn(S, d, generator=g, dtype=torch.float64)
    s = 1  # compare one experiment of the batch
    torch_params = {
        k: torch.nn.Parameter(v[s : s + 1].detach().clone()) for k, v in core.params.items()
    }
    opt = torch.optim.Adam(
        list(torch_params.values()),
        lr=opt_cfg.lr,
        betas=opt_cfg.betas,
        eps=opt_cfg.eps,
        weight_decay=opt_cfg.weight_decay,
    )
    params, state = core.params, model.init_opt_state(core.params)
    start = _clone(params)
    for _ in range(3):
        params, state = model.update(params, state, y, target, feedback, ref)
        opt.zero_grad()
        _loss(
            model, torch_params, y[s : s + 1], target[s : s + 1], feedback, ref[s : s + 1]
        ).sum().backward()
        opt.step()
        for k in params:
            torch.testing.assert_close(
                params[k][s : s + 1], torch_params[k].detach(), atol=1e-10, rtol=0, msg=f"param {k}"
            )
    assert not _same(params, start)


def test_sgd_update_matches_manual_rule_for_mlp():
    core = _core("mlp", rm_lr=0.03, rm_weight_decay=0.1)
    model = core.reward_model
    g = torch.Generator().manual_seed(4)
    y = torch.randn(2, 3, 4, generator=g, dtype=torch.float64)
    t = torch.randn(2, 3, generator=g, dtype=torch.float64)
    p = {k: v.detach().clone().requires_grad_(True) for k, v in core.params.items()}
    grads = torch.autograd.grad(_loss(model, p, y, t, "rating").sum(), [p[k] for k in sorted(p)])
    new, _ = model.update(core.params, model.init_opt_state(core.params), y, t, "rating")
    for k, gk in zip(sorted(p), grads, strict=False):
        expected = core.params[k] - 0.03 * (gk + 0.1 * core.params[k])
        torch.testing.assert_close(new[k], expected, atol=1e-12, rtol=0)


# ---------------------------------------------------------------------------------------------
# feedback and labeler
# ---------------------------------------------------------------------------------------------
def test_soft_preference_labels_and_rm_converges_to_them():
    T = 2.0
    kw = dict(
        dims=4,
        signal_dims=2,
        feedback="preference",
        preference_labels="soft",
        temperature=T,
        rm_lr=0.5,
        rm_weight_decay=0.0,
    )
    env = gym.make(LINEAR, **kw)
    env.reset(seed=0)
    c = env.unwrapped.config
    y = np.array([1.5, 1.0, 0.3, -0.2])
    label = 1.0 / (1.0 + np.exp(-(_np_utility(y, c) - _np_utility(np.zeros(4), c)) / T))
    assert 0.6 < label < 0.99
    for _ in range(300):
        _, _, _, _, info = env.step(y)
    assert float(env.unwrapped.core.buffer_t[0, -1]) == pytest.approx(label, abs=1e-12)
    w = env.unwrapped.rm_params["w"][0].numpy()
    p_rm = 1.0 / (1.0 + np.exp(-(w @ y - 0.0)))  # reference response is zero
    assert p_rm == pytest.approx(label, abs=1e-3)
    # query_labeler gives the same noiseless verdict
    q = env.unwrapped.query_labeler(y[None])
    assert float(q[0]) == pytest.approx(label, abs=1e-12)


def test_soft_preference_label_with_reference_response():
    ref = (0.5, 0.5, 0.0, 1.0)
    env = gym.make(
        LINEAR,
        dims=4,
        signal_dims=2,
        feedback="preference",
        temperature=0.5,
        reference_response=ref,
    )
    env.reset(seed=0)
    c = env.unwrapped.config
    y = np.array([2.0, 1.0, 0.0, 0.0])
    env.step(y)
    label = 1.0 / (1.0 + np.exp(-(_np_utility(y, c) - _np_utility(np.array(ref), c)) / 0.5))
    assert float(env.unwrapped.core.buffer_t[0, 0]) == pytest.approx(label, abs=1e-12)


def test_sampled_preference_labels_are_binary():
    env = gym.make(
        LINEAR,
        dims=4,
        signal_dims=2,
        feedback="preference",
        preference_labels="sampled",
        buffer_size=40,
        samples_per_round=2,
    )
    env.reset(seed=0)
    rng = np.random.default_rng(0)
    for _ in range(40):
        env.step(rng.normal(size=4) + 1.0)
    t = env.unwrapped.core.buffer_t[0].numpy()
    assert t.shape == (40,)
    assert set(np.unique(t)) == {0.0, 1.0}


def test_label_noise_changes_rating_labels():
    def run(noise):
        env = gym.make(
            LINEAR, dims=4, signal_dims=2, label_noise=noise, buffer_size=5, samples_per_round=5
        )
        env.reset(seed=4)
        rng = np.random.default_rng(1)
        ys = rng.normal(size=(5, 4))
        rewards = [env.step(y)[1] for y in ys]
        rewards.append(env.step(ys[0])[1])
        return env, ys, np.array(rewards)

    clean, ys, r0 = run(0.0)
    noisy, _, r1 = run(0.5)
    t0 = clean.unwrapped.core.buffer_t[0].numpy()
    t1 = noisy.unwrapped.core.buffer_t[0].numpy()
    c = clean.unwrapped.config
    np.testing.assert_allclose(t0, [_np_utility(y, c) for y in ys], rtol=1e-12)
    assert np.all(t1 != t0)
    assert 0.05 < np.std(t1 - t0) < 2.0
    assert np.array_equal(r0[:5], r1[:5])  # same RM until the first retrain
    assert r0[5] != r1[5]  # trained on different labels
    again, _, r2 = run(0.5)
    assert np.array_equal(again.unwrapped.core.buffer_t[0].numpy(), t1)  # noise is seeded


def test_labeler_bias_overrates_bias_dims():
    env = gym.make(LINEAR, dims=5, signal_dims=2, labeler_bias=2.0, labeler_bias_dims=(3, 4))
    env.reset(seed=0)
    core = env.unwrapped.core
    y = torch.tensor([[1.0, 0.5, -0.3, 0.7, 1.2]], dtype=torch.float64)
    lab, true = core.labeler_utility(y), core.utility(y)
    assert (lab > true).all()
    torch.testing.assert_close(lab - true, torch.tensor([2.0 * (0.7 + 1.2)], dtype=torch.float64))
    # rating labels in the buffer carry the bias
    env.step(y[0].numpy())
    assert float(core.buffer_t[0, 0]) == pytest.approx(float(lab[0]), abs=1e-12)
    # y that is zero on the bias dims is judged truthfully
    y0 = torch.tensor([[1.0, 0.5, -0.3, 0.0, 0.0]], dtype=torch.float64)
    assert torch.equal(core.labeler_utility(y0), core.utility(y0))
    # default bias dims: the last dim
    env2 = gym.make(LINEAR, dims=5, signal_dims=2, labeler_bias=1.5)
    env2.reset(seed=0)
    c2 = env2.unwrapped.core
    assert c2.config.labeler_bias_dims == (4,)
    torch.testing.assert_close(
        c2.labeler_utility(y) - c2.utility(y), torch.tensor([1.5 * 1.2], dtype=torch.float64)
    )
