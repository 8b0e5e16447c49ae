"""FPO penalties: how much a response would move the reward model that learns from it.

Foresighted policy optimisation (Gauthier, Bach & Jordan, arXiv 2605.04266, Sec. 2) scores a
response by ``r(y) - gamma * penalty(y)``, where the penalty stands in for the parameter-steering
term that naive iterative RLHF drops. One gradient step of the RM (learning rate ``eta``) on the
labelled response ``y`` changes its reward there by, to first order,

* rating, loss ``(r(y) - U(y))^2``:      ``delta r(y) = -2 eta (r(y) - U(y)) K(y, y)``
* preference (Bradley-Terry vs ``y_ref``, soft label ``p* = sigmoid(U(y) - U(y_ref))``):
  ``delta r(y) = -eta (p_phi - p*) (K(y, y) - K(y, y_ref))``

with the tangent kernel ``K(a, b) = <grad_phi r(a), grad_phi r(b)>`` given in closed form by each
reward model (``reward_model.ntk``). The three forms:

* ``relaxed``: the error factor (the labeler's verdict: an oracle query) times the kernel term,
  so ``r - gamma * penalty`` tracks the RM's reward *after* it learns from ``y``;
* ``practical``: the error factor set to 1 (no oracle query);
* ``exact`` (this suite's extension): minus the real change of ``r(y)`` after a virtual optimiser
  step (the env's, plus ``y``), divided by ``c * eta`` (``c = 2`` for rating, 1 for preference):
  ``relaxed`` as ``eta -> 0`` with plain SGD.

All functions take ``y`` (S, n, d) (``n`` candidates) and return ``(S, n)``, differentiable.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from rlhf_envs.core import RLHFCore
from rlhf_envs.reward_models import adam_step, flat_of, flatten, unflatten

FORMS = ("practical", "relaxed", "exact")


def loss_factor(feedback: str) -> float:
    """``c`` in ``delta r = -c * eta * relaxed_penalty`` (2 for squared loss, 1 for BT)."""
    return 2.0 if feedback == "rating" else 1.0


def practical_penalty(rm, params, y: torch.Tensor, feedback: str, reference=None) -> torch.Tensor:
    """Practical FPO penalty: ``K(y, y)`` (rating), ``K(y, y) - K(y, y_ref)`` (preference)."""
    k = rm.ntk(params, y, y)
    if feedback == "preference":
        ref = reference.reshape(y.shape[0], 1, -1).expand_as(y)
        k = k - rm.ntk(params, y, ref)
    return k


def error_from_scores(r, label, feedback: str, r_ref=None) -> torch.Tensor:
    """The error factor from rewards: ``r(y) - label`` (rating) or ``sigmoid(r(y) - r(y_ref)) -
    label`` (preference; ``r_ref``: the reference's reward)."""
    return r - label if feedback == "rating" else torch.sigmoid(r - r_ref) - label


def relaxed_penalty(rm, params, y, label, feedback: str, reference=None) -> torch.Tensor:
    """Relaxed FPO penalty: error factor times the practical penalty; ``label`` (S, n): the
    labeler's noiseless verdict on ``y``."""
    r_ref = None if feedback == "rating" else rm.score(params, reference.reshape(y.shape[0], 1, -1))
    err = error_from_scores(rm.score(params, y), label, feedback, r_ref)
    return err * practical_penalty(rm, params, y, feedback, reference)


def virtual_update_reward(core: RLHFCore, y: torch.Tensor, label: torch.Tensor, cache=None):
    """``(r_phi(y), r_{phi'}(y))``: the reward now and after one virtual optimiser step on the
    buffer with ``y`` pushed in.

    Pure and differentiable in ``y``; each of the ``n`` candidates in ``y`` (S, n, d) gets its
    own virtual update (the env's optimiser, loss, state and FIFO rule). The retained buffer's
    part of the loss gradient is computed once (kept across calls in the caller's dict
    ``cache``, :func:`_lookahead`); with ``y``'s part it is the whole gradient up to sum order.
    """
    rm, c = core.reward_model, core.config
    n, g_rest, rest_y, step = _lookahead(core, {} if cache is None else cache)
    before, after = [], []
    for j in range(y.shape[1]):
        yj, lj = y[:, j : j + 1], label[:, j : j + 1]
        g_new, r_now = rm.loss_grad_and_score(core.params, yj, lj, c.feedback, core.references, n)
        params = unflatten(step(g_rest + flatten(g_new))[0], core.params)
        if rm.guards_steps:
            batch = torch.cat([rest_y, yj], dim=1)  # the buffer the real update would train on
            params = rm.stabilised(core.params, params, batch, c.feedback, core.references)
        before.append(r_now)
        after.append(rm.score(params, yj))
    return torch.cat(before, dim=1), torch.cat(after, dim=1)


def _lookahead(core: RLHFCore, cache: dict):
    """``(n, G_rest, rest_y, step)``: the buffer entries kept after one push (``rest_y``, ``n``
    with the push), their flat loss gradient ``G_rest``, and the RM optimiser's step from the
    current parameters and state, ``step(G, derivative=False) -> (phi', _, _, d phi' / d G)``
    (:func:`~rlhf_envs.reward_models.adam_step`, or SGD's ``phi - lr (G + wd phi)``). ``cache``
    keeps them while the RM parameters and buffer are the same objects (updates replace them)."""
    if cache.get("params") is core.params and cache.get("buffer_y") is core.buffer_y:
        return cache["n"], cache["g_rest"], cache["rest_y"], cache["step"]
    c, cfg = core.config, core.reward_model.optimizer
    rest_y, rest_t = core.retained_after_push(1)
    n = rest_y.shape[1] + 1
    with torch.no_grad():
        g_rest = core.reward_model.loss_grad_and_score(
            core.params, rest_y, rest_t, c.feedback, core.references, n
        )[0]
    p = flat_of(core.params)
    if cfg.name == "adam":
        step = adam_step(cfg, p, core.opt_state)
    else:

        def step(G, derivative=False):
            d_step = torch.full_like(p, -cfg.lr) if derivative else None
            return p - cfg.lr * (G + cfg.weight_decay * p), None, None, d_step

    cache.clear()
    cache.update(params=core.params, buffer_y=core.buffer_y, n=n, rest_y=rest_y, step=step)
    cache["g_rest"] = flatten(g_rest)  # summed flat: the same numbers as summed per parameter
    return n, cache["g_rest"], rest_y, step


def exact_score_grad(
    core: RLHFCore,
    y: torch.Tensor,
    label: torch.Tensor,
    gamma: float,
    cache=None,
    label_grad: torch.Tensor | None = None,
) -> torch.Tensor:
    """``grad_y [r(y) - gamma * exact_penalty(y)]`` in closed form (rating feedback, a reward
    model with :meth:`~rlhf_envs.reward_models.MLPRewardModel.directional_grad_y`).

    The score is ``r_phi(y) + kappa (r_phi'(y) - r_phi(y))`` with ``kappa = gamma / (2 eta)`` and
    ``phi' = A(g_rest + a(y) grad_phi r_phi(y))`` the virtual optimiser step (``A`` acts
    coordinate by coordinate; ``a = 2 (r_phi(y) - label) / n``). By the chain rule

        grad_y r_phi'(y) = [grad_y r_psi(y)]_{psi = phi'}
                           + <grad_phi r_phi(y), w> (2 / n) (grad_y r_phi(y) - grad_y label)
                           + a grad_y <grad_phi r_phi(y), w>,   w = A'(g) * grad_phi r_phi'(y),

    batched operations instead of autograd (:func:`exact_penalty_and_reward`'s to about 1e-12,
    tested). ``label_grad``: the verdict's gradient in ``y``, if the policy gradient uses it.
    """
    rm, c = core.reward_model, core.config
    if c.feedback != "rating" or not hasattr(rm, "directional_grad_y"):
        raise ValueError("the closed-form exact FPO gradient covers rating feedback, MLP RM")
    n, g_rest, _, step = _lookahead(core, {} if cache is None else cache)
    kappa = gamma / (loss_factor(c.feedback) * c.rm_lr)
    out = []
    for j in range(y.shape[1]):
        yj, lj = y[:, j : j + 1], label[:, j : j + 1]
        sig: list = []
        parts = rm.parts(core.params, yj, sig)
        a = 2.0 * (parts[0] - lj) / n  # (S, 1)
        g_phi = flatten(rm.weighted_grad(core.params, yj, torch.ones_like(a), parts))
        new_flat, _, _, d_step = step(g_rest + a * g_phi, derivative=True)
        new = unflatten(new_flat, core.params)
        parts_new = rm.parts(new, yj)
        w = flatten(rm.weighted_grad(new, yj, torch.ones_like(a), parts_new)) * d_step
        dot = (g_phi * w).sum(-1, keepdim=True).unsqueeze(-1)  # (S, 1, 1)
        g_r = rm.grad_y_from_parts(core.params, parts)
        g_r_new = rm.grad_y_from_parts(new, parts_new)
        g_a = g_r if label_grad is None else g_r - label_grad[:, j : j + 1]
        mixed = rm.directional_grad_y(core.params, yj, unflatten(w, core.params), tuple(sig))
        chain = (2.0 / n) * dot * g_a + a.unsqueeze(-1) * mixed
        out.append((1.0 - kappa) * g_r + kappa * (g_r_new + chain))
    return torch.cat(out, dim=1)


def exact_penalty_and_reward(core: RLHFCore, y: torch.Tensor, label: torch.Tensor, cache=None):
    """Exact FPO penalty ``-(r_{phi'}(y) - r_phi(y)) / (c * eta)``, and ``r_phi(y)``."""
    c = core.config
    r_now, r_next = virtual_update_reward(core, y, label, cache)
    return -(r_next - r_now) / (loss_factor(c.feedback) * c.rm_lr), r_now


def first_order_score_grad(
    core: RLHFCore, y: torch.Tensor, gamma: float, label=None, label_grad=None
) -> torch.Tensor:
    """``grad_y [r(y) - gamma * penalty(y)]`` in closed form for rating feedback: the practical
    form without ``label``, the relaxed form with the labeler's verdict ``label`` (S, n) and,
    where the policy gradient flows through it, its gradient ``label_grad`` (S, n, d)."""
    r, g_r, k, g_k = core.reward_model.first_order_parts(core.params, y)
    if label is None:
        return g_r - gamma * g_k
    g_err = g_r if label_grad is None else g_r - label_grad
    g_pen = g_err * k.unsqueeze(-1) + (r - label).unsqueeze(-1) * g_k
    return g_r - gamma * g_pen


def penalty(form: str, core: RLHFCore, y: torch.Tensor, label_fn: Callable | None = None):
    """FPO penalty of ``form`` (one of :data:`FORMS`) for responses ``y`` (S, n, d) under the
    current RM of ``core`` (the env's follower). ``label_fn(y)``: the labeler's verdict on ``y``
    (an oracle query, e.g. ``env.unwrapped.query_labeler``), needed by ``relaxed`` and ``exact``.
    """
    rm, c = core.reward_model, core.config
    if form == "practical":
        return practical_penalty(rm, core.params, y, c.feedback, core.references)
    if form not in FORMS:
        raise ValueError(f"form must be one of {FORMS}, got {form!r}")
    if label_fn is None:
        raise ValueError(f"form={form!r} needs label_fn (the labeler's verdict on y)")
    label = label_fn(y)
    if form == "relaxed":
        return relaxed_penalty(rm, core.params, y, label, c.feedback, core.references)
    return exact_penalty_and_reward(core, y, label)[0]
