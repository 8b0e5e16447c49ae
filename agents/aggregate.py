"""Reward model trained on all the labels of every round so far (data aggregation).

Wolf, Kirk & Musolesi, "Reward Model Overoptimisation in Iterated RLHF" (arXiv 2505.18126), find
that training the reward model on all iterations' data, not the latest round's (here: the env's
FIFO buffer), reduces over-optimisation. This agent archives every labelled response the env's
buffer receives (no extra labeler call) and trains its own reward model, started from the env's
initial RM, on the archive with the env's optimiser, loss and steps each time the env retrains.
The policy ascends that reward model.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from agents.ensemble import train
from agents.whitebox import Agent, WhiteBoxConfig
from rlhf_envs.core import check_int


@dataclass
class AggregateConfig(WhiteBoxConfig):
    """:class:`WhiteBoxConfig` plus ``archive_size``, the most labelled responses kept (oldest
    dropped first; >= 1; the default holds every label of the committed runs)."""

    archive_size: int = 10_000

    def __post_init__(self) -> None:
        super().__post_init__()
        check_int(self, "archive_size", 1, 10_000_000)


class LabelArchive:
    """Every labelled response the env's buffer has received, per experiment (S, n, d)."""

    def __init__(self, core, size: int):
        self.size = size
        self.y = core.buffer_y[:, :0].clone()
        self.t = core.buffer_t[:, :0].clone()
        self.round = core.round

    def sync(self, core) -> bool:
        """Copy the entries pushed since the last call (as far as the buffer still holds them);
        returns whether anything new arrived."""
        missed = core.round - self.round
        if missed <= 0:
            return False
        c = core.config
        n_new = min(missed * c.samples_per_round * c.labels_per_response, core.buffer_len)
        idx = (torch.arange(-n_new, 0) + core.buffer_pos) % c.buffer_size
        self.y = torch.cat([self.y, core.buffer_y[:, idx]], dim=1)[:, -self.size :]
        self.t = torch.cat([self.t, core.buffer_t[:, idx]], dim=1)[:, -self.size :]
        self.round = core.round
        return True


class AggregateAgent(Agent):
    """Ascends a reward model retrained on all labels so far, not the latest buffer.

    Source: the data-concatenation scheme of Wolf, Kirk & Musolesi, arXiv 2505.18126.
    """

    name = "rm-aggregate"
    config_cls = AggregateConfig
    reads = ("initial_rm", "rm_buffer")
    role = "baseline"
    cost = 2.0

    def start(self, core) -> None:
        self.archive = LabelArchive(core, self.config.archive_size)
        params = {k: v.clone() for k, v in core.params.items()}
        self.member = [params, core.reward_model.init_opt_state(params)]

    def sync(self, core) -> None:
        if self.archive.sync(core):
            train(core.reward_model, self.member, core, self.archive.y, self.archive.t)

    def score(self, core, y: torch.Tensor, oracle) -> torch.Tensor:
        self.sync(core)
        return core.reward_model.score(self.member[0], y)

    def score_grad(self, core, y: torch.Tensor, oracle) -> torch.Tensor:
        self.sync(core)
        return core.reward_model.grad_y(self.member[0], y)
