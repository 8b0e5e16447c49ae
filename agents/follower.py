"""What an agent sees of the env: a copy of the follower's declared state, and counted queries.

An agent never holds the env: :class:`Follower` and :class:`Oracle` are its side,
:func:`follower_state` and :func:`answer` the env's (README, "Fair comparisons"). In harness runs
the two sides live in different processes (:mod:`baselines.judge`); ``Agent.learn(env)`` and
:class:`agents.wrappers.AgentRewardWrapper` use them in one process.
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

from rlhf_envs.core import QUERY_KINDS, RLHFCore
from rlhf_envs.core import Oracle as Oracle  # the agent's side of the counted queries
from rlhf_envs.reward_models import FlatParams

#: Env settings that cross to an agent: the reward model's and its training's, not the truth's or
#: the labeler's (``signal_dims``, ``target_value``, ``utility_*``, ``labeler_*``, ``label_noise``...).
RM_SETTINGS = (
    "dims",
    "reward_model",
    "rm_hidden",
    "rm_init_noise",
    "rm_optimizer",
    "rm_lr",
    "rm_weight_decay",
    "rm_steps",
    "buffer_size",
    "samples_per_round",
    "labels_per_response",
    "feedback",
    "reference_response",
    "action_bound",
)
#: follower attributes each declaration brings (``initial_rm``: at the start only)
DECLARED = {
    "current_rm": ("params", "opt_state"),
    "initial_rm": ("params", "opt_state"),
    "rm_buffer": ("buffer_y", "buffer_t", "buffer_len", "buffer_pos"),
}
#: ``info`` keys that tell the truth or the env's hidden structure (not shown to agents)
SEALED_INFO = frozenset(
    {"true_utility", "signal_norm", "noise_norm", "cluster", "in_blind_cluster"}
)


class UndeclaredRead(AttributeError):
    """An agent read or queried something its declaration does not name."""


def follower_state(core: RLHFCore, rows: slice, reads: tuple[str, ...], start: bool) -> dict:
    """The follower's state that crosses to an agent declaring ``reads``, for the experiments
    ``rows`` (``start``: the first one of a run, with the reward model and the settings)."""
    state: dict[str, Any] = {"round": core.round, "in_round": core.in_round}
    names = {
        n for r in reads if r in DECLARED and (start or r != "initial_rm") for n in DECLARED[r]
    }
    for name in sorted(names):
        value = getattr(core, name)
        if name == "params":  # keeping the flat vector they share, if any
            flat = getattr(value, "flat", None)
            value = {k: v[rows] for k, v in value.items()}
            if flat is not None:
                value = FlatParams(value)
                value.flat = flat[rows]
        elif name == "opt_state":
            value = {k: v if v.dim() == 0 else v[rows] for k, v in value.items()}
        elif name in ("buffer_y", "buffer_t"):
            value = value[rows]
        state[name] = value
    if start:
        c = core.config
        state.update(
            S=len(range(*rows.indices(core.S))),
            seeds=core.seeds[rows],
            dtype=core.dtype,
            reward_model=core.reward_model,
            reference=core.reference,
            references=core.references[rows],
            config={k: getattr(c, k) for k in RM_SETTINGS},
        )
    return state


class Follower:
    """The env's follower as an agent sees it: the declared state (:func:`follower_state`), and
    the follower's reading methods (``score``, ``push``, ``retained_after_push``,
    ``training_batch``) on it. Reading what the declaration does not name raises
    :class:`UndeclaredRead` naming the declaration that would bring it."""

    def __init__(self, reads: tuple[str, ...], state: dict):
        self.reads = tuple(reads)
        self.update(state)
        self.config = SimpleNamespace(**state["config"])

    def update(self, state: dict) -> None:
        if "initial_rm" in self.reads and "current_rm" not in self.reads and "S" not in state:
            vars(self).pop("params", None)  # the initial RM was read at the start
            vars(self).pop("opt_state", None)
        vars(self).update({k: v for k, v in state.items() if k != "config"})

    def __getattr__(self, name: str) -> Any:
        need = [r for r, names in DECLARED.items() if name in names]
        if need:
            raise UndeclaredRead(
                f"core.{name} needs the declaration {' or '.join(map(repr, need))} in the "
                f"agent's reads (it declares {self.reads})"
            )
        raise AttributeError(f"the follower has no attribute {name!r}")

    score = RLHFCore.score
    push = RLHFCore.push
    retained_after_push = RLHFCore.retained_after_push
    training_batch = RLHFCore.training_batch


def answer(core: RLHFCore, rows: slice, reads: tuple[str, ...], kind: str, ys: Any, ys_error: str):
    """The env's side of a query: :meth:`RLHFCore.query` for the experiments ``rows``, refused if
    ``reads`` does not declare ``kind``."""
    if kind not in QUERY_KINDS:
        raise ValueError(f"unknown query {kind!r}; allowed: {QUERY_KINDS}")
    if kind not in reads:
        raise UndeclaredRead(f"a {kind} query needs {kind!r} in the agent's reads ({reads})")
    return core.query(kind, ys, ys_error, rows)
