"""Oracle: optimises the hidden true utility directly (the ceiling of the benchmark)."""

from __future__ import annotations

import torch

from agents.whitebox import Agent


class OracleAgent(Agent):
    """Ascends ``U(y)`` itself through counted oracle queries; the RM is still retrained.

    Source: the upper reference of arXiv 2605.04266, Sec. 3 (ideal true utility).
    """

    name = "oracle"
    reads = ("truth",)
    role = "ceiling"

    def score(self, core, y: torch.Tensor, oracle) -> torch.Tensor:
        return oracle.true_utility(y)

    def score_grad(self, core, y: torch.Tensor, oracle) -> torch.Tensor:
        return oracle.true_utility_and_grad(y)[1]
