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
    """:class:`WhiteBoxConfig` plus ``value_queries`` per policy step (>= 1) and ``probe``, the
    evolution strategy's first step size (> 0; 0.03 chosen from 0.03, 0.1, 0.3, 1 on seeds 100-109
    of the linear env's paper config)."""

    value_queries: int = 1
    probe: float = 0.03

    def __post_init__(self) -> None:
        super().__post_init__()
        check_int(self, "value_queries", 1, 100_000)
        check_float(self, "probe", 0.0, strict=True)


class OracleValuesAgent(Agent):
    """The oracle limited to value queries (a budget-matched control). Each policy step spends ``value_queries`` value queries of the truth in a (1+1) evolution
    strategy with the one-fifth success rule (Rechenberg 1973; Hansen, Arnold & Auger,
    "Evolution Strategies", 2015): a candidate ``theta + s u``, ``u ~ N(0, I)``, replaces the
    policy mean if its objective ``U - l2 ||y||^2`` is higher; ``s`` grows by 1.5 on a success
    and shrinks by ``1.5^(-1/4)`` otherwise. The first query values the starting mean. Under SB3
    it is paid ``U(y)``, as the plain oracle.
    """

    name = "oracle-values"
    config_cls = OracleValuesConfig
    reads = ("truth_values",)
    role = "ceiling"

    def start(self, core) -> None:
        self._gens = [torch.Generator().manual_seed(s ^ 0x0A11) for s in core.seeds]
        self._value: torch.Tensor | None = None  # the objective at the policy mean, (S,)
        self._step = torch.full((len(core.seeds),), self.config.probe, dtype=torch.float64)

    def score(self, core, y: torch.Tensor, oracle) -> torch.Tensor:
        return oracle.true_utility(y)

    def _objective(self, y: torch.Tensor, oracle) -> torch.Tensor:
        """One value query per experiment: ``U(y) - l2 ||y||^2`` for ``y`` (S, d) -> (S,)."""
        return oracle.true_utility(y.unsqueeze(1))[:, 0] - self.config.l2 * (y * y).sum(-1)

    def ascend(self, core, theta: torch.Tensor, y: torch.Tensor, lr: float, oracle):
        queries = self.config.value_queries
        if self._value is None:
            self._value, queries = self._objective(theta, oracle), queries - 1
        for _ in range(queries):
            u = torch.stack([torch.randn(theta.shape[-1], generator=g) for g in self._gens])
            candidate = theta + (self._step.unsqueeze(-1) * u).to(theta.dtype)
            value = self._objective(candidate, oracle)
            better = value > self._value
            theta = torch.where(better.unsqueeze(-1), candidate, theta)
            self._value = torch.where(better, value, self._value)
            self._step = self._step * torch.where(better, 1.5, 1.5**-0.25)
        return theta
