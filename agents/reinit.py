"""Iterated RLHF with the policy re-initialised from the base at every iteration.

Wolf, Kirk & Musolesi ("Reward Model Overoptimisation in Iterated RLHF", arXiv 2505.18126)
compare ways to initialise the policy of each iteration and report that restarting from the base
policy is the robust choice, while continuing from the previous one often fails to recover from
early over-optimisation.

Here the env retrains its RM every round, as before; each block of the agent is a full policy
optimisation against an RM that has learnt from earlier blocks' labels (as far as the env's FIFO
buffer keeps them). With ``iterations = 1`` the agent is ``naive`` exactly.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from agents.naive import NaiveAgent
from agents.whitebox import WhiteBoxConfig
from rlhf_envs.core import check_int


@dataclass
class ReinitConfig(WhiteBoxConfig):
    """:class:`WhiteBoxConfig` plus ``iterations``, the number of policy restarts + 1 (>= 1)."""

    iterations: int = 4

    def __post_init__(self) -> None:
        super().__post_init__()
        check_int(self, "iterations", 1)


class ReinitAgent(NaiveAgent):
    """Naive scoring; the policy restarts from the base at the start of each of ``iterations``
    equal blocks of rounds, with its schedules restarted too.

    Source: base-policy re-initialisation in iterated RLHF (Wolf, Kirk & Musolesi, arXiv
    2505.18126)."""

    name = "reinit"
    config_cls = ReinitConfig
    llm_penalty = None
    sb3_algos = ()  # restarting an SB3 policy's weights is not wired
    paper_reference = {}

    def _block(self, T: int) -> int:
        return max(1, math.ceil(T / self.config.iterations))

    def restarts_policy(self, t: int, T: int) -> bool:
        return t % self._block(T) == 0

    def schedule_clock(self, t: int, T: int) -> tuple[int, int]:
        L = self._block(T)
        start = (t // L) * L
        return t - start, min(L, T - start)
