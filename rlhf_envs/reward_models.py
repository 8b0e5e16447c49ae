"""Reward models that are retrained on the policy's own responses.

Every reward model here holds the parameters of ``S`` independent experiments stacked along a
leading batch dimension, so that many seeds run as one tensor program. Parameters are plain
dicts of tensors and every operation is a pure function of them (score, closed-form tangent
kernel and loss gradient, update), which gives agents white-box access without touching the
environment's state. All FPO penalties are built from the kernel (see :mod:`agents.fpo`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F

Params = dict[str, torch.Tensor]
OptState = dict[str, torch.Tensor]

__all__ = ["LinearRewardModel", "MLPRewardModel", "RewardModel", "OptimizerConfig"]


@dataclass(frozen=True)
class OptimizerConfig:
    """How the reward model is retrained each round.

    Attributes:
        name: ``"sgd"`` or ``"adam"``.
        lr: learning rate (> 0).
        weight_decay: L2 coefficient added to the gradient, as in ``torch.optim`` (>= 0).
        betas: Adam's moment decay rates.
        eps: Adam's denominator constant.
    """

    name: Literal["sgd", "adam"] = "sgd"
    lr: float = 0.005
    weight_decay: float = 0.0
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8


class RewardModel:
    """Base class: a batched, functional reward model (subclasses define the methods below)."""

    def __init__(self, dims: int, optimizer: OptimizerConfig, dtype: torch.dtype = torch.float64):
        self.dims = dims
        self.optimizer = optimizer
        self.dtype = dtype

    def init_params(self, generators: list[torch.Generator]) -> Params:  # pragma: no cover
        raise NotImplementedError

    def score(self, params: Params, y: torch.Tensor) -> torch.Tensor:  # pragma: no cover
        """Reward of responses ``y`` (S, n, d) -> (S, n)."""
        raise NotImplementedError

    def ntk(self, params: Params, ya: torch.Tensor, yb: torch.Tensor) -> torch.Tensor:
        """Pairwise tangent kernel ``<grad_phi r(ya_i), grad_phi r(yb_i)>`` -> (S, n)."""
        raise NotImplementedError  # pragma: no cover

    def grad_y(self, params: Params, y: torch.Tensor) -> torch.Tensor:
        """``grad_y r(y)`` (S, n, d) in closed form: :meth:`first_order_parts`'s, bit for bit."""
        raise NotImplementedError  # pragma: no cover

    def first_order_parts(self, params: Params, y: torch.Tensor):
        """``(r, grad_y r, K(y, y), grad_y K(y, y))`` in closed form, in one pass where it can:
        shapes (S, n), (S, n, d), (S, n), (S, n, d)."""
        raise NotImplementedError  # pragma: no cover

    def init_opt_state(self, params: Params) -> OptState:
        """Optimiser state: empty for SGD; for Adam the step and flat ``(S, P)`` moments."""
        if self.optimizer.name == "sgd":
            return {}
        flat = flatten(params)
        return {
            "step": torch.zeros((), dtype=self.dtype),
            "m": torch.zeros_like(flat),
            "v": torch.zeros_like(flat),
        }

    def loss_grad_and_score(
        self,
        params: Params,
        y: torch.Tensor,
        target: torch.Tensor,
        feedback: str,
        reference: torch.Tensor | None = None,
        denominator: int | None = None,
    ) -> tuple[Params, torch.Tensor]:
        """Gradient of the per-experiment loss in every parameter, in closed form, and ``r(y)``.

        The loss on ``y`` (S, n, d), ``target`` (S, n), ``reference`` (S, d): ``rating``, mean
        ``(r(y) - target)^2``; ``preference``, mean cross-entropy of ``sigmoid(r(y) - r(reference))``
        against ``target`` = P(y wins), soft or hard. Its gradient ``sum_i a_i grad_phi r(y_i)
        (+ a_ref grad_phi r(y_ref))``, ``a_i = dloss/dr_i``, comes from :meth:`weighted_grad` (no
        autograd: differentiable in ``y`` and ``target``). ``denominator`` replaces the batch size
        in the mean (a batch's gradient = its parts' sum).
        """
        n = y.shape[1] if denominator is None else denominator
        parts = self.parts(params, y)
        r = parts[0]
        if feedback == "rating":
            return self.weighted_grad(params, y, 2.0 * (r - target) / n, parts), r
        if feedback != "preference":
            raise ValueError(f"feedback must be 'rating' or 'preference', got {feedback!r}")
        ref = reference.reshape(y.shape[0], 1, -1)
        a = (torch.sigmoid(r - self.score(params, ref)) - target) / n
        g = self.weighted_grad(params, y, a, parts)
        g_ref = self.weighted_grad(params, ref, -a.sum(1, keepdim=True))
        return {k: g[k] + g_ref[k] for k in g}, r

    def parts(self, params: Params, y: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """Forward-pass quantities reused by :meth:`weighted_grad`; ``parts[0]`` is ``r(y)``."""
        return (self.score(params, y),)

    def weighted_grad(
        self, params: Params, y: torch.Tensor, a: torch.Tensor, parts: tuple | None = None
    ) -> Params:
        """``sum_i a_i grad_phi r(y_i)`` per experiment, ``a`` (S, n); ``parts``: :meth:`parts` of
        the same ``(params, y)``, if known."""
        raise NotImplementedError  # pragma: no cover

    def update(
        self,
        params: Params,
        opt_state: OptState,
        y: torch.Tensor,
        target: torch.Tensor,
        feedback: str,
        reference: torch.Tensor | None = None,
    ) -> tuple[Params, OptState]:
        """One optimiser step on the labelled batch; returns new ``(params, opt_state)``.

        Pure, differentiable in ``y`` and ``target`` (exact lookahead relies on it), through the
        model's stability guard (:meth:`stabilised`).
        """
        grads = self.loss_grad_and_score(params, y, target, feedback, reference)[0]
        new, state = self.apply_grads(params, opt_state, grads)
        return self.stabilised(params, new, y, feedback, reference), state

    #: whether :meth:`stabilised` can change a step (callers skip building its batch if not)
    guards_steps = False

    def stabilised(
        self,
        params: Params,
        new: Params,
        y: torch.Tensor,
        feedback: str,
        reference: torch.Tensor | None = None,
    ) -> Params:
        """``new`` (one step from ``params`` on the batch ``y``) through the model's stability
        guard, if it has one (:attr:`guards_steps`; the step shrinks by :meth:`step_scale`)."""
        if not self.guards_steps:
            return new
        scale = self.step_scale(y, feedback, reference)
        if bool((scale >= 1.0).all()):
            return new  # the paper's step, bit for bit
        s = scale.unsqueeze(-1)
        return {k: params[k] + s * (new[k] - params[k]) for k in new}

    def apply_grads(
        self, params: Params, opt_state: OptState, grads: Params
    ) -> tuple[Params, OptState]:
        """One optimiser step with the loss gradient ``grads``."""
        cfg = self.optimizer
        if cfg.name == "sgd":
            new = {
                k: params[k] - cfg.lr * (grads[k] + cfg.weight_decay * params[k]) for k in params
            }
            return new, {}
        # Adam on all parameters at once as one flat vector: a handful of tensor ops per step
        p, m, v, _ = adam_step(cfg, flat_of(params), opt_state)(flatten(grads))
        return unflatten(p, params), {"step": opt_state["step"] + 1, "m": m, "v": v}


def adam_step(cfg: OptimizerConfig, p: torch.Tensor, state: OptState):
    """Adam from flat parameters ``p`` (S, P) and optimiser state ``state``, as a function of
    the flat loss gradient ``g`` (S, P): ``step(g, derivative=False) -> (p', m', v', dp'/dg)``.

    torch.optim.Adam's semantics (L2 decay added to the gradient, bias corrections as floats);
    the RM's training and exact FPO's virtual updates both take it. What does not depend on
    ``g`` is computed once per state. ``dp'/dg`` (elementwise) only with ``derivative``.
    """
    b1, b2 = cfg.betas
    t = float(state["step"] + 1)
    lr1, bc2 = cfg.lr / (1 - b1**t), 1 - b2**t
    decay = cfg.weight_decay * p if cfg.weight_decay else None
    b1m, b2v = b1 * state["m"], b2 * state["v"]

    def step(g: torch.Tensor, derivative: bool = False):
        if decay is not None:
            g = g + decay
        m = b1m + (1 - b1) * g
        v = b2v + (1 - b2) * g * g
        root = (v / bc2).sqrt()
        denom = root + cfg.eps
        new = p - lr1 * m / denom
        if not derivative:
            return new, m, v, None
        # d root / d g = (1 - b2) g / (bc2 root); 0 where root = 0 (then g = 0 as well)
        d_root = (1 - b2) / bc2 * g / torch.where(root > 0, root, torch.ones_like(root))
        return new, m, v, -lr1 * ((1 - b1) - m / denom * d_root) / denom

    return step


class FlatParams(dict):
    """Parameters (a plain dict) that keep the flat ``(S, P)`` vector they were cut from
    (``flat``), so the next Adam step skips :func:`flatten` (a copy: the same numbers)."""

    flat: torch.Tensor


def flatten(params: Params) -> torch.Tensor:
    """Concatenate per-experiment parameters in sorted-name order -> ``(S, P)``."""
    return torch.cat([params[k].reshape(params[k].shape[0], -1) for k in sorted(params)], dim=1)


def flat_of(params: Params) -> torch.Tensor:
    """:func:`flatten`, or the vector ``params`` were cut from where they keep it (no copy)."""
    return params.flat if isinstance(params, FlatParams) else flatten(params)


def unflatten(flat: torch.Tensor, like: Params) -> Params:
    """Inverse of :func:`flatten`, shaped like ``like``; contiguous pieces (strided views take
    other BLAS paths per batch size, breaking one experiment's bit-identity across them)."""
    names = sorted(like)
    sizes = [like[k][0].numel() for k in names]
    out = FlatParams()
    # one split (its backward is one concatenation; slices would each scatter into zeros)
    for k, part in zip(names, flat.split(sizes, dim=1), strict=True):
        out[k] = part.reshape(like[k].shape).contiguous()
    out.flat = flat
    return out


class LinearRewardModel(RewardModel):
    """``r(y) = w . y`` (no bias), as in the paper's linear environment; the tangent kernel is
    ``ya . yb``.

    Args:
        dims: response dimension ``d``.
        optimizer: retraining optimiser.
        init_mean: (d,) mean of ``w0`` (the paper: 1 on the signal dims, 0 elsewhere, plus any
            blind-spot bias).
        init_noise: std of the Gaussian error added to every coordinate of ``w0``.
    """

    def __init__(
        self,
        dims: int,
        optimizer: OptimizerConfig,
        init_mean: torch.Tensor,
        init_noise: float,
        dtype: torch.dtype = torch.float64,
    ):
        super().__init__(dims, optimizer, dtype)
        self.init_mean = init_mean.to(dtype)
        self._init_mean64 = init_mean.to(torch.float64)  # what a float32 model is rounded from
        self.init_noise = init_noise
        self.guards_steps = optimizer.name == "sgd"

    def init_params(self, generators: list[torch.Generator]) -> Params:
        noise = [torch.randn(self.dims, generator=g, dtype=torch.float64) for g in generators]
        w = self._init_mean64 + self.init_noise * torch.stack(noise)
        return {"w": w.to(self.dtype)}  # a float32 model starts from the float64 one, rounded

    def score(self, params: Params, y: torch.Tensor) -> torch.Tensor:
        return (y * params["w"].unsqueeze(1)).sum(-1)

    def ntk(self, params: Params, ya: torch.Tensor, yb: torch.Tensor) -> torch.Tensor:
        return (ya * yb).sum(-1)

    def weighted_grad(self, params, y, a, parts=None) -> Params:
        return {"w": (a.unsqueeze(-1) * y).sum(1)}

    def grad_y(self, params: Params, y: torch.Tensor) -> torch.Tensor:
        return params["w"].unsqueeze(1).expand_as(y)

    def first_order_parts(self, params: Params, y: torch.Tensor):
        return self.score(params, y), self.grad_y(params, y), (y * y).sum(-1), 2.0 * y

    def step_scale(
        self, y: torch.Tensor, feedback: str, reference: torch.Tensor | None = None
    ) -> torch.Tensor:
        """The SGD stability guard's factor on the learning rate, per experiment ``(S,)``.

        ``kappa = c * mean_i ||y_i - y_ref||^2 + weight_decay`` (``c`` = 2 for the quadratic
        rating loss, 1/4 for preference) bounds the curvature in ``w``; where ``lr * kappa > 1``
        (e.g. uniform draws from the action Box) the step shrinks to ``lr / kappa``. On the
        paper's linear simulation ``lr * kappa < 0.5``: the factor is 1, the update the paper's.
        """
        cfg = self.optimizer
        if feedback == "preference" and reference is not None:
            d, c = y - reference.reshape(y.shape[0], 1, -1), 0.25
        else:
            d, c = y, 2.0
        kappa = c * (d * d).sum(-1).mean(-1) + cfg.weight_decay
        return torch.clamp(1.0 / (cfg.lr * kappa), max=1.0)


class MLPRewardModel(RewardModel):
    """Two-hidden-layer MLP ``d -> h1 -> h2 -> 1`` with Softplus, as in the paper's neural env.

    Weights start ``N(0, init_std^2)``, biases at 0. An optional linear skip term ``s . y``
    (trainable, initialised to ``skip_init``) places a blind spot along chosen directions.

    With ``z1 = W1 y + b1``, ``h1 = softplus(z1)``, ``z2 = W2 h1 + b2``, ``h2 = softplus(z2)``,
    ``r = w3 . h2 + b3`` and back-propagated signals ``delta2 = w3 * sigmoid(z2)``,
    ``delta1 = (W2^T delta2) * sigmoid(z1)``, the tangent kernel is

        K(a, b) = 1 + h2a.h2b + (delta2a.delta2b)(1 + h1a.h1b) + (delta1a.delta1b)(1 + a.b)
                  [+ a.b with the skip term].
    """

    def __init__(
        self,
        dims: int,
        optimizer: OptimizerConfig,
        hidden: tuple[int, int] = (32, 32),
        init_std: float = 0.1,
        skip_init: torch.Tensor | None = None,
        dtype: torch.dtype = torch.float64,
    ):
        super().__init__(dims, optimizer, dtype)
        self.hidden = hidden
        self.init_std = init_std
        self.skip_init = None if skip_init is None else skip_init.to(dtype)

    def init_params(self, generators: list[torch.Generator]) -> Params:
        h1, h2 = self.hidden

        def draw(*shape: int) -> torch.Tensor:  # each generator's W1, W2, w3 in this order
            x = [torch.randn(*shape, generator=g, dtype=torch.float64) for g in generators]
            return (torch.stack(x) * self.init_std).to(self.dtype)  # float32: float64's, rounded

        params = {"W1": draw(h1, self.dims), "W2": draw(h2, h1), "w3": draw(h2)}
        S = len(generators)
        params["b1"] = torch.zeros(S, h1, dtype=self.dtype)
        params["b2"] = torch.zeros(S, h2, dtype=self.dtype)
        params["b3"] = torch.zeros(S, dtype=self.dtype)
        if self.skip_init is not None:
            params["skip"] = self.skip_init.expand(S, self.dims).clone()
        return params

    def _forward(self, params: Params, y: torch.Tensor):
        z1 = torch.bmm(y, params["W1"].transpose(1, 2)) + params["b1"].unsqueeze(1)
        h1 = F.softplus(z1)
        z2 = torch.bmm(h1, params["W2"].transpose(1, 2)) + params["b2"].unsqueeze(1)
        h2 = F.softplus(z2)
        # Broadcast products summed over the last dim (not einsum/matmul): one experiment's
        # numbers then do not depend on how many experiments share the batch.
        r = (h2 * params["w3"].unsqueeze(1)).sum(-1) + params["b3"].unsqueeze(1)
        if "skip" in params:
            r = r + (y * params["skip"].unsqueeze(1)).sum(-1)
        return z1, h1, z2, h2, r

    def score(self, params: Params, y: torch.Tensor) -> torch.Tensor:
        return self._forward(params, y)[-1]

    def parts(self, params: Params, y: torch.Tensor, sig: list | None = None):
        """``(r, h1, h2, delta1, delta2)``: the reward and the factors of its gradient.

        ``sig``: a list that receives ``(h1, s1, s2)`` besides."""
        z1, h1, z2, h2, r = self._forward(params, y)
        # operations in the order of ``w3 * sigmoid(z2)`` and ``bmm(delta2, W2) * sigmoid(z1)``
        # (autograd's graph, and with it the exact agent's gradient, depends on the order)
        w3 = params["w3"].unsqueeze(1)
        s2 = torch.sigmoid(z2)
        delta2 = w3 * s2
        u = torch.bmm(delta2, params["W2"])
        s1 = torch.sigmoid(z1)
        delta1 = u * s1
        if sig is not None:
            sig.extend((h1, s1, s2))
        return r, h1, h2, delta1, delta2

    def weighted_grad(self, params, y, a, parts=None) -> Params:
        h1, h2, d1, d2 = (parts if parts is not None else self.parts(params, y))[1:]
        ad1, ad2 = a.unsqueeze(-1) * d1, a.unsqueeze(-1) * d2
        if torch.is_grad_enabled() and (y.requires_grad or a.requires_grad):
            # Differentiable path (exact lookahead, few samples): broadcast outer products,
            # whose backward does not depend on the batch size (bmm's backward does).
            g_w1 = (ad1.unsqueeze(-1) * y.unsqueeze(-2)).sum(1)
            g_w2 = (ad2.unsqueeze(-1) * h1.unsqueeze(-2)).sum(1)
        else:  # the env's update on the whole buffer: one batched matmul each
            g_w1 = torch.bmm(ad1.transpose(1, 2), y)
            g_w2 = torch.bmm(ad2.transpose(1, 2), h1)
        g = {
            "W1": g_w1,
            "b1": ad1.sum(1),
            "W2": g_w2,
            "b2": ad2.sum(1),
            "w3": (a.unsqueeze(-1) * h2).sum(1),
            "b3": a.sum(1),
        }
        if "skip" in params:
            g["skip"] = (a.unsqueeze(-1) * y).sum(1)
        return g

    def grad_y(self, params: Params, y: torch.Tensor) -> torch.Tensor:
        """The operations of :meth:`parts` and :meth:`grad_y_from_parts` that the gradient
        needs, in the same order."""
        z1 = torch.bmm(y, params["W1"].transpose(1, 2)) + params["b1"].unsqueeze(1)
        h1 = F.softplus(z1)
        z2 = torch.bmm(h1, params["W2"].transpose(1, 2)) + params["b2"].unsqueeze(1)
        delta2 = params["w3"].unsqueeze(1) * torch.sigmoid(z2)
        delta1 = torch.bmm(delta2, params["W2"]) * torch.sigmoid(z1)
        g = torch.bmm(delta1, params["W1"])
        if "skip" in params:
            g = g + params["skip"].unsqueeze(1)
        return g

    def grad_y_from_parts(self, params: Params, parts: tuple) -> torch.Tensor:
        """``grad_y r(y)`` from :meth:`parts` of the same ``(params, y)``."""
        g = torch.bmm(parts[3], params["W1"])
        return g + params["skip"].unsqueeze(1) if "skip" in params else g

    def first_order_parts(self, params: Params, y: torch.Tensor):
        """:meth:`RewardModel.first_order_parts`; ``grad_y K`` by hand, in reverse mode.

        With ``u = W2^T delta2`` (so ``delta1 = u * s1``), ``s = sigmoid(z)``, ``s' = s (1 - s)``:
        ``K = 1 + |h2|^2 + |delta2|^2 (1 + |h1|^2) + |delta1|^2 (1 + |y|^2)``.
        """
        W1, W2, w3 = params["W1"], params["W2"], params["w3"].unsqueeze(1)
        z1, h1, z2, h2, r = self._forward(params, y)
        s1, s2 = torch.sigmoid(z1), torch.sigmoid(z2)
        delta2 = w3 * s2
        u = torch.bmm(delta2, W2)
        delta1 = u * s1
        g_r = torch.bmm(delta1, W1)
        a2, a1 = (delta2 * delta2).sum(-1), (delta1 * delta1).sum(-1)
        q1, qy = 1.0 + (h1 * h1).sum(-1), 1.0 + (y * y).sum(-1)
        k = 1.0 + (h2 * h2).sum(-1) + a2 * q1 + a1 * qy
        g_delta1 = 2.0 * delta1 * qy.unsqueeze(-1)
        g_u = g_delta1 * s1
        g_delta2 = 2.0 * delta2 * q1.unsqueeze(-1) + torch.bmm(g_u, W2.transpose(1, 2))
        g_z2 = 2.0 * h2 * s2 + g_delta2 * w3 * s2 * (1.0 - s2)
        g_h1 = 2.0 * a2.unsqueeze(-1) * h1 + torch.bmm(g_z2, W2)
        g_z1 = g_h1 * s1 + g_delta1 * u * s1 * (1.0 - s1)
        g_y = torch.bmm(g_z1, W1) + 2.0 * a1.unsqueeze(-1) * y
        if "skip" in params:
            g_r = g_r + params["skip"].unsqueeze(1)
            k = k + (y * y).sum(-1)
            g_y = g_y + 2.0 * y
        return r, g_r, k, g_y

    def directional_grad_y(
        self, params: Params, y: torch.Tensor, w: Params, sig: tuple | None = None
    ) -> torch.Tensor:
        """``grad_y <grad_phi r(y), w>`` (S, n, d) for a parameter-shaped direction ``w``: the
        mixed second derivative that exact FPO's closed form needs.

        ``J(y) = <grad_phi r(y), w>`` (forward mode: ``z1' = Wa y + ba``, ``h1' = s1 z1'``,
        ``z2' = Wb h1 + W2 h1' + bb``, ``J = wc . h2 + w3 . (s2 z2') + bc + ws . y``) differentiated
        in reverse mode. ``sig``: ``(h1, s1, s2)`` if known (:meth:`parts`).
        """
        W1, W2, w3 = params["W1"], params["W2"], params["w3"].unsqueeze(1)
        if sig is None:
            z1, h1, z2, _, _ = self._forward(params, y)
            sig = (h1, torch.sigmoid(z1), torch.sigmoid(z2))
        h1, s1, s2 = sig
        Wa, Wb = w["W1"], w["W2"]
        z1t = torch.bmm(y, Wa.transpose(1, 2)) + w["b1"].unsqueeze(1)
        h1t = s1 * z1t
        z2t = (
            torch.bmm(h1t, W2.transpose(1, 2))
            + torch.bmm(h1, Wb.transpose(1, 2))
            + w["b2"].unsqueeze(1)
        )
        delta2 = w3 * s2
        g_z2 = w["w3"].unsqueeze(1) * s2 + w3 * z2t * s2 * (1.0 - s2)
        g_h1t = torch.bmm(delta2, W2)
        g_h1 = torch.bmm(delta2, Wb) + torch.bmm(g_z2, W2)
        g_z1 = g_h1 * s1 + g_h1t * z1t * s1 * (1.0 - s1)
        g_y = torch.bmm(g_z1, W1) + torch.bmm(g_h1t * s1, Wa)
        if "skip" in params:
            g_y = g_y + w["skip"].unsqueeze(1)
        return g_y

    def ntk(self, params: Params, ya: torch.Tensor, yb: torch.Tensor) -> torch.Tensor:
        h1a, h2a, d1a, d2a = pa = self.parts(params, ya)[1:]
        h1b, h2b, d1b, d2b = pa if yb is ya else self.parts(params, yb)[1:]
        yy = (ya * yb).sum(-1)
        k = (
            1.0
            + (h2a * h2b).sum(-1)
            + (d2a * d2b).sum(-1) * (1.0 + (h1a * h1b).sum(-1))
            + (d1a * d1b).sum(-1) * (1.0 + yy)
        )
        if "skip" in params:
            k = k + yy
        return k
