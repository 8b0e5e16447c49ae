"""An ensemble of reward models trained beside the env's own, for pessimistic scoring.

Member 0 is the env's reward model; members ``1..K-1`` start from its initialiser with their own
random streams and are retrained as the env's RM is, so they differ only through initialisation
(as in Coste et al., arXiv 2310.02743) and use no extra labels.
"""

from __future__ import annotations

import functools

import torch

from agents.whitebox import derived_seed

MODES = ("mean_std", "min")


def train(rm, member: list, core, y: torch.Tensor, t: torch.Tensor) -> None:
    """The env's retraining (its number of steps, loss and references) of an extra reward model
    ``rm`` on the labelled batch ``(y, t)``; ``member`` is ``[params, opt_state]``, updated."""
    c = core.config
    for _ in range(c.rm_steps):
        member[0], member[1] = rm.update(member[0], member[1], y, t, c.feedback, core.references)


class RMEnsemble:
    """``size`` reward models (K >= 2, the env's included) over the experiments of ``core`` (the
    env's follower, already reset); :meth:`sync` before scoring."""

    def __init__(self, core, size: int):
        rm = core.reward_model
        self.members = []
        for k in range(1, size):
            gens = [torch.Generator().manual_seed(derived_seed(s, 0xE5E, k)) for s in core.seeds]
            params = rm.init_params(gens)
            self.members.append([params, rm.init_opt_state(params)])
        self.round = core.round

    def sync(self, core) -> None:
        """Train the extra members on ``core``'s buffer for each RM round they missed."""
        for _ in range(self.round, core.round):
            batch = core.training_batch()
            for m in self.members:
                train(core.reward_model, m, core, *batch)
        self.round = core.round

    def scores(self, core, y: torch.Tensor) -> torch.Tensor:
        """Member scores, shape (K, S, n); member 0 is ``core``'s reward model (the env's, or a
        snapshot of it taken before a step)."""
        rm = core.reward_model
        return torch.stack([rm.score(core.params, y)] + [rm.score(m[0], y) for m in self.members])

    def pessimistic(self, core, y: torch.Tensor, mode: str = "mean_std", k: float = 1.0):
        """``mean - k * std`` over members (``mode="mean_std"``) or their ``min`` (``mode``: one of
        :data:`MODES`, checked by the agents' configs)."""
        members = list(self.scores(core, y))
        # Explicit sums over members (not tensor reductions over dim 0, whose algorithm depends
        # on the layout): one experiment's numbers then do not depend on the batch size.
        if mode == "min":
            return functools.reduce(torch.minimum, members)
        K = len(members)
        mean = sum(members[1:], members[0]) / K
        var = sum(((m - mean) ** 2 for m in members[1:]), (members[0] - mean) ** 2) / (K - 1)
        # the epsilon keeps d sqrt(var) finite where all members agree (e.g. y = 0, linear)
        return mean - k * (var + 1e-12).sqrt()
