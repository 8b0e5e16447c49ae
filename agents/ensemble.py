"""An ensemble of reward models trained beside the env's own, for pessimistic scoring.

Member 0 is the env's reward model. Members ``1..K-1`` start from the env's RM initialiser with
their own random streams and take the same optimiser steps on the same labelled buffer each
time the env retrains, so they differ only through initialisation (as in Coste et al.,
"Reward Model Ensembles Help Mitigate Overoptimization", arXiv 2310.02743). Used by the
``ensemble`` agent, white-box and through SB3.
"""

from __future__ import annotations

import numpy as np
import torch

MODES = ("mean_std", "min")


def member_seed(seed: int, member: int) -> int:
    return int(np.random.SeedSequence([int(seed), 0xE5E, member]).generate_state(1)[0])


class RMEnsemble:
    """``size`` reward models over the experiments of ``core``; :meth:`sync` before scoring.

    Args:
        core: the env's follower (``env.unwrapped.core``), already reset.
        size: number of members K (>= 2), the env's RM included.
        seeds: one seed per experiment, for the extra members' initialisation.
    """

    def __init__(self, core, size: int, seeds: list[int]):
        if isinstance(size, bool) or not isinstance(size, int) or size < 2:
            raise ValueError(f"ensemble_size must be an int >= 2, got {size!r}")
        rm = core.reward_model
        self.members = []
        for k in range(1, size):
            gens = [torch.Generator().manual_seed(member_seed(s, k)) for s in seeds]
            params = rm.init_params(gens)
            self.members.append([params, rm.init_opt_state(params)])
        self.round = core.round

    def sync(self, core) -> None:
        """Train the extra members on ``core``'s buffer for each RM round they missed."""
        c = core.config
        for _ in range(self.round, core.round):
            batch = core.training_batch()
            for m in self.members:
                for _ in range(c.rm_steps):
                    m[0], m[1] = core.reward_model.update(
                        m[0], m[1], *batch, c.feedback, core.references
                    )
        self.round = core.round

    def scores(self, core, y: torch.Tensor) -> torch.Tensor:
        """Member scores, shape (K, S, n); member 0 is ``core``'s reward model (the env's, or a
        snapshot of it taken before a step)."""
        rm = core.reward_model
        return torch.stack([rm.score(core.params, y)] + [rm.score(m[0], y) for m in self.members])

    def pessimistic(self, core, y: torch.Tensor, mode: str = "mean_std", k: float = 1.0):
        """``mean - k * std`` over members (``mode="mean_std"``) or their ``min``."""
        members = list(self.scores(core, y))
        # Explicit sums over members (not tensor reductions over dim 0, whose algorithm depends
        # on the layout): one experiment's numbers then do not depend on the batch size.
        if mode == "min":
            out = members[0]
            for m in members[1:]:
                out = torch.minimum(out, m)
            return out
        if mode == "mean_std":
            K = len(members)
            mean = sum(members[1:], members[0]) / K
            var = sum(((m - mean) ** 2 for m in members[1:]), (members[0] - mean) ** 2) / (K - 1)
            # the epsilon keeps the gradient finite where all members agree (e.g. y = 0 for
            # linear members), where d sqrt(var) would be infinite
            return mean - k * (var + 1e-12).sqrt()
        raise ValueError(f"ensemble_mode must be one of {MODES}, got {mode!r}")
