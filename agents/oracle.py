"""Oracle: optimises the hidden true utility directly (the ceiling of the benchmark)."""

from __future__ import annotations

import torch

from agents.whitebox import WhiteBoxAgent


class OracleAgent(WhiteBoxAgent):
    """Ascends ``U(y)`` itself through counted oracle queries; the RM is still retrained.

    Source: the upper reference of arXiv 2605.04266, Sec. 3 (ideal true utility).
    """

    name = "oracle"

    def score(self, env, y: torch.Tensor) -> torch.Tensor:
        return env.unwrapped.true_utility(y)

    def score_grad(self, env, y: torch.Tensor) -> torch.Tensor:
        return env.unwrapped.true_utility_and_grad(y)[1]
