"""FPO agents: reward minus gamma times a penalty for how much the response steers the RM."""

from __future__ import annotations

import torch

from agents import fpo
from agents.whitebox import WhiteBoxAgent


class FPOAgent(WhiteBoxAgent):
    """Foresighted policy optimisation: ascends ``r(y) - gamma * penalty(y)``.

    ``form`` is ``"practical"`` (no oracle), ``"relaxed"`` (queries the labeler for each scored
    response) or ``"exact"`` (virtual real RM update; this suite's extension). See
    :mod:`agents.fpo` for the penalties.

    Source: Gauthier, Bach & Jordan, "Explaining and Preventing Alignment Collapse in Iterative
    RLHF", arXiv 2605.04266, Sec. 2 (practical and relaxed forms).
    """

    name = "fpo"
    form = "practical"

    def score(self, env, y: torch.Tensor) -> torch.Tensor:
        core = env.unwrapped.core
        label_fn = env.unwrapped.query_labeler
        if self.form == "exact":  # r(y) comes out of the virtual update: one forward pass less
            label = label_fn(y) if self.config.label_grad else label_fn(y).detach()
            pen, r = fpo.exact_penalty_and_reward(core, y, label)
            return r - self.config.gamma * pen
        r = core.reward_model.score(core.params, y)
        if not self.config.label_grad:
            label_fn = _detached(label_fn)
        pen = fpo.penalty(self.form, core, y, label_fn)
        return r - self.config.gamma * pen

    def score_grad(self, env, y: torch.Tensor) -> torch.Tensor | None:
        """Closed form for rating feedback in the practical and relaxed forms, else autograd."""
        core = env.unwrapped.core
        if core.config.feedback != "rating" or self.form == "exact":
            return None
        rm = core.reward_model
        r, g_r = rm.score_and_grad_y(core.params, y)
        k, g_k = rm.ntk_diag_and_grad_y(core.params, y)
        if self.form == "practical":
            return g_r - self.config.gamma * g_k
        label, g_label = env.unwrapped.query_labeler_and_grad(y)
        g_err = g_r - g_label if self.config.label_grad else g_r
        g_pen = g_err * k.unsqueeze(-1) + (r - label).unsqueeze(-1) * g_k
        return g_r - self.config.gamma * g_pen


def _detached(fn):
    def wrapped(y: torch.Tensor) -> torch.Tensor:
        return fn(y).detach()

    return wrapped


class FPORelaxedAgent(FPOAgent):
    """FPO with the labeler's verdict in the penalty (one oracle query per scored response).

    Source: arXiv 2605.04266, Sec. 2 ("relaxed" FPO).
    """

    name = "fpo-relaxed"
    form = "relaxed"


class FPOExactAgent(FPOAgent):
    """FPO scored by the RM after a virtual real update step that includes the response.

    The first-order forms are its linearisation. One oracle query per scored response.
    Source: this suite's extension of arXiv 2605.04266, Sec. 2.
    """

    name = "fpo-exact"
    form = "exact"
