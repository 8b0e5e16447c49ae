"""A plugin agent that climbs what the labeler believes, with exact gradients of its noiseless
verdict (counted ``labeler_grads`` queries) and no reward model: on a family v2 config (a biased
labeler) its true utility is what following the labels costs by itself, without the RM's blind
spots. results/families/README.md ("Family v2 ... exact labels") reports it:

    python -m baselines.run --agent examples.exact_labels:ExactLabels \
        --env RLHFBlindSpot-v0 --env-kwargs family=v2/test/0 --seeds 0-9
"""

import torch

from agents import Agent
from agents.whitebox import differentiable


class ExactLabels(Agent):
    """Ascends the labeler's noiseless rating (or its preference over the reference)."""

    name = "exact-labels"
    reads = ("labeler_grads",)

    def score(self, core, y: torch.Tensor, oracle) -> torch.Tensor:
        return differentiable(*oracle.query_labeler_and_grad(y), y)
