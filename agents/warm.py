"""Weight-averaged reward models (WARM).

Ramé et al., "WARM: On the Benefits of Weight Averaged Reward Models" (arXiv 2401.12187),
fine-tune several reward models from one shared initialisation with different hyperparameters
and data orders and average their *weights*; RL against the average over-optimises less than
against one RM or a prediction ensemble.

Here ``warm_size`` members start from the env's initial reward model and are retrained whenever
the env retrains (its optimiser, loss and steps) with their own learning rate and random subset
of the env's labelled buffer (:class:`WARMConfig`; no extra labels). The policy ascends the
weight average (for a linear RM, the prediction average; for the MLP, not).
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, replace

import torch

from agents.ensemble import train
from agents.whitebox import Agent, WhiteBoxConfig, derived_seed
from rlhf_envs.core import check_float, check_int


@dataclass
class WARMConfig(WhiteBoxConfig):
    """:class:`WhiteBoxConfig` plus ``warm_size`` members (>= 2), whose learning rates span
    ``[lr / warm_lr_spread, lr * warm_lr_spread]`` (>= 1) and who train on a share ``warm_keep``
    of the buffer per step (in (0, 1])."""

    warm_size: int = 4
    warm_lr_spread: float = 2.0
    warm_keep: float = 0.7

    def __post_init__(self) -> None:
        super().__post_init__()
        check_int(self, "warm_size", 2, 100)
        check_float(self, "warm_lr_spread", 1.0, strict=False)
        check_float(self, "warm_keep", 0.0, strict=True)
        if self.warm_keep > 1:
            raise ValueError(f"warm_keep must be in (0, 1], got {self.warm_keep}")


class WARMAgent(Agent):
    """Ascends the weight average of reward models fine-tuned from the initial RM.

    Source: Ramé et al., "WARM", arXiv 2401.12187.
    """

    name = "warm"
    config_cls = WARMConfig
    reads = ("initial_rm", "rm_buffer")
    role = "baseline"
    cost = 4.0

    def start(self, core) -> None:
        c, rm = self.config, core.reward_model
        self.rms, self.members, self.gens = [], [], []
        for i in range(c.warm_size):
            f = c.warm_lr_spread ** (2 * i / (c.warm_size - 1) - 1)
            self.rms.append(copy.copy(rm))
            self.rms[-1].optimizer = replace(rm.optimizer, lr=rm.optimizer.lr * f)
            params = {k: v.clone() for k, v in core.params.items()}
            self.members.append([params, rm.init_opt_state(params)])
            seeds = [derived_seed(s, 0x3A7, i) for s in core.seeds]
            self.gens.append([torch.Generator().manual_seed(s) for s in seeds])
        self.round = core.round
        self.average = {k: v.clone() for k, v in core.params.items()}

    def sync(self, core) -> None:
        """Retrain the members for each RM round they missed, then average their weights."""
        if core.round == self.round:
            return
        for _ in range(self.round, core.round):
            ys, ts = core.training_batch()
            n = ys.shape[1]
            k = max(1, math.ceil(self.config.warm_keep * n))
            for rm, member, gens in zip(self.rms, self.members, self.gens, strict=True):
                idx = torch.stack([torch.randperm(n, generator=g)[:k] for g in gens])  # (S, k)
                y = torch.take_along_dim(ys, idx.unsqueeze(-1), dim=1)
                t = torch.take_along_dim(ts, idx, dim=1)
                train(rm, member, core, y, t)
        self.round = core.round
        m = len(self.members)
        self.average = {
            key: sum((mb[0][key] for mb in self.members[1:]), self.members[0][0][key]) / m
            for key in self.members[0][0]
        }

    def score(self, core, y: torch.Tensor, oracle) -> torch.Tensor:
        self.sync(core)
        return core.reward_model.score(self.average, y)

    def score_grad(self, core, y: torch.Tensor, oracle) -> torch.Tensor:
        self.sync(core)
        return core.reward_model.grad_y(self.average, y)
