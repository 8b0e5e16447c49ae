"""An anchor that moves to the best-labelled response so far (this suite's own idea).

The collapse maps of the linear env (``results/maps/``) show a KL/L2 anchor to the initial policy
holding the policy back where the optimum is far (``target_value >= 2.5``), and naive's drift past
its peak as a fall of the labels its RM is trained on: the only unbiased evidence about the truth
an oracle-free agent has, already paid for.

So the anchor here is not the start but the *elite*: the labelled response with the highest
label among all that the env's buffer has received (the start until a first label arrives). The
policy ascends ``r_phi(y) - anchor_coef * ||y - y_elite||^2``. While the labels keep rising the
elite follows the policy; once the policy drifts into the RM's blind spot the labels fall, the
elite stays at the best response seen, and the anchor pulls the policy back toward it. With label
noise the elite is the luckiest label (``elite_margin``: a margin a new label must beat it by).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from agents.aggregate import LabelArchive
from agents.defences import EnsembleConfig
from agents.ensemble import RMEnsemble
from agents.whitebox import Agent, WhiteBoxConfig
from rlhf_envs.core import check_float


@dataclass
class EliteAnchorConfig(WhiteBoxConfig):
    """:class:`WhiteBoxConfig` plus ``anchor_coef``, the weight of ``||y - y_elite||^2``, and
    ``elite_margin``, by how much a new label must beat the elite's to replace it (both >= 0)."""

    anchor_coef: float = 1.0
    elite_margin: float = 0.0

    def __post_init__(self) -> None:
        super().__post_init__()
        check_float(self, "anchor_coef", 0.0, strict=False)
        check_float(self, "elite_margin", 0.0, strict=False)


class EliteAnchorAgent(Agent):
    """Current RM minus ``anchor_coef * ||y - y_elite||^2``, ``y_elite`` the best-labelled
    response so far (the RM's own labels; no extra labeler call).

    Source: new in this suite (an anchor in the spirit of KL regularisation, Ziegler et al.,
    arXiv 1909.08593, moved to the best labelled response as in elitist selection).
    """

    name = "elite-anchor"
    config_cls = EliteAnchorConfig
    reads = ("current_rm", "rm_buffer")
    cost = 1.5

    def start(self, core) -> None:
        self.archive = LabelArchive(core, core.config.buffer_size)
        S, d = core.S, core.config.dims
        self.elite = torch.full((S, d), float(self.config.init), dtype=core.dtype)
        self.elite_label = torch.full((S,), -torch.inf, dtype=core.dtype)

    def sync(self, core) -> None:
        if not self.archive.sync(core):
            return
        ys, ts = self.archive.y, self.archive.t  # this round's new labels are the last ones
        best, i = ts.max(1)
        better = best > self.elite_label + self.config.elite_margin
        picked = ys[torch.arange(ys.shape[0]), i]
        self.elite = torch.where(better.unsqueeze(1), picked, self.elite)
        self.elite_label = torch.where(better, best, self.elite_label)
        # only the newest entries matter next time: keep the archive as small as one round
        self.archive.y, self.archive.t = ys[:, :0], ts[:, :0]

    def reward(self, core, y: torch.Tensor) -> torch.Tensor:
        """What the anchor is subtracted from: the current RM's score."""
        return core.reward_model.score(core.params, y)

    def score(self, core, y: torch.Tensor, oracle) -> torch.Tensor:
        self.sync(core)
        anchor = ((y - self.elite.unsqueeze(1)) ** 2).sum(-1)
        return self.reward(core, y) - self.config.anchor_coef * anchor

    def score_grad(self, core, y: torch.Tensor, oracle) -> torch.Tensor:
        self.sync(core)
        g = core.reward_model.grad_y(core.params, y)
        return g - 2.0 * self.config.anchor_coef * (y - self.elite.unsqueeze(1))


@dataclass
class EliteEnsembleConfig(EnsembleConfig, EliteAnchorConfig):
    """:class:`~agents.defences.EnsembleConfig` plus the elite anchor's weight and margin
    (fields and checks of both)."""


class EliteEnsembleAgent(EliteAnchorAgent):
    """Pessimistic RM ensemble minus ``anchor_coef * ||y - y_elite||^2``.

    The pessimistic ensemble peaks higher than naive and then falls (``results/maps/``); the
    elite anchor keeps the best-labelled response of that climb. Source: new in this suite (the
    ensemble of Coste et al., arXiv 2310.02743, with :class:`EliteAnchorAgent`'s anchor).
    """

    name = "elite-ensemble"
    config_cls = EliteEnsembleConfig
    cost = 6.5

    def start(self, core) -> None:
        super().start(core)
        self.ensemble = RMEnsemble(core, self.config.ensemble_size)

    def reward(self, core, y: torch.Tensor) -> torch.Tensor:
        self.ensemble.sync(core)
        return self.ensemble.pessimistic(core, y, self.config.ensemble_mode, self.config.ensemble_k)

    def score_grad(self, core, y: torch.Tensor, oracle) -> None:
        return None  # autograd through the ensemble
