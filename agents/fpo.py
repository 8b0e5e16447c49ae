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

* ``relaxed``: the penalty is the error factor times the kernel term (needs the labeler's verdict
  on the response: an oracle query), so ``r - gamma * penalty`` tracks the RM's reward *after* it
  learns from ``y``;
* ``practical``: the error factor set to 1 (no oracle query);
* ``exact`` (this suite's extension): the penalty is minus the real change of ``r(y)`` after a
  virtual optimiser step (same optimiser, loss and buffer, plus ``y``), divided by
  ``c * eta`` (``c = 2`` for rating, 1 for preference) so that it reduces to ``relaxed`` as
  ``eta -> 0`` with a plain SGD retrainer.

All functions take responses ``y`` of shape ``(S, n, d)`` (``S`` experiments, ``n`` candidates)
and return ``(S, n)``; they are differentiable in ``y``.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from rlhf_envs.core import RLHFCore
from rlhf_envs.reward_models import FlatParams, flatten, unflatten

FORMS = ("practical", "relaxed", "exact")

LabelFn = Callable[[torch.Tensor], torch.Tensor]


def loss_factor(feedback: str) -> float:
    """``c`` in ``delta r = -c * eta * relaxed_penalty`` (2 for squared loss, 1 for BT)."""
    return 2.0 if feedback == "rating" else 1.0


def kernel_term(rm, params, y: torch.Tensor, feedback: str, reference: torch.Tensor | None):
    """``K(y, y)`` for rating feedback, ``K(y, y) - K(y, y_ref)`` for preference feedback."""
    k = rm.ntk(params, y, y)
    if feedback == "preference":
        ref = reference.reshape(y.shape[0], 1, -1).expand_as(y)
        k = k - rm.ntk(params, y, ref)
    return k


def error_factor(
    rm, params, y: torch.Tensor, label: torch.Tensor, feedback: str, reference=None
) -> torch.Tensor:
    """``r(y) - label`` (rating) or ``sigmoid(r(y) - r(y_ref)) - label`` (preference)."""
    r_ref = None if feedback == "rating" else rm.score(params, reference.reshape(y.shape[0], 1, -1))
    return error_from_scores(rm.score(params, y), label, feedback, r_ref)


def error_from_scores(r, label, feedback: str, r_ref=None) -> torch.Tensor:
    """:func:`error_factor` from rewards already computed (``r_ref``: the reference's)."""
    return r - label if feedback == "rating" else torch.sigmoid(r - r_ref) - label


def practical_penalty(rm, params, y, feedback: str, reference=None) -> torch.Tensor:
    """Practical FPO penalty: ``K(y, y)`` or ``K(y, y) - K(y, y_ref)``."""
    return kernel_term(rm, params, y, feedback, reference)


def relaxed_penalty(rm, params, y, label, feedback: str, reference=None) -> torch.Tensor:
    """Relaxed FPO penalty: error factor times the practical penalty.

    ``label`` is the labeler's noiseless verdict on ``y`` (rating value, or the probability that
    ``y`` beats the reference), shape ``(S, n)``.
    """
    err = error_factor(rm, params, y, label, feedback, reference)
    return err * kernel_term(rm, params, y, feedback, reference)


def virtual_update_reward(core: RLHFCore, y: torch.Tensor, label: torch.Tensor, cache=None):
    """``(r_phi(y), r_{phi'}(y))``: the reward now and after one virtual optimiser step on the
    buffer with ``y`` pushed in.

    Pure: the env's reward model, optimiser state and buffer are untouched. ``y`` (S, n, d) holds
    ``n`` alternative candidates; each gets its own virtual update (same optimiser, loss, state
    and FIFO rule as the env's real update). Differentiable in ``y``. The loss gradient is split
    into the part of the retained buffer (constant in ``y``, computed once) and the part of
    ``y``, which equals the gradient on the whole pushed buffer up to summation order.
    ``cache``: a dict owned by the caller that keeps the retained part while the RM and its
    buffer stay the same (a round's inner policy steps, or consecutive SB3 responses).
    """
    rm, c = core.reward_model, core.config
    cache = {} if cache is None else cache
    n, g_rest, rest_y = _retained_grad(core, cache)
    if "g_rest_flat" not in cache:  # summed flat: the same numbers as summed per parameter
        cache["g_rest_flat"] = flatten(g_rest)
    before, after = [], []
    for j in range(y.shape[1]):
        yj, lj = y[:, j : j + 1], label[:, j : j + 1]
        g_new, r_now = rm.loss_grad_and_score(core.params, yj, lj, c.feedback, core.references, n)
        grads = cache["g_rest_flat"] + flatten(g_new)
        params = _virtual_step(core, cache)(grads)
        if rm.guards_steps:
            batch = torch.cat([rest_y, yj], dim=1)  # the buffer the real update would train on
            params = rm.stabilised(core.params, params, batch, c.feedback, core.references)
        before.append(r_now)
        after.append(rm.score(params, yj))
    return torch.cat(before, dim=1), torch.cat(after, dim=1)


def _virtual_step(core: RLHFCore, cache: dict):
    """``step(G) -> phi'``: the RM optimiser's step from the current parameters and state for
    the flat loss gradient ``G``, the operations of
    :meth:`~rlhf_envs.reward_models.RewardModel.apply_grads` in the same order, with the
    products that do not depend on ``G`` (Adam's decayed moments, the weight decay term)
    computed once while the RM stays the same (the same numbers, fewer operations to
    differentiate through)."""
    if cache.get("virtual_for") is core.params:
        return cache["virtual_step"]
    rm, params, state = core.reward_model, core.params, core.opt_state
    cfg = rm.optimizer
    if cfg.name != "adam":

        def step(grads):
            return rm.apply_grads(params, state, grads)[0]

    else:
        b1, b2 = cfg.betas
        t = float(state["step"] + 1)
        lr1, bc2 = cfg.lr / (1 - b1**t), 1 - b2**t
        p = params.flat if isinstance(params, FlatParams) else flatten(params)
        decay = cfg.weight_decay * p if cfg.weight_decay else None
        b1m, b2v = b1 * state["m"], b2 * state["v"]

        def step(grads):
            g = grads if decay is None else grads + decay
            m = b1m + (1 - b1) * g
            v = b2v + (1 - b2) * g * g
            return unflatten(p - lr1 * m / ((v / bc2).sqrt() + cfg.eps), params)

    cache.update(virtual_for=params, virtual_step=step)
    return step


def _retained_grad(core: RLHFCore, cache: dict):
    """Loss gradient of the buffer entries kept after one push; ``cache`` is keyed by the
    identity of the RM parameters and buffer (an update replaces them, never mutates them)."""
    if cache.get("params") is core.params and cache.get("buffer_y") is core.buffer_y:
        return cache["n"], cache["g_rest"], cache["rest_y"]
    c = core.config
    rest_y, rest_t = core.retained_after_push(1)
    n = rest_y.shape[1] + 1
    with torch.no_grad():
        g_rest = core.reward_model.loss_grad(
            core.params, rest_y, rest_t, c.feedback, core.references, n
        )
    cache.clear()
    cache.update(params=core.params, buffer_y=core.buffer_y, n=n, g_rest=g_rest, rest_y=rest_y)
    return n, g_rest, rest_y


def exact_score_grad(
    core: RLHFCore,
    y: torch.Tensor,
    label: torch.Tensor,
    gamma: float,
    cache=None,
    label_grad: torch.Tensor | None = None,
    compiled: bool = False,
) -> torch.Tensor:
    """``grad_y [r(y) - gamma * exact_penalty(y)]`` in closed form (rating feedback, a reward
    model with :meth:`~rlhf_envs.reward_models.MLPRewardModel.directional_grad_y`).

    The score is ``r_phi(y) + kappa (r_phi'(y) - r_phi(y))`` with ``kappa = gamma / (2 eta)`` and
    ``phi' = A(g_rest + a(y) grad_phi r_phi(y))`` the virtual optimiser step (``A`` acts
    coordinate by coordinate; ``a = 2 (r_phi(y) - label) / n``). By the chain rule

        grad_y r_phi'(y) = [grad_y r_psi(y)]_{psi = phi'}
                           + <grad_phi r_phi(y), w> (2 / n) (grad_y r_phi(y) - grad_y label)
                           + a grad_y <grad_phi r_phi(y), w>,   w = A'(g) * grad_phi r_phi'(y),

    a fixed number of batched operations instead of autograd through the update. The same
    maths as :func:`exact_penalty_and_reward` under autograd, summed in another order: equal
    to rounding error, not bit for bit (tested), hence opt-in. ``label_grad``: the gradient
    of the labeler's verdict in ``y`` when the policy gradient flows through it. ``compiled``:
    each candidate's operations as one compiled program (:func:`_compiled_candidate`), the
    same maths rounded otherwise again.
    """
    rm, c = core.reward_model, core.config
    if c.feedback != "rating" or not hasattr(rm, "directional_grad_y"):
        raise ValueError("the closed-form exact FPO gradient covers rating feedback, MLP RM")
    cache = {} if cache is None else cache
    n, g_rest, _ = _retained_grad(core, cache)
    base, consts = _step_constants(core, g_rest, cache)
    kappa = gamma / (loss_factor(c.feedback) * c.rm_lr)
    one = _closed_form_candidate
    if compiled:
        # the numbers that change from round to round enter as tensors
        stamp = cache.get("tensors_for")  # (the constants, kappa) they were made for
        if stamp is None or stamp[0] is not consts or stamp[1] != kappa:
            made = _as_tensors(consts, y.dtype)
            cache.update(
                tensors_for=(consts, kappa), tensors=(made, *_as_tensors((n, kappa), y.dtype))
            )
        consts, n, kappa = cache["tensors"]
        one = _compiled_candidate
    out = []
    for j in range(y.shape[1]):
        g_lab = None if label_grad is None else label_grad[:, j : j + 1]
        yj, lj = y[:, j : j + 1], label[:, j : j + 1]
        out.append(one(rm, core.params, yj, lj, g_lab, n, base, consts, kappa))
    return torch.cat(out, dim=1)


def _closed_form_candidate(rm, params, yj, lj, g_lab, n, base, consts, kappa):
    """One candidate's ``grad_y`` of :func:`exact_score_grad` (``yj``: (S, 1, d)); a function
    of tensors and the reward model only, so that it can be traced and compiled whole."""
    sig: list = []
    parts = rm.parts(params, yj, sig)
    a = 2.0 * (parts[0] - lj) / n  # (S, 1)
    g_phi = flatten(rm.weighted_grad(params, yj, torch.ones_like(a), parts))
    new_flat, d_step = _optimiser_step(rm.optimizer, base + a * g_phi, consts)
    new = _views(new_flat, params)
    parts_new = rm.parts(new, yj)
    w = flatten(rm.weighted_grad(new, yj, torch.ones_like(a), parts_new)) * d_step
    dot = (g_phi * w).sum(-1, keepdim=True).unsqueeze(-1)  # (S, 1, 1)
    g_r, g_r_new = rm.grad_y_from_parts(params, parts), rm.grad_y_from_parts(new, parts_new)
    g_a = g_r if g_lab is None else g_r - g_lab
    mixed = rm.directional_grad_y(params, yj, _views(w, params), tuple(sig))
    chain = (2.0 / n) * dot * g_a + a.unsqueeze(-1) * mixed
    return (1.0 - kappa) * g_r + kappa * (g_r_new + chain)


#: compiled forms of :func:`_closed_form_candidate`, by everything a trace fixes
_COMPILED: dict = {}


def _compiled_candidate(rm, params, yj, lj, g_lab, n, base, consts, kappa):
    """:func:`_closed_form_candidate` as one compiled program (traced with ``make_fx``,
    compiled by ``torch._inductor`` into fused C++ loops), built on first use for each reward
    model setting and set of input shapes (one per batch size) and kept for the process. The
    tensors are its only inputs, so the round-to-round numbers (optimiser state, step count,
    buffer size) reach it as values and nothing is recompiled while the shapes stay (tested);
    no guards are evaluated per call. An experiment's numbers do not depend on the batch size
    here (tested), but they do on the CPU's vector instructions and torch's thread count."""
    names = sorted(params)
    tensors = [params[k] for k in names] + [yj, lj, n, base, kappa, *consts]
    if g_lab is not None:
        tensors.append(g_lab)
    key = (
        type(rm),
        rm.optimizer,  # frozen: its numbers are constants of the trace
        tuple(names),
        g_lab is None,
        tuple((t.shape, t.stride(), t.dtype) for t in tensors),
    )
    fn = _COMPILED.get(key)
    if fn is None:
        try:
            fn = _compile_candidate(rm, names, len(consts), g_lab is not None, tensors)
        except RuntimeError as e:  # e.g. no C++ compiler on this machine
            raise RuntimeError(
                f"the compiled exact FPO gradient could not be built by torch's CPU compiler "
                f"({e}); {_EAGER_INSTEAD}"
            ) from e
        _COMPILED[key] = fn
    return fn(*tensors)


def _as_tensors(values, dtype: torch.dtype) -> tuple[torch.Tensor, ...]:
    """``values`` with the numbers among them as 0-d tensors (the inputs of a compiled
    program; numbers would be constants of its trace)."""
    return tuple(
        v if isinstance(v, torch.Tensor) else torch.tensor(float(v), dtype=dtype) for v in values
    )


#: what a failed compilation's message recommends
_EAGER_INSTEAD = (
    "the eager closed form (fpo-exact-cf, agents.foresight:FPOExactClosedFormAgent) computes "
    "the same maths without it"
)


def _compile_candidate(rm, names: list, n_consts: int, with_label_grad: bool, example: list):
    from rlhf_envs.programs import compile_program

    k = len(names)

    def flat(*ts):
        params = dict(zip(names, ts[:k], strict=True))
        yj, lj, n, base, kappa = ts[k : k + 5]
        consts = ts[k + 5 : k + 5 + n_consts]
        g_lab = ts[-1] if with_label_grad else None
        return (_closed_form_candidate(rm, params, yj, lj, g_lab, n, base, consts, kappa),)

    run = compile_program(flat, example)
    return lambda *ts: run(*ts)[0]


def fused_exact_steps(core, oracle, theta, eps, sigma, lr, cfg, cache: dict) -> torch.Tensor:
    """A round's ``cfg.inner_steps`` exact-FPO policy steps as one compiled program (see
    :meth:`agents.whitebox.Agent.fused_steps`): each step labels its response through the
    oracle's counted :meth:`~rlhf_envs.blind_spot.BlindSpotEnv.labeler_program` (one value
    query per response, as step by step) and ascends :func:`_closed_form_candidate`'s gradient
    less the L2 term, clipped. Rating feedback and an MLP reward model only."""
    rm, c = core.reward_model, core.config
    n, g_rest, _ = _retained_grad(core, cache)
    base, consts = _step_constants(core, g_rest, cache)
    kappa = cfg.fpo_gamma / (loss_factor(c.feedback) * c.rm_lr)
    names = sorted(core.params)
    steps, l2, clip, gaussian = cfg.inner_steps, float(cfg.l2), cfg.grad_clip, eps is not None
    noise = [eps] if gaussian else []
    sig, step_size, n, kappa = _as_tensors((sigma, lr, n, kappa), theta.dtype)
    scalars = [sig, step_size, n, base, kappa]
    consts = _as_tensors(consts, theta.dtype)
    inputs = [*(core.params[k] for k in names), theta, *noise, *scalars, *consts]

    def build(label, *ts):
        k = len(names)
        params = dict(zip(names, ts[:k], strict=True))
        th, rest = ts[k], ts[k + 1 :]
        noise_t, rest = (rest[0], rest[1:]) if gaussian else (None, rest)
        sig, step_size, n_t, base_t, kappa_t = rest[:5]
        for i in range(steps):
            y = th + sig * noise_t[:, i] if gaussian else th
            yj = y.unsqueeze(1)
            g = _closed_form_candidate(
                rm, params, yj, label(yj), None, n_t, base_t, rest[5:], kappa_t
            )
            grad = g[:, 0] - 2.0 * l2 * y
            if clip is not None:
                grad = grad.clamp(-clip, clip)
            th = th + step_size * grad
        return th

    key = ("fused_exact_steps", type(rm), rm.optimizer, tuple(names), steps, gaussian, l2, clip)
    try:
        program = oracle.labeler_program(build, inputs, key)
    except RuntimeError as e:
        raise RuntimeError(
            f"the fused exact FPO round could not be built by torch's CPU compiler ({e}); "
            f"{_EAGER_INSTEAD}"
        ) from e
    return program(*inputs)


def _views(flat: torch.Tensor, like: dict) -> dict:
    """:func:`unflatten` without copies (views of ``flat``)."""
    out, i = {}, 0
    for k in sorted(like):
        size = like[k][0].numel()
        out[k] = flat[:, i : i + size].reshape(like[k].shape)
        i += size
    return out


def _step_constants(core: RLHFCore, g_rest: dict, cache: dict):
    """``(base, consts)``: the loss gradient of the retained buffer plus weight decay, flat,
    and what :func:`_optimiser_step` needs besides the full gradient (what stays fixed while
    the RM does, cached beside :func:`_retained_grad`'s entry)."""
    if cache.get("step_for") is core.params:
        return cache["base"], cache["consts"]
    cfg = core.reward_model.optimizer
    p = flatten(core.params)
    base = flatten(g_rest) + cfg.weight_decay * p
    if cfg.name == "sgd":
        consts = (p,)
    else:
        b1, b2 = cfg.betas
        t = float(core.opt_state["step"] + 1)
        lr1, bc2 = cfg.lr / (1 - b1**t), 1 - b2**t
        consts = (p, b1 * core.opt_state["m"], b2 * core.opt_state["v"], lr1, bc2)
    cache.update(step_for=core.params, base=base, consts=consts)
    return base, consts


def _optimiser_step(cfg, G: torch.Tensor, consts: tuple):
    """``(phi', d phi' / d G)``: the RM optimiser's step from the current state
    (:func:`_step_constants`) for a full gradient ``G``, with its elementwise derivative."""
    if cfg.name == "sgd":
        (p,) = consts
        return p - cfg.lr * G, torch.full_like(p, -cfg.lr)
    p, bm, b2v, lr1, bc2 = consts
    b1, b2 = cfg.betas
    m = bm + (1 - b1) * G
    root = ((b2v + (1 - b2) * G * G) / bc2).sqrt()
    denom = root + cfg.eps
    ratio = m / denom
    # d root / d G = (1 - b2) G / (bc2 root); 0 where root = 0 (then G = 0 as well)
    d_root = (1 - b2) / bc2 * G / torch.where(root > 0, root, torch.ones_like(root))
    return p - lr1 * ratio, -lr1 * ((1 - b1) - ratio * d_root) / denom


def exact_penalty(core: RLHFCore, y: torch.Tensor, label: torch.Tensor, cache=None):
    """Exact FPO penalty: ``-(r_{phi'}(y) - r_phi(y)) / (c * eta)`` (see module docstring)."""
    return exact_penalty_and_reward(core, y, label, cache)[0]


def exact_penalty_and_reward(core: RLHFCore, y: torch.Tensor, label: torch.Tensor, cache=None):
    """:func:`exact_penalty` and ``r_phi(y)``, which the virtual update computes anyway."""
    c = core.config
    r_now, r_next = virtual_update_reward(core, y, label, cache)
    return -(r_next - r_now) / (loss_factor(c.feedback) * c.rm_lr), r_now


def first_order_score_grad(
    form: str, core: RLHFCore, y: torch.Tensor, gamma: float, labeler=None, label_grad=True
) -> torch.Tensor:
    """``grad_y [r(y) - gamma * penalty(y)]`` in closed form, rating feedback, first-order forms.

    ``labeler(y) -> (verdict, grad_y verdict or None)`` is the counted query (relaxed form
    only); with ``label_grad=False`` the verdict is a constant label (no gradient needed).
    """
    if core.config.feedback != "rating" or form not in ("practical", "relaxed"):
        raise ValueError("closed-form FPO gradients cover the practical and relaxed forms, rating")
    rm = core.reward_model
    r, g_r, k, g_k = rm.first_order_parts(core.params, y)
    if form == "practical":
        return g_r - gamma * g_k
    label, g_label = labeler(y)
    g_err = g_r - g_label if label_grad else g_r
    g_pen = g_err * k.unsqueeze(-1) + (r - label).unsqueeze(-1) * g_k
    return g_r - gamma * g_pen


def penalty(form: str, core: RLHFCore, y: torch.Tensor, label_fn: LabelFn | None = None):
    """FPO penalty of ``form`` for responses ``y`` (S, n, d) under the env's current RM.

    Args:
        form: ``"practical"``, ``"relaxed"`` or ``"exact"``.
        core: the env's follower (``env.unwrapped.core``).
        y: candidate responses.
        label_fn: returns the labeler's verdict on ``y`` (an oracle query); needed by
            ``relaxed`` and ``exact``. Typically ``env.unwrapped.query_labeler``.
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
    return exact_penalty(core, y, label)
