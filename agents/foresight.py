"""FPO agents: reward minus gamma times a penalty for how much the response steers the RM."""

from __future__ import annotations

import torch

from agents import fpo
from agents.whitebox import Agent


class FPOAgent(Agent):
    """Foresighted policy optimisation: ascends ``r(y) - fpo_gamma * penalty(y)``.

    ``form`` is ``"practical"`` (no oracle), ``"relaxed"`` (queries the labeler for each scored
    response) or ``"exact"`` (virtual real RM update; this suite's extension). The maths is in
    :mod:`agents.fpo`.

    Source: Gauthier, Bach & Jordan, "Explaining and Preventing Alignment Collapse in Iterative
    RLHF", arXiv 2605.04266, Sec. 2 (practical and relaxed forms).
    """

    name = "fpo"
    form = "practical"
    llm_penalty = "practical"
    cost = 2.0
    paper_reference = {
        "RLHFBlindSpot-v0": "5.47",
        "RLHFNeuralBlindSpot-v0": "6.25 +- 3.39 (5 seeds)",
    }

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._lookahead: dict = {}  # exact form: the buffer's share of the virtual update

    def declared_reads(self) -> tuple[str, ...]:
        if self.form == "practical":
            return ("current_rm",)
        label = "labeler_grads" if self.config.label_grad else "labeler_values"
        return ("current_rm", "rm_buffer", label) if self.form == "exact" else ("current_rm", label)

    def start(self, core) -> None:
        self._lookahead = {}

    def score(self, core, y: torch.Tensor, oracle) -> torch.Tensor:
        label_fn = oracle.query_labeler
        if self.form == "exact":  # r(y) comes out of the virtual update: one forward pass less
            label = label_fn(y) if self.config.label_grad else label_fn(y).detach()
            pen, r = fpo.exact_penalty_and_reward(core, y, label, self._lookahead)
            return r - self.config.fpo_gamma * pen
        r = core.reward_model.score(core.params, y)
        if not self.config.label_grad:
            label_fn = _detached(label_fn)
        pen = fpo.penalty(self.form, core, y, label_fn)
        return r - self.config.fpo_gamma * pen

    def score_grad(self, core, y: torch.Tensor, oracle) -> torch.Tensor | None:
        """Closed form for rating feedback in the practical and relaxed forms, else autograd."""
        if core.config.feedback != "rating" or self.form == "exact":
            return None
        return fpo.first_order_score_grad(
            self.form,
            core,
            y,
            self.config.fpo_gamma,
            oracle.query_labeler_and_grad,
            self.config.label_grad,
        )


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
    llm_penalty = "relaxed"
    cost = 2.5
    paper_reference = {
        "RLHFBlindSpot-v0": "9.81",
        "RLHFNeuralBlindSpot-v0": "6.40 +- 3.73 (5 seeds)",
    }


class FPOExactAgent(FPOAgent):
    """FPO scored by the RM after a virtual real update step that includes the response.

    The first-order forms are its linearisation. One oracle query per scored response.
    Source: this suite's extension of arXiv 2605.04266, Sec. 2.
    """

    name = "fpo-exact"
    form = "exact"
    llm_penalty = None
    cost = 12.0
    paper_reference = {}
