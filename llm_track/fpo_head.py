"""FPO penalties for a reward model whose only trained part is a final linear head.

Gauthier, Bach, Jordan, arXiv 2605.04266 (2026), section 2, Bradley-Terry feedback against a
reference answer. With r(y) = w . h(y) + b and a frozen backbone, the gradient of r with respect to
the trained parameters phi = (w, b) is (h(y), 1), so for candidate y and reference y_ref:

    practical penalty  <g_y, g_y - g_ref> = (h_y . h_y + 1) - (h_y . h_ref + 1)
                                          = h_y . (h_y - h_ref)
    relaxed penalty    (p_phi - p*) <g_y, g_y - g_ref>,
                       p_phi = sigmoid(r_y - r_ref),  p* = sigmoid(U_y - U_ref)

and the FPO score is r - gamma * penalty. Here "the head" is the *final* linear layer only
(``classifier`` of DeBERTa); DeBERTa's pooler (dense + activation) before it is part of the frozen
backbone and h is the pooler's output, captured with a forward pre-hook on the head.
``autograd_penalty`` computes the same numbers with per-candidate autograd (the slow path, kept
for the benchmark and the tests).
"""

from __future__ import annotations

import torch
from torch import nn


def head_features(
    reward_model: nn.Module, head: nn.Linear, batch: dict
) -> tuple[torch.Tensor, torch.Tensor]:
    """One forward of the reward model: rewards r (B,) and the head's input features h (B, D).

    r is recomputed from h with the head (same numbers as the model's logits), so that gradients
    with respect to the head can flow when the head requires grad.
    """
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


def practical_penalty(h: torch.Tensor, h_ref: torch.Tensor) -> torch.Tensor:
    """<g_y, g_y - g_ref> for every candidate: h (n, D), h_ref (D,) -> (n,)."""
    h, h_ref = h.float(), h_ref.float()
    return (h * h).sum(-1) + 1.0 - (h @ h_ref + 1.0)


def relaxed_penalty(
    h: torch.Tensor,
    h_ref: torch.Tensor,
    r: torch.Tensor,
    r_ref: torch.Tensor,
    u: torch.Tensor,
    u_ref: torch.Tensor,
) -> torch.Tensor:
    """(p_phi - p*) <g_y, g_y - g_ref> for every candidate (needs the oracle's U)."""
    p_phi = torch.sigmoid(r.float() - r_ref.float())
    p_star = torch.sigmoid(u.float() - u_ref.float())
    return (p_phi - p_star) * practical_penalty(h, h_ref)


def fpo_scores(
    agent: str,
    gamma: float,
    r: torch.Tensor,
    h: torch.Tensor,
    r_ref: torch.Tensor,
    h_ref: torch.Tensor,
    u: torch.Tensor | None = None,
    u_ref: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(score, penalty) of each candidate for ``agent`` (naive: score = r, penalty 0)."""
    if agent == "naive":
        return r.float(), torch.zeros_like(r, dtype=torch.float32)
    if agent == "fpo":
        pen = practical_penalty(h, h_ref)
    elif agent == "fpo-relaxed":
        if u is None or u_ref is None:
            raise ValueError("fpo-relaxed needs the oracle utilities u and u_ref")
        pen = relaxed_penalty(h, h_ref, r, r_ref, u, u_ref)
    else:
        raise ValueError(f"unknown agent {agent!r}")
    return r.float() - gamma * pen, pen


def head_grad(head: nn.Linear, r: torch.Tensor) -> torch.Tensor:
    """Flattened gradient of the scalar reward ``r`` with respect to the head's parameters."""
    params = [p for p in head.parameters()]
    grads = torch.autograd.grad(r, params, retain_graph=True)
    return torch.cat([g.reshape(-1) for g in grads]).float()


def autograd_penalty(
    agent: str,
    head: nn.Linear,
    h: torch.Tensor,
    h_ref: torch.Tensor,
    u: torch.Tensor | None = None,
    u_ref: torch.Tensor | None = None,
) -> torch.Tensor:
    """The FPO penalty of each candidate from autograd gradients, one candidate at a time."""
    with torch.enable_grad():
        r_ref = head(h_ref.unsqueeze(0)).squeeze()
        g_ref = head_grad(head, r_ref)
        out = []
        for i in range(h.shape[0]):
            r_i = head(h[i : i + 1]).squeeze()
            g_i = head_grad(head, r_i)
            pen = g_i @ (g_i - g_ref)
            if agent == "fpo-relaxed":
                p_phi = torch.sigmoid(r_i.detach().float() - r_ref.detach().float())
                pen = (p_phi - torch.sigmoid(u[i].float() - u_ref.float())) * pen
            out.append(pen)
    return torch.stack(out).detach()
