"""FPO agents: reward minus gamma times a penalty for how much the response steers the RM."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from agents import fpo
from agents.whitebox import Agent, WhiteBoxConfig, differentiable


class FPOAgent(Agent):
    """Foresighted policy optimisation: ascends ``r(y) - fpo_gamma * penalty(y)``.

    ``form``: ``"practical"`` (no oracle), ``"relaxed"`` or ``"exact"`` (:mod:`agents.fpo`).
    Source: Gauthier, Bach & Jordan, "Explaining and Preventing Alignment Collapse in Iterative
    RLHF", arXiv 2605.04266, Sec. 2 (practical and relaxed forms).
    """

    name = "fpo"
    form = "practical"
    llm_penalty = "practical"
    cost = 2.0
    paper_reference = {
        "RLHFBlindSpot-v0": "5.47",
        "RLHFNeuralBlindSpot-v0": "6.25 +- 3.39 (5 seeds)",
    }

    def declared_reads(self, sb3: bool = False) -> tuple[str, ...]:
        if self.form == "practical":
            return self.reads
        label = "labeler_grads" if self.config.label_grad and not sb3 else "labeler_values"
        return ("current_rm", "rm_buffer", label) if self.form == "exact" else ("current_rm", label)

    def start(self, core) -> None:
        self._lookahead: dict = {}  # exact form: the buffer's share of the virtual update

    def verdict(self, y: torch.Tensor, oracle, grad: bool | None = None):
        """The labeler's verdict on ``y`` and its gradient: a value query (gradient ``None``),
        or with ``grad`` (default: ``label_grad``) a gradient query."""
        if self.config.label_grad if grad is None else grad:
            return oracle.query_labeler_and_grad(y)
        return oracle.query_labeler(y), None

    def score(self, core, y: torch.Tensor, oracle, grad: bool | None = None) -> torch.Tensor:
        def label(v: torch.Tensor) -> torch.Tensor:  # a queried gradient is autograd's
            value, g = self.verdict(v, oracle, grad)
            return value if g is None else differentiable(value, g, v)

        if self.form == "exact":  # r(y) comes out of the virtual update: one forward pass less
            pen, r = fpo.exact_penalty_and_reward(core, y, label(y), self._lookahead)
            return r - self.config.fpo_gamma * pen
        r = core.reward_model.score(core.params, y)
        return r - self.config.fpo_gamma * fpo.penalty(self.form, core, y, label)

    def sb3_score(self, core, y: torch.Tensor, oracle) -> torch.Tensor:
        return self.score(core, y, oracle, grad=False)

    def score_grad(self, core, y: torch.Tensor, oracle) -> torch.Tensor | None:
        """Closed form for rating feedback in the practical and relaxed forms, else autograd."""
        if core.config.feedback != "rating":
            return None
        label = self.verdict(y, oracle) if self.form == "relaxed" else (None, None)
        return fpo.first_order_score_grad(core, y, self.config.fpo_gamma, *label)


class FPORelaxedAgent(FPOAgent):
    """FPO with the labeler's verdict in the penalty (one oracle query per scored response).

    Source: arXiv 2605.04266, Sec. 2 ("relaxed" FPO).
    """

    name = "fpo-relaxed"
    form = "relaxed"
    llm_penalty = "relaxed"
    cost = 2.5
    paper_reference = {"RLHFNeuralBlindSpot-v0": "6.40 +- 3.73 (5 seeds)"}


@dataclass
class GradLabelConfig(WhiteBoxConfig):
    """:class:`WhiteBoxConfig` with ``label_grad`` on by default."""

    label_grad: bool = True


class FPORelaxedGradAgent(FPORelaxedAgent):
    """Relaxed FPO with the gradient of the labeler's verdict in the policy gradient (one
    gradient query per scored response, ``d + 1`` value queries' worth).

    The variant of the paper's linear simulation (forward differences of the whole objective;
    arXiv 2605.04266, Sec. 3 and its notebook), kept so that its replication shows what it reads.
    """

    name = "fpo-relaxed-grad"
    config_cls = GradLabelConfig
    llm_penalty = None
    paper_reference = {"RLHFBlindSpot-v0": "9.81"}


class FPOExactAgent(FPOAgent):
    """FPO scored by the RM after a virtual real update step that includes the response.

    The first-order forms are its linearisation; one oracle query per scored response.
    Source: this suite's extension of arXiv 2605.04266, Sec. 2.
    """

    name = "fpo-exact"
    form = "exact"
    llm_penalty = None
    cost = 5.5  # x naive, neural env (bench, 10 seeds)
    paper_reference = {}

    def score_grad(self, core, y: torch.Tensor, oracle) -> torch.Tensor | None:
        if core.config.feedback != "rating" or core.config.reward_model != "mlp":
            return None
        label, g_label = self.verdict(y, oracle)
        return fpo.exact_score_grad(core, y, label, self.config.fpo_gamma, self._lookahead, g_label)
