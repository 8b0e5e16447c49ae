"""FPO penalties for a reward model whose only trained part is a final linear head.

Gauthier, Bach, Jordan, arXiv 2605.04266 (2026), section 2, Bradley-Terry feedback against a
reference answer. With r(y) = w . h(y) + b and a frozen backbone, the gradient of r with respect to
the trained parameters phi = (w, b) is (h(y), 1), so for candidate y and reference y_ref:

    practical penalty  <g_y, g_y - g_ref> = (h_y . h_y + 1) - (h_y . h_ref + 1)
                                          = h_y . (h_y - h_ref)
    relaxed penalty    (p_phi - p*) <g_y, g_y - g_ref>,
                       p_phi = sigmoid(r_y - r_ref),  p* = sigmoid(U_y - U_ref)

and the FPO score is r - gamma * penalty: :func:`agents.fpo.practical_penalty` and
:func:`agents.fpo.relaxed_penalty` with Bradley-Terry (``preference``) feedback on a
:class:`~rlhf_envs.reward_models.LinearRewardModel` on ``[h, 1]`` (tangent kernel a . b).
"The head": :func:`llm_track.models.rm_head`."""

from __future__ import annotations

import functools

import torch
from torch import nn

from agents import fpo
from llm_track.config import PENALTY_FORMS as FORMS  # the forms (``Agent.llm_penalty``) here
from rlhf_envs.reward_models import LinearRewardModel, OptimizerConfig


def head_features(
    reward_model: nn.Module, head: nn.Linear, batch: dict
) -> tuple[torch.Tensor, torch.Tensor]:
    """One forward of the reward model: rewards r (B,) and the head's input features h (B, D);
    r is recomputed from h by the head (the model's logits), so gradients can reach the head."""
    captured: list[torch.Tensor] = []
    hook = head.register_forward_pre_hook(lambda _m, args: captured.append(args[0].detach()))
    try:
        with torch.no_grad():
            reward_model(**batch)
    finally:
        hook.remove()
    h = captured[-1]
    if h.dim() == 3:  # heads applied per token (not the DeBERTa case): take the first token
        h = h[:, 0]
    return head(h).squeeze(-1), h


@functools.lru_cache(maxsize=8)
def _head_rm(dims: int) -> LinearRewardModel:
    """The head as a linear RM on ``[h, 1]``, for its tangent kernel (optimiser, init: unread)."""
    return LinearRewardModel(dims, OptimizerConfig(), torch.zeros(dims), 0.0, torch.float32)


def _with_one(h: torch.Tensor) -> torch.Tensor:
    """``[h, 1]`` in float32: the head's per-sample parameter gradient (d r / d(w, b))."""
    h = h.float()
    return torch.cat([h, h.new_ones(*h.shape[:-1], 1)], dim=-1)


def practical_penalty(h: torch.Tensor, h_ref: torch.Tensor) -> torch.Tensor:
    """<g_y, g_y - g_ref> for every candidate: h (n, D), h_ref (D,) -> (n,) float32."""
    y, ref = _with_one(h).unsqueeze(0), _with_one(h_ref)
    rm = _head_rm(y.shape[-1])
    return fpo.practical_penalty(rm, {}, y, "preference", ref)[0]


def relaxed_penalty(
    h: torch.Tensor,
    h_ref: torch.Tensor,
    r: torch.Tensor,
    r_ref: torch.Tensor,
    u: torch.Tensor,
    u_ref: torch.Tensor,
) -> torch.Tensor:
    """(p_phi - p*) <g_y, g_y - g_ref> for every candidate (needs the oracle's U), float32."""
    p_star = torch.sigmoid(u.float() - u_ref.float())
    err = fpo.error_from_scores(r.float(), p_star, "preference", r_ref.float())
    return err * practical_penalty(h, h_ref)


def fpo_scores(
    form: str,
    gamma: float,
    r: torch.Tensor,
    h: torch.Tensor,
    r_ref: torch.Tensor,
    h_ref: torch.Tensor,
    u: torch.Tensor,
    u_ref: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(score, penalty) of each candidate for penalty ``form`` (an agent's ``llm_penalty``):
    ``none`` (score = r, penalty 0), ``practical`` or ``relaxed``."""
    if form == "none":
        return r.float(), torch.zeros_like(r, dtype=torch.float32)
    if form == "practical":
        pen = practical_penalty(h, h_ref)
    elif form == "relaxed":
        pen = relaxed_penalty(h, h_ref, r, r_ref, u, u_ref)
    else:
        raise ValueError(f"unknown penalty form {form!r}; known: {', '.join(FORMS)}")
    return r.float() - gamma * pen, pen
