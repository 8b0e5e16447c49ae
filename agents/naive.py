"""Naive iterative RLHF: ascend the current reward model, ignore that it will be retrained."""

from __future__ import annotations

import torch

from agents.whitebox import Agent


class NaiveAgent(Agent):
    """Optimises ``r_phi(y)`` of the current RM (drops the parameter-steering term).

    Source: the naive baseline of Gauthier, Bach & Jordan, "Explaining and Preventing Alignment
    Collapse in Iterative RLHF", arXiv 2605.04266, Sec. 1 and 3.
    """

    name = "naive"
    role = "baseline"
    llm_penalty = "none"
    paper_reference = {
        "RLHFBlindSpot-v0": "3.91",
        "RLHFNeuralBlindSpot-v0": "4.38 +- 2.20 (5 seeds)",
    }

    def score(self, core, y: torch.Tensor, oracle) -> torch.Tensor:
        return core.reward_model.score(core.params, y)

    def score_grad(self, core, y: torch.Tensor, oracle) -> torch.Tensor:
        return core.reward_model.grad_y(core.params, y)
