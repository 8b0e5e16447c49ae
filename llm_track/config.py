"""Typed settings of the LLM protocol, with the two presets (``paper`` and ``tiny``).

The ``paper`` preset reproduces the LLM pipeline of Gauthier, Bach, Jordan, "Explaining and
Preventing Alignment Collapse in Iterative RLHF", arXiv 2605.04266 (2026), section 4. The ``tiny``
preset runs the same protocol offline on small randomly initialised models built locally.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from agents import registry
from rlhf_envs.core import check_choice, check_float, check_int

#: The agents the LLM track implements: the registry's agents with an ``llm_penalty`` form.
AGENTS = registry.llm_names()
#: The FPO penalty forms of the LLM track (``Agent.llm_penalty``): ``none`` (score = r),
#: ``practical`` and ``relaxed`` (see :mod:`llm_track.fpo_head`).
PENALTY_FORMS = ("none", "practical", "relaxed")
PRESETS = ("paper", "tiny")


class LLMTrackError(Exception):
    """A user-facing error: the CLIs print its message as one line and exit non-zero."""


def penalty_form(agent: str) -> str:
    """The FPO penalty form (``Agent.llm_penalty``) of an LLM-track agent."""
    if agent not in AGENTS:
        raise LLMTrackError(f"--agent must be one of {', '.join(AGENTS)}; got {agent!r}")
    form = registry.get(agent).llm_penalty
    if form not in PENALTY_FORMS:
        raise LLMTrackError(
            f"agent {agent!r} declares llm_penalty {form!r}; the LLM track implements "
            f"{', '.join(PENALTY_FORMS)}"
        )
    return form


def agent_with_penalty(form: str) -> str:
    """The first LLM-track agent (registry order) whose penalty form is ``form``."""
    for agent in AGENTS:
        if registry.get(agent).llm_penalty == form:
            return agent
    raise LLMTrackError(f"no LLM-track agent has penalty form {form!r}")


@dataclass
class LLMConfig:
    """All settings of one run of the LLM protocol (defaults = the paper's, section 4)."""

    agent: str = registry.REFERENCE
    """Leader, one of :data:`AGENTS` (``agents.registry.llm_names()``); what it scores is its
    class's ``llm_penalty`` form (:attr:`penalty_form`). Default: the registry's reference."""
    preset: str = "paper"
    """``paper`` loads the hub models; ``tiny`` builds small random models locally."""
    policy: str = "meta-llama/Llama-3.2-1B-Instruct"
    """Policy (and oracle base model): hub id or local path; ``tiny`` builds it locally."""
    reward_model: str = "OpenAssistant/reward-model-deberta-v3-base"
    """Reward model: hub id or local path; ``tiny`` builds it locally."""
    seed: int = 0
    """Run seed: prompt order, sampling, dropout."""
    model_seed: int = 0
    """Seed of the locally built ``tiny`` models (shared by all agents and run seeds)."""
    steps: int = 500
    """Protocol steps (one prompt per step)."""
    candidates: int = 8
    """Candidates sampled by the policy per step."""
    max_new_tokens: int = 32
    min_new_tokens: int = 5
    """Longest candidate / reference answer; EOS is forbidden before ``min_new_tokens``."""
    top_p: float = 0.9
    temperature: float = 0.8
    """Nucleus sampling mass and temperature."""
    gamma: float = 10.0
    """FPO penalty weight (ignored by agents of penalty form ``none``)."""
    lora_r: int = 16
    lora_alpha: int = 32
    lora_dropout: float = 0.05
    lora_targets: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "o_proj")
    """LoRA rank, scaling numerator, dropout and the modules that get adapters."""
    policy_lr: float = 2e-5
    """AdamW learning rate of the LoRA adapter (SFT step on the winner)."""
    rm_lr: float = 5e-5
    """Adam learning rate of the RM head (Bradley-Terry step, winner vs reference)."""
    grad_accum: int = 4
    """Policy gradient accumulation (SFT steps per optimiser step). The RM head steps every
    protocol step, as in the FPO derivation (one RM step per labelled response)."""
    utility_offset: float = 5.0
    utility_clip: tuple[float, float] = (-15.0, 5.0)
    """Oracle utility U = -NLL_per_token(base) + offset, clipped to this range."""
    prompts: str = "auto"
    """``auto`` (UltraFeedback if ``datasets`` is importable and reachable, else built-in),
    ``builtin`` or ``ultrafeedback``."""
    eval_max_new_tokens: int = 64
    """Greedy answer length used by ``llm_track.evaluate``."""
    max_prompt_tokens: int = 256
    """Prompts are truncated (from the left) to this many tokens."""
    device: str = "cpu"
    dtype: str = "float32"
    """Torch device and model dtype (``float32`` or ``bfloat16``)."""
    tiny_hidden: int = 64
    tiny_layers: int = 2
    """Hidden size and layers of the tiny models."""

    def __post_init__(self) -> None:
        self.lora_targets = tuple(self.lora_targets)
        self.utility_clip = tuple(self.utility_clip)
        penalty_form(self.agent)  # raises LLMTrackError for an agent the LLM track lacks
        try:  # the env configs' checks, each error one line naming the setting and its range
            check_choice(self, "preset", PRESETS)
            check_int(self, "seed", 0)
            check_int(self, "model_seed", 0)
            check_int(self, "steps", 0)
            check_int(self, "candidates", 1)
            check_int(self, "max_new_tokens", 1)
            check_int(self, "min_new_tokens", 0, self.max_new_tokens)
            check_float(self, "top_p", 0.0, strict=True)
            check_float(self, "temperature", 0.0, strict=True)
            check_float(self, "gamma", 0.0, strict=False)
            check_float(self, "policy_lr", 0.0, strict=True)
            check_float(self, "rm_lr", 0.0, strict=True)
            check_int(self, "grad_accum", 1)
            check_choice(self, "prompts", ("auto", "builtin", "ultrafeedback"))
            check_choice(self, "dtype", ("float32", "bfloat16"))
            if self.top_p > 1.0:
                raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        except (TypeError, ValueError) as e:
            name, _, rest = str(e).partition(" ")
            raise LLMTrackError(f"--{name.replace('_', '-')} {rest}") from None

    @property
    def penalty_form(self) -> str:
        """The agent's FPO penalty form: ``none``, ``practical`` or ``relaxed``."""
        return penalty_form(self.agent)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> LLMConfig:
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})


def preset_config(preset: str, **overrides) -> LLMConfig:
    """The config of a preset, with ``overrides`` (None values are ignored) applied on top."""
    base: dict = {"preset": preset}
    if preset == "tiny":
        # Same protocol; small models learn fast enough to show drift within 50 steps.
        base.update(
            policy="tiny",
            reward_model="tiny",
            steps=50,
            policy_lr=3e-3,
            rm_lr=3e-2,
            grad_accum=1,
            gamma=1.0,
            prompts="builtin",
            eval_max_new_tokens=32,
            max_prompt_tokens=64,
        )
    base.update({k: v for k, v in overrides.items() if v is not None})
    return LLMConfig(**base)
