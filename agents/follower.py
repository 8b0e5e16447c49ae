"""What an agent sees of the env: a copy of the follower's declared state, and counted queries.

An agent never holds the env: :class:`Follower` and :class:`Oracle` are its side,
:func:`follower_state` and :func:`answer` the env's (README, "Fair comparisons"). In harness runs
the two sides live in different processes (:mod:`baselines.judge`); ``Agent.learn(env)`` and
:class:`agents.wrappers.AgentRewardWrapper` use them in one process.
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import torch

from rlhf_envs.core import QUERY_KINDS, RLHFCore
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
        if name == "params":
            value = _rows_of(value, rows)
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


def _rows_of(params: dict, rows: slice) -> dict:
    """``params`` cut to the experiments ``rows``, keeping the flat vector they share if any."""
    out = FlatParams({k: v[rows] for k, v in params.items()})
    flat = getattr(params, "flat", None)
    if flat is None:
        return dict(out)
    out.flat = flat[rows]
    return out


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


class Oracle:
    """The env's counted queries: ``ask(kind, y)`` is answered on the env's side, which charges
    one query of ``kind`` per response in ``y`` (shape (S, ..., d)) and refuses a kind the
    agent did not declare."""

    def __init__(self, ask):
        self._ask = ask

    def query_labeler(self, ys: Any) -> torch.Tensor:
        """The labeler's noiseless verdict (rating, or P(y beats the reference))."""
        return self._ask("labeler_values", ys)

    def query_labeler_and_grad(self, ys: Any) -> tuple[torch.Tensor, torch.Tensor]:
        return self._ask("labeler_grads", ys)

    def true_utility(self, ys: Any) -> torch.Tensor:
        return self._ask("truth_values", ys)

    def true_utility_and_grad(self, ys: Any) -> tuple[torch.Tensor, torch.Tensor]:
        return self._ask("truth_grads", ys)


def answer(core: RLHFCore, rows: slice, reads: tuple[str, ...], kind: str, ys: Any, ys_error: str):
    """The env's side of a query: ``kind`` of the responses ``ys`` for the experiments ``rows``,
    charged there per response; refused if ``reads`` does not declare it or ``ys`` is not
    ``(S_rows, ..., d)``."""
    if kind not in QUERY_KINDS:
        raise ValueError(f"unknown query {kind!r}; allowed: {QUERY_KINDS}")
    if kind not in reads:
        raise UndeclaredRead(f"a {kind} query needs {kind!r} in the agent's reads ({reads})")
    y = torch.as_tensor(ys, dtype=core.dtype).detach()
    S, n = len(range(*rows.indices(core.S))), core.config.dims
    if y.dim() < 2 or y.shape[0] != S or y.shape[-1] != n:
        raise ValueError(f"{ys_error.format(S=S, n=n)}; got {tuple(y.shape)}")
    fn = {
        "labeler_values": core.labeler_target,
        "labeler_grads": core.labeler_target_and_grad,
        "truth_values": core.utility,
        "truth_grads": core.utility_and_grad,
    }[kind]
    core.charge(y, kind, rows)
    with torch.no_grad():
        return fn(y)
