"""FPO maths: penalties checked against the actual change of a real reward model."""

import numpy as np
import pytest
import torch

from agents import fpo
from rlhf_envs import BlindSpotConfig, RLHFCore


def make_core(reward_model: str, feedback: str, **kw) -> RLHFCore:
    cfg = BlindSpotConfig(
        dims=6,
        signal_dims=2,
        reward_model=reward_model,
        feedback=feedback,
        rm_optimizer=kw.pop("rm_optimizer", "sgd"),
        rm_lr=kw.pop("rm_lr", 1e-4),
        rm_weight_decay=kw.pop("rm_weight_decay", 0.0),
        rm_hidden=(16, 16),
        rm_init_noise=kw.pop("rm_init_noise", 0.5),
        buffer_size=kw.pop("buffer_size", 1),
        samples_per_round=1,
        reference_response=kw.pop("reference_response", None),
        **kw,
    )
    core = RLHFCore(cfg, num_experiments=3)
    core.reset([11, 12, 13])
    return core


def responses(core: RLHFCore, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return 1.5 * torch.randn(core.S, 1, core.config.dims, generator=g, dtype=torch.float64)


@pytest.mark.parametrize("reward_model", ["linear", "mlp"])
@pytest.mark.parametrize("feedback", ["rating", "preference"])
def test_relaxed_penalty_predicts_actual_rm_change(reward_model, feedback):
    ref = (0.3, -0.2, 0.1, 0.0, 0.5, -0.4) if feedback == "preference" else None
    core = make_core(reward_model, feedback, reference_response=ref)
    y = responses(core)
    with torch.no_grad():
        label = core.labeler_target(y)
        pen = fpo.relaxed_penalty(
            core.reward_model, core.params, y, label, feedback, core.references
        )
        predicted = -fpo.loss_factor(feedback) * core.config.rm_lr * pen[:, 0]
        before = core.score(y)[:, 0]
    core.step(y[:, 0])  # one real RM update on exactly this labelled response
    with torch.no_grad():
        actual = core.score(y)[:, 0] - before
    assert torch.all(actual.abs() > 1e-9), "the update must move the reward"
    rel = ((predicted - actual).abs() / actual.abs()).max().item()
    assert rel < 0.05, f"first-order prediction off by {rel:.3%}"


@pytest.mark.parametrize("reward_model", ["linear", "mlp"])
def test_relaxed_prediction_degrades_at_large_lr_for_mlp_only(reward_model):
    """A check that the steering test can fail: at a large step the MLP is no longer linear."""
    core = make_core(reward_model, "rating", rm_lr=0.5)
    y = responses(core, seed=3)
    with torch.no_grad():
        pen = fpo.relaxed_penalty(
            core.reward_model, core.params, y, core.labeler_target(y), "rating"
        )
        predicted = -2 * core.config.rm_lr * pen[:, 0]
        before = core.score(y)[:, 0]
    core.step(y[:, 0])
    actual = core.score(y)[:, 0] - before
    if reward_model == "linear":  # at this lr the SGD stability guard shrinks the step
        scale = core.reward_model.step_scale(core.training_batch()[0], "rating")
        assert float(scale.max()) < 1.0
        predicted = predicted * scale
    rel = ((predicted - actual).abs() / actual.abs()).max().item()
    if reward_model == "linear":  # r is linear in w: the first-order formula is exact
        assert rel < 1e-9
    else:
        assert rel > 0.05


def test_practical_penalty_closed_forms_linear():
    core = make_core("linear", "preference", reference_response=(1, 0, 0, 0, 0, 2))
    y = responses(core)
    ref = core.references.unsqueeze(1)
    got = fpo.practical_penalty(core.reward_model, core.params, y, "preference", core.references)
    want = (y * y).sum(-1) - (y * ref).sum(-1)
    torch.testing.assert_close(got, want, rtol=0, atol=1e-12)
    core_r = make_core("linear", "rating")
    got_r = fpo.practical_penalty(core_r.reward_model, core_r.params, y, "rating")
    torch.testing.assert_close(got_r, (y * y).sum(-1), rtol=0, atol=1e-12)


@pytest.mark.parametrize("reward_model,optimizer", [("linear", "sgd"), ("mlp", "adam")])
@pytest.mark.parametrize("feedback", ["rating", "preference"])
def test_exact_penalty_equals_real_update(reward_model, optimizer, feedback):
    core = make_core(
        reward_model,
        feedback,
        rm_optimizer=optimizer,
        rm_lr=1e-2,
        rm_weight_decay=1e-3,
        buffer_size=4,
    )
    # fill the buffer past capacity so the FIFO eviction is exercised
    for i in range(6):
        core.step(responses(core, seed=100 + i)[:, 0])
    y = responses(core, seed=7)
    label = core.labeler_target(y)
    with torch.no_grad():
        before = core.score(y)[:, 0]
    exact = fpo.exact_penalty_and_reward(core, y, label)[0][:, 0]
    core.step(y[:, 0])
    with torch.no_grad():
        after = core.score(y)[:, 0]
    predicted_change = -fpo.loss_factor(feedback) * core.config.rm_lr * exact
    torch.testing.assert_close(predicted_change.detach(), after - before, rtol=1e-9, atol=1e-12)


def test_exact_penalty_is_pure_and_differentiable():
    core = make_core("mlp", "rating", rm_optimizer="adam", buffer_size=5)
    for i in range(3):
        core.step(responses(core, seed=i)[:, 0])
    snapshot = {k: v.clone() for k, v in core.params.items()}
    state = {k: v.clone() for k, v in core.opt_state.items()}
    buf = core.buffer_y.clone()
    y = responses(core, seed=9).requires_grad_(True)
    pen = fpo.penalty("exact", core, y, core.labeler_target)
    (g,) = torch.autograd.grad(pen.sum(), y)
    assert torch.isfinite(g).all() and g.abs().sum() > 0
    for k in snapshot:
        assert torch.equal(core.params[k], snapshot[k])
        assert not core.params[k].requires_grad
    for k in state:
        assert torch.equal(core.opt_state[k], state[k])
    assert torch.equal(core.buffer_y, buf)


def test_exact_matches_relaxed_at_small_lr_with_sgd():
    core = make_core("mlp", "rating", rm_lr=1e-5)
    y = responses(core, seed=4)
    label = core.labeler_target(y)
    exact = fpo.exact_penalty_and_reward(core, y, label)[0]
    relaxed = fpo.relaxed_penalty(core.reward_model, core.params, y, label, "rating")
    np.testing.assert_allclose(exact.detach().numpy(), relaxed.detach().numpy(), rtol=1e-3)


def test_penalty_requires_labels_for_oracle_forms():
    core = make_core("linear", "rating")
    y = responses(core)
    with pytest.raises(ValueError, match="label_fn"):
        fpo.penalty("relaxed", core, y)
    with pytest.raises(ValueError, match="form"):
        fpo.penalty("psychic", core, y, core.labeler_target)
