"""FPO agents: reward minus gamma times a penalty for how much the response steers the RM."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from agents import fpo
from agents.whitebox import Agent, WhiteBoxConfig, differentiable


class FPOAgent(Agent):
    """Foresighted policy optimisation: ascends ``r(y) - fpo_gamma * penalty(y)``.

    ``form`` is ``"practical"`` (no oracle), ``"relaxed"`` (queries the labeler for each scored
    response) or ``"exact"`` (virtual real RM update; this suite's extension). The maths is in
    :mod:`agents.fpo`.

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

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._lookahead: dict = {}  # exact form: the buffer's share of the virtual update

    def white_box_reads(self) -> tuple[str, ...]:
        if self.form == "practical":
            return ("current_rm",)
        label = "labeler_grads" if self.config.label_grad else "labeler_values"
        return ("current_rm", "rm_buffer", label) if self.form == "exact" else ("current_rm", label)

    def start(self, core) -> None:
        self._lookahead = {}

    def label(self, y: torch.Tensor, oracle, grad: bool | None = None) -> torch.Tensor:
        """The labeler's verdict on ``y``: a value query, or with ``grad`` (default:
        ``label_grad``) a gradient query whose gradient autograd sees."""
        if self.config.label_grad if grad is None else grad:
            return differentiable(*oracle.query_labeler_and_grad(y), y)
        return oracle.query_labeler(y)

    def score(self, core, y: torch.Tensor, oracle, grad: bool | None = None) -> torch.Tensor:
        if self.form == "exact":  # r(y) comes out of the virtual update: one forward pass less
            label = self.label(y, oracle, grad)
            pen, r = fpo.exact_penalty_and_reward(core, y, label, self._lookahead)
            return r - self.config.fpo_gamma * pen
        r = core.reward_model.score(core.params, y)
        pen = fpo.penalty(self.form, core, y, lambda v: self.label(v, oracle, grad))
        return r - self.config.fpo_gamma * pen

    def sb3_score(self, core, y: torch.Tensor, oracle) -> torch.Tensor:
        return self.score(core, y, oracle, grad=False)

    def score_grad(self, core, y: torch.Tensor, oracle) -> torch.Tensor | None:
        """Closed form for rating feedback in the practical and relaxed forms, else autograd."""
        if core.config.feedback != "rating" or self.form == "exact":
            return None
        if self.config.label_grad:
            labeler = oracle.query_labeler_and_grad
        else:
            labeler = lambda v: (oracle.query_labeler(v), None)  # noqa: E731
        return fpo.first_order_score_grad(
            self.form, core, y, self.config.fpo_gamma, labeler, self.config.label_grad
        )


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

    The variant of the paper's linear simulation, which differentiates the whole objective by
    forward differences (arXiv 2605.04266, Sec. 3 and its notebook). Kept beside ``fpo-relaxed``
    so that the replication of the paper's linear figure stays visible with what it reads.
    """

    name = "fpo-relaxed-grad"
    config_cls = GradLabelConfig
    llm_penalty = None
    paper_reference = {"RLHFBlindSpot-v0": "9.81"}


class FPOExactAgent(FPOAgent):
    """FPO scored by the RM after a virtual real update step that includes the response.

    The first-order forms are its linearisation. One oracle query per scored response.
    Source: this suite's extension of arXiv 2605.04266, Sec. 2.
    """

    name = "fpo-exact"
    form = "exact"
    llm_penalty = None
    cost = 12.0
    paper_reference = {}


class FPOExactClosedFormAgent(FPOExactAgent):
    """``fpo-exact`` with its policy gradient in closed form instead of autograd (opt-in).

    The same scores and the same oracle queries; the gradient is
    :func:`agents.fpo.exact_score_grad` (rating feedback, MLP reward model; other settings
    fall back to autograd): equal to autograd's to rounding error, ~1.5x faster on the
    neural env (10 seeds), not bit for bit, so runs part from ``fpo-exact``'s after some
    rounds (a test checks that 10-seed results agree within their 95 % CIs). Not a built-in
    name: run it as
    ``--agent agents.foresight:FPOExactClosedFormAgent``.
    Source: this suite's extension of arXiv 2605.04266, Sec. 2.
    """

    name = "fpo-exact-cf"
    cost = 5.5  # x naive, neural env (bench, 10 seeds)
    compiled = False

    def score_grad(self, core, y: torch.Tensor, oracle) -> torch.Tensor | None:
        if core.config.feedback != "rating" or core.config.reward_model != "mlp":
            return None
        g_label = None
        if self.config.label_grad:
            label, g_label = oracle.query_labeler_and_grad(y)
        else:
            label = oracle.query_labeler(y)
        return fpo.exact_score_grad(
            core, y, label, self.config.fpo_gamma, self._lookahead, g_label, self.compiled
        )


class FPOExactCompiledAgent(FPOExactClosedFormAgent):
    """``fpo-exact-cf`` with each candidate's closed-form gradient compiled into one program
    (opt-in; ``torch._inductor`` compiles C++ kernels, so it needs a C++ compiler).

    The step's ~200 small tensor operations become a few fused loops: the same maths as
    ``fpo-exact-cf``, rounded otherwise (sums reordered and fused), so not bit for bit; a test
    checks that its 10-seed results agree with ``fpo-exact``'s within their 95 % CIs. A
    process compiles once per batch size (seconds; torch keeps compiled code in an on-disk
    cache for the next process). Not a built-in name: run it as
    ``--agent agents.foresight:FPOExactCompiledAgent``.
    Source: this suite's extension of arXiv 2605.04266, Sec. 2.
    """

    name = "fpo-exact-compiled"
    cost = 3.0
    compiled = True


class FPOExactFusedAgent(FPOExactCompiledAgent):
    """``fpo-exact-compiled`` with a round's policy steps compiled as one program (opt-in).

    Each step still labels its response (one counted value query, through the oracle's
    :meth:`~rlhf_envs.blind_spot.BlindSpotEnv.labeler_program`) and ascends the closed-form
    gradient; the round's ``inner_steps`` steps run as one compiled program instead of one
    program per step plus the loop's operations around it. The same maths, rounded otherwise
    again, so not bit for bit; a test checks that its 10-seed results agree with
    ``fpo-exact``'s within their 95 % CIs. Compiling takes longer than the per-step program's
    (about 35 s at 15 steps, per batch size and env setting; a later process loads it from
    torch's on-disk cache in seconds). Other settings (preference feedback, a linear reward
    model, ``label_grad``) take ``fpo-exact-compiled``'s steps. Not a built-in name: run it as
    ``--agent agents.foresight:FPOExactFusedAgent``.
    Source: this suite's extension of arXiv 2605.04266, Sec. 2.
    """

    name = "fpo-exact-fused"
    cost = 2.0

    def fused_steps(self, core, oracle, theta, eps, sigma, lr):
        c = core.config
        if c.feedback != "rating" or c.reward_model != "mlp" or self.config.label_grad:
            return None
        return fpo.fused_exact_steps(
            core, oracle, theta, eps, sigma, lr, self.config, self._lookahead
        )
