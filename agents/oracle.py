"""Oracle: optimises the hidden true utility directly (the ceiling of the benchmark)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from agents.whitebox import Agent, WhiteBoxConfig, differentiable
from rlhf_envs.core import check_float, check_int


class OracleAgent(Agent):
    """Ascends ``U(y)`` itself through counted oracle queries; the RM is still retrained.

    Source: the upper reference of arXiv 2605.04266, Sec. 3 (ideal true utility).
    """

    name = "oracle"
    reads = ("truth_grads",)
    role = "ceiling"

    def score(self, core, y: torch.Tensor, oracle) -> torch.Tensor:
        return differentiable(*oracle.true_utility_and_grad(y), y)

    def sb3_score(self, core, y: torch.Tensor, oracle) -> torch.Tensor:
        return oracle.true_utility(y)  # a value query: SB3 takes no gradient

    def score_grad(self, core, y: torch.Tensor, oracle) -> torch.Tensor:
        return oracle.true_utility_and_grad(y)[1]


@dataclass
class OracleValuesConfig(WhiteBoxConfig):
    """:class:`WhiteBoxConfig` plus ``value_queries`` per step (>= 1), ``probe`` (``delta`` > 0)."""

    value_queries: int = 1
    probe: float = 0.1

    def __post_init__(self) -> None:
        super().__post_init__()
        check_int(self, "value_queries", 1, 100_000)
        check_float(self, "probe", 0.0, strict=True)


class OracleValuesAgent(Agent):
    """The oracle limited to value queries: the budget-matched control for agents that ask the
    labeler beyond the RM's labels.

    Each policy step spends ``value_queries`` value queries on a zeroth-order gradient estimate
    (Nesterov & Spokoiny, "Random Gradient-Free Minimization of Convex Functions", 2017):
    ``g = mean_k (U(y + delta u_k) - b) u_k / delta``, ``u_k ~ N(0, I)``, ``b`` an exponential
    average of earlier values. Under SB3 it is paid ``U(y)``, as the plain oracle.
    """

    name = "oracle-values"
    config_cls = OracleValuesConfig
    reads = ("truth_values",)
    role = "ceiling"

    def start(self, core) -> None:
        self._gens = [torch.Generator().manual_seed(s ^ 0x0A11) for s in core.seeds]
        self._baseline: torch.Tensor | None = None

    def score(self, core, y: torch.Tensor, oracle) -> torch.Tensor:
        return oracle.true_utility(y)

    def score_grad(self, core, y: torch.Tensor, oracle) -> torch.Tensor:
        """A zeroth-order estimate of ``grad_y U`` at ``y`` (S, 1, d) from value queries."""
        q, delta = self.config.value_queries, self.config.probe
        u = torch.stack(
            [torch.randn(q, y.shape[-1], generator=g, dtype=y.dtype) for g in self._gens]
        )  # (S, q, d)
        values = oracle.true_utility(y + delta * u)  # (S, q): q value queries per experiment
        if self._baseline is None:
            self._baseline = values.mean(1, keepdim=True)
        g = ((values - self._baseline).unsqueeze(-1) * u).mean(1, keepdim=True) / delta
        self._baseline = 0.9 * self._baseline + 0.1 * values.mean(1, keepdim=True)
        return g
