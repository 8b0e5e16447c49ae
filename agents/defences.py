"""The field's usual defences against reward over-optimisation, as white-box agents."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from agents.ensemble import MODES, RMEnsemble
from agents.whitebox import Agent, WhiteBoxConfig
from rlhf_envs.core import check_choice, check_float, check_int


class StaticAgent(Agent):
    """Ascends the initial reward model ``r_{phi_0}`` (the env keeps retraining, unseen).

    Classic over-optimisation of a fixed proxy. Source: Gao, Schulman & Hilton, "Scaling Laws for
    Reward Model Overoptimization", arXiv 2210.10760.
    """

    name = "static"
    reads = ("initial_rm",)
    role = "baseline"

    def start(self, core) -> None:
        self.params0 = {k: v.clone() for k, v in core.params.items()}

    def score(self, core, y: torch.Tensor, oracle) -> torch.Tensor:
        return core.reward_model.score(self.params0, y)

    def score_grad(self, core, y: torch.Tensor, oracle) -> torch.Tensor:
        return core.reward_model.grad_y(self.params0, y)


@dataclass
class KLConfig(WhiteBoxConfig):
    """:class:`WhiteBoxConfig` plus ``kl_coef``, the weight of the anchor (>= 0)."""

    kl_coef: float = 0.1

    def __post_init__(self) -> None:
        super().__post_init__()
        check_float(self, "kl_coef", 0.0, strict=False)


class KLAgent(Agent):
    """Current RM minus ``kl_coef * ||y - y0||^2`` (anchor to the initial policy).

    For Gaussian policies with a fixed covariance the KL to the initial policy is proportional
    to ``||theta - theta0||^2`` (the scale absorbed in ``kl_coef``). Source: KL-regularised RLHF,
    Ziegler et al., "Fine-Tuning Language Models from Human Preferences", arXiv 1909.08593.
    """

    name = "kl"
    config_cls = KLConfig
    role = "baseline"
    sb3_algos = ("ppo", "a2c")  # the callback reshapes on-policy rollouts only

    def score(self, core, y: torch.Tensor, oracle) -> torch.Tensor:
        anchor = ((y - self.config.init) ** 2).sum(-1)
        return core.reward_model.score(core.params, y) - self.config.kl_coef * anchor

    def score_grad(self, core, y: torch.Tensor, oracle) -> torch.Tensor:
        g = core.reward_model.grad_y(core.params, y)
        return g - 2.0 * self.config.kl_coef * (y - self.config.init)

    def sb3_score(self, core, y: torch.Tensor, oracle) -> torch.Tensor:
        """Under SB3 the reward is the current RM's; the anchor is the KL callback's."""
        return core.reward_model.score(core.params, y)

    def sb3_callbacks(self) -> list:
        """The per-step KL penalty to the initial policy (:mod:`agents.sb3_kl`)."""
        from agents.sb3_kl import KLPenaltyCallback

        return [KLPenaltyCallback(self.config.kl_coef)]


@dataclass
class EnsembleConfig(WhiteBoxConfig):
    """:class:`WhiteBoxConfig` plus the ensemble's size, aggregate and pessimism."""

    ensemble_size: int = 5
    ensemble_mode: str = "mean_std"
    ensemble_k: float = 1.0

    def __post_init__(self) -> None:
        super().__post_init__()
        check_int(self, "ensemble_size", 2, 1000)
        check_choice(self, "ensemble_mode", MODES)
        check_float(self, "ensemble_k", -math.inf, strict=False)


class EnsembleAgent(Agent):
    """Pessimistic ensemble of reward models (mean - k*std or min).

    The members are :class:`agents.ensemble.RMEnsemble`'s. Source: Coste et al., "Reward Model
    Ensembles Help Mitigate Overoptimization", arXiv 2310.02743.
    """

    name = "ensemble"
    config_cls = EnsembleConfig
    reads = ("current_rm", "rm_buffer")
    role = "baseline"
    cost = 6.0

    def start(self, core) -> None:
        self.ensemble = RMEnsemble(core, self.config.ensemble_size)

    def score(self, core, y: torch.Tensor, oracle) -> torch.Tensor:
        self.ensemble.sync(core)
        c = self.config
        return self.ensemble.pessimistic(core, y, c.ensemble_mode, c.ensemble_k)
